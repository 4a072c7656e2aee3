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

LOCAL = "http://127.0.0.1"  # a Host in serve.allowed_hosts (TestClient's default "testserver" is not)


@pytest.fixture
def client(tiny_registry, tmp_path, monkeypatch, serve_cfg):
    monkeypatch.delenv("TICKETOPS_API_KEY", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)  # restored after the test
    cfg = serve_cfg(tmp_path, max_texts_per_request=5, max_text_chars=200, log_text=True)
    service = ClassifierService(cfg, ChampionSource(tiny_registry.mlflow))
    with TestClient(build_app(service), base_url=LOCAL) as c:
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
    r = client.post("/feedback", json={"request_id": rid, "item": 2, "label": "billing"})  # the request had 2
    assert r.status_code == 422 and "item 2 is out of range: request" in r.json()["detail"], r.text
    r = client.post("/feedback", json={"request_id": rid, "item": 5, "label": "billing"})  # no request has 6
    assert r.status_code == 422 and "item: Input should be less than 5" in r.json()["detail"], r.text
    r = client.post("/feedback", json={"request_id": rid, "item": 0, "label": "astrology"})
    assert r.status_code == 422 and "is not one of the classes of model version" in r.json()["detail"]
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


def _wait_ready(c: TestClient, headers: dict | None = None) -> None:
    import time

    for _ in range(100):
        if c.get("/readyz", headers=headers).status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError(c.get("/readyz", headers=headers).text)


GUARDED = [
    ("post", "/predict", {"texts": ["refund my bill"]}),
    ("post", "/feedback", {"request_id": "0" * 32, "item": 0, "label": "billing"}),
    ("get", "/readyz", None),
    ("get", "/metrics", None),
    ("get", "/docs", None),
    ("get", "/openapi.json", None),
    ("get", "/v1/models", None),
    ("post", "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    ("get", "/no-such-route", None),
]


def _call(c: TestClient, method: str, path: str, body, headers=None):  # noqa: ANN001, ANN202
    return c.post(path, json=body, headers=headers) if method == "post" else c.get(path, headers=headers)


def test_api_key(tiny_registry, tmp_path, monkeypatch, serve_cfg) -> None:
    """Every route but /healthz needs the key; the right one (header or Bearer) opens each, /feedback included."""
    from serving.llm.openai_api import UnavailableBackend, attach

    # the replica serves the key in its config (resolved by the app builder), never its own environment's
    monkeypatch.setenv("TICKETOPS_API_KEY", "from-the-replica-env")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)
    cfg = serve_cfg(tmp_path, api_key="s3cret")
    service = ClassifierService(cfg, ChampionSource(tiny_registry.mlflow))
    app = attach(build_app(service), UnavailableBackend("off in this test"), cfg.api_key, service.metrics)
    good, bearer = {"X-API-Key": "s3cret"}, {"Authorization": "Bearer s3cret"}
    with TestClient(app, base_url=LOCAL) as c:
        _wait_ready(c, good)
        assert c.get("/healthz").status_code == 200  # the one open route
        for method, path, body in GUARDED:
            for headers in (None, {"X-API-Key": "bad"}, {"X-API-Key": "from-the-replica-env"},
                            {"X-API-Key": "sécret".encode()}, {"Authorization": "Bearer bad"}):  # fmt: skip
                r = _call(c, method, path, body, headers)
                assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
            if path.startswith("/v1"):
                assert r.json()["error"]["type"] == "authentication_error"
            else:
                assert "API key" in r.json()["detail"]
        assert "X-API-Key" in c.post("/predict", json={"texts": ["a"]}).json()["detail"]
        # the right key, by header and by Bearer, opens every route
        pred = c.post("/predict", json={"texts": ["refund my bill"]}, headers=good)
        assert pred.status_code == 200, pred.text
        fb = {"request_id": pred.json()["request_id"], "item": 0, "label": "billing"}
        r = c.post("/feedback", json=fb, headers=bearer)
        assert r.status_code == 200 and r.json() == {"status": "recorded", "matched": True}, r.text
        for path in ("/readyz", "/metrics", "/docs", "/openapi.json"):
            assert c.get(path, headers=good).status_code == 200, path
            assert c.get(path, headers=bearer).status_code == 200, path
        assert c.get("/v1/models", headers=good).status_code == 503  # past the key: the LM is off here
        m = c.get("/metrics", headers=good).text
        assert 'ticketops_request_errors_total{endpoint="/metrics",reason="unauthorised"}' in m
        assert 'endpoint="other",reason="unauthorised"' in m and "no-such-route" not in m  # bounded labels


