"""The test suite's own Compose stack, beside (never instead of) the user's.

It has its own env file, `.build/<stack>.env` with `<stack>` = $CONVEYOR_TEST_STACK or
`conveyor-test`: every Docker name (Compose project, networks, volumes, containers, baked model
images) starts with `<stack>` instead of `conveyor`, its ports are free ones, its secrets its
own. The user's `.env` is never read, and nothing named after it is touched. Its DAGs have no
clock (`RETRAIN_SCHEDULE`, `LANDING_SCHEDULE`, `MONITOR_SCHEDULE` are `none`): every run is one a
test triggered, or one an asset event of a test's run started.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cached_property
from pathlib import Path

from scripts.airflow_api import AirflowClient, read_env_file

ROOT = Path(__file__).resolve().parents[2]
STACK_SCRIPT = ROOT / "scripts" / "stack.sh"
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")


class TestStack:
    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, name: str | None = None):
        self.name = name or os.environ.get("CONVEYOR_TEST_STACK") or "conveyor-test"
        self.env_file = ROOT / ".build" / f"{self.name}.env"
        self.owned = True  # started by this session, removed at its end

    @cached_property
    def env(self) -> dict[str, str]:
        """The stack's settings (names, ports, secrets), as Compose reads them."""
        return read_env_file(self.env_file)

    def script(
        self, *args: str, timeout: float = 600, check: bool = True, **extra_env: str
    ) -> subprocess.CompletedProcess:
        """`scripts/stack.sh ARGS` for this stack (FIRST_RUN=0: tests trigger their own runs)."""
        env = {
            **os.environ,
            "CONVEYOR_ENV_FILE": str(self.env_file),
            "CONVEYOR_STACK": self.name,
            "FIRST_RUN": "0",
            "UP_TIMEOUT": "420",
            **extra_env,
        }
        proc = subprocess.run(
            ["bash", str(STACK_SCRIPT), *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"stack.sh {' '.join(args)} exited {proc.returncode}:\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
            )
        return proc

    def compose(self, *args: str, timeout: float = 300, check: bool = True):
        return self.script("compose", *args, timeout=timeout, check=check)

    def start_from_nothing(self) -> subprocess.CompletedProcess:
        """Remove whatever an earlier run left of this stack (containers, volumes, env file),
        then bring it up with fresh secrets and free ports."""
        self.script("clean", timeout=300)
        self.env_file.unlink(missing_ok=True)
        self.__dict__.pop("env", None)
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "stack_env.py"), "create", "--out",
             str(self.env_file), "--stack", self.name, "--set", "RETRAIN_SCHEDULE=none",
             "--set", "LANDING_SCHEDULE=none", "--set", "MONITOR_SCHEDULE=none",
             # The suite's DAG files never change under it: parsing them every 30 s took a
             # third of a core beside the tests.
             "--set", "AIRFLOW_DAG_PARSE_INTERVAL=600"],
            check=True, timeout=60,
        )  # fmt: skip
        proc = self.script("up")
        self.__dict__.pop("env", None)
        return proc

    def is_up(self) -> bool:
        """Its env file exists and every service is running and healthy (or a one-shot
        service that exited 0): what `make test-stack` leaves behind."""
        if not self.env_file.is_file():
            return False
        proc = self.compose(
            "ps", "-a", "--format", "{{.Service}}|{{.State}}|{{.Health}}|{{.ExitCode}}",
            timeout=60, check=False,
        )  # fmt: skip
        rows = [line.split("|") for line in proc.stdout.split() if line.count("|") == 3]
        return bool(rows) and all(
            (state == "running" and health in ("healthy", "")) or (state, code) == ("exited", "0")
            for _, state, health, code in rows
        )

    def remove(self) -> None:
        """The stack, its data and the model images its runs built (`make clean` keeps a
        user's model images for rollback; the suite's own are of no use after it)."""
        repository = self.env_file.exists() and self.env.get("CONVEYOR_MODEL_IMAGE_REPOSITORY")
        self.script("clean", timeout=300, check=False)
        if not repository:
            return
        images = subprocess.run(
            [DOCKER, "images", repository, "--format", "{{.Repository}}:{{.Tag}}"],
            capture_output=True, text=True, timeout=60, check=False,
        ).stdout.split()  # fmt: skip
        if images:
            subprocess.run([DOCKER, "rmi", *images], capture_output=True, timeout=300, check=False)

    # ------------------------------------------------------------ what runs in it
    def url(self, port_setting: str) -> str:
        return f"http://127.0.0.1:{self.env[port_setting]}"

    def airflow(self) -> AirflowClient:
        return AirflowClient(
            self.url("AIRFLOW_PORT"),
            self.env["AIRFLOW_ADMIN_USER"],
            self.env["AIRFLOW_ADMIN_PASSWORD"],
        )

    def s3(self, key: str | None = None, secret: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url("S3_PORT"),
            aws_access_key_id=key or self.env["S3_ACCESS_KEY_ID"],
            aws_secret_access_key=secret or self.env["S3_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 2}, connect_timeout=5),
        )

    def mlflow(self):
        # A dead server makes the client retry for minutes by default: keep failures fast.
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "2"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "20"
        # From the host, downloads go through the server's proxy: its presigned S3 URLs name
        # http://s3:8333, which resolves inside the stack's networks only.
        os.environ["MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD"] = "false"
        from mlflow.tracking import MlflowClient

        # The registry named too: the client would otherwise take the process-wide one, which
        # an in-process test of the stages (tracking.configure) may have set to its own store.
        url = self.url("MLFLOW_PORT")
        return MlflowClient(tracking_uri=url, registry_uri=url)

    def container_id(self, service: str) -> str:
        out = self.compose("ps", "-q", service, timeout=60).stdout.split()
        assert out, f"service {service} has no container"
        return out[0]


def main(argv: list[str]) -> int:
    """`python -m tests.helpers.stack up|down`: `make test-stack` / `make test-stack-down`."""
    stack = TestStack()
    if argv == ["up"]:
        if stack.is_up():
            print(f"test stack {stack.name} is already up ({stack.env_file})", file=sys.stderr)
            return 0
        proc = stack.start_from_nothing()
        print(proc.stderr[-1500:], file=sys.stderr)
        return 0
    if argv == ["down"]:
        stack.remove()
        return 0
    print("usage: python -m tests.helpers.stack up|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
