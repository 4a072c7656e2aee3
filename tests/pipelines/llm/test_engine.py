"""The continuous-batching engine on a tiny random Llama (2 layers, 32 wide) with the real SmolLM2 chat tokenizer.

The core contract: every request's greedy output under concurrency (arrivals at different steps, different
lengths and max_tokens, aborts and queueing in between) is token-identical to ``model.generate()`` on its
prompt alone. Then the scheduler's bookkeeping: budgets, queue limits, aborts, stop conditions, seeded
sampling, pausing for a hot swap, and the asyncio wrapper (streams, disconnects, errors before the first event).
"""

from __future__ import annotations

import asyncio
import os

import pytest
import torch

from pipelines.llm.engine import (
    AsyncLLMEngine,
    LLMEngine,
    QueueFull,
    RequestTooLong,
    SamplingParams,
    _holds_json,
    _TextStream,
    stop_token_ids,
)

PROMPTS = [
    "Hello there, how are you?",
    "A much longer prompt about invoices, refunds and a bug in the mobile app that crashes on start",
    "Hi",
    "What is the capital of France? Tell me more about it please.",
    "x y z",
    "Ticket: my order 12345 never arrived and nobody answers my emails",
    "Password reset link expired",
]
MAX_TOKENS = [20, 35, 7, 50, 12, 30, 25]


def chat_ids(tok, text: str) -> list[int]:
    rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return tok(rendered, add_special_tokens=False)["input_ids"]


def reference(model, tok, ids: list[int], max_tokens: int, eos) -> list[int]:
    """``model.generate()`` on the prompt alone, greedy, cut after the first end token."""
    with torch.inference_mode():
        x = torch.tensor([ids])
        y = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=sorted(eos),
            pad_token_id=tok.pad_token_id,
        )
    return y[0, len(ids) :].tolist()


def drive(engine: LLMEngine, arrivals: dict[int, list[tuple[str, list[int], SamplingParams]]], aborts=None):
    """Step until done, adding requests at their step and aborting others; every event per request."""
    aborts = aborts or {}
    events: dict[str, list] = {}
    step = 0
    while step <= max(arrivals) or engine.has_unfinished():
        for rid, ids, params in arrivals.get(step, []):
            engine.add_request(rid, ids, params)
        for rid in aborts.get(step, []):
            engine.abort(rid)
        for ev in engine.step():
            events.setdefault(ev.request_id, []).append(ev)
        step += 1
        assert step < 1000
    return events


def tokens(evs) -> list[int]:
    return [t for e in evs for t in e.token_ids]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, id="bf16")])
@pytest.mark.parametrize("attention", ["sdpa", "grouped"])
@pytest.mark.parametrize("overlap", [True, False], ids=["overlapped-prefill", "inline-prefill"])
def test_greedy_outputs_match_generate_alone_under_concurrency(tokenizer, seed, dtype, attention, overlap):
    """``grouped``: the decode attention every generating model gets on a CPU (pipelines.llm.attention).
    ``overlapped-prefill``: prompts that arrive while others run are prefilled in the engine's second thread,
    beside the decode step (which it must be: a hook records the thread of every prompt's forward); the engine
    only does that with a core its torch threads leave free, which the test grants."""
    import threading

    from pipelines.llm.attention import use_grouped_decode
    from tests.helpers.llm import tiny_llama

    model = tiny_llama(tokenizer, seed=seed).to(dtype)
    if attention == "grouped":
        use_grouped_decode(model)
    engine = LLMEngine(model, tokenizer, max_num_seqs=4, max_prefill_tokens=80, overlap_prefill=overlap)
    engine._cpus = torch.get_num_threads() + 1  # a core free for the prefill thread, whatever this machine has
    ids = [chat_ids(tokenizer, p) for p in PROMPTS]
    refs = [reference(model, tokenizer, i, m, engine.eos_token_ids) for i, m in zip(ids, MAX_TOKENS)]
    prefill_threads: set[str] = set()

    def record(module, args, kwargs):  # noqa: ANN001, ANN202
        if kwargs["input_ids"].shape[1] > 1:
            prefill_threads.add(threading.current_thread().name)

    model.register_forward_pre_hook(record, with_kwargs=True)
    arrivals: dict[int, list] = {0: [], 2: [], 3: [], 9: [], 15: []}
    when = [0, 0, 2, 3, 3, 9, 15]
    for k, step in enumerate(when):
        arrivals[step].append((f"r{k}", ids[k], SamplingParams(max_tokens=MAX_TOKENS[k])))
    # extra requests aborted while waiting, while running, and one right after its prefill
    for rid, step in (("gone-waiting", 3), ("gone-running", 0), ("gone-early", 9)):
        arrivals[step].append((rid, ids[1], SamplingParams(max_tokens=40)))
    events = drive(engine, arrivals, aborts={4: ["gone-waiting", "gone-running"], 10: ["gone-early"]})

    mismatched = [k for k in range(len(PROMPTS)) if tokens(events[f"r{k}"]) != refs[k]]
    if dtype == torch.bfloat16 and mismatched:
        pytest.xfail(f"bf16: {len(mismatched)}/{len(PROMPTS)} answers differ from generate() alone (rounding)")
    assert mismatched == []
    for rid in ("gone-waiting", "gone-running", "gone-early"):
        assert events[rid][-1].finish_reason == "abort" and events[rid][-1].finished
    for k in range(len(PROMPTS)):
        last = events[f"r{k}"][-1]
        assert last.finished and last.completion_tokens == len(refs[k])
        assert last.finish_reason == ("length" if len(refs[k]) == MAX_TOKENS[k] else "stop")
        assert all(not e.finished for e in events[f"r{k}"][:-1])
    stats = engine.stats()
    assert stats["running"] == stats["waiting"] == stats["kv_tokens_used"] == stats["kv_tensor_tokens"] == 0
    assert any(t.startswith("llm-prefill") for t in prefill_threads) == overlap
    assert threading.current_thread().name in prefill_threads  # the first prompts: nothing ran yet, inline
    engine.close()


