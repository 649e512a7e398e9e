#!/usr/bin/env bash
# First start of the postgres volume only (docker-entrypoint-initdb.d): one database and one
# owner per consumer, so Airflow and MLflow never share credentials or schemas.
#   airflow  <- AIRFLOW_DB_PASSWORD    mlflow <- MLFLOW_DB_PASSWORD
# Changing a password in .env later needs `make clean` (or ALTER ROLE by hand).
set -euo pipefail

for var in AIRFLOW_DB_PASSWORD MLFLOW_DB_PASSWORD; do
  [ -n "${!var:-}" ] || { echo "postgres-init: $var is empty (see .env.example)" >&2; exit 1; }
done

create_db() { # role password
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres --no-psqlrc -q \
    --set role="$1" --set pw="$2" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'pw';
CREATE DATABASE :"role" OWNER :"role";
REVOKE ALL ON DATABASE :"role" FROM PUBLIC;
SQL
  echo "postgres-init: database and role '$1' created" >&2
}

create_db airflow "$AIRFLOW_DB_PASSWORD"
create_db mlflow "$MLFLOW_DB_PASSWORD"
