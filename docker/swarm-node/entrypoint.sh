#!/bin/bash
# Start the node's engine. NODE_REGISTRY (host:port, plain HTTP) is the swarm's registry; the
# engine's API also listens on /run/conveyor-api/docker.sock, a volume the manager's socket proxy
# mounts. Inner containers get their own cgroup parent, so that the host's /sys/fs/cgroup keeps
# each node's containers apart (and CPU per replica is readable per node).
set -euo pipefail
: "${NODE_REGISTRY:?NODE_REGISTRY is not set (the registry the node pulls from, host:port)}"
mkdir -p /run/conveyor-api
exec dockerd \
  --host=unix:///var/run/docker.sock \
  --host=unix:///run/conveyor-api/docker.sock \
  --group=docker \
  --insecure-registry="$NODE_REGISTRY" \
  --cgroup-parent="/conveyor-swarm/$(hostname)" \
  --storage-driver=overlay2 \
  --log-driver=json-file --log-opt max-size=5m \
  "$@"
