#!/bin/bash
# Start nginx on the upstream a deploy last wrote to the shared volume. Without one, or if its
# container no longer resolves (e.g. after `compose down`), fall back to the Compose `serving`
# service (GATEWAY_DEFAULT_UPSTREAM), which loads the registry's champion itself.
set -euo pipefail
conf=/var/lib/conveyor-gateway/upstream.conf
default="${GATEWAY_DEFAULT_UPSTREAM:-serving:8000}"

write_upstream() { # host:port
  local tmp
  tmp=$(mktemp /var/lib/conveyor-gateway/.upstream.XXXXXX)
  printf 'upstream conveyor_serving {\n    server %s max_fails=0;\n    keepalive 16;\n    keepalive_timeout 2s;\n}\n' "$1" > "$tmp"
  chmod 0644 "$tmp"
  mv -f "$tmp" "$conf"
}

current=""
if [ -s "$conf" ]; then
  current=$(sed -n 's/^[[:space:]]*server[[:space:]]\+\([^[:space:];]\+\).*/\1/p' "$conf" | head -n1)
fi
if [ -z "$current" ] || ! getent hosts "${current%:*}" >/dev/null; then
  echo "gateway: upstream '${current:-none}' not resolvable, using default $default" >&2
  current=$default
  # The default host may appear a little after us: wait up to 60 s for its name.
  for _ in $(seq 60); do getent hosts "${current%:*}" >/dev/null && break; sleep 1; done
  write_upstream "$current"
fi
echo "gateway: serving traffic from $current" >&2
mkdir -p /tmp/nginx
nginx -e stderr -t -q
exec "$@"