def test_text_deltas_join_to_the_decoded_answer(tokenizer, tiny_lm):
    engine = LLMEngine(tiny_lm, tokenizer)
    events = drive(engine, {0: [("a", chat_ids(tokenizer, PROMPTS[3]), SamplingParams(max_tokens=40))]})["a"]
    assert "".join(e.text for e in events) == tokenizer.decode(tokens(events), skip_special_tokens=True)
    assert events[-1].prompt_tokens == len(chat_ids(tokenizer, PROMPTS[3]))


def test_stop_string_cuts_the_text_before_it_and_is_never_emitted(tokenizer, tiny_lm):
    ids = chat_ids(tokenizer, PROMPTS[1])
    full = drive(LLMEngine(tiny_lm, tokenizer), {0: [("a", ids, SamplingParams(max_tokens=40))]})["a"]
    text = "".join(e.text for e in full)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert len(stop) == 3
    events = drive(LLMEngine(tiny_lm, tokenizer), {0: [("a", ids, SamplingParams(max_tokens=40, stop=(stop,)))]})["a"]
    assert "".join(e.text for e in events) == text[: text.find(stop)]
    assert events[-1].finish_reason == "stop" and len(tokens(events)) <= len(tokens(full))


def test_text_stream_holds_back_a_stop_string_split_over_tokens(tokenizer):
    stream = _TextStream(tokenizer, ("END",))
    out = []
    for piece in ["Hello", " wor", "ld E", "N", "D more"]:
        hit = False
        for t in tokenizer(piece, add_special_tokens=False)["input_ids"]:
            hit = hit or stream.add(t)
        out.append(stream.delta(final=hit))
        if hit:
            break
    assert "".join(out) == "Hello world "
    assert all("E" not in o for o in out[:-1])


def test_an_eos_token_ends_the_sequence_with_stop(tokenizer, tiny_lm):
    ids = chat_ids(tokenizer, PROMPTS[0])
    ref = reference(tiny_lm, tokenizer, ids, 10, {tokenizer.eos_token_id})
    engine = LLMEngine(tiny_lm, tokenizer, eos_token_ids={ref[3]})
    events = drive(engine, {0: [("a", ids, SamplingParams(max_tokens=10))]})["a"]
    assert tokens(events) == ref[: ref.index(ref[3]) + 1]
    assert events[-1].finish_reason == "stop"


def test_seeded_sampling_repeats_and_seeds_differ(tokenizer, tiny_lm):
    ids = chat_ids(tokenizer, PROMPTS[2])

    def sample(seed, rid="a", other=False):
        arrivals = {0: [(rid, ids, SamplingParams(max_tokens=15, temperature=1.0, top_p=0.9, seed=seed))]}
        if other:  # the same request sampled next to another one
            arrivals[0].append(("x", chat_ids(tokenizer, PROMPTS[1]), SamplingParams(max_tokens=30, temperature=0.7)))
        return tokens(drive(LLMEngine(tiny_lm, tokenizer), arrivals)[rid])

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    assert sample(7, other=True) == sample(7)


