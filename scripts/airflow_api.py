"""Small client of Airflow 3's REST API (v2) for the Conveyor stack.

    python scripts/airflow_api.py dags                       # DAG ids, paused state
    python scripts/airflow_api.py import-errors              # exit 1 if any
    python scripts/airflow_api.py trigger retrain [--date YYYY-MM-DD] [--conf JSON] [--wait S]
    python scripts/airflow_api.py wait-dag retrain [--timeout S]
    python scripts/airflow_api.py first-run retrain [--wait S]   # make up: once, if no run yet
    python scripts/airflow_api.py activate landing monitor      # make up: unpause, once

`trigger` refuses, in one line and before any run is created, a malformed or future logical
date (Airflow 3.3 accepts a future one and leaves the run `running` until that day) and a conf
that does not match the DAG's params (an unknown key, or a value its param's JSON schema
rejects; the params are read from the DAG itself). Exit codes: 0 ok, 1 the run failed or the
API answered an error, 2 a bad argument.

Base URL and credentials: AIRFLOW_URL (default http://127.0.0.1:$AIRFLOW_PORT) and
AIRFLOW_ADMIN_USER / AIRFLOW_ADMIN_PASSWORD from the environment, else from the stack's env
file ($CONVEYOR_ENV_FILE, default .env). Tests import `AirflowClient` from here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TERMINAL_STATES = {"success", "failed"}


class AirflowError(RuntimeError):
    pass


class BadTrigger(ValueError):
    """A trigger that must not reach Airflow (exit code 2)."""


def stack_env_file() -> Path:
    return Path(os.environ.get("CONVEYOR_ENV_FILE") or ROOT / ".env")


def read_env_file(path: Path | None = None) -> dict[str, str]:
    path = path or stack_env_file()
    values: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip()
    return values


def settings() -> tuple[str, str, str]:
    env = {**read_env_file(), **os.environ}
    url = env.get("AIRFLOW_URL") or (
        f"http://{env.get('BIND_ADDRESS') or '127.0.0.1'}:{env.get('AIRFLOW_PORT') or '8080'}"
    )
    password = env.get("AIRFLOW_ADMIN_PASSWORD", "")
    if not password:
        raise AirflowError(f"AIRFLOW_ADMIN_PASSWORD is not set (environment or {stack_env_file()})")
    return url.rstrip("/"), env.get("AIRFLOW_ADMIN_USER") or "admin", password


class AirflowClient:
    def __init__(self, url: str, username: str, password: str, timeout: float = 30.0):
        self.url, self.username, self.password, self.timeout = url, username, password, timeout
        self._token: str | None = None

    @classmethod
    def from_env(cls) -> AirflowClient:
        return cls(*settings())

    # ------------------------------------------------------------------ HTTP
    def _send(self, method: str, path: str, body=None, auth: bool = True) -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self.token()}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise AirflowError(f"{method} {self.url}{path}: {exc}") from exc
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def token(self) -> str:
        if self._token is None:
            status, body = self._send(
                "POST",
                "/auth/token",
                {"username": self.username, "password": self.password},
                auth=False,
            )
            if status not in (200, 201) or not isinstance(body, dict):
                raise AirflowError(f"POST /auth/token answered {status}: {body}")
            self._token = body["access_token"]
        return self._token

    def request(self, method: str, path: str, body=None, ok=(200,)) -> object:
        status, data = self._send(method, path, body)
        if status == 401 and self._token is not None:  # token expired: one fresh try
            self._token = None
            status, data = self._send(method, path, body)
        if status not in ok:
            raise AirflowError(f"{method} {path} answered {status}: {data}")
        return data

    # ------------------------------------------------------------------ API
    def health(self) -> dict:
        return self.request("GET", "/api/v2/monitor/health")

    def dags(self) -> list[dict]:
        return self.request("GET", "/api/v2/dags?limit=1000")["dags"]

    def import_errors(self) -> list[dict]:
        return self.request("GET", "/api/v2/importErrors?limit=1000")["import_errors"]

    def dag_params(self, dag_id: str) -> dict[str, dict]:
        """The DAG's params as {name: {"value": default, "schema": JSON schema, ...}}."""
        details = self.request("GET", f"/api/v2/dags/{urllib.parse.quote(dag_id)}/details")
        return details.get("params") or {}

    def dag_runs(self, dag_id: str, limit: int = 100) -> list[dict]:
        q = urllib.parse.quote(dag_id)
        path = f"/api/v2/dags/{q}/dagRuns?limit={limit}&order_by=-run_after"
        return self.request("GET", path)["dag_runs"]

    def set_paused(self, dag_id: str, paused: bool) -> None:
        q = urllib.parse.quote(dag_id)
        self.request("PATCH", f"/api/v2/dags/{q}?update_mask=is_paused", {"is_paused": paused})

    def trigger(
        self,
        dag_id: str,
        logical_date: str | None,
        conf: dict | None = None,
        run_id: str | None = None,
    ) -> dict:
        body: dict = {"logical_date": logical_date, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        q = urllib.parse.quote(dag_id)
        return self.request("POST", f"/api/v2/dags/{q}/dagRuns", body)

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        q, r = urllib.parse.quote(dag_id), urllib.parse.quote(run_id, safe="")
        return self.request("GET", f"/api/v2/dags/{q}/dagRuns/{r}")

    def wait_run(self, dag_id: str, run_id: str, timeout: float, poll: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.dag_run(dag_id, run_id)
            if run["state"] in TERMINAL_STATES:
                return run
            if time.monotonic() > deadline:
                raise AirflowError(f"{dag_id} run {run_id} still {run['state']} after {timeout}s")
            time.sleep(poll)

    def wait_dag(self, dag_id: str, timeout: float, poll: float = 3.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = [d for d in self.dags() if d["dag_id"] == dag_id]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                errors = [e.get("filename") for e in self.import_errors()]
                raise AirflowError(
                    f"DAG {dag_id} not listed after {timeout}s "
                    f"(import errors in: {errors or 'none'})"
                )
            time.sleep(poll)


def logical_date_of(day: str | None, now: datetime | None = None) -> str:
    """Midnight UTC of `day` (YYYY-MM-DD; default today) for Airflow; never in the future."""
    now = now or datetime.now(UTC)
    if not day:
        return now.strftime("%Y-%m-%dT00:00:00Z")
    try:
        logical = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise BadTrigger(f"--date {day!r} is not a date of the form YYYY-MM-DD") from None
    if logical > now:
        raise BadTrigger(
            f"--date {day} is in the future (now {now:%Y-%m-%d %H:%M} UTC): Airflow "
            "would keep the run waiting until then; use today or an earlier date"
        )
    return logical.strftime("%Y-%m-%dT00:00:00Z")


def check_conf(dag_id: str, conf: object, params: dict[str, dict]) -> dict:
    """`conf` if it is an object whose every key is a param of the DAG with a value its schema
    accepts; else BadTrigger naming the key."""
    import jsonschema

    if not isinstance(conf, dict):
        raise BadTrigger("--conf must be a JSON object")
    for key, value in conf.items():
        if key not in params:
            raise BadTrigger(
                f"--conf key {key!r} is not a param of {dag_id} "
                f"(its params: {', '.join(sorted(params))})"
            )
        schema = params[key].get("schema") or {}
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as exc:
            where = "".join(f"[{p!r}]" for p in exc.absolute_path)
            raise BadTrigger(f"--conf key {key!r}{where}: {exc.message}") from None
    return conf


def trigger_and_maybe_wait(
    client: AirflowClient, dag_id: str, day: str | None, conf: object, wait: float
) -> int:
    logical_date = logical_date_of(day)
    client.wait_dag(dag_id, timeout=120)
    conf = check_conf(dag_id, conf, client.dag_params(dag_id))
    client.set_paused(dag_id, False)
    run = client.trigger(dag_id, logical_date, conf)
    print(f"triggered {dag_id} run {run['dag_run_id']} (logical date {run.get('logical_date')})")
    if wait <= 0:
        return 0
    run = client.wait_run(dag_id, run["dag_run_id"], timeout=wait)
    print(f"{dag_id} run {run['dag_run_id']}: {run['state']}")
    return 0 if run["state"] == "success" else 1


def first_run(client: AirflowClient, dag_id: str, wait: float) -> int:
    """Once per stack: unpause the DAG; if the scheduler does not start a run by itself within
    a few seconds, trigger one for today; then wait up to `wait` seconds for that run's end.
    Does nothing when the DAG already has runs."""
    print(f"first run: waiting for DAG {dag_id} to be listed", file=sys.stderr)
    client.wait_dag(dag_id, timeout=120)
    if client.dag_runs(dag_id, limit=1):
        print(f"first run: {dag_id} already has runs, none triggered", file=sys.stderr)
        return 0
    client.set_paused(dag_id, False)
    deadline = time.monotonic() + 15
    run = None
    while run is None and time.monotonic() < deadline:
        runs = client.dag_runs(dag_id, limit=1)
        if runs:
            run = runs[0]
            print(f"first run: the scheduler started {run['dag_run_id']}", file=sys.stderr)
        else:
            time.sleep(3)
    if run is None:
        run = client.trigger(dag_id, logical_date_of(None), {})
        print(f"first run: triggered {dag_id} run {run['dag_run_id']}", file=sys.stderr)
    if wait <= 0:
        return 0
    print(
        f"first run: waiting up to {wait:.0f}s for it (follow it in the Airflow UI)",
        file=sys.stderr,
    )
    run = client.wait_run(dag_id, run["dag_run_id"], timeout=wait)
    print(f"first run: {run['dag_run_id']} {run['state']}", file=sys.stderr)
    return 0 if run["state"] == "success" else 1


def activate(client: AirflowClient, dag_ids: list[str], timeout: float = 120) -> int:
    """Once per stack: unpause each DAG that has never run (DAGs are paused when created; one
    paused by hand after its first run stays paused)."""
    for dag_id in dag_ids:
        client.wait_dag(dag_id, timeout=timeout)
        if client.dag_runs(dag_id, limit=1):
            continue
        client.set_paused(dag_id, False)
        print(f"activate: {dag_id} unpaused", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("dags")
    sub.add_parser("import-errors")
    t = sub.add_parser("trigger")
    t.add_argument("dag_id")
    t.add_argument("--date", help="logical date YYYY-MM-DD (default: today, UTC)")
    t.add_argument("--conf", default="{}", help="run conf as a JSON object")
    t.add_argument("--wait", type=float, default=0, help="seconds to wait for the run's end")
    w = sub.add_parser("wait-dag")
    w.add_argument("dag_id")
    w.add_argument("--timeout", type=float, default=120)
    f = sub.add_parser("first-run")
    f.add_argument("dag_id")
    f.add_argument("--wait", type=float, default=0, help="seconds to wait for the run's end")
    a = sub.add_parser("activate")
    a.add_argument("dag_ids", nargs="+")
    args = parser.parse_args(argv)

    try:
        client = AirflowClient.from_env()
        if args.cmd == "dags":
            for dag in client.dags():
                print(f"{dag['dag_id']}\t{'paused' if dag['is_paused'] else 'active'}")
            return 0
        if args.cmd == "import-errors":
            errors = client.import_errors()
            for err in errors:
                print(f"{err['filename']}: {err['stack_trace'].strip().splitlines()[-1]}")
            return 1 if errors else 0
        if args.cmd == "trigger":
            try:
                conf = json.loads(args.conf)
            except ValueError as exc:
                raise BadTrigger(f"--conf is not JSON: {exc}") from None
            return trigger_and_maybe_wait(client, args.dag_id, args.date, conf, args.wait)
        if args.cmd == "wait-dag":
            print(client.wait_dag(args.dag_id, args.timeout)["dag_id"])
            return 0
        if args.cmd == "first-run":
            return first_run(client, args.dag_id, args.wait)
        if args.cmd == "activate":
            return activate(client, args.dag_ids)
    except BadTrigger as exc:
        print(f"airflow_api: {exc}", file=sys.stderr)
        return 2
    except AirflowError as exc:
        print(f"airflow_api: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
