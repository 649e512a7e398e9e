"""The parallel run keeps each module on one worker (`--dist loadgroup`, the groups set in
tests/conftest.py): a module-scoped fixture is built once, and the tests that build on the ones
before them (a second `dvc repro` that finds the first one's lock, a champion registered by an
earlier test) run in the process that holds that state.

pytest-xdist passes the groups through a side channel that some pytest releases ignore, and then
distributes every test on its own without a word (pytest-dev/pytest-xdist#1386, pytest 9.2 with
xdist 3.8). This module fails then, naming the cause, instead of the tests that depend on it."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.unit

RAN: list[int] = []  # in this process


@pytest.mark.parametrize("index", range(8))
def test_a_module_test(index):
    RAN.append(index)


def test_the_modules_tests_before_this_one_ran_in_this_process(request):
    selected = [
        item.callspec.params["index"]
        for item in request.session.items
        if item.module is request.module and item.originalname == "test_a_module_test"
    ]
    assert RAN == selected, (
        f"worker {os.environ.get('PYTEST_XDIST_WORKER', '(none)')} ran {RAN} of this module's "
        f"tests {selected}: the module was split across workers, so --dist loadgroup is not "
        "grouping (see this module's docstring)"
    )
