"""Every endpoint and every bad-input case of the prediction server, in process (ASGI)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.app import ServingState, create_app
from serving.settings import Settings
from tests.helpers.asgi import Client
from tests.serving.conftest import FEATURES, frame, load_reference, record

pytestmark = pytest.mark.unit

SETTINGS = Settings(max_batch_size=50, max_body_bytes=20_000, max_errors=3)


@pytest.fixture(scope="module")
def make_client(load):
    def make(model_dir, settings: Settings = SETTINGS, **kw) -> Client:
        return Client(create_app(settings, ServingState(model=load(model_dir, **kw))))

    return make


@pytest.fixture(scope="module")
def client(make_client, model_dir) -> Client:
    return make_client(model_dir)


def assert_error(resp: httpx.Response, status: int, *needles: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert isinstance(body["detail"], str) and "\n" not in body["detail"]
    for needle in needles:
        assert needle in body["detail"], body["detail"]
    return body


# -- ops endpoints ----------------------------------------------------------------------------
def test_ops_endpoints(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {
        "ready": True,
        "model_name": "churn",
        "model_version": "7",
    }
    assert client.get("/ping").status_code == 200
    assert client.get("/version").text.startswith("3.")
    for path in ("/health", "/ping", "/ready", "/metadata", "/metrics"):
        head = client.request("HEAD", path)
        assert head.status_code == 200 and head.content == b"", path
    resp = client.request("DELETE", "/health")
    assert resp.status_code == 405 and resp.headers["allow"] == "GET, HEAD"
    resp = client.get("/predict")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"
    assert client.get("/nowhere").status_code == 404
    assert client.get("/docs").headers["content-type"].startswith("text/html")


def test_metadata_says_which_path_serves(client, make_client, model_dir):
    meta = client.get("/metadata").json()
    assert meta["model_name"] == "churn" and meta["model_version"] == "7"
    assert meta["data_version"] == "d41d8cd9" and meta["git_commit"] == "0123abcd"
    assert [f["name"] for f in meta["features"]] == FEATURES
    assert meta["task"] == "classification" and meta["classes"] == ["churn", "stay"]
    assert meta["inference_path"] == "onnx" and "matches sklearn" in meta["inference_note"]
    info = [line for line in client.get("/metrics").text.splitlines() if "model_info{" in line]
    assert 'inference_path="onnx"' in info[0] and 'version="7"' in info[0]
    slow = make_client(model_dir, fast_path=False)
    assert slow.get("/metadata").json()["inference_path"] == "sklearn"


def test_openapi_states_the_signature(client):
    doc = client.get("/openapi.json").json()
    rec = doc["components"]["schemas"]["Record"]
    assert rec["additionalProperties"] is False
    assert set(rec["properties"]) == set(FEATURES)
    calls = rec["properties"]["support_calls"]["anyOf"]  # null: the pipeline's imputer fills it
    assert [t["type"] for t in calls] == ["integer", "null"]
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["anyOf"][1]["maxItems"] == SETTINGS.max_batch_size


# -- /predict ---------------------------------------------------------------------------------
def test_predict_matches_sklearn_one_and_many(client, model_dir):
    reference = load_reference(model_dir)
    recs = [record(), record(**{"monthly_charges (usd)": None}), record(contract=None, region="x")]
    batch = client.post("/predict", recs).json()
    assert (batch["model_name"], batch["model_version"]) == ("churn", "7")
    got = np.array(
        [[p["probabilities"][c] for c in ("churn", "stay")] for p in batch["predictions"]]
    )
    np.testing.assert_allclose(got, reference.predict_proba(frame(recs)), atol=1e-9)
    # a record's answer does not depend on its batch (null category alone or beside others)
    for i, rec in enumerate(recs):
        one = client.post("/predict", rec).json()["predictions"][0]
        assert one == batch["predictions"][i]


@pytest.mark.parametrize("family", ["rf", "hgb_regressor"])
def test_multiclass_and_regression_answers(make_client, family_dirs, family):
    resp = make_client(family_dirs[family]).post("/predict", [record(), record(region=None)])
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    if family == "rf":
        assert set(preds[0]["probabilities"]) == {"churn", "maybe", "stay"}
        assert abs(sum(preds[0]["probabilities"].values()) - 1) < 1e-6
    else:
        assert set(preds[0]) == {"value"} and isinstance(preds[0]["value"], float)


@pytest.mark.parametrize(
    "body, status, needles",
    [
        ([], 422, ["empty batch"]),
        ([record()] * 51, 422, ["51 records", "maximum of 50"]),
        ({**record(), "extra": 1}, 422, ["record 0", "field 'extra'", "Extra inputs"]),
        ({k: v for k, v in record().items() if k != "region"}, 422, ["field 'region'", "required"]),
        (record(support_calls="3"), 422, ["field 'support_calls'"]),
        (record(support_calls=2.5), 422, ["field 'support_calls'"]),
        (record(**{"tenure months": 1e300}), 422, ["field 'tenure months'", "less than"]),
        ([record(), 5], 422, ["record 1"]),
        ("text", 400, ["expected a record"]),
    ],
)
def test_predict_client_errors(client, body, status, needles):
    assert_error(client.post("/predict", body), status, *needles)


def test_error_lists_are_capped_and_count_the_rest(client):
    body = assert_error(client.post("/predict", [{}] * 20), 422, "record 0", "more errors")
    assert len(body["errors"]) == SETTINGS.max_errors
    required = [f for f in client.get("/metadata").json()["features"] if f["required"]]
    assert len(required) == 3  # infer_signature: a column with NaN in the sample is optional
    assert body["errors_omitted"] == 20 * len(required) - SETTINGS.max_errors


@pytest.mark.parametrize(
    "raw, ctype, status",
    [
        (b"NaN", "application/json", 400),
        (b"{", "application/json", 400),
        (b"", "application/json", 400),
        (b'{"tenure months": NaN}', "application/json", 422),
        (b"{}", "text/plain", 415),
        (b"x" * 20_001, "application/json", 413),
    ],
)
def test_predict_raw_bodies(client, raw, ctype, status):
    assert (
        client.post("/predict", content=raw, headers={"content-type": ctype}).status_code == status
    )


def test_worst_bodies_under_the_limit_are_refused_before_parsing(make_client, model_dir):
    api = make_client(model_dir, Settings(max_batch_size=50, max_body_bytes=4 * 1024 * 1024))
    for body in (b"[" + b"{}," * 1_000_000 + b"{}]", b"[" + b"[]," * 1_000_000 + b"[]]"):
        resp = api.post("/predict", content=body, headers={"content-type": "application/json"})
        assert resp.status_code == 422 and "too many values" in resp.json()["detail"]
        assert len(resp.content) < 300


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    doc=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=15), inner, max_size=5)
        ),
        max_leaves=20,
    )
)
def test_any_json_value_is_a_prediction_or_a_4xx(client, doc):
    raw = json.dumps(doc).encode()
    for path in ("/predict", "/invocations"):
        resp = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 200 or 400 <= resp.status_code < 500, (path, resp.text)


# -- unknown categories (issue 11) ---------------------------------------------------------------
def test_unknown_categories_are_counted_and_optionally_refused(make_client, model_dir):
    api = make_client(model_dir)
    assert (
        api.post(
            "/predict", [record(region="moon"), record(region="mars", contract="x")]
        ).status_code
        == 200
    )
    metrics = api.get("/metrics").text
    assert 'conveyor_unknown_categories_total{feature="region"} 2.0' in metrics
    assert 'conveyor_unknown_categories_total{feature="contract"} 1.0' in metrics
    strict = make_client(model_dir, Settings(reject_unknown_categories=True))
    body = assert_error(
        strict.post("/predict", [record(), record(region="moon")]),
        422,
        "record 1",
        "field 'region'",
    )
    assert body["errors"][0]["type"] == "unknown_category"


# -- /invocations: MLflow's contract ---------------------------------------------------------------
def test_invocations_formats_and_csv(client):
    rec = record()
    expected = client.post("/invocations", {"dataframe_records": [rec]}).json()
    assert isinstance(expected["predictions"][0], str)
    split = {"dataframe_split": {"columns": list(rec), "data": [list(rec.values())]}}
    for body in (
        split,
        {"inputs": [rec]},
        {"instances": [rec]},
        {"inputs": {k: [v] for k, v in rec.items()}},
    ):
        assert client.post("/invocations", body).json() == expected
    csv = ",".join(rec) + "\n12.5,80,3,monthly,north\n"
    resp = client.post("/invocations", content=csv.encode(), headers={"content-type": "text/csv"})
    assert resp.json() == expected


def test_invocations_errors_are_mlflows(client):
    resp = client.post(
        "/invocations", {"dataframe_records": [record(), {"region": "x"}], "inputs": []}
    )
    assert resp.status_code == 400 and resp.json()["error_code"] == "BAD_REQUEST"
    resp = client.post("/invocations", {"dataframe_records": [{"region": "north"}]})
    assert (
        resp.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        and "missing inputs" in resp.json()["message"]
    )
    resp = client.post("/invocations", content=b"{}", headers={"content-type": "text/plain"})
    assert resp.status_code == 415 and resp.headers["content-type"].startswith("text/plain")


def test_tensor_model_and_predict_proba(make_client, tensor_dir):
    api = make_client(tensor_dir)
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    reference = load_reference(tensor_dir)
    inv = api.post("/invocations", {"inputs": rows}).json()["predictions"]
    np.testing.assert_allclose(inv, reference.predict_proba(np.array(rows)), atol=1e-6)
    assert api.post("/invocations", {"instances": rows}).json()["predictions"] == inv
    pred = api.post("/predict", rows).json()["predictions"]
    assert [p["label"] for p in pred] == reference.predict(np.array(rows)).tolist()
    assert api.post("/predict", rows[0]).json()["predictions"][0] == pred[0]
    assert api.post("/predict", [[1.0, 2.0]]).status_code == 422
    # no imputer in this pipeline: a null cannot be scored, and is refused naming the position
    body = assert_error(api.post("/predict", [rows[0], [1.0, None, 1.0, 1.0]]), 422, "record 1")
    assert body["errors"][0]["field"] == "[1]"


def test_no_model_is_503_and_not_ready():
    api = Client(create_app(SETTINGS, ServingState(error="no MLmodel file")))
    assert (
        api.get("/ready").status_code == 503 and "no MLmodel" in api.get("/ready").json()["reason"]
    )
    assert api.post("/predict", record()).status_code == 503
    resp = api.post("/invocations", {"dataframe_records": [record()]})
    assert resp.status_code == 503 and resp.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert api.get("/health").status_code == 200 and api.get("/ping").status_code == 503


# -- drift input: what the server sees, in the reference profile's bins ----------------------------
def test_served_values_are_counted_in_the_profile_bins(make_client, model_dir, tmp_path):
    """The hook the drift monitor reads: every validated record of /predict and /invocations is
    counted per feature into the bins of the model's reference_profile.json (unknown
    categories as `other`, nulls as `null`); a model without a profile exports no counts."""
    import shutil

    from prometheus_client.parser import text_string_to_metric_families

    from pipelines.config import MonitorParams
    from pipelines.profile import build_profile, save_profile
    from tests.serving.conftest import CATEGORICAL, NUMERIC, synthetic_frame

    assert "conveyor_traffic_records_total" not in make_client(model_dir).get("/metrics").text
    profiled = tmp_path / "model"
    shutil.copytree(model_dir, profiled)
    cfg = MonitorParams(bins=4, max_categories=10, psi_threshold=0.2, min_samples=1, window="1h")
    save_profile(build_profile(synthetic_frame()[0], NUMERIC, CATEGORICAL, cfg), profiled)
    api = make_client(profiled)
    assert api.post("/predict", [record(), record(region="moon", contract=None)]).status_code == 200
    split = {"columns": FEATURES, "data": [list(record().values())]}
    assert api.post("/invocations", {"dataframe_split": split}).status_code == 200

    samples = {
        (s.name, s.labels.get("feature"), s.labels.get("bin")): s.value
        for family in text_string_to_metric_families(api.get("/metrics").text)
        for s in family.samples
        if s.name.startswith("conveyor_")
    }
    assert samples[("conveyor_traffic_records_total", None, None)] == 3
    assert samples[("conveyor_feature_values_total", "region", "c:north")] == 2
    assert samples[("conveyor_feature_values_total", "region", "other")] == 1
    assert samples[("conveyor_feature_values_total", "contract", "null")] == 1
    numeric = [v for (n, f, _), v in samples.items() if f == "support_calls"]
    assert sum(numeric) == 3
