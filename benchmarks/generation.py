"""Generation serving benchmark: our continuous batching through Ray Serve vs generate() one at a time, static
batches and the engine offline; one run, interleaved rounds, one table (issue 16, deliverable 6).

    python -m benchmarks.generation [--quick] [--levels 1,8,16,32] [--seconds 60] [--rounds 3]
                                    [--precision fp32|bf16] [--threads 1] [--waits-ms 0,20,100] [--json PATH]

Workload: triage chat prompts (the pipeline's system prompt + a generated ticket, built by
``benchmarks/generation_engine.py``'s :func:`prompts`), each request's ``max_tokens`` drawn log-uniformly from
16–256 (seeded, :func:`benchmarks.generation_engine.max_tokens`), greedy decoding (``temperature`` 0), the answer
ends at ``max_tokens`` or end of turn, so every mode computes the same tokens. The model is the generative base,
SmolLM2-135M-Instruct (``resolve_base_model``, de-quantized once into models/cache).

Modes (all in ``--precision``, ``--threads`` torch threads each, one model copy each):

- (a) **one at a time**: a Ray Serve deployment (``benchmarks/_generation_serve.py``) that runs ``model.generate()``
    on one unpadded prompt at a time (``@serve.batch`` with batch size 1), streaming each token;
- (b) **static batching**: the same deployment with ``@serve.batch(max_batch_size=max level, wait)``: one
    left-padded ``generate()`` per batch (``max_new_tokens`` = the batch's largest ``max_tokens``), each row
    streaming its tokens and stopping at its own limit; the batch ends when its last row does. One deployment
    per wait of ``--waits-ms``; the wait with the most tokens/s at the highest level is kept;
- (c) **the engine offline** (the limit): :class:`~pipelines.llm.engine.LLMEngine` in the client process, no
    server, no HTTP; every request of the level is queued before the first step and ``max_num_seqs`` = the
    concurrency, so a finished sequence's slot is refilled at the next step (a closed loop with zero client
    latency). Its time to first token counts from when that closed loop would have sent the request;
- (d) **ours through Ray Serve**: the real path, ``POST /v1/chat/completions`` (stream) on the classifier's
    ingress (``serving.app.build``: Ray's HTTP proxy → ``ClassifierDeployment`` → handle →
    ``LLMDeployment`` → :class:`~serving.llm.service.LLMService` → the engine in its child process,
    ``serve_llm.engine_process``). Its champion is an
    *untrained* LoRA adapter on the same base, registered in a temporary MLflow registry (LoRA's B is zero,
    so the merged weights are the base's: same tokens, same compute as a trained adapter). No classifier
    champion is registered: the classifier side just keeps looking for one.

Load: closed-loop clients (aiohttp, streaming, in a process of their own without Ray) on 127.0.0.1 through
Ray's HTTP proxy, each sending its next request when its answer has ended. Each level gives every mode
``--seconds`` in ``--rounds`` interleaved windows (a, b, c, d, a, b, ...: a slow minute on a shared machine
hits every mode alike); every mode starts a round at the same request, so the same requests are compared. The
first ``--ramp`` of each window is not measured (every client starts at once, so the first batch is aligned in
every mode, which flatters static batching); at its end the clients disconnect (the servers drop those rows).

Per mode and level, over the measured parts of the windows: output tokens/s (the tokens of the streamed content
chunks: one per chunk, or for (d) the growth of ``usage.completion_tokens`` that ``continuous_usage_stats`` puts in
every chunk, since a busy server joins the tokens that piled up; the end-of-turn token carries no text and is
not counted, in any mode), time to first token p50/p95
(requests sent in the measured part: send → first content; those still waiting at the window's end count with
their wait so far, a lower bound), time per output token p50 ((end − first token) / (tokens − 1) of those that
finished), and how many finished answers are identical to (a)'s for the same request. Then the targets'
ratios: (d)/(b) tokens/s at 16 and 32, (d)/(b) TTFT p50, (d)/(c) tokens/s at 32, (d)/(a) tokens/s at 16, (d)/(a)
time per output token at 1.
The results go to ``--json`` (default reports/benchmarks/generation.json, git-ignored).

On a CPU shared with other jobs keep ``--threads 1`` (see benchmarks/generation_engine.py): the four model
copies take turns anyway, and a descheduled OpenMP thread stalls every op.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
from typer import Option

ROOT = Path(__file__).resolve().parents[1]
BASE_MODEL = "smollm2-135m-instruct"
LM_NAME = "bench-lm"
POOL = 256  # distinct requests per run (prompt + max_tokens)
MODES = ("a", "b", "c", "d")
LABELS = {
    "a": "(a) generate() 1 at a time",
    "b": "(b) static @serve.batch",
    "c": "(c) engine offline",
    "d": "(d) ours via Ray Serve",
}


# --------------------------------------------------------------------------- the workload
def workload(tokenizer, n: int, seed: int) -> list[dict]:
    """``n`` requests: chat messages, their prompt ids (as ``generation_engine.prompts`` builds them) and
    ``max_tokens``. The messages are rebuilt from the same tickets and checked to give the same ids."""
    from benchmarks.generation_engine import max_tokens, prompts
    from pipelines.config import GENERATOR_LABELS, GenerateConfig, LlmConfig
    from pipelines.data.generator import generate_tickets
    from pipelines.llm.chat_data import prompt_messages, system_prompt

    ids = prompts(tokenizer, n, seed)
    limits = max_tokens(n, seed)
    cfg = GenerateConfig(n_rows=max(n, 100), n_customers=max(n, 25), seed=seed, html_rate=0.0, pii_rate=0.0)
    df = generate_tickets(cfg).head(n)
    system = system_prompt(LlmConfig().system_prompt, GENERATOR_LABELS)
    messages = [prompt_messages(t, system) for t in (df["subject"] + "\n" + df["body"]).tolist()]
    out = []
    for m, p, k in zip(messages, ids, limits):
        text = tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
        if tokenizer(text, add_special_tokens=False)["input_ids"] != p:
            raise SystemExit("the chat messages do not reproduce generation_engine.prompts' ids")
        out.append({"messages": m, "ids": p, "max_tokens": k})
    return out


# --------------------------------------------------------------------------- the client process (no Ray)
async def _load(
    url: str, headers: dict, model: str, reqs: list[dict], start: int, c: int, seconds: float, ramp: float
) -> dict:
    """Closed loop: ``c`` clients stream one request each at a time (requests ``start``, ``start + 1``, ... of
    ``reqs``, cycled) for ``seconds``; then they disconnect. The first ``ramp`` of the window is not measured
    (every client starts at once: the first batch is aligned in every mode). Per request: send, the time of each
    content chunk (one per token), end."""
    import aiohttp

    records: list[dict] = []
    counter = iter(range(start, start + 10**9))

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        r = reqs[i % len(reqs)]
        rec = {
            "i": i % len(reqs),
            "sent": time.perf_counter(),
            "first": None,
            "end": None,
            "times": [],
            "counts": [],  # tokens per content chunk (one, unless a busy server joined several)
            "text": [],
            "error": None,
        }
        records.append(rec)
        body = {
            "model": model,
            "messages": r["messages"],
            "max_tokens": r["max_tokens"],
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "response_format": {"type": "text"},
        }
        async with session.post(url, json=body, headers=headers) as resp:
            if resp.status != 200:
                rec["error"] = f"{resp.status}: {(await resp.text())[:200]}"
                return
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    break
                ev = json.loads(data)
                for ch in ev.get("choices") or []:
                    content = (ch.get("delta") or {}).get("content")
                    if content:
                        rec["times"].append(time.perf_counter())
                        rec["first"] = rec["first"] or rec["times"][-1]
                        rec["text"].append(content)
                        rec["counts"].append(_chunk_tokens(ev, ch, rec))
        rec["end"] = time.perf_counter()

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < stop:
            try:
                await one(session, next(counter))
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                records[-1]["error"] = repr(err)

    conn = aiohttp.TCPConnector(limit=c)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as session:
        t0 = time.perf_counter()
        stop = t0 + seconds
        tasks = [asyncio.ensure_future(worker(session)) for _ in range(c)]
        await asyncio.wait(tasks, timeout=seconds)
        for t in tasks:
            t.cancel()  # in-flight requests: disconnect (the server drops them)
        await asyncio.gather(*tasks, return_exceptions=True)
        end = time.perf_counter()
    return _window(records, t0 + ramp * seconds, min(end, stop))


def _chunk_tokens(ev: dict, choice: dict, rec: dict) -> int:
    """The output tokens a content chunk holds: 1 without usage (the modes that stream token by token), else
    the growth of ``usage.completion_tokens`` (``continuous_usage_stats``: (d) joins the tokens that piled up
    while it was busy), less the end-of-turn token a final "stop" chunk counts but shows no text for."""
    usage = ev.get("usage")
    if not usage:
        return 1
    done = usage["completion_tokens"]
    n = done - rec.get("usage_seen", 0)
    rec["usage_seen"] = done
    return max(1, n - (choice.get("finish_reason") == "stop"))


def _window(records: list[dict], m0: float, end: float) -> dict:
    """The measured part ``[m0, end]`` of a window: tokens streamed in it; TTFT of the requests sent in it
    (censored at ``end`` for those with no token yet); time per output token of those that also finished."""
    tokens, ttft, tpot, answers, errors, sent = 0, [], [], {}, [], 0
    for r in records:
        if r["error"]:
            errors.append(r["error"])
        finished = r["end"] is not None and r["error"] is None
        tokens += sum(k for t, k in zip(r["times"], r["counts"]) if m0 <= t <= end)
        if finished:
            answers[r["i"]] = "".join(r["text"])
        if r["sent"] < m0 or r["error"]:
            continue
        sent += 1
        ttft.append((r["first"] or end) - r["sent"])
        n = sum(r["counts"])
        if finished and n > 1:
            tpot.append((r["end"] - r["first"]) / (n - 1))
    return {
        "seconds": end - m0,
        "tokens": tokens,
        "ttft": ttft,
        "tpot": tpot,
        "answers": answers,
        "requests": sent,
        "finished": len(tpot),
        "errors": errors[:5],
        "n_errors": len(errors),
    }


def run_load(
    url: str, headers: dict, model: str, reqs: list[dict], start: int, c: int, seconds: float, ramp: float
) -> dict:
    """:func:`_load` in the client process (no Ray there: Ray's driver threads would take the client's CPU)."""
    return asyncio.run(_load(url, headers, model, reqs, start, c, seconds, ramp))


_GENERATORS: dict = {}


def run_offline(
    base: str, precision: str, threads: int, reqs: list[dict], start: int, c: int, seconds: float, ramp: float
) -> dict:
    """Mode (c) in the client process: the engine, ``max_num_seqs`` = ``c``, the requests from ``start`` on queued
    up front, stepped for ``seconds`` (then every request left is dropped); measured as :func:`_window` does
    (after ``ramp``; tokens without text, the end of turn, not counted, as the HTTP modes stream none for it)."""
    import torch

    from pipelines.config import ServeLlmConfig
    from pipelines.llm.engine import SamplingParams, engine_from_generator
    from pipelines.llm.generation import load_generator

    torch.set_num_threads(threads)
    if precision not in _GENERATORS:
        _GENERATORS[precision] = load_generator(base, precision=precision)
    gen = _GENERATORS[precision]
    # more than the window can finish (answers of 16+ tokens at under 400 tokens/s: < 25 a second), the pool
    # cycled as the HTTP clients cycle it; 64 ran out in 30 s windows at 16 (every request done before the end)
    n = max(4 * c, 64, int(25 * seconds))
    order = [(start + k) % len(reqs) for k in range(n)]
    serve_llm = ServeLlmConfig()  # (c) is the engine (d) serves, with its defaults
    engine = engine_from_generator(
        gen,
        max_num_seqs=c,
        max_waiting=n,
        max_prefill_tokens=1024,
        prefix_cache_tokens=serve_llm.prefix_cache_tokens,
        overlap_prefill=serve_llm.overlap_prefill,
    )
    for k, i in enumerate(order):
        engine.add_request(str(k), reqs[i]["ids"], SamplingParams(max_tokens=reqs[i]["max_tokens"]))
    first: dict[int, float] = {}
    done: dict[int, float] = {}
    outs: dict[int, list[int]] = {k: [] for k in range(n)}
    finished_at: list[float] = []  # closed loop: request c + j is sent when the j-th answer ends
    eos, tokens = engine.eos_token_ids, 0
    t0 = time.perf_counter()
    stop, m0 = t0 + seconds, t0 + ramp * seconds
    while engine.has_unfinished() and time.perf_counter() < stop:
        events = engine.step()
        now = time.perf_counter()
        for ev in events:
            k = int(ev.request_id)
            text = [t for t in ev.token_ids if t not in eos]
            if text:
                outs[k] += text
                first.setdefault(k, now)
                tokens += len(text) if now >= m0 else 0
            if ev.finished:
                done[k] = now
                finished_at.append(now)
    end = min(time.perf_counter(), stop) if engine.has_unfinished() else time.perf_counter()
    engine.abort_all()
    engine.close()  # its prefill thread
    sent = [t0 if k < c else (finished_at[k - c] if k - c < len(finished_at) else None) for k in range(n)]
    tok = gen.tokenizer
    ttft, tpot, answers = [], [], {}
    for k in range(n):
        if k in done:
            answers[order[k]] = tok.decode(outs[k], skip_special_tokens=True)
        if sent[k] is None or not m0 <= sent[k] <= end:
            continue
        ttft.append(first.get(k, end) - sent[k])
        m = len(outs[k])
        if k in done and m > 1:
            tpot.append((done[k] - first[k]) / (m - 1))
    return {
        "seconds": end - m0,
        "tokens": tokens,
        "ttft": ttft,
        "tpot": tpot,
        "answers": answers,
        "requests": len(ttft),
        "finished": len(tpot),
        "errors": [],
        "n_errors": 0,
    }


def summarise(parts: list[dict]) -> dict:
    """The rounds of one mode at one level: tokens/s over the summed windows, percentiles over all requests."""
    seconds = sum(p["seconds"] for p in parts)
    ttft = [x for p in parts for x in p["ttft"]]
    tpot = [x for p in parts for x in p["tpot"]]
    q = np.percentile(ttft, [50, 95]) * 1000 if ttft else [float("nan")] * 2
    return {
        "tokens_per_s": sum(p["tokens"] for p in parts) / seconds if seconds else float("nan"),
        "ttft_p50_ms": float(q[0]),
        "ttft_p95_ms": float(q[1]),
        "tpot_p50_ms": float(np.median(tpot) * 1000) if tpot else float("nan"),
        "tokens": sum(p["tokens"] for p in parts),
        "seconds": seconds,
        "requests": sum(p["requests"] for p in parts),
        "finished": sum(p["finished"] for p in parts),
        "errors": sum(p["n_errors"] for p in parts),
        "error_examples": [e for p in parts for e in p["errors"]][:3],
    }


def same_answers(parts: list[dict], ref: list[dict]) -> tuple[int, int]:
    """(answers equal to the reference's for the same request, answers both have), over the rounds."""
    same = both = 0
    for p, r in zip(parts, ref):
        for i, text in p["answers"].items():
            if i in r["answers"]:
                both += 1
                same += text == r["answers"][i]
    return same, both


# --------------------------------------------------------------------------- the servers
def register_lm(root: Path, base: str) -> tuple:
    """An untrained LoRA adapter on the base, logged as the triage LM pyfunc and made champion of ``LM_NAME``."""
    import mlflow
    from transformers import AutoTokenizer

    from pipelines.config import GENERATOR_LABELS, LlmConfig, MlflowConfig
    from pipelines.llm.chat_data import system_prompt
    from pipelines.llm.lora import build_lora_model, load_causal_lm
    from pipelines.llm.pyfunc import log_triage_model, model_config
    from pipelines.registry.tracking import Registry, setup

    adapter = root / "adapter"
    llm = LlmConfig()
    build_lora_model(load_causal_lm(base), llm).save_pretrained(str(adapter))
    AutoTokenizer.from_pretrained(base).save_pretrained(str(adapter))
    cfg = MlflowConfig(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_root=str(root / "artifacts"),
        experiment="bench-generation",
        registered_model="bench-router",  # the classifier's: never registered here
    )
    os.environ["MLFLOW_TRACKING_URI"] = cfg.tracking_uri
    setup(cfg)
    config = model_config(
        BASE_MODEL, str(ROOT / "models" / "cache"), system_prompt(llm.system_prompt, GENERATOR_LABELS), 256
    )
    with mlflow.start_run():
        info = log_triage_model(adapter, config)
    reg = Registry(cfg, LM_NAME)
    reg.set_alias("champion", reg.register(info.model_uri, tags={}))
    return cfg


def wait_ok(url: str, seconds: float, what: str) -> None:
    import requests

    deadline, last = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        try:
            r = requests.get(url, timeout=5, headers=api_headers())
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except requests.RequestException as err:
            last = repr(err)
        time.sleep(1.0)
    raise TimeoutError(f"{what} not ready after {seconds:.0f} s: {last}")


def api_headers() -> dict:
    from serving.api import API_KEY_ENV

    key = os.environ.get(API_KEY_ENV)
    return {"X-API-Key": key} if key else {}


# --------------------------------------------------------------------------- the run
def main(
    quick: Annotated[
        bool,
        Option(
            help="levels 1,16, 2 rounds of 24 s, waits 0,50: about 8 minutes on a loaded 2-core CPU (noisy figures)"
        ),
    ] = False,
    levels: Annotated[str, Option(help="concurrency levels (closed-loop clients), comma-separated")] = "1,8,16,32",
    seconds: Annotated[float, Option(help="load per mode and level, split into the rounds")] = 180.0,
    rounds: Annotated[int, Option(help="interleaved windows per mode and level")] = 3,
    precision: Annotated[
        str, Option(help="fp32 or bf16, every mode (bf16: outputs may differ between modes)")
    ] = "fp32",
    threads: Annotated[int, Option(help="torch threads of every model copy (keep 1 on a shared 2-core CPU)")] = 1,
    waits_ms: Annotated[
        str, Option(help="@serve.batch wait timeouts tried for (b); best at the top level kept")
    ] = "0,20,100",
    tune_seconds: Annotated[float, Option(help="load per wait when picking (b)'s wait")] = 40.0,
    ramp: Annotated[float, Option(help="share of each window not measured (all clients start at once)")] = 0.25,
    seed: Annotated[int, Option(help="seed of the tickets and of the max_tokens draw")] = 0,
    json_out: Annotated[Path, Option("--json", help="where the results go (JSON)")] = ROOT
    / "reports"
    / "benchmarks"
    / "generation.json",
) -> None:
    """Run (a)-(d) at each level in interleaved rounds; print tokens/s, TTFT p50/p95, TPOT p50 and the target
    ratios; write them to --json. See the module docstring for what each mode is exactly."""
    if precision not in ("fp32", "bf16"):
        raise SystemExit(f"--precision must be fp32 or bf16, not {precision!r}")
    if quick:
        levels, seconds, rounds, waits_ms, tune_seconds = "1,16", 48.0, 2, "0,50", 20.0
    conc = sorted({int(x) for x in levels.split(",") if x.strip()})
    waits = [float(x) for x in waits_ms.split(",") if x.strip()]
    if not conc or min(conc) < 1 or rounds < 1 or not waits or not 0 <= ramp < 1:
        raise SystemExit("--levels, --rounds and --waits-ms need positive values, --ramp one in [0, 1)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import ray
    from ray import serve
    from transformers import AutoTokenizer

    from pipelines.io import free_port
    from pipelines.llm.base_model import resolve_base_model
    from serving.app import build

    started = time.time()
    base = resolve_base_model(BASE_MODEL, cache_dir=ROOT / "models" / "cache")
    reqs = workload(AutoTokenizer.from_pretrained(base), POOL, seed)
    lens = [len(r["ids"]) for r in reqs]
    print(
        f"{len(reqs)} requests: prompts {min(lens)}-{max(lens)} tokens, max_tokens 16-256 log-uniform (mean "
        f"{np.mean([r['max_tokens'] for r in reqs]):.0f}); levels {conc}; {seconds:.0f} s per mode and level in "
        f"{rounds} rounds; {precision}, {threads} torch thread(s) per model; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="generation-bench-"))
    cfg = register_lm(tmp, base)
    (tmp / "params.yaml").write_text(
        json.dumps({"mlflow": cfg.model_dump(), "register_llm": {"registered_model": LM_NAME}})
    )
    port = free_port()
    top = max(conc)
    client = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    env = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    results: dict[str, dict] = {m: {} for m in MODES}
    same: dict[str, dict] = {m: {} for m in MODES}
    tuning: dict[str, float] = {}
    try:
        from benchmarks._generation_serve import GenerateDeployment

        serve.start(http_options={"host": "127.0.0.1", "port": port})
        root = f"http://127.0.0.1:{port}"
        app = build(
            {
                "params": str(tmp / "params.yaml"),
                "project_dir": str(ROOT),
                "port": port,
                "replica_cpus": 0.1,
                "watch_interval_s": 0,
                "log_dir": str(tmp / "production"),
                "torch_threads": 1,
                "serve_llm": {
                    "precision": precision,
                    "torch_threads": threads,
                    "max_num_seqs": top,
                    "max_waiting": max(64, 2 * top),
                    "max_ongoing_requests": max(96, 4 * top),
                    "replica_cpus": 0.25,
                    "watch_interval_s": 0,
                    "default_response_format": "text",
                },
            }
        )
        serve.run(app, name="bench-d", route_prefix="/d", blocking=False)
        url = {"d": f"{root}/d/v1/chat/completions"}
        opts = {"max_ongoing_requests": max(256, 4 * top), "ray_actor_options": {"num_cpus": 0.25}}
        one = GenerateDeployment.options(**opts).bind(base, precision, threads, 1, 0.0)
        serve.run(one, name="bench-a", route_prefix="/a", blocking=False)
        url["a"] = f"{root}/a"
        for w in waits:
            d = GenerateDeployment.options(**opts).bind(base, precision, threads, top, w / 1000)
            serve.run(d, name=f"bench-b{w:g}", route_prefix=f"/b{w:g}", blocking=False)
            url[f"b{w:g}"] = f"{root}/b{w:g}"
        wait_ok(f"{root}/d/v1/models", 600, "(d) /v1/models")
        for m, u in url.items():
            if m != "d":
                wait_ok(u, 600, f"({m})")
        headers = api_headers()
        print(f"deployed in {time.time() - started:.0f} s; warming up", flush=True)
        for u in url.values():  # first call of each model copy (and of the client's HTTP stack)
            client.submit(run_load, u, headers, LM_NAME, reqs, 0, 1, 2.0, 0.0).result()
        client.submit(run_offline, base, precision, threads, reqs, 0, 1, 2.0, 0.0).result()

        def window(mode: str, start: int, c: int, secs: float) -> dict:
            if mode == "c":
                return client.submit(run_offline, base, precision, threads, reqs, start, c, secs, ramp).result()
            return client.submit(run_load, url[mode], headers, LM_NAME, reqs, start, c, secs, ramp).result()

        b_modes = [m for m in url if m.startswith("b")]
        if len(b_modes) > 1:
            tune = {m: window(m, 0, top, tune_seconds) for m in b_modes}  # same requests for every wait
            tuning = {m[1:]: summarise([t])["tokens_per_s"] for m, t in tune.items()}
            for w, tps in tuning.items():
                print(f"(b) @serve.batch wait {w} ms at concurrency {top}: {tps:.1f} tokens/s", flush=True)
        best = max(b_modes, key=lambda m: tuning.get(m[1:], 0.0))
        url["b"] = url[best]
        for c in conc:
            parts: dict[str, list[dict]] = {m: [] for m in MODES}
            for r in range(rounds):
                for m in MODES:
                    parts[m].append(window(m, (r * 61 + c) % len(reqs), c, seconds / rounds))
                    time.sleep(0.5)  # let the disconnected requests leave their server
            for m in MODES:
                results[m][c] = summarise(parts[m])
                same[m][c] = same_answers(parts[m], parts["a"])
            print(f"concurrency {c} done ({time.time() - started:.0f} s)", flush=True)
    finally:
        client.shutdown()
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)  # the temporary registry, adapter and generation log
    ratios = target_ratios(results)
    print_table(results, same, conc)
    print_ratios(ratios)
    out = {
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "note": "shared machine: noisy"},
        "config": {
            "levels": conc,
            "seconds": seconds,
            "rounds": rounds,
            "ramp": ramp,
            "precision": precision,
            "threads": threads,
            "waits_ms": waits,
            "best_wait_ms": float(best[1:]),
            "seed": seed,
            "quick": quick,
            "model": BASE_MODEL,
        },
        "modes": {m: LABELS[m] for m in MODES},
        "d_path": "real: POST /v1/chat/completions on serving.app.build (classifier ingress -> LLMDeployment), "
        "champion = untrained LoRA on the base in a temporary MLflow registry",
        "b_wait_tuning_tokens_per_s": tuning,
        "results": {m: {str(c): r for c, r in by_c.items()} for m, by_c in results.items()},
        "identical_to_a": {m: {str(c): list(v) for c, v in by_c.items()} for m, by_c in same.items()},
        "ratios": ratios,
        "wall_s": time.time() - started,
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(_finite(out), indent=2, allow_nan=False))
    print(f"\nwrote {json_out}")


def _finite(x: object) -> object:
    """``x`` with NaN / inf (no finished request, a level not run) as null: strict JSON."""
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def target_ratios(results: dict[str, dict]) -> dict:
    """The ratios issue 16's targets use (None where a level was not run)."""

    def r(m1: str, m2: str, c: int, key: str) -> float | None:
        a, b = results[m1].get(c), results[m2].get(c)
        if not a or not b or not b[key] or b[key] != b[key]:
            return None
        return a[key] / b[key]

    return {
        "d/b tokens_per_s c=16 (>= 1.6)": r("d", "b", 16, "tokens_per_s"),
        "d/b tokens_per_s c=32 (>= 1.6)": r("d", "b", 32, "tokens_per_s"),
        "d/b ttft_p50 c=16 (<= 0.5)": r("d", "b", 16, "ttft_p50_ms"),
        "d/b ttft_p50 c=32 (<= 0.5)": r("d", "b", 32, "ttft_p50_ms"),
        "d/c tokens_per_s c=32 (>= 0.7)": r("d", "c", 32, "tokens_per_s"),
        "d/a tokens_per_s c=16 (>= 6)": r("d", "a", 16, "tokens_per_s"),
        "d/a tpot_p50 c=1 (<= 1.15)": r("d", "a", 1, "tpot_p50_ms"),
    }


def print_table(results: dict[str, dict], same: dict[str, dict], conc: list[int]) -> None:
    print()
    print(
        f"{'mode':<28}{'c':>4}{'tok/s':>9}{'TTFT p50':>10}{'p95 ms':>8}{'TPOT p50':>10}"
        f"{'done/sent':>11}{'errors':>7}{'same as (a)':>12}"
    )
    for m in MODES:
        for c in conc:
            x = results[m][c]
            s, n = same[m][c]
            print(
                f"{LABELS[m]:<28}{c:>4}{x['tokens_per_s']:>9.1f}{x['ttft_p50_ms']:>10.0f}{x['ttft_p95_ms']:>8.0f}"
                f"{x['tpot_p50_ms']:>10.1f}{str(x['finished']) + '/' + str(x['requests']):>11}{x['errors']:>7}"
                f"{str(s) + '/' + str(n):>12}"
            )
    errs = [e for m in MODES for c in conc for e in results[m][c]["error_examples"]]
    if errs:
        print("errors, e.g.: " + "; ".join(errs[:3]))


def print_ratios(ratios: dict) -> None:
    print()
    print("Target ratios (one run):")
    for k, v in ratios.items():
        print(f"  {k:<34} {'n/a (level not run)' if v is None else f'{v:.2f}'}")


if __name__ == "__main__":
    import typer

    main.__doc__ = __doc__  # --help shows the modes, the workload and the measures
    cli = typer.Typer(rich_markup_mode="markdown", add_completion=False)
    cli.command()(main)
    cli()
