"""Schema-based fuzzing of the whole API (schemathesis over /openapi.json, positive and negative
cases): no request it generates makes the server answer 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from serving.app import ServingState, create_app
from serving.model import load_model
from serving.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api_schema(model_dir):
    model = load_model(str(model_dir), name="churn")
    app = create_app(Settings(max_batch_size=20, max_body_bytes=64_000), ServingState(model=model))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(api_schema, mode):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/invocations", "/ready", "/metadata"}
    for op in operations:
        if mode is GenerationMode.NEGATIVE and op.method.upper() != "POST":
            continue  # nothing to break in a GET without parameters

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=60,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            case.call_and_validate(checks=[not_a_server_error])

        check()
