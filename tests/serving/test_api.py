"""Every endpoint and every bad-input case of the prediction server, in process."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.app import ServingState, create_app
from serving.model import load_model
from serving.settings import Settings
from tests.serving.conftest import FEATURES, frame, load_reference, record

pytestmark = pytest.mark.unit

SETTINGS = Settings(max_batch_size=50, max_body_bytes=20_000)


def make_client(model_dir, settings: Settings = SETTINGS, **kw) -> TestClient:
    model = load_model(str(model_dir), name="churn", version="", **kw)
    return TestClient(create_app(settings, ServingState(model=model)))


@pytest.fixture(scope="module")
def client(model_dir) -> TestClient:
    return make_client(model_dir)


def post(client: TestClient, path: str, body, **kw) -> httpx.Response:
    return client.post(path, json=body, **kw)


def assert_client_error(resp: httpx.Response, status: int, *needles: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert isinstance(body["detail"], str) and "\n" not in body["detail"]
    for needle in needles:
        assert needle in body["detail"], body["detail"]
    return body


# -- endpoints -----------------------------------------------------------------------------
def test_health(client):
    assert client.get("/health").json() == {"status": "ok"}


def test_ready_with_model(client):
    resp = client.get("/ready")
    assert resp.status_code == 200
    assert resp.json() == {"ready": True, "model_name": "churn", "model_version": "7"}


def test_metadata_has_lineage_and_schema(client):
    meta = client.get("/metadata").json()
    assert meta["model_name"] == "churn" and meta["model_version"] == "7"
    assert meta["data_version"] == "d41d8cd9" and meta["git_commit"] == "0123abcd"
    assert meta["model_uuid"]
    assert [f["name"] for f in meta["features"]] == FEATURES
    assert {f["name"]: f["type"] for f in meta["features"]}["support_calls"] == "long"
    assert meta["classes"] == ["churn", "stay"]
    assert meta["predictor"] == "compiled-linear"


def test_openapi_shows_the_signature(client):
    doc = client.get("/openapi.json").json()
    rec = doc["components"]["schemas"]["Record"]
    assert rec["required"] == FEATURES and rec["additionalProperties"] is False
    types = {k: [t["type"] for t in v["anyOf"]] for k, v in rec["properties"].items()}
    assert types["tenure months"] == ["number", "null"]
    assert types["support_calls"] == ["integer", "null"]
    assert types["contract"] == ["string", "null"]
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["anyOf"][1]["maxItems"] == SETTINGS.max_batch_size
    assert client.get("/docs").status_code == 200


def test_predict_single_equals_in_process_model(client, reference):
    rec = record()
    resp = post(client, "/predict", rec)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["model_name"], body["model_version"]) == ("churn", "7")
    expected = reference.predict_proba(frame([rec]))[0]
    (pred,) = body["predictions"]
    assert pred["label"] == reference.predict(frame([rec]))[0]
    got = [pred["probabilities"][c] for c in ("churn", "stay")]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_predict_batch_with_missing_and_unseen_values(client, reference):
    recs = [
        record(),
        record(monthly_charges=None),
        record(contract=None, region="atlantis"),
        record(**{"tenure months": 70.0, "support_calls": 0, "contract": "two_year"}),
    ]
    resp = post(client, "/predict", recs)
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    df = frame([{k: (np.nan if v is None else v) for k, v in r.items()} for r in recs])
    expected = reference.predict_proba(df)
    got = np.array([[p["probabilities"][c] for c in ("churn", "stay")] for p in preds])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    assert [p["label"] for p in preds] == list(reference.predict(df))


def test_sklearn_path_and_compiled_path_agree(model_dir):
    recs = [record(), record(region="east", support_calls=9), record(monthly_charges=None)]
    fast = post(make_client(model_dir), "/predict", recs).json()["predictions"]
    slow_client = make_client(model_dir, fast_path=False)
    assert slow_client.get("/metadata").json()["predictor"] == "sklearn"
    slow = post(slow_client, "/predict", recs).json()["predictions"]
    for a, b in zip(fast, slow, strict=True):
        assert a["label"] == b["label"]
        for c in a["probabilities"]:
            assert abs(a["probabilities"][c] - b["probabilities"][c]) < 1e-9


def test_tree_model_falls_back_to_sklearn(forest_dir):
    client = make_client(forest_dir)
    meta = client.get("/metadata").json()
    assert meta["predictor"] == "sklearn" and "RandomForestClassifier" in meta["predictor_note"]
    assert meta["classes"] == ["churn", "maybe", "stay"]
    recs = [record(), record(region="north")]
    preds = post(client, "/predict", recs).json()["predictions"]
    expected = load_reference(forest_dir).predict_proba(frame(recs))
    got = np.array([[p["probabilities"][c] for c in meta["classes"]] for p in preds])
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_metrics(client):
    post(client, "/predict", [record(), record()])
    post(client, "/predict", {"nope": 1})
    text = client.get("/metrics").text
    assert 'conveyor_http_requests_total{endpoint="/predict",method="POST",status="200"}' in text
    assert 'conveyor_http_requests_total{endpoint="/predict",method="POST",status="422"}' in text
    assert 'conveyor_http_request_duration_seconds_bucket{endpoint="/predict"' in text
    assert 'conveyor_predictions_total{model_version="7",predicted_class="' in text
    assert 'conveyor_model_info{name="churn",predictor="compiled-linear"' in text
    client.get("/no/such/path")
    assert 'endpoint="other"' in client.get("/metrics").text


# -- MLflow's /invocations formats ---------------------------------------------------------
def test_invocations_formats(client, reference):
    recs = [record(), record(contract="annual", region="west")]
    expected = list(reference.predict(frame(recs)))
    split = {"columns": FEATURES, "data": [[r[c] for c in FEATURES] for r in recs]}
    columns = {c: [r[c] for r in recs] for c in FEATURES}
    for body in (
        {"dataframe_split": split},
        {"dataframe_records": recs},
        {"inputs": recs},
        {"inputs": columns},
    ):
        resp = post(client, "/invocations", body)
        assert resp.status_code == 200, (body, resp.text)
        assert resp.json() == {"predictions": expected}


def test_invocations_with_mlflows_own_serving_example(client, model_dir):
    # MLflow writes the example's missing values as NaN: on /invocations NaN means missing
    raw = (model_dir / "serving_input_example.json").read_text()
    assert "NaN" in raw
    resp = client.post("/invocations", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["predictions"]) == 3


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"dataframe_split": {"columns": FEATURES, "data": [[1, 2]]}}, "record 0"),
        ({"dataframe_records": [record(), {**record(), "extra": 1}]}, "record 1, field 'extra'"),
        ({"inputs": [record()], "dataframe_records": [record()]}, "exactly one of"),
        ({"something": []}, "exactly one of"),
        ([record()], "expected a JSON object"),
        ({"inputs": {"contract": ["a"], "region": []}}, "different lengths"),
    ],
)
def test_invocations_bad_input(client, body, needle):
    assert_client_error(post(client, "/invocations", body), 422, needle)


def test_invocations_nan_is_missing_but_infinity_is_an_error(client, reference):
    cols = json.dumps(FEATURES)
    row = '[NaN, 1.0, 1, "monthly", "north"]'
    raw = '{"dataframe_split": {"columns": ' + cols + ', "data": [' + row + "]}}"
    resp = client.post("/invocations", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text
    rec = record(**{"tenure months": np.nan, "monthly_charges": 1.0, "support_calls": 1})
    assert resp.json()["predictions"] == list(reference.predict(frame([rec])))
    raw = raw.replace("NaN", "Infinity")
    resp = client.post("/invocations", content=raw, headers={"content-type": "application/json"})
    assert_client_error(resp, 422, "record 0, field 'tenure months'", "finite")
    assert "Infinity" not in resp.text


# -- bad input: 4xx with the record and the field, never a 500 ----------------------------
@pytest.mark.parametrize(
    "body, needle",
    [
        ({k: v for k, v in record().items() if k != "region"}, "record 0, field 'region': Field"),
        (record(support_calls="three"), "field 'support_calls': Input should be a valid int"),
        (record(support_calls=2.5), "field 'support_calls'"),
        (record(contract=5), "field 'contract': Input should be a valid string"),
        (record(monthly_charges="80"), "field 'monthly_charges'"),
        ({**record(), "colour": "red"}, "field 'colour': Extra inputs are not permitted"),
        ([record(), record(support_calls=2**70)], "record 1, field 'support_calls'"),
        ([record(), "not a record"], "record 1: Input should be an object"),
        ([], "empty batch"),
    ],
)
def test_predict_bad_records(client, body, needle):
    assert_client_error(post(client, "/predict", body), 422, needle)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_predict_rejects_non_finite_without_echoing_it(client, token):
    good = json.dumps(record())
    bad = json.dumps(record()).replace('"monthly_charges": 80.0', f'"monthly_charges": {token}')
    raw = f"[{good}, {bad}]"
    resp = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    body = assert_client_error(resp, 422, "record 1, field 'monthly_charges'", "finite number")
    assert "NaN" not in resp.text and "Infinity" not in resp.text and "input" not in body


def test_batch_over_the_maximum_is_413(client):
    resp = post(client, "/predict", [record()] * (SETTINGS.max_batch_size + 1))
    assert_client_error(resp, 413, "over the maximum of 50")


def test_body_over_the_limit_is_413(client):
    big = json.dumps([record(contract="x" * 1000)] * 25)
    resp = client.post("/predict", content=big, headers={"content-type": "application/json"})
    assert_client_error(resp, 413, "over the limit")

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(30):
            yield b" " * 1000

    resp = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert_client_error(resp, 413, "over the limit")


@pytest.mark.parametrize(
    "content, ctype, status, needle",
    [
        (b"tenure=3", "text/plain", 415, "is not application/json"),
        (b"a=1", "application/x-www-form-urlencoded", 415, "is not application/json"),
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b"hello", "application/json", 400, "JSON"),
        (b"", "application/json", 400, "empty body"),
        (b"\xff\xfe", None, 400, "JSON"),
    ],
)
def test_not_json(client, content, ctype, status, needle):
    headers = {"content-type": ctype} if ctype else {}
    for path in ("/predict", "/invocations"):
        assert_client_error(client.post(path, content=content, headers=headers), status, needle)


def test_prediction_endpoints_only_take_post(client):
    for path in ("/predict", "/invocations"):
        resp = client.get(path)
        assert resp.status_code == 405 and resp.headers["allow"] == "POST"
    doc = client.get("/openapi.json").json()
    assert set(doc["paths"]["/predict"]) == {"post"}
    assert doc["paths"]["/predict"]["post"]["responses"]["413"]["description"]


def test_no_model_is_503_and_not_ready():
    app = create_app(SETTINGS, ServingState(error="no MLflow model in /app/model"))
    client = TestClient(app)
    resp = client.get("/ready")
    assert resp.status_code == 503
    assert resp.json() == {"ready": False, "reason": "no MLflow model in /app/model"}
    assert_client_error(post(client, "/predict", record()), 503, "no MLflow model")
    assert_client_error(post(client, "/invocations", {"inputs": []}), 503, "no model loaded")
    assert client.get("/metadata").status_code == 503
    assert client.get("/health").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_draining_server_reports_not_ready_but_still_answers(model_dir):
    state = ServingState(model=load_model(str(model_dir), name="churn"))
    client = TestClient(create_app(SETTINGS, state))
    state.draining = True
    assert client.get("/ready").json() == {"ready": False, "reason": "shutting down"}
    assert post(client, "/predict", record()).status_code == 200


def test_bad_requests_do_not_disturb_the_requests_around_them(model_dir, reference):
    app = make_client(model_dir).app
    good = [record(region=r, support_calls=i) for i, r in enumerate(["north", "east"] * 20)]
    expected = reference.predict_proba(frame(good))[:, 0]
    bad = [b"[NaN]", b'{"x": 1}', b"not json", json.dumps([record(contract=1)]).encode()]

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            hdr = {"content-type": "application/json"}
            tasks = []
            for i, rec in enumerate(good):
                tasks.append(ac.post("/predict", json=rec))
                tasks.append(ac.post("/predict", content=bad[i % len(bad)], headers=hdr))
            return await asyncio.gather(*tasks)

    responses = asyncio.run(run())
    goods, bads = responses[0::2], responses[1::2]
    assert all(400 <= r.status_code < 500 for r in bads)
    got = [r.json()["predictions"][0]["probabilities"]["churn"] for r in goods]
    np.testing.assert_allclose(got, expected, atol=1e-9)
