#!/usr/bin/env bash
# A multi-node Docker Swarm on this one machine, serving Conveyor (release/swarm/stack.yaml).
#
#   scripts/swarm.sh up     engines in containers (docker/swarm-node) joined to one swarm, the
#                           swarm's registry (docker/registry), the manager's socket proxy, the
#                           stack (serving replicas + gateway); prints the release settings
#   scripts/swarm.sh env    the release settings of a running swarm (KEY=VALUE lines)
#   scripts/swarm.sh down   remove all of it (containers, volumes, network)
#
# Settings (environment, all required; no names are made up here):
#   SWARM_PREFIX          names: network, node-N, registry, manager-proxy, volumes
#   SWARM_NODES           number of engine nodes (>= 2; node 1 is the manager)
#   SWARM_STACK           stack name (the serving service is <stack>_serving)
#   SWARM_GATEWAY_PORT    127.0.0.1 port of the gateway (published by node 1)
#   SWARM_REGISTRY_PORT   127.0.0.1 port of the registry (the build engine pushes there)
#   SWARM_SERVING_IMAGE   the first image to serve (a baked serving image on this engine)
#   SWARM_UPDATE_MONITOR  how long Swarm watches each updated replica (e.g. 5s)
#   SERVING_REPLICAS, SERVING_CPUS, SERVING_MEMORY_MB   one replica's size and the count
#   SWARM_CLIENT_NETWORK  optional: also attach the manager's proxy to this network (the
#                         Compose stack's serving network, where the DAG's deploy task runs)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

DOCKER="${DOCKER:-/usr/bin/docker}"
# The swarm-node image's API socket group (docker/swarm-node/Dockerfile).
NODE_API_GID=2375
WAIT_S="${SWARM_WAIT_S:-240}"

say() { echo "swarm: $*" >&2; }
die() { say "$*"; exit 1; }
need() { for v in "$@"; do [ -n "${!v:-}" ] || die "$v is not set"; done; }

# Settings the environment does not give come from .env (the stack's settings file), if any.
if [ -f .env ]; then
  while IFS='=' read -r key value; do
    [[ $key =~ ^[A-Z_][A-Z0-9_]*$ ]] && [ -z "${!key+x}" ] && export "$key=$value"
  done < .env
fi

need SWARM_PREFIX
P=$SWARM_PREFIX
LABEL="io.conveyor.swarm=$P"
manager="$P-node-1"

# Wait (bounded) until "$@" succeeds.
wait_for() { # what seconds cmd...
  local what=$1 limit=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what: not ready after ${limit}s"
    sleep 1
  done
}

exposed_port() { # image -> its one EXPOSEd TCP port
  "$DOCKER" image inspect -f '{{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}' "$1" \
    | tr ' ' '\n' | sed -n 's#/tcp$##p' | head -n1
}

http_ok() { # port path -> status 200 from 127.0.0.1:port (bash's /dev/tcp: no HTTP client)
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.0\r\n\r\n' "$2" >&3
  head -n1 <&3 | grep -q ' 200 '
  local ok=$?
  exec 3<&- 3>&-
  return $ok
}

ip_of() { # container -> its address on the swarm's network
  "$DOCKER" inspect -f "{{(index .NetworkSettings.Networks \"$P\").IPAddress}}" "$1"
}

# Push a local image to the registry; prints the reference the nodes pull (by digest).
push() { # image
  local image=$1 repo digest
  repo=${image%:*}
  "$DOCKER" tag "$image" "127.0.0.1:$SWARM_REGISTRY_PORT/$image"
  digest=$("$DOCKER" push "127.0.0.1:$SWARM_REGISTRY_PORT/$image" | sed -n 's/.*digest: \(sha256:[0-9a-f]*\).*/\1/p')
  "$DOCKER" rmi "127.0.0.1:$SWARM_REGISTRY_PORT/$image" >/dev/null
  [ -n "$digest" ] || die "push of $image to the registry gave no digest"
  echo "$P-registry:5000/$image@$digest"
}