def test_admission_respects_max_num_seqs_and_the_kv_budget(tokenizer, tiny_lm):
    ids = chat_ids(tokenizer, PROMPTS[0])
    engine = LLMEngine(tiny_lm, tokenizer, max_num_seqs=2)
    for k in range(4):
        engine.add_request(str(k), ids, SamplingParams(max_tokens=5))
    engine.step()
    assert (engine.stats()["running"], engine.stats()["waiting"]) == (2, 2)

    need = len(ids) + 5
    engine = LLMEngine(tiny_lm, tokenizer, max_num_seqs=8, kv_cache_tokens=2 * need + 1)
    for k in range(4):
        engine.add_request(str(k), ids, SamplingParams(max_tokens=5))
    engine.step()
    stats = engine.stats()
    assert (stats["running"], stats["waiting"], stats["kv_tokens_used"]) == (2, 2, 2 * need)
    while engine.has_unfinished():
        engine.step()
    assert engine.stats()["finished"] == 4 and engine.stats()["kv_tokens_used"] == 0


def test_prefill_budget_spreads_admissions_over_steps(tokenizer, tiny_lm):
    ids = chat_ids(tokenizer, PROMPTS[1])
    engine = LLMEngine(tiny_lm, tokenizer, max_prefill_tokens=len(ids) + 1)
    for k in range(3):
        engine.add_request(str(k), ids, SamplingParams(max_tokens=5))
    engine.step()
    assert engine.stats()["running"] == 1  # the first one always joins, then the budget is spent
    engine.step()
    assert engine.stats()["running"] == 2