def test_a_non_ascii_key_works_and_a_non_ascii_guess_is_a_401_not_a_500(
    tiny_registry, tmp_path, monkeypatch, serve_cfg
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)
    service = ClassifierService(serve_cfg(tmp_path, api_key="clé-ünïcode"), ChampionSource(tiny_registry.mlflow))
    with TestClient(build_app(service), base_url=LOCAL) as c:
        assert c.get("/metrics", headers={"X-API-Key": "clé-ünïcode".encode()}).status_code == 200
        assert c.get("/metrics", headers={"X-API-Key": "clé-ünïcodE".encode()}).status_code == 401
        assert c.get("/metrics", headers={"X-API-Key": "ключ".encode()}).status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer ключ".encode()}).status_code == 401


def test_open_paths_are_configurable(tiny_registry, tmp_path, monkeypatch, serve_cfg) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)
    cfg = serve_cfg(tmp_path, api_key="s3cret", open_paths=["/healthz", "/metrics"])
    service = ClassifierService(cfg, ChampionSource(tiny_registry.mlflow))
    with TestClient(build_app(service), base_url=LOCAL) as c:
        assert c.get("/metrics").status_code == 200
        assert c.get("/readyz").status_code == 401


def test_a_host_header_outside_allowed_hosts_is_refused(client) -> None:
    assert client.get("/healthz", headers={"host": "evil.example"}).status_code == 400
    assert client.get("/healthz", headers={"host": "localhost:8000"}).status_code == 200