settings() {
  cat <<ENV
SWARM_DOCKER_HOST=tcp://$P-manager-proxy:2375
SWARM_SERVICE=${SWARM_STACK}_serving
SWARM_REGISTRY=$P-registry:5000
SWARM_REGISTRY_PUSH=127.0.0.1:$SWARM_REGISTRY_PORT
SWARM_GATEWAY_URL=http://127.0.0.1:$SWARM_GATEWAY_PORT
ENV
}

node_run() { # index [extra docker-run args...]
  local i=$1; shift
  # Not --privileged: the host lacks CAP_SYS_RESOURCE ("unable to apply caps"). These are the
  # capabilities and profiles an inner engine needs; cgroups rw (the host is cgroup v1).
  "$DOCKER" run -d --name "$P-node-$i" --hostname "$P-node-$i" --network "$P" \
    --label "$LABEL" --label io.conveyor.swarm.role=node \
    --cap-add SYS_ADMIN --cap-add NET_ADMIN --cap-add MKNOD --cap-add SYS_PTRACE \
    --cap-add NET_RAW --cap-add SYS_MODULE --cap-add SYS_CHROOT --cap-add SETFCAP \
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    --security-opt no-new-privileges=false --security-opt systempaths=unconfined \
    -v /sys/fs/cgroup:/sys/fs/cgroup:rw -v "$P-node-$i:/var/lib/docker" \
    -e "NODE_REGISTRY=$P-registry:5000" "$@" "$SWARM_NODE_IMAGE" >/dev/null
}

