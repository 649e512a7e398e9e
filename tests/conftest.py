"""Fixtures shared by every test folder: the environment kept per test, the engine, base and
project images resolved once per session, the suite's own Compose stack, and the order in which
the Compose tests run."""

import os

import pytest

from tests.helpers import measured


@pytest.fixture(autouse=True, scope="module")
def _environ_per_module():
    """The same for a module's fixtures (a module-scoped store that trains sets
    MLFLOW_EXPERIMENT_ID before any test's own snapshot is taken)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _environ_per_test():
    """Keep each test's changes to os.environ to itself: libraries under test write it
    (mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID), and a later test's subprocess
    would inherit a value that points into another test's store."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


# ------------------------------------------------------------------ engine and images, once
@pytest.fixture(scope="session")
def engine() -> str:
    """A Docker engine that answers (scripts/ensure-docker.sh installs/starts one if needed)."""
    from tests.docker.toolchain import DOCKER, run

    run("bash", "scripts/ensure-docker.sh", timeout=600)
    return DOCKER


@pytest.fixture(scope="session")
def base_images(engine) -> dict[str, str]:
    """Resolved base images (.build/base-images.env), stand-ins built where none can be pulled."""
    from tests.docker.toolchain import ROOT, read_env, run

    run("bash", "scripts/base-images.sh", timeout=600)
    return read_env(ROOT / ".build" / "base-images.env")


@pytest.fixture(scope="session")
def project_images(base_images) -> dict[str, str]:
    """Every project image as `make images` builds it (.build/images.env). `make test` builds
    them before pytest starts, so this only checks their content tags; it never prunes (the
    suite's own stack and containers may use any of them while it runs). Against a running
    test stack (`make test-e2e`) the images are those the stack was started with."""
    from tests.docker.toolchain import ROOT, read_env, run

    if os.environ.get("CONVEYOR_TEST_STACK_REUSE") != "1":  # make test-e2e: as last built
        run("bash", "scripts/build-images.sh", timeout=600, env={**os.environ, "PRUNE": "0"})
    return read_env(ROOT / ".build" / "images.env")


@pytest.fixture(scope="session")
def train_image(project_images) -> str:
    """The training image as `make images` builds it."""
    return project_images["TRAIN_IMAGE"]


# ------------------------------------------------------------------ the suite's own stack
_AFTER_THE_CHAIN: list = []  # what the stack chain's session fixtures leave running


def after_the_chain(release):
    """`release` runs once, after the last test of the stack chain (STACK_ORDER) on this
    process, or at the session's end, whichever comes first; returns the call for the end.
    Kept to the session's end, the Compose stack and the Swarm idled beside the rest of the
    suite: about a core of the two, for most of `make test`."""
    done = []

    def once():
        if not done:
            done.append(True)
            release()

    _AFTER_THE_CHAIN.append(once)
    return once


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield  # the item's own fixtures first (the chain's last module's among them)
    if stack_rank(str(item.path)) and (nextitem is None or not stack_rank(str(nextitem.path))):
        while _AFTER_THE_CHAIN:
            _AFTER_THE_CHAIN.pop()()  # the Swarm, then the stack it is wired to
    return result


@pytest.fixture(scope="session")
def test_stack(project_images):
    """The suite's own Compose stack (tests/helpers/stack.py): from nothing, on the current
    images, removed with its volumes at the end. The user's stack is never touched.

    With CONVEYOR_TEST_STACK_REUSE=1 (`make test-e2e`), a test stack that is already up is
    used as it is and left running: one module can be run again and again against it."""
    from tests.helpers.stack import TestStack

    stack = TestStack()
    if os.environ.get("CONVEYOR_TEST_STACK_REUSE") == "1" and stack.is_up():
        stack.owned = False
        yield stack
        return
    up = stack.start_from_nothing()
    assert "every service is healthy" in up.stderr, up.stderr[-3000:]
    stack.owned = os.environ.get("CONVEYOR_TEST_STACK_REUSE") != "1"
    release = after_the_chain(stack.remove if stack.owned else lambda: None)
    yield stack
    release()