def test_a_body_over_the_cap_is_refused_before_it_is_parsed(tiny_registry, tmp_path, monkeypatch, serve_cfg) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)
    cfg = serve_cfg(tmp_path, max_body_bytes=2048)
    service = ClassifierService(cfg, ChampionSource(tiny_registry.mlflow))
    parsed: list[int] = []
    real = service.predict

    async def spy(texts, top_k=None):  # noqa: ANN001, ANN202
        parsed.append(len(texts))
        return await real(texts, top_k)

    service.predict = spy  # type: ignore[method-assign]
    with TestClient(build_app(service), base_url=LOCAL) as c:
        _wait_ready(c)
        big = b'{"texts": ["' + b"x" * 4000 + b'"]}'  # also invalid for max_text_chars: 413 shows it was not parsed
        r = c.post("/predict", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "at most 2048 bytes" in r.json()["detail"], r.text

        def chunks():  # no Content-Length: counted as it streams in
            yield b'{"texts": ["'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"]}'

        r = c.post("/predict", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        big_feedback = b'{"request_id": "chatcmpl-' + b"a" * 4000 + b'"}'  # the generative route too
        assert c.post("/feedback", content=big_feedback).status_code == 413
        assert parsed == []
        assert c.post("/predict", json={"texts": ["refund my bill"]}).status_code == 200 and parsed == [1]
        m = c.get("/metrics").text
        assert 'ticketops_request_errors_total{endpoint="/predict",reason="body_too_large"} 2.0' in m, [
            x for x in m.splitlines() if "too" in x
        ]


def test_feedback_is_checked_against_the_version_that_answered(client, tiny_registry) -> None:
    v1 = tiny_registry.versions[0]
    rid = client.post("/predict", json={"texts": ["charged twice"]}).json()["request_id"]
    served = client.service.model

    class Other(_Slow):
        classes = ["weather", "sports"]

        def __init__(self, inner, delay: float) -> None:  # noqa: ANN001
            super().__init__(inner, delay)
            self.version = "99"

        def predict_proba(self, texts):  # noqa: ANN001, ANN202
            return np.tile([0.7, 0.3], (len(texts), 1))

    client.service.model = Other(served, 0)  # a new version with other classes is serving now
    ok = client.post("/feedback", json={"request_id": rid, "item": 0, "label": "billing"})
    assert ok.status_code == 200 and ok.json()["matched"], ok.text  # billing: a class of v1, which answered
    r = client.post("/feedback", json={"request_id": rid, "item": 0, "label": "weather"})
    assert r.status_code == 422 and f"model version {v1}" in r.json()["detail"], r.text
    rid2 = client.post("/predict", json={"texts": ["charged twice"]}).json()["request_id"]
    r = client.post("/feedback", json={"request_id": rid2, "item": 0, "label": "weather"})
    assert r.status_code == 200, r.text
    client.service.model = served


def test_unknown_request_feedback_is_bounded(tiny_registry, tmp_path, monkeypatch, serve_cfg) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)
    cfg = serve_cfg(tmp_path, feedback_accept_unknown=True, max_texts_per_request=5)
    service = ClassifierService(cfg, ChampionSource(tiny_registry.mlflow))
    with TestClient(build_app(service), base_url=LOCAL) as c:
        _wait_ready(c)
        body = {"request_id": "a" * 32, "item": 0, "label": "billing"}
        assert c.post("/feedback", json=body).json() == {"status": "recorded", "matched": False}
        r = c.post("/feedback", json={**body, "item": 1099511627776})
        assert r.status_code == 422, r.text
        assert c.post("/feedback", json={**body, "item": 5}).status_code == 422
        assert c.post("/feedback", json={**body, "label": "astrology"}).status_code == 422


def test_feedback_is_rate_limited_per_caller(tiny_registry, tmp_path, monkeypatch, serve_cfg) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)
    cfg = serve_cfg(tmp_path, api_key="k", feedback_rate_per_minute=1, feedback_burst=2)
    service = ClassifierService(cfg, ChampionSource(tiny_registry.mlflow))
    key = {"X-API-Key": "k"}
    with TestClient(build_app(service), base_url=LOCAL) as c:
        _wait_ready(c, key)
        rid = c.post("/predict", json={"texts": ["charged twice"]}, headers=key).json()["request_id"]
        body = {"request_id": rid, "item": 0, "label": "billing"}
        codes = [c.post("/feedback", json=body, headers=key).status_code for _ in range(3)]
        assert codes == [200, 200, 429], codes
        r = c.post("/feedback", json=body, headers=key)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "retry" in r.json()["detail"]
        assert c.post("/predict", json={"texts": ["a"]}, headers=key).status_code == 200  # only feedback is limited


def test_rate_limiter_buckets_are_per_caller_and_refill() -> None:
    from serving.security import RateLimiter

    now = [0.0]
    rl = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    assert [rl.acquire("a"), rl.acquire("a")] == [0.0, 0.0]
    assert rl.acquire("a") == pytest.approx(1.0)  # one a second
    assert rl.acquire("b") == 0.0  # another caller has its own bucket
    now[0] = 1.0
    assert rl.acquire("a") == 0.0
    assert RateLimiter(per_minute=0, burst=1).acquire("x") == 0.0  # 0: off
    ka = RateLimiter.caller({"x-api-key": "k1"}, ("1.2.3.4", 1))
    assert ka == RateLimiter.caller({"authorization": "Bearer k1"}, ("5.6.7.8", 1)) and "k1" not in ka


