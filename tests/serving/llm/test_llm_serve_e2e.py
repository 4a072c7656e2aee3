"""End to end through Ray Serve on 127.0.0.1: the classifier and the generative champion in one application (what
`make serve` starts), the official openai client streaming and not, an abandoned stream, bad input, generative
feedback, and the generation log after a graceful shutdown."""

from __future__ import annotations

import time

import httpx
import pytest
import requests

from pipelines.io import free_port
from serving.llm.records import GENERATION_FEEDBACK, GENERATIONS, read_generations

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from serving.app import build, run_local  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
MESSAGES = [{"role": "user", "content": "My card was charged twice for order 1234"}]


@pytest.fixture(scope="module")
def server(tiny_registry, tiny_lm, tmp_path_factory):
    import yaml

    from pipelines.config import Params

    tmp = tmp_path_factory.mktemp("serve-llm")
    lm = tiny_lm
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)
    mp.delenv("TICKETOPS_API_KEY", raising=False)
    port = free_port()
    serve_keys = dict(port=port, log_dir=str(tmp / "production"), watch_interval_s=0.5, log_flush_s=0.5)
    raw = {
        "mlflow": tiny_registry.mlflow.model_dump(),
        "serve": serve_keys,
        "llm": {"base_model": str(lm.base), "cache_dir": str(tmp / "cache")},
        "register_llm": {"registered_model": lm.name},
        "serve_llm": {
            "precision": "fp32",
            "max_model_len": 256,
            "max_num_seqs": 4,
            "max_waiting": 8,
            "max_ongoing_requests": 16,
            "torch_threads": 1,
            "watch_interval_s": 1.0,
        },  # fmt: skip
    }
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    params = Params.model_validate(raw)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a `ray start` cluster
    try:
        url = run_local(params, build({"params": str(path)}), wait_ready_s=120)
        deadline = time.monotonic() + 120
        while requests.get(f"{url}/v1/models", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, requests.get(f"{url}/v1/models", timeout=5).text
            time.sleep(0.5)
        yield url, lm, tmp / "production"
    finally:
        serve.shutdown()
        ray.shutdown()
        mp.undo()


def test_openai_client_streaming_and_not_beside_the_classifier(server) -> None:
    import openai

    url, lm, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert [(m.id, m.version) for m in client.models.list()] == [(lm.name, lm.versions[0])]
    whole = client.chat.completions.create(model=lm.name, messages=MESSAGES, max_tokens=12, temperature=0)
    assert whole.model == f"{lm.name}:{lm.versions[0]}" and whole.id.startswith("chatcmpl-")
    assert whole.usage.completion_tokens > 0 and whole.choices[0].finish_reason in ("stop", "length")
    chunks = list(
        client.chat.completions.create(
            model=lm.name, messages=MESSAGES, max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    done = client.completions.create(model=lm.name, prompt="Ticket: refund", max_tokens=5, temperature=0)
    assert done.choices[0].text is not None and done.usage.completion_tokens <= 5
    # the classifier serves in the same application
    r = requests.post(f"{url}/predict", json={"texts": ["double charge on my card"]}, timeout=30)
    assert r.status_code == 200 and r.json()["model_name"] == "tiny-router"


def test_bad_input_and_an_abandoned_stream_leave_the_server_serving(server) -> None:
    url, lm, _ = server
    body = {"model": lm.name, "messages": MESSAGES}
    for payload, status in (
        ({**body, "n": 2}, 400),
        ({**body, "messages": []}, 400),
        ({**body, "messages": [{"role": "robot", "content": "x"}]}, 400),
        ({**body, "max_tokens": 10_000}, 400),
        ({**body, "model": "nope"}, 404),
        (
            {**body, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 1}}}},
            400,
        ),
    ):
        r = requests.post(f"{url}/v1/chat/completions", json=payload, timeout=30)
        assert r.status_code == status and r.json()["error"]["message"], (payload, r.text)
    r = requests.post(f"{url}/v1/chat/completions", data="{", headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json={**body, "max_tokens": 200, "stream": True}, timeout=30
    ) as s:
        lines = s.iter_lines()
        assert next(lines).startswith("data: ")  # then the client goes away
    deadline = time.monotonic() + 30
    while True:  # its slot is freed
        m = requests.get(f"{url}/metrics", timeout=10).text
        running = [ln for ln in m.splitlines() if ln.startswith("ticketops_llm_running_sequences ")]
        if running and float(running[0].split()[1]) == 0:
            break
        assert time.monotonic() < deadline, running
        time.sleep(0.3)
    assert "ticketops_llm_time_to_first_token_seconds_count" in m and "ticketops_batch_size" in m
    r = requests.post(f"{url}/v1/chat/completions", json={**body, "max_tokens": 4}, timeout=30)
    assert r.status_code == 200


def test_generative_feedback_and_the_log_after_shutdown(server) -> None:
    url, lm, log_dir = server
    rid = requests.post(
        f"{url}/v1/chat/completions", json={"model": lm.name, "messages": MESSAGES, "max_tokens": 4}, timeout=30
    ).json()["id"]
    r = requests.post(
        f"{url}/feedback", json={"request_id": rid, "category": "billing", "order_id": "1234"}, timeout=10
    )
    assert r.status_code == 200 and r.json()["matched"] is True, r.text
    serve.shutdown()  # graceful: the LM replica's __del__ flushes the generation log
    rows = read_generations(log_dir, GENERATIONS)
    assert rid in set(rows["request_id"]) and rows["model_version"].eq(lm.versions[0]).all()
    assert {"abort", "length"} <= set(rows["finish_reason"])
    assert read_generations(log_dir, GENERATION_FEEDBACK)["request_id"].tolist() == [rid]