class StartingSwarm:
    """A Swarm whose start runs in a thread: the session's stack tests go on meanwhile."""

    def __init__(self, swarm):
        import threading

        self.swarm, self.wiring, self.error = swarm, None, None
        self.thread = threading.Thread(target=self._up, name="local-swarm-up", daemon=True)
        self.thread.start()

    def _up(self) -> None:
        try:
            self.wiring = self.swarm.up(timeout=600)
        except BaseException as exc:  # noqa: BLE001 -- raised again by `ready` in the test
            self.error = exc

    def ready(self):
        self.thread.join(timeout=660)
        if self.error is not None:
            raise self.error
        assert self.wiring is not None, "the Swarm did not start within 660 s"
        self.swarm.wiring = self.wiring
        return self.swarm


@pytest.fixture(scope="session")
def local_swarm_starting(test_stack):
    """One three-node Swarm for the session (scripts/local_swarm.py), its manager's proxy on the
    test stack's serving network, where the DAG's deploy task runs; its start begins here, in
    the background (tests/e2e/conftest.py asks for it as soon as the DAG's tests begin)."""
    import uuid

    import docker

    from scripts.local_swarm import LocalSwarm
    from tests.release.fakes import build_fake

    client = docker.from_env()
    run = uuid.uuid4().hex[:8]
    first = build_fake(client, f"conveyor-test/fake-serving:v1-{run}", "1", ready=True)
    swarm = LocalSwarm(
        "conveyor-test",
        first,
        run,
        SWARM_UPDATE_MONITOR="3s",
        SERVING_REPLICAS="3",
        SERVING_CPUS="1",
        SERVING_MEMORY_MB="1024",
        SWARM_CLIENT_NETWORK=test_stack.env["CONVEYOR_SERVING_NETWORK"],
    )
    starting = StartingSwarm(swarm)

    def remove() -> None:
        starting.thread.join(timeout=660)
        swarm.down()
        client.images.remove(first, force=True)
        client.close()

    release = after_the_chain(remove)
    try:
        yield starting
    finally:
        release()


@pytest.fixture(scope="session")
def local_swarm(local_swarm_starting):
    """The session's Swarm, started. The Swarm target's own tests
    (tests/release/targets/test_swarm.py) and the DAG on the Swarm (tests/e2e/test_swarm_e2e.py)
    share it; the node-kill test runs last of all."""
    return local_swarm_starting.ready()


# ------------------------------------------------------------------ order
# The Compose tests run on one stack, in this order: the fresh stack's own checks (no model
# yet), the bad triggers, the DAG's runs (the first of which deploys the model the later modules
# serve), then what uses the session's Swarm: the Swarm target's tests with stand-in images,
# then the DAG deploying to it (which ends with a node killed). A module run on its own gets
# what it needs from its fixtures instead.
STACK_ORDER = (
    "/tests/stack/",
    "/tests/e2e/test_trigger.py",
    "/tests/e2e/test_retrain_e2e.py",
    "/tests/e2e/test_faults.py",
    "/tests/e2e/test_monitoring_e2e.py",
    "/tests/release/targets/test_swarm.py",
    "/tests/e2e/test_swarm_e2e.py",
)


def stack_rank(path: str) -> int:
    """0 for a test that needs no Compose stack, else 1 + its place in STACK_ORDER."""
    ranks = [i + 1 for i, part in enumerate(STACK_ORDER) if part in path]
    if not ranks and "/tests/e2e/" in path:  # not listed: after the DAG's runs, before the Swarm
        return STACK_ORDER.index("/tests/e2e/test_monitoring_e2e.py") + 1
    return max(ranks, default=0)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """The order above, first of all, and the groups pytest-xdist keeps together on one worker
    (`make test` runs two, --dist loadgroup --no-loadscope-reorder): the whole stack chain in
    one, every other module in its own (its module-scoped fixtures are built once). The chain,
    first in the queue, starts at once on one worker and mostly waits on its stack; the other
    worker runs the rest of the suite meanwhile."""
    items.sort(key=lambda item: stack_rank(str(item.path)) or len(STACK_ORDER) + 1)
    for item in items:
        group = "compose-stack" if stack_rank(str(item.path)) else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_terminal_summary(terminalreporter):
    """What the tests measured on the way (times to recover, to alert...): printed, never
    asserted (speed is for benchmarks/)."""
    measured.summary(terminalreporter)