def test_a_failed_swap_makes_readyz_degraded_without_the_tracking_uri(client, tiny_registry) -> None:
    import time

    source = client.service.source
    resolve, load = source.resolve, source.load
    v1 = tiny_registry.versions[0]

    def broken(version):  # noqa: ANN001, ANN202
        raise OSError(f"cannot read {tiny_registry.uri}/artifacts of version {version}: http://bob:pw@mlflow.corp/x")

    source.resolve, source.load = (lambda: "77"), broken
    try:
        for _ in range(100):
            r = client.get("/readyz")
            if r.status_code != 200:
                break
            time.sleep(0.05)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] == "degraded" and body["model_version"] == v1
        assert "OSError" in body["detail"] and f"still serving version {v1}" in body["detail"]
        assert tiny_registry.uri not in r.text and "pw@" not in r.text
        assert client.post("/predict", json={"texts": ["refund"]}).json()["model_version"] == v1  # still answers
    finally:
        source.resolve, source.load = resolve, load
    for _ in range(100):
        if client.get("/readyz").status_code == 200:
            break
        time.sleep(0.05)
    assert client.get("/readyz").json()["status"] == "ready"


def test_not_ready_detail_has_no_tracking_uri(tiny_registry, tmp_path, serve_cfg, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)
    service = ClassifierService(
        serve_cfg(tmp_path, model_alias="nobody"), ChampionSource(tiny_registry.mlflow, "nobody")
    )
    with TestClient(build_app(service), base_url=LOCAL) as c:
        for _ in range(50):
            detail = c.get("/readyz").json()["detail"]
            if detail:
                break
            import time

            time.sleep(0.05)
        assert "nobody" in detail and tiny_registry.uri not in detail
        assert tiny_registry.uri not in c.post("/predict", json={"texts": ["a"]}).text


def test_an_unwritable_log_makes_readyz_degraded(client) -> None:
    client.service.log.problem = lambda: "the prediction log cannot be written: ENOSPC"
    try:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "degraded" and "ENOSPC" in r.json()["detail"]
    finally:
        del client.service.log.problem
    assert client.get("/readyz").status_code == 200


@pytest.mark.timeout(60)
def test_a_dead_batching_loop_fails_requests_and_readyz(client) -> None:
    runner = client.service.runner

    async def broken():
        raise KeyError("scheduler bug")

    runner._dispatch = broken
    r = client.post("/predict", json={"texts": ["refund my bill"]})
    assert r.status_code == 500 and "batching loop died" in r.json()["detail"], r.text
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "failed" and "KeyError" in r.json()["detail"]


def test_not_ready_without_a_champion(tiny_registry, tmp_path, serve_cfg, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)
    service = ClassifierService(
        serve_cfg(tmp_path, model_alias="nobody"), ChampionSource(tiny_registry.mlflow, "nobody")
    )
    with TestClient(build_app(service), base_url=LOCAL) as c:
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
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=LOCAL) as c:
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


def test_an_unwritable_log_is_a_503_not_a_lost_answer(client, monkeypatch) -> None:
    from serving.log_writer import LogUnavailable

    def full(kind, rows):  # noqa: ANN001, ANN202
        raise LogUnavailable("prediction log cannot record rows: OSError: [Errno 28] No space left on device")

    monkeypatch.setattr(client.service.log, "append", full)
    r = client.post("/predict", json={"texts": ["refund my bill"]})
    assert r.status_code == 503 and "No space left" in r.json()["detail"] and r.headers["retry-after"] == "1"


def _params_file(tmp_path, serve: dict) -> str:
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"serve": serve}))
    return str(path)


def test_the_builder_resolves_the_key_for_every_replica(tmp_path, monkeypatch) -> None:
    """The key travels in the deployment's config (serve deploy: the replica's environment may not have it)."""
    from serving.app import build_settings

    monkeypatch.delenv("TICKETOPS_API_KEY", raising=False)
    (tmp_path / "key.txt").write_text("from-the-file\n")
    args = {"params": _params_file(tmp_path, {"api_key": "in-params", "api_key_file": "key.txt"})}
    cfg, *_ = build_settings({**args, "project_dir": str(tmp_path)})
    assert cfg.api_key == "from-the-file" and cfg.api_key_file is None  # the file wins over params
    monkeypatch.setenv("TICKETOPS_API_KEY", "from-the-env")
    cfg, *_ = build_settings({**args, "project_dir": str(tmp_path)})
    assert cfg.api_key == "from-the-env"  # the environment of the builder wins
    monkeypatch.delenv("TICKETOPS_API_KEY")
    (tmp_path / "key.txt").unlink()
    with pytest.raises(Exception, match="api_key_file: cannot read"):
        build_settings({**args, "project_dir": str(tmp_path)})


