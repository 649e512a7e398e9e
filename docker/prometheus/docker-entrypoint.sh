#!/bin/bash
# Render /etc/prometheus/prometheus.yml.template into /run/prometheus/prometheus.yml with the
# stack's names from the environment, check it with promtool, then start Prometheus.
# Every variable the template names must be set: a missing one stops here, named.
set -euo pipefail
template=/etc/prometheus/prometheus.yml.template
rendered=/run/prometheus/prometheus.yml

mapfile -t names < <(grep -o '\${[A-Z0-9_]*}' "$template" | tr -d '${}' | sort -u)
missing=()
for name in "${names[@]}"; do
  [ -n "${!name:-}" ] || missing+=("$name")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "prometheus: error: not set: ${missing[*]} (the scrape config needs them)" >&2
  exit 2
fi
envsubst "$(printf '${%s} ' "${names[@]}")" < "$template" > "$rendered"
promtool check config --syntax-only "$rendered" >&2
exec "$@"