def test_full_queue_and_too_long_requests_are_refused(tokenizer, tiny_lm):
    ids = chat_ids(tokenizer, PROMPTS[0])
    engine = LLMEngine(tiny_lm, tokenizer, max_waiting=1, max_model_len=len(ids) + 10)
    engine.add_request("a", ids, SamplingParams(max_tokens=10))
    with pytest.raises(QueueFull) as full:
        engine.add_request("b", ids, SamplingParams(max_tokens=10))
    assert full.value.retry_after_s > 0
    with pytest.raises(RequestTooLong, match="exceeds the model's context"):
        engine.add_request("c", ids, SamplingParams(max_tokens=11))
    with pytest.raises(ValueError, match="already in flight"):
        engine.add_request("a", ids, SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("d", [], SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)


def test_finished_rows_leave_and_the_cache_shrinks(tokenizer, tiny_lm):
    short, long = chat_ids(tokenizer, PROMPTS[2]), chat_ids(tokenizer, PROMPTS[1])
    engine = LLMEngine(tiny_lm, tokenizer, eos_token_ids=set())
    engine.add_request("long", long, SamplingParams(max_tokens=3))
    engine.add_request("short", short, SamplingParams(max_tokens=30))
    widths = []
    while engine.has_unfinished():
        engine.step()
        widths.append((engine.stats()["running"], engine._mask.shape[1] if engine._mask is not None else 0))
    assert widths[0] == (2, len(long) + 1)
    assert widths[2] == (1, len(short) + 3)  # the long prompt's row left and its padding columns were trimmed
    assert widths[-1] == (0, 0)


def test_run_when_idle_waits_for_running_sequences_and_pauses_admission(tokenizer, tiny_lm):
    ids = chat_ids(tokenizer, PROMPTS[0])
    engine = LLMEngine(tiny_lm, tokenizer)
    engine.add_request("old", ids, SamplingParams(max_tokens=4))
    log = [e.request_id for e in engine.step()]
    done = engine.run_when_idle(lambda: log.append(f"swap with {engine.stats()['running']} running") or "swapped")
    engine.add_request("new", ids, SamplingParams(max_tokens=4))
    assert not done.done()
    while engine.has_unfinished():
        log += [e.request_id for e in engine.step()]
    assert done.result() == "swapped"
    swap = log.index("swap with 0 running")
    assert set(log[:swap]) == {"old"} and set(log[swap + 1 :]) == {"new"}


def test_async_engine_streams_aborts_on_disconnect_and_refuses_before_the_first_event(tokenizer, tiny_lm):
    ids = chat_ids(tokenizer, PROMPTS[3])
    engine = LLMEngine(tiny_lm, tokenizer, max_waiting=2, max_model_len=len(ids) + 60)
    ref = reference(tiny_lm, tokenizer, ids, 30, engine.eos_token_ids)

    async def main():
        aio = AsyncLLMEngine(engine)
        await aio.start()

        async def collect(rid):
            return [e async for e in aio.generate(rid, ids, SamplingParams(max_tokens=30))]

        async def leave_early():
            stream = aio.generate("leaver", ids, SamplingParams(max_tokens=60))
            async for _ in stream:
                break
            await stream.aclose()

        full, _ = await asyncio.gather(collect("stayer"), leave_early())
        with pytest.raises(RequestTooLong):
            await _first(aio.generate("too-long", ids, SamplingParams(max_tokens=61)))
        swapped = await aio.run_when_idle(lambda: "ok")
        for _ in range(100):
            if aio.stats()["running"] == 0 and aio.stats()["waiting"] == 0:
                break
            await asyncio.sleep(0.01)
        stats = aio.stats()
        await aio.stop()
        return full, swapped, stats

    full, swapped, stats = asyncio.run(main())
    assert tokens(full) == ref and full[-1].finished
    assert swapped == "ok"
    assert stats["running"] == 0 and stats["kv_tokens_used"] == 0 and stats["aborted"] == 1


async def _first(stream):
    async for e in stream:
        return e


def test_a_consumer_that_falls_behind_gets_the_steps_it_missed_as_one_event(tokenizer, tiny_lm):
    """A slow reader (sleeps while the engine thread keeps stepping) receives fewer, larger events; joined they
    are exactly the answer a fast reader gets, and the last one still says finished with its reason."""
    ids = chat_ids(tokenizer, PROMPTS[3])
    engine = LLMEngine(tiny_lm, tokenizer)
    ref = reference(tiny_lm, tokenizer, ids, 40, engine.eos_token_ids)

    async def read(pause_s: float, rid: str) -> list:
        aio = AsyncLLMEngine(engine)
        await aio.start()
        out = []
        async for e in aio.generate(rid, ids, SamplingParams(max_tokens=40)):
            out.append(e)
            await asyncio.sleep(pause_s)  # a busy event loop: the engine's next steps queue up meanwhile
        await aio.stop()
        return out

    fast, slow = asyncio.run(read(0.0, "fast")), asyncio.run(read(0.05, "slow"))
    assert tokens(fast) == tokens(slow) == ref and len(ref) > 5
    assert "".join(e.text for e in slow) == "".join(e.text for e in fast)
    assert len(slow) < len(ref)  # merged: at most one event per 50 ms instead of one per token
    assert slow[-1].finished and slow[-1].finish_reason == fast[-1].finish_reason
    assert slow[-1].completion_tokens == len(ref) and all(not e.finished for e in slow[:-1])


def test_evaluation_generate_runs_on_the_engine_and_matches_generate_alone(tokenizer, tiny_lm):
    """``pipelines.llm.generation.generate`` (what llm_eval and the pyfunc call) answers through the engine,
    in input order, each answer the text of ``model.generate()`` on its prompt alone (fp32, greedy)."""
    from pipelines.llm.generation import Generator, generate

    gen = Generator(tiny_lm, tokenizer, bf16=False)
    eos = stop_token_ids(tiny_lm, tokenizer)
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    out = generate(gen, conversations, max_new_tokens=12, batch_size=3)
    expected = [reference(tiny_lm, tokenizer, chat_ids(tokenizer, p), 12, eos) for p in PROMPTS]
    assert out.texts == [tokenizer.decode(ids, skip_special_tokens=True) for ids in expected]
    assert out.new_tokens == sum(len(ids) for ids in expected)


def test_stop_after_json_needs_a_complete_object():
    assert _holds_json('Sure: {"category": "billing", "priority": "low"}\n')
    assert not _holds_json('{"category": "billing", "note": "}"')  # a brace inside a string closes nothing
    assert not _holds_json('{"category": "billing"')
    assert not _holds_json("no json here }")


def system_chat_ids(tok, system: str, text: str) -> list[int]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(rendered, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("seed", [0, 1])
def test_prefix_caching_reuses_a_shared_system_prompt_and_keeps_greedy_outputs_identical(tokenizer, seed):
    from tests.helpers.llm import tiny_llama

    model = tiny_llama(tokenizer, seed=seed)
    system = "You triage support tickets. Answer with one JSON object: category, priority, product, order id."
    ids = [system_chat_ids(tokenizer, system, p) for p in PROMPTS]
    shared = len(os.path.commonprefix(ids))
    assert shared >= 20  # the system prompt's tokens
    engine = LLMEngine(model, tokenizer, max_num_seqs=3, max_prefill_tokens=80, prefix_cache_tokens=4096)
    refs = [reference(model, tokenizer, i, m, engine.eos_token_ids) for i, m in zip(ids, MAX_TOKENS)]
    arrivals: dict[int, list] = {0: [], 2: [], 5: [], 9: []}
    for k, step in enumerate([0, 0, 2, 5, 5, 9, 9]):
        arrivals[step].append((f"r{k}", ids[k], SamplingParams(max_tokens=MAX_TOKENS[k])))
    events = drive(engine, arrivals)
    assert [k for k in range(len(PROMPTS)) if tokens(events[f"r{k}"]) != refs[k]] == []
    # every prompt after the first took at least the shared prefix from the cache; none was taken whole
    cached = engine.stats()["prefix_cached_tokens"]
    assert (len(PROMPTS) - 1) * shared <= cached < sum(map(len, ids)) - len(ids)

    # the newest prompt's keys and values, half of them reused, are those of the prompt computed whole
    last, kv = engine._prefixes[-1]
    from transformers import DynamicCache

    whole = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.tensor([last]), cache=whole, use_cache=True)
    for (keys, values), layer in zip(kv, whole.layers, strict=True):
        assert keys.shape == layer.keys.shape
        torch.testing.assert_close(keys, layer.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(values, layer.values, atol=1e-5, rtol=1e-4)

    # an idle function (the adapter swap) may change the weights: the cached keys are dropped
    engine.run_when_idle(lambda: None).result()
    engine.add_request("after", ids[0], SamplingParams(max_tokens=5))
    while engine.has_unfinished():
        engine.step()
    assert engine.stats()["prefix_cached_tokens"] == cached


def test_prefix_caching_is_off_by_default_and_bounded_by_its_budget(tokenizer, tiny_lm):
    ids = [chat_ids(tokenizer, p) for p in PROMPTS]
    off = LLMEngine(tiny_lm, tokenizer)
    drive(off, {0: [(f"r{k}", i, SamplingParams(max_tokens=3)) for k, i in enumerate(ids)]})
    assert off.stats()["prefix_cached_tokens"] == 0
    small = LLMEngine(tiny_lm, tokenizer, prefix_cache_tokens=2 * max(map(len, ids)))
    drive(small, {0: [(f"r{k}", i, SamplingParams(max_tokens=3)) for k, i in enumerate(ids)]})
    assert sum(len(p) for p, _ in small._prefixes) <= 2 * max(map(len, ids)) and small._prefixes


def test_prefill_stays_inline_when_the_torch_threads_take_every_core(tokenizer, tiny_lm):
    """A third thread on cores the decode's torch threads already fill stalls them: no overlap then."""
    engine = LLMEngine(tiny_lm, tokenizer, max_num_seqs=4)
    ids = chat_ids(tokenizer, PROMPTS[0])
    engine._cpus = torch.get_num_threads()
    drive(engine, {0: [("a", ids, SamplingParams(max_tokens=8))], 2: [("b", ids, SamplingParams(max_tokens=8))]})
    assert engine._prefiller is None
    engine._cpus = torch.get_num_threads() + 1
    drive(engine, {0: [("c", ids, SamplingParams(max_tokens=8))], 2: [("d", ids, SamplingParams(max_tokens=8))]})
    assert engine._prefiller is not None
    engine.close()
    assert engine._prefiller is None


def _held_prefills(engine: LLMEngine):
    """Make the engine's prefill thread wait for the returned event before each batch (a slow prompt)."""
    import threading

    gate, original = threading.Event(), engine._prefills_apart

    def held(admitted):  # noqa: ANN001, ANN202
        assert gate.wait(10), "the test never released the prefill"
        return original(admitted)

    engine._prefills_apart = held
    engine._cpus = torch.get_num_threads() + 1  # a core free for the prefill thread, whatever this machine has
    return gate


def _one_running(tokenizer, model, max_num_seqs: int, request_id: str, max_tokens: int):
    """An engine with held prefills and one request running (prefilled inline: nothing ran before it)."""
    engine = LLMEngine(model, tokenizer, max_num_seqs=max_num_seqs)
    gate = _held_prefills(engine)
    ids = chat_ids(tokenizer, PROMPTS[0])
    engine.add_request(request_id, ids, SamplingParams(max_tokens=max_tokens))
    engine.step()
    return engine, gate, ids


def test_running_sequences_keep_decoding_while_a_prefill_is_in_flight(tokenizer, tiny_lm):
    """A prompt whose prefill is slower than the decode steps: the running sequence gets a token every step
    meanwhile, the newcomer counts as admitted (slot and KV reserved), joins once its prefill returns, and both
    answers are still token-identical to generate() alone."""
    engine = LLMEngine(tiny_lm, tokenizer, max_num_seqs=4)
    gate = _held_prefills(engine)
    ids = [chat_ids(tokenizer, PROMPTS[k]) for k in (3, 1)]
    refs = [reference(tiny_lm, tokenizer, i, 30, engine.eos_token_ids) for i in ids]
    engine.add_request("first", ids[0], SamplingParams(max_tokens=30))
    events: dict[str, list] = {}

    def step() -> list[str]:
        out = engine.step()
        for ev in out:
            events.setdefault(ev.request_id, []).append(ev)
        return [ev.request_id for ev in out]

    assert step() == ["first"]  # nothing running yet: prefilled inline
    engine.add_request("second", ids[1], SamplingParams(max_tokens=30))
    for _ in range(3):
        assert step() == ["first"]  # decoding goes on; the second prompt is still being prefilled
    assert engine.stats()["running"] == 2 and engine.stats()["waiting"] == 0
    assert engine.stats()["kv_tokens_used"] == len(ids[0]) + len(ids[1]) + 60
    gate.set()
    while "second" not in events:
        step()
    while engine.has_unfinished():
        step()
    assert [tokens(events["first"]), tokens(events["second"])] == refs
    assert engine.stats()["kv_tokens_used"] == 0
    engine.close()


def test_a_request_aborted_during_its_prefill_ends_once_it_returns_and_frees_its_slot(tokenizer, tiny_lm):
    engine, gate, ids = _one_running(tokenizer, tiny_lm, 2, "running", 40)
    engine.add_request("gone", ids, SamplingParams(max_tokens=40))
    engine.add_request("next", ids, SamplingParams(max_tokens=4))
    engine.step()  # "gone" is in its prefill; "next" waits: two slots are taken
    engine.abort("gone")
    assert [e.request_id for e in engine.step()] == ["running"]
    assert engine.stats()["waiting"] == 1
    gate.set()
    ended: list = []
    while not ended:
        ended = [e for e in engine.step() if e.request_id == "gone"]
    assert ended[0].finished and ended[0].finish_reason == "abort" and ended[0].token_ids == []
    later: dict[str, list] = {}
    while engine.has_unfinished():
        for ev in engine.step():
            later.setdefault(ev.request_id, []).append(ev)
    assert "gone" not in later and later["next"][-1].finished  # the freed slot admitted the waiting one
    assert engine.stats()["kv_tokens_used"] == 0 and engine._aborts == set()
    engine.close()


def test_a_prefill_that_fails_in_the_other_thread_ends_every_request_and_frees_the_budget(tokenizer, tiny_lm):
    from pipelines.llm.engine import EngineError

    engine, _, ids = _one_running(tokenizer, tiny_lm, 4, "running", 40)

    def broken(admitted):  # noqa: ANN001, ANN202
        raise RuntimeError("out of memory in the prefill")

    engine._prefills_apart = broken
    engine.add_request("new", ids, SamplingParams(max_tokens=40))
    with pytest.raises(EngineError, match="out of memory in the prefill"):
        for _ in range(5):
            engine.step()
    assert not engine.has_unfinished() and engine.stats()["kv_tokens_used"] == 0 and engine._live == {}
    engine.close()


def test_an_idle_function_waits_for_prefills_in_flight(tokenizer, tiny_lm):
    """An adapter swap must not change the weights under a prompt being prefilled in the other thread."""
    engine, gate, ids = _one_running(tokenizer, tiny_lm, 4, "other", 3)
    engine.add_request("late", ids, SamplingParams(max_tokens=2))
    order = [e.request_id for e in engine.step() if e.finished]  # "late" goes to the prefill thread
    assert engine._prefilling
    done = engine.run_when_idle(lambda: order.append("swap") or "swapped")
    while engine.running:  # "other" decodes to its end; "late" is still being prefilled
        order += [e.request_id for e in engine.step() if e.finished]
    assert order == ["other"] and engine._prefilling and not done.done()
    gate.set()
    while engine.has_unfinished():
        order += [e.request_id for e in engine.step() if e.finished]
    assert order == ["other", "late", "swap"] and done.result() == "swapped"
    engine.close()