def test_a_non_loopback_bind_without_a_key_refuses_to_start(tmp_path, monkeypatch) -> None:
    from pipelines.errors import ConfigError
    from serving.app import build_settings
    from serving.security import check_bind, is_loopback

    monkeypatch.delenv("TICKETOPS_API_KEY", raising=False)
    params = _params_file(tmp_path, {"host": "0.0.0.0"})
    with pytest.raises(ConfigError, match=r"serve.host is '0.0.0.0', which is not a loopback address"):
        build_settings({"params": params, "project_dir": str(tmp_path)})
    monkeypatch.setenv("TICKETOPS_API_KEY", "k")
    assert build_settings({"params": params, "project_dir": str(tmp_path)})[0].host == "0.0.0.0"
    with pytest.raises(ConfigError):
        check_bind("192.168.1.5", None)
    assert [is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "localhost", "0.0.0.0", "example.com")] == [
        True, True, True, True, False, False,
    ]  # fmt: skip
    check_bind("127.0.0.1", None)


def test_redact_removes_the_tracking_uri_its_path_and_url_credentials() -> None:
    from serving.security import redact

    uri = "sqlite:////srv/ml/mlflow.db"
    out = redact(f"cannot open /srv/ml/mlflow.db ({uri}); also https://alice:s3cr3t@mlflow.corp:5000/api", uri)
    assert "/srv/ml" not in out and "s3cr3t" not in out and "alice" not in out
    assert out.count("<tracking URI>") == 2 and "https://***@mlflow.corp:5000/api" in out


