"""The HTTP API and the service without Ray (FastAPI TestClient), on a real registered scikit-learn model."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.api import build_app
from serving.batching import approx_tokens
from serving.model_source import ChampionSource
from serving.prediction_log import FEEDBACK, PREDICTIONS, read_log, text_hash
from serving.service import ClassifierService


@pytest.fixture
def client(tiny_registry, tmp_path, monkeypatch, serve_cfg):
    monkeypatch.delenv("TICKETOPS_API_KEY", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)  # restored after the test
    cfg = serve_cfg(tmp_path, max_texts_per_request=5, max_text_chars=200)
    service = ClassifierService(cfg, ChampionSource(tiny_registry.mlflow))
    with TestClient(build_app(service)) as c:
        for _ in range(100):
            if c.get("/readyz").status_code == 200:
                break
            import time

            time.sleep(0.1)
        c.service = service  # type: ignore[attr-defined]
        c.log_dir = cfg.log_dir  # type: ignore[attr-defined]
        yield c


def test_predict_matches_the_in_memory_model(client, tiny_registry) -> None:
    r = client.post("/predict", json={"texts": tiny_registry.texts})
    assert r.status_code == 200, r.text
    body = r.json()
    v1 = tiny_registry.versions[0]
    expected = tiny_registry.models[v1].predict_proba(tiny_registry.texts)
    classes = tiny_registry.models[v1].classes
    assert body["model_version"] == v1 and len(body["request_id"]) == 32
    assert [p["label"] for p in body["predictions"]] == [classes[i] for i in expected.argmax(1)]
    got = np.array([[p["probabilities"][c] for c in classes] for p in body["predictions"]])
    assert np.allclose(got, expected, atol=1e-5)


def test_top_k(client, tiny_registry) -> None:
    body = client.post("/predict", json={"texts": ["refund my bill"], "top_k": 1}).json()
    assert len(body["predictions"][0]["probabilities"]) == 1


@pytest.mark.parametrize(
    "payload, needle",
    [
        ({"texts": []}, "texts: List should have at least 1 item"),
        ({"texts": ["ok", "   "]}, "empty or only whitespace"),
        ({"texts": ["x" * 201]}, "at most 200 characters"),
        ({"texts": ["a"] * 6}, "at most 5 items"),
        ({"texts": "not a list"}, "texts: Input should be a valid list"),
        ({"texts": [1, 2]}, "texts.0: Input should be a valid string"),
        ({"texts": ["a"], "top_k": 0}, "top_k: Input should be greater than or equal to 1"),
        ({"text": ["a"]}, "texts: Field required"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_inputs_get_readable_422(client, payload, needle) -> None:
    r = client.post("/predict", json=payload)
    assert r.status_code == 422 and needle in r.json()["detail"], r.text


def test_body_that_is_not_json(client) -> None:
    r = client.post("/predict", content=b"{texts: nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"], r.text
    r = client.post("/predict")
    assert r.status_code == 422 and "body" in r.json()["detail"], r.text
    assert client.get("/healthz").status_code == 200


def test_feedback(client) -> None:
    rid = client.post("/predict", json={"texts": ["charged twice", "cannot log in"]}).json()["request_id"]
    assert client.post("/feedback", json={"request_id": rid, "item": 1, "label": "account_access"}).json() == {
        "status": "recorded",
        "matched": True,
    }
    r = client.post("/feedback", json={"request_id": rid, "item": 5, "label": "billing"})
    assert r.status_code == 422 and "out of range" in r.json()["detail"]
    r = client.post("/feedback", json={"request_id": rid, "item": 0, "label": "astrology"})
    assert r.status_code == 422 and "not one of the model's classes" in r.json()["detail"]
    r = client.post("/feedback", json={"request_id": "0" * 32, "item": 0, "label": "billing"})
    assert r.status_code == 404 and "not a recent prediction" in r.json()["detail"]
    r = client.post("/feedback", json={"request_id": "nope", "item": 0, "label": "billing"})
    assert r.status_code == 422 and "request_id" in r.json()["detail"]


def test_metrics_and_log_rows(client, tiny_registry) -> None:
    texts = ["charged twice, mail me at jo@example.com", "cannot log in"]
    body = client.post("/predict", json={"texts": texts}).json()
    client.post("/feedback", json={"request_id": body["request_id"], "item": 0, "label": "billing"})
    m = client.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    for name in [
        "ticketops_requests_total",
        "ticketops_request_errors_total",
        "ticketops_request_latency_seconds_bucket",
        "ticketops_batch_size_bucket",
        "ticketops_queue_depth",
        "ticketops_model_version",
    ]:
        assert name in m.text
    assert f'ticketops_model_info{{model="tiny-router",version="{tiny_registry.versions[0]}"}} 1.0' in m.text
    n = [approx_tokens(t) for t in texts]  # a scikit-learn model has no tokenizer: the budget's estimate
    assert n == [12, 5]  # 5 < half of 12: min_row_fill runs them in two steps of one text, nothing padded
    assert f'ticketops_batch_tokens_total{{kind="real"}} {float(sum(n))}' in m.text
    assert f'ticketops_batch_tokens_total{{kind="padded"}} {float(sum(n))}' in m.text
    client.__exit__(None, None, None)  # graceful shutdown flushes the log
    preds = read_log(client.log_dir, PREDICTIONS)
    mine = preds[preds.request_id == body["request_id"]].sort_values("item")
    assert list(mine["text_sha256"]) == [text_hash(t) for t in texts]
    assert "<EMAIL>" in mine["text"].iloc[0] and "jo@example.com" not in mine["text"].iloc[0]
    assert list(mine["label"]) == [p["label"] for p in body["predictions"]]
    assert len(read_log(client.log_dir, FEEDBACK)) == 1


def test_api_key(tiny_registry, tmp_path, monkeypatch, serve_cfg) -> None:
    monkeypatch.setenv("TICKETOPS_API_KEY", "s3cret")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)
    service = ClassifierService(serve_cfg(tmp_path), ChampionSource(tiny_registry.mlflow))
    with TestClient(build_app(service)) as c:
        r = c.post("/predict", json={"texts": ["a"]})
        assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
        assert c.post("/predict", json={"texts": ["a"]}, headers={"X-API-Key": "bad"}).status_code == 401
        assert c.get("/healthz").status_code == 200


def test_not_ready_without_a_champion(tiny_registry, tmp_path, serve_cfg, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)
    service = ClassifierService(
        serve_cfg(tmp_path, model_alias="nobody"), ChampionSource(tiny_registry.mlflow, "nobody")
    )
    with TestClient(build_app(service)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        r = c.post("/predict", json={"texts": ["a"]})
        assert r.status_code == 503 and "not ready" in r.json()["detail"]


class _Slow:
    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay, self.name, self.version = inner, delay, inner.name, inner.version

    @property
    def classes(self):
        return self.inner.classes

    def predict_proba(self, texts):
        import time

        time.sleep(self.delay)
        return self.inner.predict_proba(texts)


def test_overload_gets_429_with_retry_after(tiny_registry, tmp_path, serve_cfg, monkeypatch) -> None:
    import asyncio

    import httpx

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)
    service = ClassifierService(
        serve_cfg(tmp_path, max_queue=4, watch_interval_s=0), ChampionSource(tiny_registry.mlflow)
    )
    app = build_app(service, manage_lifecycle=False)

    async def go():
        await service.start()
        while service.model is None:
            await asyncio.sleep(0.05)
        service.model = _Slow(service.model, 0.3)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            rs = await asyncio.gather(*(c.post("/predict", json={"texts": ["a", "b"]}) for _ in range(8)))
            m = (await c.get("/metrics")).text
        await service.stop()
        return rs, m

    rs, m = asyncio.run(go())
    codes = sorted(r.status_code for r in rs)
    assert 200 in codes and 429 in codes and set(codes) <= {200, 429}, codes
    busy = next(r for r in rs if r.status_code == 429)
    assert busy.headers["retry-after"] == "1" and "overloaded" in busy.json()["detail"]
    assert 'ticketops_request_errors_total{endpoint="/predict",reason="overloaded"}' in m


class _Broken(_Slow):
    def predict_proba(self, texts):
        raise RuntimeError("Already borrowed")


def test_a_model_failure_is_a_logged_500_and_the_server_keeps_serving(client, caplog) -> None:
    good = client.service.model
    client.service.model = _Broken(good, 0)
    with caplog.at_level("ERROR", logger="serving.api"):
        r = client.post("/predict", json={"texts": ["refund my bill"]})
    assert r.status_code == 500 and r.json()["detail"] == "prediction failed: RuntimeError: Already borrowed"
    (record,) = [x for x in caplog.records if x.name == "serving.api"]
    assert "prediction failed for 1 text" in record.getMessage() and record.exc_info[0] is RuntimeError
    client.service.model = good
    assert client.post("/predict", json={"texts": ["refund my bill"]}).status_code == 200
    assert 'ticketops_request_errors_total{endpoint="/predict",reason="model"} 1.0' in client.get("/metrics").text
