"""The /v1 HTTP layer over the service with a fake engine (the engine's contract): OpenAI bodies, SSE streams,
errors in OpenAI's format, auth, the prediction log, feedback and metrics. The official openai client talks to it
through the test client's transport."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI
from fastapi.responses import Response
from fastapi.testclient import TestClient

from serving.llm.openai_api import LocalBackend, attach
from serving.llm.records import GENERATION_FEEDBACK, GENERATIONS, read_generations
from serving.telemetry import ServiceMetrics
from tests.serving.llm.conftest import TRIAGE, fake_service

CHAT = {"model": "tiny-triage", "messages": [{"role": "user", "content": "I was charged twice, call 555-123-4567"}]}


def make_app(service, api_key: str | None = None) -> FastAPI:
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await service.start()
        for _ in range(100):
            if service.served is not None or service.last_error:
                break
            await asyncio.sleep(0.05)
        yield
        await service.stop()

    app = FastAPI(lifespan=lifespan)

    @app.post("/feedback")
    async def classifier_feedback(body: dict) -> dict:
        return {"classifier": body}

    @app.get("/metrics")
    async def own_metrics() -> Response:
        return Response(b"classifier_metric 1\n")

    return attach(app, LocalBackend(service), api_key, metrics, metrics.render)


@pytest.fixture
def svc(tmp_path, tokenizer):
    return fake_service(tmp_path, tokenizer)


@pytest.fixture
def client(svc):
    with TestClient(make_app(svc)) as c:
        yield c


def engine(svc):
    return svc.served.engine


def sse(text: str) -> list:
    lines = [ln[len("data: ") :] for ln in text.split("\n\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]", lines[-3:]
    return [json.loads(x) for x in lines[:-1]]


def test_chat_completion_openai_shape_and_prompt_from_the_chat_template(client, svc, tokenizer) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 50, "temperature": 0, "seed": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny-triage:1"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": engine(svc).answer}
    assert body["choices"][0]["finish_reason"] == "stop"
    _, prompt_ids, params = engine(svc).calls[-1]
    expected = tokenizer.apply_chat_template(CHAT["messages"], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(prompt_ids) == expected
    assert (params.max_tokens, params.temperature, params.seed, params.json_schema) == (50, 0.0, 3, None)
    u = body["usage"]
    assert u["prompt_tokens"] == len(prompt_ids) and u["completion_tokens"] > 0
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_chat_stream_is_openai_chunks_ending_with_done(client, svc) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = sse(r.text)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "tiny-triage:1" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == engine(svc).answer
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_continuous_usage_stats_counts_the_tokens_of_every_chunk(client, svc, tokenizer) -> None:
    """vLLM's stream option: each content chunk carries the usage so far, so a client can count the tokens a
    chunk holds (one here; several when a busy server joins what piled up) without re-tokenising."""
    opts = {"include_usage": True, "continuous_usage_stats": True}
    chunks = sse(client.post("/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": opts}).text)
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    counts = [c["usage"]["completion_tokens"] for c in content]
    n = len(tokenizer(engine(svc).answer, add_special_tokens=False)["input_ids"])
    assert counts == list(range(1, n + 1))  # the fake engine: one token per event
    assert all(c["usage"]["prompt_tokens"] == chunks[-1]["usage"]["prompt_tokens"] > 0 for c in content)
    assert chunks[-1]["usage"]["completion_tokens"] == n
    plain = sse(client.post("/v1/chat/completions", json={**CHAT, "stream": True}).text)
    assert all("usage" not in c for c in plain)  # off unless asked


def test_completions_whole_and_streamed(client, svc) -> None:
    r = client.post("/v1/completions", json={"model": "tiny-triage", "prompt": "Once upon", "max_tokens": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3
    r = client.post("/v1/completions", json={"model": "tiny-triage:1", "prompt": ["Once upon"], "stream": True})
    chunks = sse(r.text)
    assert "".join(c["choices"][0]["text"] for c in chunks) == engine(svc).answer[: len("".join(
        c["choices"][0]["text"] for c in chunks))]  # fmt: skip


def test_models_names_the_registered_model_and_version(client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and body["data"][0]["id"] == "tiny-triage" and body["data"][0]["version"] == "1"


def test_response_formats_reach_the_engine_as_json_schema(client, svc) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, "response_format": {"type": "json_object"}})
    assert r.status_code == 200 and json.loads(r.json()["choices"][0]["message"]["content"]) == TRIAGE
    assert engine(svc).calls[-1][2].json_schema == {"type": "object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    rf = {"type": "json_schema", "json_schema": {"name": "mine", "schema": schema}}
    assert client.post("/v1/chat/completions", json={**CHAT, "response_format": rf}).status_code == 200
    assert engine(svc).calls[-1][2].json_schema == schema
    rf = {"type": "json_schema", "json_schema": {"name": "triage"}}  # the triage schema, categories from the prompt
    assert client.post("/v1/chat/completions", json={**CHAT, "response_format": rf}).status_code == 200
    triage = engine(svc).calls[-1][2].json_schema
    assert triage["properties"]["category"]["enum"] == ["billing", "refund", "bug_report"]


BAD = [
    ("malformed JSON", "{not json", None, 400),
    ("no messages", {"model": "tiny-triage"}, "messages", 400),
    ("empty messages", {**CHAT, "messages": []}, "messages", 400),
    ("unknown role", {**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role", 400),
    ("n > 1", {**CHAT, "n": 2}, "n", 400),
    ("negative max_tokens", {**CHAT, "max_tokens": -1}, "max_tokens", 400),
    ("unknown field", {**CHAT, "frobnicate": 1}, "frobnicate", 400),
    ("max_tokens beyond the context", {**CHAT, "max_tokens": 100_000}, "max_tokens", 400),
    ("unknown model", {**CHAT, "model": "gpt-4"}, "model", 404),
    (
        "invalid JSON Schema",
        {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
        "response_format",
        400,
    ),
]


@pytest.mark.parametrize(("why", "payload", "param", "status"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_are_openai_errors_and_the_server_keeps_serving(client, svc, why, payload, param, status):
    kw = {"content": payload, "headers": {"content-type": "application/json"}} if isinstance(payload, str) else {
        "json": payload}  # fmt: skip
    r = client.post("/v1/chat/completions", **kw)
    assert r.status_code == status, (why, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    assert err["param"] == param, err
    assert not engine(svc).active and svc._inflight == 0
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_queue_full_is_429_with_retry_after(client, svc) -> None:
    engine(svc).queue_full = True
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["type"] == "rate_limit_error"
    engine(svc).queue_full = False
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_no_champion_is_503_and_models_too(tmp_path, tokenizer) -> None:
    svc = fake_service(tmp_path, tokenizer, version=None)
    with TestClient(make_app(svc)) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 503 and "no generative champion" in r.json()["error"]["message"]
        assert c.get("/v1/models").status_code == 503


def test_api_key_by_header_or_bearer(svc) -> None:
    with TestClient(make_app(svc, api_key="s3cret")) as c:
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 401
        assert c.post("/v1/chat/completions", json=CHAT, headers={"X-API-Key": "nope"}).status_code == 401
        r = c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert c.post("/v1/chat/completions", json=CHAT, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        for bad in ({"X-API-Key": "sécret".encode()}, {"Authorization": "Bearer ключ".encode()}):  # 401, not 500
            r = c.get("/v1/models", headers=bad)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
        body = {"request_id": "chatcmpl-" + "a" * 32, "category": "billing"}  # generative feedback: the same key
        assert c.post("/feedback", json=body).status_code == 401
        assert c.post("/feedback", json=body, headers={"X-API-Key": "sécret".encode()}).status_code == 401


def test_feedback_is_checked_against_the_lm_version_that_answered(tmp_path, tokenizer) -> None:
    import time

    from pipelines.config import LlmConfig
    from pipelines.llm.chat_data import system_prompt
    from serving.llm.source import LMVersion

    svc = fake_service(tmp_path, tokenizer)
    with TestClient(make_app(svc)) as c:
        rid = c.post("/v1/chat/completions", json=CHAT).json()["id"]  # version 1: billing, refund, bug_report
        other = system_prompt(LlmConfig().system_prompt, ["weather", "sports"])
        svc.source.fetch = lambda v: LMVersion("tiny-triage", v, tmp_path, "base", "cache", other)
        svc.source.version = "2"
        for _ in range(100):
            if svc.served is not None and svc.served.version == "2":
                break
            time.sleep(0.05)
        assert svc.served.version == "2"
        ok = c.post("/feedback", json={"request_id": rid, "category": "refund"})
        assert ok.status_code == 200 and ok.json()["matched"], ok.text  # a category of version 1, which answered
        r = c.post("/feedback", json={"request_id": rid, "category": "weather"})
        assert r.status_code == 422 and "version 1" in r.json()["detail"], r.text
        rid2 = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-triage"}).json()["id"]
        assert c.post("/feedback", json={"request_id": rid2, "category": "weather"}).status_code == 200


def test_openai_client_through_the_app(client) -> None:
    import openai

    oc = openai.OpenAI(base_url="http://testserver/v1", api_key="anything", http_client=client, max_retries=0)
    out = oc.chat.completions.create(model="tiny-triage", messages=CHAT["messages"], max_tokens=20)
    assert out.choices[0].message.content and out.model == "tiny-triage:1" and out.usage.completion_tokens > 0
    stream = oc.chat.completions.create(model="tiny-triage", messages=CHAT["messages"], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == out.choices[0].message.content
    assert [m.id for m in oc.models.list()] == ["tiny-triage"]
    with pytest.raises(openai.NotFoundError):
        oc.chat.completions.create(model="nope", messages=CHAT["messages"])


def test_an_abandoned_stream_aborts_its_generation_and_frees_the_slot(tmp_path, tokenizer) -> None:
    asyncio.run(_abandoned(fake_service(tmp_path, tokenizer)))


async def _abandoned(svc) -> None:
    await svc.start()
    while svc.served is None:
        await asyncio.sleep(0.02)
    svc.served.engine.delay = 0.01
    call = {"endpoint": "chat", "request_id": "chatcmpl-" + "a" * 32, "body": CHAT}
    events = svc.generate(call)
    assert (await anext(events))["type"] == "start"
    assert (await anext(events))["type"] == "delta"
    await events.aclose()  # what the HTTP layer does when the client goes away
    assert svc.served.engine.aborted == [call["request_id"]] and not svc.served.engine.active
    assert svc._inflight == 0
    await svc.stop()
    rows = read_generations(svc.serve_cfg.log_dir)
    assert rows["finish_reason"].tolist() == ["abort"]


def test_log_rows_feedback_and_metrics(tmp_path, tokenizer) -> None:
    svc = fake_service(tmp_path, tokenizer, log_text=True)  # the scrubbed prompt is kept (default: hashes only)
    with TestClient(make_app(svc)) as c:
        rid = c.post("/v1/chat/completions", json={**CHAT, "response_format": {"type": "json_object"}}).json()["id"]
        c.post("/v1/completions", json={"model": "tiny-triage", "prompt": "hello", "max_tokens": 2})
        ok = c.post("/feedback", json={"request_id": rid, "category": "refund", "product": None})
        assert ok.status_code == 200 and ok.json() == {"status": "recorded", "matched": True}, ok.text
        assert c.post("/feedback", json={"request_id": "cmpl-" + "f" * 32, "category": "refund"}).status_code == 404
        assert c.post("/feedback", json={"request_id": rid, "category": "weather"}).status_code == 422
        assert c.post("/feedback", json={"request_id": rid}).status_code == 422
        classifier = c.post("/feedback", json={"request_id": "a" * 32, "item": 0, "label": "billing"})
        assert classifier.json() == {"classifier": {"request_id": "a" * 32, "item": 0, "label": "billing"}}
        m = c.get("/metrics").text
        for name in (
            "ticketops_request_latency_seconds",
            "ticketops_llm_time_to_first_token_seconds_bucket",
            "ticketops_llm_time_per_output_token_seconds_bucket",
            "ticketops_llm_running_sequences",
            "ticketops_llm_waiting_sequences",
            "ticketops_llm_kv_cache_usage_ratio",
            "ticketops_llm_tokens_per_second",
            'ticketops_requests_total{code="200",endpoint="/v1/chat/completions"}',
        ):
            assert name in m, name
    rows = read_generations(svc.serve_cfg.log_dir)  # stop() flushed the log
    assert rows["request_id"].tolist()[0] == rid and rows["endpoint"].tolist() == ["chat", "completion"]
    first = rows.iloc[0]
    assert "555-123-4567" not in first["prompt"] and json.loads(first["prompt"])[0]["role"] == "user"
    assert first["json_valid"] and first["response_format"] == "json_object" and first["model_version"] == "1"
    assert first["prompt_tokens"] > 0 and first["completion_tokens"] > 0 and first["ttft_ms"] <= first["latency_ms"]
    assert rows.iloc[1]["finish_reason"] == "length" and rows.iloc[1]["completion_tokens"] == 2
    fb = read_generations(svc.serve_cfg.log_dir, GENERATION_FEEDBACK)
    assert fb["category"].tolist() == ["refund"] and json.loads(fb["fields"][0]) == {"category": "refund",
                                                                                    "product": None}  # fmt: skip
    assert (tmp_path / "production" / GENERATIONS).is_dir()


def test_hot_swap_waits_for_admitted_requests_and_labels_each_answer(tmp_path, tokenizer) -> None:
    asyncio.run(_swap(fake_service(tmp_path, tokenizer, watch_interval_s=0)))


async def _swap(svc) -> None:
    await svc.start()
    while svc.served is None:
        await asyncio.sleep(0.02)
    svc.served.engine.delay = 0.01
    call = {"endpoint": "chat", "request_id": "chatcmpl-" + "b" * 32, "body": CHAT}
    events = svc.generate(call)
    start = await anext(events)
    svc.source.version = "2"
    swap = asyncio.create_task(svc.refresh())
    await asyncio.sleep(0.05)
    assert not swap.done()  # waits for the admitted request
    rest = [e async for e in events]
    assert start["model"] == "tiny-triage:1" and rest[-1]["finish_reason"] == "stop"
    assert await asyncio.wait_for(swap, 5) is True
    second = [e async for e in svc.generate({**call, "request_id": "chatcmpl-" + "c" * 32})]
    assert second[0]["model"] == "tiny-triage:2"
    assert svc.loader.engines[0].stopped
    await svc.stop()


def test_llm_disabled_leaves_v1_answering_503(tmp_path) -> None:
    import yaml

    from serving.app import llm_settings
    from serving.llm.openai_api import UnavailableBackend

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"llm": {"enabled": False}}))
    _, _, off = llm_settings({"params": str(path)})
    assert "llm.enabled: false" in off
    path.write_text(yaml.safe_dump({"serve_llm": {"enabled": False}}))
    assert "serve_llm.enabled: false" in llm_settings({"params": str(path)})[2]
    assert llm_settings({"params": str(path), "serve_llm": {"enabled": True}})[2] == ""
    app = attach(FastAPI(), UnavailableBackend(off))
    with TestClient(app) as c:
        for r in (c.post("/v1/chat/completions", json=CHAT), c.get("/v1/models")):
            assert r.status_code == 503 and "llm.enabled: false" in r.json()["error"]["message"]
        r = c.post("/feedback", json={"request_id": "chatcmpl-" + "a" * 32, "category": "billing"})
        assert r.status_code == 503


@pytest.mark.parametrize("log_text", [True, False])
def test_the_pii_scrubber_is_built_at_start_up_when_text_is_logged(tmp_path, tokenizer, log_text) -> None:
    """Building Presidio takes seconds: with log_text it happens before the first request, not inside it."""
    from pipelines.data import pii

    pii._engines.cache_clear()
    svc = fake_service(tmp_path, tokenizer, log_text=log_text)

    async def started() -> int:
        await svc.start()
        built = pii._engines.cache_info().currsize
        await svc.stop()
        return built

    assert asyncio.run(started()) == (1 if log_text else 0)