def test_feedback_item_is_bounded_by_the_schema_at_max_texts_per_request(
    tiny_registry, tmp_path, monkeypatch, serve_cfg
) -> None:
    """``item`` is checked by the route's schema (422 naming the field, shown in the OpenAPI schema), not only by
    the service: no request the server answers has a text at or beyond ``serve.max_texts_per_request``."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)
    cfg = serve_cfg(tmp_path, feedback_accept_unknown=True, max_texts_per_request=5)
    service = ClassifierService(cfg, ChampionSource(tiny_registry.mlflow))
    with TestClient(build_app(service), base_url=LOCAL) as c:
        _wait_ready(c)
        item = c.get("/openapi.json").json()["components"]["schemas"]["FeedbackRequest"]["properties"]["item"]
        assert item["minimum"] == 0 and item["exclusiveMaximum"] == 5, item
        body = {"request_id": "a" * 32, "label": "billing"}
        for bad in (5, 2**31 - 1, 1099511627776, -1):
            r = c.post("/feedback", json={**body, "item": bad})
            assert r.status_code == 422 and r.json()["detail"].startswith("invalid request: item: "), r.text
        assert c.post("/feedback", json={**body, "item": 4}).json() == {"status": "recorded", "matched": False}
        m = c.get("/metrics").text
        assert 'ticketops_request_errors_total{endpoint="/feedback",reason="invalid_request"} 4.0' in m
        assert 'reason="invalid"}' not in m  # the service never saw the bad bodies


def test_the_builder_resolves_the_hash_key_for_every_replica(tmp_path, monkeypatch) -> None:
    """The log's hash key travels in the deployment's config like the API key: two replicas (the variable absent
    from their environment, as under serve deploy, each a new process) hash a text identically, under the key the
    builder resolved; the LM's replicas get the same key."""
    from pipelines.config import ServeLlmConfig
    from pipelines.errors import ConfigError
    from serving import prediction_log
    from serving.app import build_settings
    from serving.llm.service import LLMService

    monkeypatch.delenv("TICKETOPS_API_KEY", raising=False)
    monkeypatch.delenv("TICKETOPS_HASH_KEY", raising=False)
    text = "my card 4111111111111111 was charged twice"

    def replica_hash(cfg, n: int) -> str:  # noqa: ANN001
        """What a fresh replica process built from ``cfg`` logs as the text's hash (its own row path)."""
        import asyncio

        from serving.batching import ItemResult

        monkeypatch.setattr(prediction_log, "_hash_key", None)  # a new process: no key from an earlier replica
        cfg = cfg.model_copy(update={"log_dir": str(tmp_path / f"replica{n}"), "log_flush_s": 60.0})
        svc = ClassifierService(cfg, source=None)  # type: ignore[arg-type]
        model = type("M", (), {"name": "m", "version": "1", "classes": ["billing", "refund"]})()

        async def log_one() -> None:
            await svc.log.start()
            row = ItemResult(np.array([0.7, 0.3]), model, 1)
            svc._log_predictions("a" * 32, model, [text], [row], np.array([False]), 1.0)  # type: ignore[arg-type]
            await svc.log.close()

        asyncio.run(log_one())
        return read_log(cfg.log_dir, PREDICTIONS)["text_sha256"].item()

    params = _params_file(tmp_path, {"hash_key_file": "hash.key", "hash_key": "in-params-0123456789"})
    args = {"params": params, "project_dir": str(tmp_path)}
    monkeypatch.setenv("TICKETOPS_HASH_KEY", "from-the-builder-env-0123")
    cfg, *_ = build_settings(args)
    assert cfg.hash_key == "from-the-builder-env-0123" and cfg.hash_key_file is None  # the variable wins
    assert "from-the-builder-env" not in repr(cfg)  # a secret is not printed with the config
    monkeypatch.delenv("TICKETOPS_HASH_KEY")  # the replicas' environment does not have it
    first, second = replica_hash(cfg, 1), replica_hash(cfg, 2)
    assert first == second == text_hash(text, b"from-the-builder-env-0123"), "replicas must hash alike"
    lm = LLMService(ServeLlmConfig(), cfg.model_copy(update={"log_dir": str(tmp_path / "lm")}), source=None)
    assert lm.log.hash_key == b"from-the-builder-env-0123"  # the generative model's replica too

    # no variable: the file, then params; neither: one random key per build, shared by its replicas
    (tmp_path / "hash.key").write_text("from-the-file-0123456789\n")
    assert build_settings(args)[0].hash_key == "from-the-file-0123456789"
    (tmp_path / "bare").mkdir()
    nothing = {"params": _params_file(tmp_path / "bare", {}), "project_dir": str(tmp_path)}
    drawn, other = build_settings(nothing)[0], build_settings(nothing)[0]
    assert drawn.hash_key and other.hash_key and drawn.hash_key != other.hash_key
    assert replica_hash(drawn, 3) == replica_hash(drawn, 4) != replica_hash(other, 5)

    # a named file that is missing, and a key too short to be a secret, are clear errors
    (tmp_path / "hash.key").unlink()
    with pytest.raises(ConfigError, match=r"serve.hash_key_file: cannot read .*hash.key: FileNotFoundError"):
        build_settings(args)
    (tmp_path / "hash.key").write_text("short\n")
    with pytest.raises(ConfigError, match="serve.hash_key_file: the hash key has 5 characters; give at least 16"):
        build_settings(args)
    monkeypatch.setenv("TICKETOPS_HASH_KEY", "short")
    with pytest.raises(ConfigError, match="environment variable TICKETOPS_HASH_KEY"):
        build_settings(args)


@pytest.mark.parametrize("log_text", [True, False])
def test_the_pii_scrubber_is_built_at_start_up_when_text_is_logged(
    tiny_registry, tmp_path, monkeypatch, serve_cfg, log_text
) -> None:
    """Building Presidio takes seconds: with log_text it happens at start-up, before the first request."""
    from pipelines.data import pii

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)
    pii._engines.cache_clear()
    service = ClassifierService(serve_cfg(tmp_path, log_text=log_text), ChampionSource(tiny_registry.mlflow))
    with TestClient(build_app(service), base_url=LOCAL):
        assert pii._engines.cache_info().currsize == (1 if log_text else 0)
