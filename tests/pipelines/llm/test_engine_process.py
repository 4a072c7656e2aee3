"""The engine in a child process (:class:`~pipelines.llm.engine_process.ProcessLLMEngine`) on a tiny Llama saved to
disk: the same answers as ``generate()`` alone under concurrency, the engine's refusals raised in the caller, aborts,
idle functions run in the child, a child that dies or fails to load, and stop."""

from __future__ import annotations

import asyncio
import functools
import os
import signal

import pytest

from pipelines.llm import engine_process
from pipelines.llm.engine import EngineError, QueueFull, RequestTooLong, SamplingParams, stop_token_ids
from pipelines.llm.engine_process import ProcessLLMEngine
from tests.helpers.llm import (
    broken_engine,
    engine_pid,
    exiting_engine,
    failing_idle,
    hold_until,
    sleeping_engine,
    tiny_base,
    tiny_engine,
)
from tests.pipelines.llm.test_engine import PROMPTS, chat_ids, reference


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, smol_tokenizer_dir) -> str:
    return str(tiny_base(tmp_path_factory.mktemp("tiny-lm"), smol_tokenizer_dir))


def tokens(events) -> list[int]:
    return [t for e in events for t in e.token_ids]


async def first(stream):
    try:
        return await anext(stream)
    finally:
        await stream.aclose()


def test_answers_equal_generate_alone_under_concurrency_and_refusals_reach_the_caller(model_dir, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    eos = stop_token_ids(model, tok)
    ids = [chat_ids(tok, p) for p in PROMPTS[:5]]
    limits = [20, 35, 7, 50, 12]
    want = [reference(model, tok, i, n, eos) for i, n in zip(ids, limits)]

    async def main():
        engine = ProcessLLMEngine(functools.partial(tiny_engine, model_dir, max_num_seqs=2, max_waiting=4))
        await engine.start()
        try:
            assert engine.pid not in (None, os.getpid())

            async def collect(rid: str, k: int) -> list:
                return [e async for e in engine.generate(rid, ids[k], SamplingParams(max_tokens=limits[k]))]

            got = await asyncio.gather(*(collect(f"r{k}", k) for k in range(4)))  # two run, two wait for a slot
            got.append(await collect("alone", 4))
            with pytest.raises(RequestTooLong):
                await first(engine.generate("too-long", ids[0], SamplingParams(max_tokens=2000)))
            # the queue's limit, deterministically: an idle function holds the child's engine thread while five
            # requests arrive; released, it applies them in one go before any step: four wait, the fifth is refused
            started, release = tmp_path / "started", tmp_path / "release"
            hold = asyncio.ensure_future(
                engine.run_when_idle(functools.partial(hold_until, str(started), str(release)))
            )
            while not started.exists():
                await asyncio.sleep(0.01)
            queued = [asyncio.ensure_future(first(engine.generate(f"w{k}", ids[0], SamplingParams(max_tokens=5))))
                      for k in range(5)]  # fmt: skip
            await asyncio.sleep(0.3)  # all five sent and read by the child meanwhile
            release.touch()
            await hold
            outcomes = await asyncio.gather(*queued, return_exceptions=True)
            assert all(not isinstance(o, BaseException) for o in outcomes[:4]), outcomes
            full = outcomes[4]
            long = engine.generate("leaver", ids[1], SamplingParams(max_tokens=400))
            await anext(long)
            await long.aclose()  # a client that leaves: its slot frees
            for _ in range(100):
                stats = engine.stats()
                if stats["running"] == 0 and stats["waiting"] == 0:
                    break
                await asyncio.sleep(0.02)
        finally:
            await engine.stop()
        return got, full, stats

    got, full, stats = asyncio.run(main())
    assert [tokens(g) for g in got] == want
    assert all(g[-1].finished for g in got)
    assert isinstance(full, QueueFull), full
    assert full.retry_after_s > 0 and "waiting" in str(full)  # pickled across with both of its fields
    assert stats["running"] == 0 and stats["kv_tokens_used"] == 0 and stats["aborted"] >= 1


def test_idle_functions_run_in_the_child_and_their_errors_come_back(model_dir) -> None:
    async def main():
        engine = ProcessLLMEngine(functools.partial(tiny_engine, model_dir))
        await engine.start()
        try:
            pid = await engine.run_when_idle(engine_pid)
            with pytest.raises(ValueError, match="swap failed"):
                await engine.run_when_idle(functools.partial(failing_idle, "swap failed"))
            with pytest.raises(TypeError, match="picklable"):
                await engine.run_when_idle(lambda: None)
            return pid, engine.pid
        finally:
            await engine.stop()

    pid, child = asyncio.run(main())
    assert pid == child != os.getpid()


def test_a_child_that_dies_ends_its_requests_and_refuses_new_ones(model_dir, tokenizer) -> None:
    ids = chat_ids(tokenizer, PROMPTS[1])

    async def main():
        engine = ProcessLLMEngine(functools.partial(tiny_engine, model_dir))
        await engine.start()
        stream = engine.generate("victim", ids, SamplingParams(max_tokens=500))
        await anext(stream)
        os.kill(engine.pid, signal.SIGKILL)
        with pytest.raises(EngineError, match="exited"):
            async for _ in stream:
                pass
        problem = engine.problem()
        with pytest.raises(EngineError):
            await first(engine.generate("after", ids, SamplingParams(max_tokens=5)))
        await engine.stop()  # no hang, no error
        return problem

    problem = asyncio.run(main())
    assert problem and "exited" in problem and str(-signal.SIGKILL) in problem


def test_stop_ends_requests_in_flight_with_abort_and_the_child_exits(model_dir, tokenizer) -> None:
    ids = chat_ids(tokenizer, PROMPTS[3])

    async def main():
        engine = ProcessLLMEngine(functools.partial(tiny_engine, model_dir))
        await engine.start()
        process = engine._process
        stream = engine.generate("inflight", ids, SamplingParams(max_tokens=500))
        events = [await anext(stream)]
        await engine.stop()
        events += [e async for e in stream]
        return events, process

    events, process = asyncio.run(main())
    assert events[-1].finished and events[-1].finish_reason == "abort"
    assert not process.is_alive()


def test_a_factory_that_fails_raises_its_error_at_launch() -> None:
    engine = ProcessLLMEngine(functools.partial(broken_engine, "no such model: nowhere/tiny"))
    with pytest.raises(ValueError, match="no such model: nowhere/tiny"):
        engine.launch()
    assert engine.pid is None


def _logged_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == engine_process.__name__ and r.levelname == "ERROR"]


@pytest.mark.parametrize("code", [0, 3])
def test_a_child_that_exits_while_loading_is_named_as_exited_with_its_code(code: int, caplog) -> None:
    """Raised and logged (the replica's log is where a failed deployment is read), whichever way the launch
    notices it: the pipe's end of file or the poll loop."""
    engine = ProcessLLMEngine(functools.partial(exiting_engine, code))
    with pytest.raises(EngineError, match=rf"exited \(exit code {code}\) while loading"):
        engine.launch()
    assert engine.pid is None
    assert _logged_errors(caplog) == [f"the engine process exited (exit code {code}) while loading the model"]


def test_a_child_still_loading_at_the_deadline_is_killed_and_named_as_timed_out(caplog) -> None:
    engine = ProcessLLMEngine(functools.partial(sleeping_engine, 60), start_timeout_s=1)
    with pytest.raises(EngineError, match="timed out while loading"):
        engine.launch()
    assert engine.pid is None
    assert _logged_errors(caplog) == ["the engine process timed out while loading the model"]
