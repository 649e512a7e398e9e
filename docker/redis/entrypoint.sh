#!/bin/bash
# redis-server with its config on stdin: the password stays out of argv (ps, docker inspect).
set -euo pipefail
: "${REDIS_PASSWORD:?REDIS_PASSWORD is not set}"
exec redis-server - <<CONF
bind 0.0.0.0
port 6379
protected-mode yes
requirepass ${REDIS_PASSWORD}
save ""
appendonly no
maxmemory 128mb
maxmemory-policy noeviction
CONF
