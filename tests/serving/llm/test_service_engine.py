"""The service with the real engine on a tiny registered LM: concurrent greedy answers equal ``generate()`` of the
same version alone, the adapter hot swap (base kept, requests in flight finish on their version), constrained
JSON, and the champion resolved from MLflow."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from pipelines.config import LlmConfig, ServeConfig, ServeLlmConfig
from serving.llm.service import IN_ENGINE_PROCESS, LLMService
from serving.llm.source import LMSource

PROMPTS = ["I was charged twice", "The app crashes on start", "Refund please, order 1234", "hello"]


def expected_greedy(base, adapter, prompts, max_tokens: int) -> list[str]:
    """Each prompt alone through transformers' generate() on base + adapter merged (fp32)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.llm.engine import stop_token_ids

    tok = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(adapter))
    model = model.merge_and_unload().eval()
    stops = sorted(stop_token_ids(model, tok))
    out = []
    for p in prompts:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=max_tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=tok.pad_token_id)  # fmt: skip
        out.append(tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True))
    return out


def call(prompt: str, i: int, **body: object) -> dict:
    return {
        "endpoint": "chat",
        "request_id": f"chatcmpl-{i:032x}",
        "body": {
            "model": "tiny-triage",
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": 12,
            **body,
        },  # fmt: skip
    }


async def answer(svc: LLMService, c: dict) -> tuple[str, str, str | None]:
    events = [e async for e in svc.generate(c)]
    assert events[0]["type"] == "start", events[0]
    return events[0]["model"], "".join(e["text"] for e in events[1:]), events[-1]["finish_reason"]


@pytest.fixture(params=[True, False], ids=["engine-process", "engine-thread"])
def svc(tiny_lm, tmp_path, request):
    cfg = ServeLlmConfig(
        precision="fp32", max_num_seqs=4, max_model_len=256, watch_interval_s=0, torch_threads=1,
        engine_process=request.param,
    )  # fmt: skip
    scfg = ServeConfig(log_dir=str(tmp_path / "production"), log_flush_s=0.2)
    source = LMSource(tiny_lm.mlflow, tiny_lm.name, "champion", download_dir=str(tmp_path))
    return LLMService(cfg, scfg, source, system_template=LlmConfig().system_prompt)


def test_real_engine_answers_equal_generate_and_the_adapter_hot_swaps(svc, tiny_lm) -> None:
    from pipelines.registry.tracking import Registry

    v1, v2 = tiny_lm.versions
    want1 = expected_greedy(tiny_lm.base, tiny_lm.adapters[v1], PROMPTS, 12)
    want2 = expected_greedy(tiny_lm.base, tiny_lm.adapters[v2], PROMPTS, 12)
    assert want1 != want2, "the two adapters should answer differently"

    async def run() -> None:
        assert await svc.refresh() is True
        svc._watcher = None
        await svc.log.start()
        try:
            got = await asyncio.gather(*(answer(svc, call(p, i)) for i, p in enumerate(PROMPTS)))
            assert [g[1] for g in got] == want1
            assert {g[0] for g in got} == {f"{tiny_lm.name}:{v1}"}
            engine = svc.served.engine
            if svc.cfg.engine_process:  # the weights live in the engine's child process: a full load starts another
                pid = engine.pid
                assert pid is not None and pid != os.getpid() and svc.served.weights == IN_ENGINE_PROCESS
            else:
                base_weights = svc.served.weights.model.model.embed_tokens.weight

            # a request in flight when the alias moves finishes on v1; the next ones are v2's
            Registry(tiny_lm.mlflow, tiny_lm.name).set_alias("champion", v2)
            inflight = asyncio.create_task(answer(svc, call(PROMPTS[0], 10)))
            await asyncio.sleep(0)
            assert await svc.refresh() is True
            assert (await inflight) == (f"{tiny_lm.name}:{v1}", want1[0], (await inflight)[2])
            got = await asyncio.gather(*(answer(svc, call(p, 20 + i)) for i, p in enumerate(PROMPTS)))
            assert [g[1] for g in got] == want2 and {g[0] for g in got} == {f"{tiny_lm.name}:{v2}"}
            assert svc.served.engine is engine  # the base was not reloaded
            if svc.cfg.engine_process:
                assert engine.pid == pid
            else:
                assert svc.served.weights.model.model.embed_tokens.weight is base_weights
            assert svc.metrics.swaps.labels(kind="adapter")._value.get() == 1

            schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                      "additionalProperties": False}  # fmt: skip
            rf = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}
            _, text, finish = await answer(svc, call("answer in JSON", 30, response_format=rf, max_tokens=48))
            assert text.lstrip().startswith("{")  # constrained (a random tiny model may pad with whitespace)
            if finish == "stop":
                assert isinstance(json.loads(text)["ok"], bool)
            for _ in range(50):  # the engine publishes its stats just after the last events
                stats = svc.served.engine.stats()
                if stats["running"] == 0:
                    break
                await asyncio.sleep(0.02)
            assert stats["running"] == 0 and stats["waiting"] == 0 and stats["kv_tokens_used"] == 0
            # the answers above equal generate() alone with the prefix cache on (serve_llm's default), which took
            # the shared system prompt of the later prompts from it, and was emptied by the swap (v2's answers)
            assert svc.cfg.prefix_cache_tokens > 0 and stats["prefix_cached_tokens"] > 0
            gauge = svc.metrics.prefix_cached.collect()[0].samples[0].value  # ticketops_llm_prefix_cached_tokens
            assert gauge == svc.served.engine.stats()["prefix_cached_tokens"]
        finally:
            Registry(tiny_lm.mlflow, tiny_lm.name).set_alias("champion", v1)
            await svc.stop()

    asyncio.run(run())
