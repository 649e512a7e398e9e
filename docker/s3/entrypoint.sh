#!/usr/bin/env bash
# Start `weed mini` with one S3 identity taken from the environment and the buckets created.
#   S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY  (required; the identities file is written at start,
#                                            in the container only, never in the image)
#   S3_BUCKETS                              comma-separated bucket names to create if missing
# Extra arguments are passed on to `weed mini`.
set -euo pipefail

: "${S3_ACCESS_KEY_ID:?S3_ACCESS_KEY_ID is not set (see .env.example)}"
: "${S3_SECRET_ACCESS_KEY:?S3_SECRET_ACCESS_KEY is not set (see .env.example)}"
case "$S3_ACCESS_KEY_ID$S3_SECRET_ACCESS_KEY" in
  *'"'*|*'\'*) echo "s3-entrypoint: keys must not contain quotes or backslashes" >&2; exit 1 ;;
esac

config=$(mktemp /tmp/s3-identities.XXXXXX.json)
chmod 600 "$config"
cat > "$config" <<JSON
{"identities": [{"name": "conveyor",
  "credentials": [{"accessKey": "$S3_ACCESS_KEY_ID", "secretKey": "$S3_SECRET_ACCESS_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
unset S3_SECRET_ACCESS_KEY

# -ip=127.0.0.1: master, volume and filer talk to each other inside this container; only the
# S3 gateway (8333) is meant to be used from outside (the compose file publishes only that).
exec weed mini -dir=/data -ip=127.0.0.1 -ip.bind=0.0.0.0 \
  -s3.config="$config" -bucket="${S3_BUCKETS:-}" \
  -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 "$@"