up() {
  need SWARM_NODES SWARM_STACK SWARM_GATEWAY_PORT SWARM_REGISTRY_PORT SWARM_SERVING_IMAGE \
    SWARM_UPDATE_MONITOR SERVING_REPLICAS SERVING_CPUS SERVING_MEMORY_MB
  [ "$SWARM_NODES" -ge 2 ] || die "SWARM_NODES=$SWARM_NODES: a swarm across nodes needs >= 2"
  "$DOCKER" image inspect "$SWARM_SERVING_IMAGE" >/dev/null 2>&1 \
    || die "SWARM_SERVING_IMAGE=$SWARM_SERVING_IMAGE is not an image on this engine"
  local start=$SECONDS
  bash scripts/build-images.sh swarm-node registry swarm-gateway socket-proxy >/dev/null
  # shellcheck disable=SC1091
  . .build/images.env
  local serving_port gateway_port
  serving_port=$(exposed_port "$SWARM_SERVING_IMAGE")
  gateway_port=$(exposed_port "$SWARM_GATEWAY_IMAGE")
  [ -n "$serving_port" ] || die "$SWARM_SERVING_IMAGE EXPOSEs no TCP port"

  "$DOCKER" network inspect "$P" >/dev/null 2>&1 \
    || "$DOCKER" network create --label "$LABEL" "$P" >/dev/null
  if ! "$DOCKER" container inspect "$P-registry" >/dev/null 2>&1; then
    "$DOCKER" run -d --name "$P-registry" --network "$P" --label "$LABEL" \
      -p "127.0.0.1:$SWARM_REGISTRY_PORT:5000" -v "$P-registry:/var/lib/docker-registry" \
      --read-only --cap-drop ALL "$REGISTRY_IMAGE" >/dev/null
  fi
  for i in $(seq 1 "$SWARM_NODES"); do
    "$DOCKER" container inspect "$P-node-$i" >/dev/null 2>&1 && continue
    if [ "$i" = 1 ]; then
      node_run 1 -p "127.0.0.1:$SWARM_GATEWAY_PORT:$gateway_port" -v "$P-manager-api:/run/conveyor-api"
    else
      node_run "$i"
    fi
  done
  for i in $(seq 1 "$SWARM_NODES"); do
    wait_for "engine $P-node-$i" "$WAIT_S" "$DOCKER" exec "$P-node-$i" docker info
  done
  wait_for "registry $P-registry" "$WAIT_S" http_ok "$SWARM_REGISTRY_PORT" /v2/

  if [ "$("$DOCKER" exec "$manager" docker info -f '{{.Swarm.LocalNodeState}}')" != active ]; then
    "$DOCKER" exec "$manager" docker swarm init --advertise-addr "$(ip_of "$manager")" >/dev/null
  fi
  local token; token=$("$DOCKER" exec "$manager" docker swarm join-token -q worker)
  for i in $(seq 2 "$SWARM_NODES"); do
    [ "$("$DOCKER" exec "$P-node-$i" docker info -f '{{.Swarm.LocalNodeState}}')" = active ] && continue
    "$DOCKER" exec "$P-node-$i" docker swarm join --token "$token" "$(ip_of "$manager"):2377" >/dev/null
  done
  say "$SWARM_NODES nodes in the swarm ($((SECONDS - start))s)"

  if ! "$DOCKER" container inspect "$P-manager-proxy" >/dev/null 2>&1; then
    "$DOCKER" run -d --name "$P-manager-proxy" --network "$P" --label "$LABEL" \
      -e SOCKET_PROXY_SWARM_MANAGER=1 --group-add "$NODE_API_GID" \
      -v "$P-manager-api:/var/run" --read-only --cap-drop ALL "$SOCKET_PROXY_IMAGE" >/dev/null
    if [ -n "${SWARM_CLIENT_NETWORK:-}" ]; then
      "$DOCKER" network connect "$SWARM_CLIENT_NETWORK" "$P-manager-proxy"
    fi
  fi

  local serving_ref gateway_ref
  serving_ref=$(push "$SWARM_SERVING_IMAGE")
  gateway_ref=$(push "$SWARM_GATEWAY_IMAGE")
  say "images in the registry ($((SECONDS - start))s)"
  "$DOCKER" exec -i \
    -e "SWARM_SERVING_IMAGE_REF=$serving_ref" -e "SWARM_GATEWAY_IMAGE_REF=$gateway_ref" \
    -e "SWARM_STACK=$SWARM_STACK" -e "SERVING_REPLICAS=$SERVING_REPLICAS" \
    -e "SERVING_CPUS=$SERVING_CPUS" -e "SERVING_MEMORY_MB=$SERVING_MEMORY_MB" \
    -e "SERVING_PORT=$serving_port" -e "GATEWAY_PORT=$gateway_port" \
    -e "SWARM_UPDATE_MONITOR=$SWARM_UPDATE_MONITOR" \
    "$manager" docker stack deploy --prune -c - "$SWARM_STACK" < release/swarm/stack.yaml >/dev/null
  converged() {
    local want="$SERVING_REPLICAS/$SERVING_REPLICAS 1/1"
    [ "$("$DOCKER" exec "$manager" docker service ls --filter "label=com.docker.stack.namespace=$SWARM_STACK" \
        --format '{{.Replicas}}' | sort -r | xargs)" = "$want" ] \
      && http_ok "$SWARM_GATEWAY_PORT" /ready
  }
  wait_for "stack $SWARM_STACK" "$WAIT_S" converged
  say "stack $SWARM_STACK serves on 127.0.0.1:$SWARM_GATEWAY_PORT ($((SECONDS - start))s)"
  settings
}

down() {
  local ids
  ids=$("$DOCKER" ps -aq --filter "label=$LABEL")
  [ -z "$ids" ] || "$DOCKER" rm -f -v $ids >/dev/null
  for v in $("$DOCKER" volume ls -q | grep -E "^$P-(node-[0-9]+|registry|manager-api)$" || true); do
    "$DOCKER" volume rm "$v" >/dev/null
  done
  "$DOCKER" network rm "$P" >/dev/null 2>&1 || true
  # The inner engines' cgroups (--cgroup-parent in the node's entrypoint), now empty.
  find /sys/fs/cgroup/*/conveyor-swarm/ -maxdepth 0 >/dev/null 2>&1 \
    && find /sys/fs/cgroup/*/conveyor-swarm/ -depth -type d -path "*/$P-node-*" -exec rmdir {} + 2>/dev/null || true
  say "swarm $P removed"
}

case "${1:-}" in
  up) up ;;
  env) need SWARM_STACK SWARM_REGISTRY_PORT SWARM_GATEWAY_PORT; settings ;;
  down) down ;;
  *) echo "usage: $0 up|env|down" >&2; exit 2 ;;
esac
