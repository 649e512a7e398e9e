"""A stack's env file (`.env`, or a test stack's): created from .env.example, kept complete.

    python scripts/stack_env.py create  --out .env                      # secrets generated
    python scripts/stack_env.py create  --out .build/test-stack.env --stack conveyor-test \
                                         --set RETRAIN_SCHEDULE=none
    python scripts/stack_env.py complete --env .env                     # add new settings

`.env.example` is the one place that names every setting and its default. `create` copies it and
fills every empty secret with a random value. `--stack NAME` makes a stack that can run beside
the default one on the same engine: every Docker name (Compose project, networks, volumes,
containers, image repository of the baked models) starts with NAME instead of `conveyor`, and
every published port is a free one. `--set KEY=VALUE` overrides a setting of .env.example
(an unknown KEY is an error). `complete` appends the settings an older env file lacks
(a new release added them), with their defaults, and names them.

Standard library only: it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / ".env.example"
DEFAULT_STACK = "conveyor"
SETTING = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")

SECRETS = {
    "AIRFLOW_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(18),
    "AIRFLOW_FERNET_KEY": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
    "AIRFLOW_JWT_SECRET": lambda: secrets.token_urlsafe(48),
    "AIRFLOW_API_SECRET_KEY": lambda: secrets.token_urlsafe(48),
    "POSTGRES_PASSWORD": lambda: secrets.token_urlsafe(24),
    "AIRFLOW_DB_PASSWORD": lambda: secrets.token_urlsafe(24),
    "MLFLOW_DB_PASSWORD": lambda: secrets.token_urlsafe(24),
    "AIRFLOW_METRICS_DB_PASSWORD": lambda: secrets.token_urlsafe(24),
    "AIRFLOW_NOTES_PASSWORD": lambda: secrets.token_urlsafe(18),
    # S3 keys: letters and digits only (safe in URLs, JSON and config files).
    "S3_ACCESS_KEY_ID": lambda: "CONVEYOR" + secrets.token_hex(6).upper(),
    "S3_SECRET_ACCESS_KEY": lambda: secrets.token_hex(20),
    "REDIS_PASSWORD": lambda: secrets.token_urlsafe(24),
}


def read(path: Path) -> dict[str, str]:
    """KEY=value lines of an env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            match = SETTING.match(line.strip())
            if match:
                values[match.group(1)] = match.group(2).strip()
    return values


def free_port(taken: set[int]) -> int:
    """A port nothing listens on now (the kernel's choice), not handed out already."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port


def renamed(key: str, value: str, stack: str) -> str:
    """The value of a setting for stack `stack`: Docker names and ports change, nothing else."""
    if stack == DEFAULT_STACK:
        return value
    is_name = key == "COMPOSE_PROJECT_NAME" or key.startswith("CONVEYOR_")
    if is_name and value.startswith(DEFAULT_STACK):
        return stack + value[len(DEFAULT_STACK) :]
    return value


def create(out: Path, stack: str, overrides: dict[str, str] | None = None) -> None:
    overrides = overrides or {}
    unknown = set(overrides) - set(read(EXAMPLE))
    if unknown:
        raise SystemExit(f"stack_env: --set {', '.join(sorted(unknown))}: not in .env.example")
    taken: set[int] = set()
    lines = []
    for line in EXAMPLE.read_text().splitlines(keepends=True):
        match = SETTING.match(line.rstrip("\n"))
        if match:
            key, value = match.group(1), match.group(2).strip()
            if key in overrides:
                value = overrides[key]
            elif not value and key in SECRETS:
                value = SECRETS[key]()
            elif stack != DEFAULT_STACK and key.endswith("_PORT"):
                value = str(free_port(taken))
            else:
                value = renamed(key, value, stack)
            line = f"{key}={value}\n"
        lines.append(line)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        fh.writelines(lines)
    tmp.replace(out)


def complete(env_file: Path) -> list[str]:
    """Append the settings of .env.example that `env_file` lacks; return their names."""
    have = read(env_file)
    stack = have.get("COMPOSE_PROJECT_NAME") or DEFAULT_STACK
    missing = [(k, v) for k, v in read(EXAMPLE).items() if k not in have]
    if missing:
        with env_file.open("a") as fh:
            fh.write("\n# Added from .env.example (new settings, their defaults)\n")
            for key, value in missing:
                value = SECRETS[key]() if not value and key in SECRETS else value
                fh.write(f"{key}={renamed(key, value, stack)}\n")
    return [k for k, _ in missing]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--stack", default=DEFAULT_STACK, help="prefix of every Docker name")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    k = sub.add_parser("complete")
    k.add_argument("--env", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "create":
        if not re.fullmatch(r"[a-z][a-z0-9-]*", args.stack):
            print(f"stack_env: --stack {args.stack!r}: use a-z, 0-9 and -", file=sys.stderr)
            return 2
        create(args.out, args.stack, dict(kv.split("=", 1) for kv in args.overrides))
    else:
        added = complete(args.env)
        if added:
            print(
                f"stack_env: added to {args.env} with defaults: {', '.join(added)}", file=sys.stderr
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
