"""Offline generation benchmark: our continuous-batching engine vs ``generate()`` one at a time and in static batches.

    python -m benchmarks.generation_engine [--sizes 16,32] [--precisions fp32,bf16] [--threads 2] [--seed 0]

The model is the generative base (``smollm2-135m-instruct``, resolved and de-quantized once by
:func:`pipelines.llm.base_model.resolve_base_model`), loaded by :func:`pipelines.llm.generation.load_generator`.
Prompts are triage chat prompts (the pipeline's system prompt + a built-in generated ticket); each request's
``max_tokens`` is drawn log-uniformly from 16–256 (seeded), decoding is greedy, EOS / end-of-turn ends an answer.
All requests are known up front (the offline limit; the HTTP path is measured by the serving benchmark).

For each precision and each request count N (= the concurrency):

(1) one request at a time, ``model.generate()``: measured on the first ``--sequential`` requests (its rate does
    not depend on N), reported as output tokens/s and time per output token;
(2) one static batch of the N requests, left-padded ``generate()`` with ``max_new_tokens`` = the largest of the
    batch; each row is cut at its own ``max_tokens`` / EOS: useful tokens/s (and the tokens it computed);
(3) the engine (``max_num_seqs`` = N), all N requests added before the first step.

It also prints (3)'s time per output token with one request at a time (concurrency 1) over (1)'s, and how many
of the engine's answers are token-identical to (1)'s (fp32: all expected).

On a CPU shared with other jobs pass ``--threads 1``: with 2 torch threads and the cores busy elsewhere,
``generate()`` fell from about 9 to about 1 token/s here (each parallel op waits for a descheduled thread).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from typer import Option

ROOT = Path(__file__).resolve().parents[1]


def prompts(tokenizer, n: int, seed: int) -> list[list[int]]:
    """``n`` triage chat prompts (token ids, chat template + generation prompt) from built-in tickets."""
    from pipelines.config import GENERATOR_LABELS, GenerateConfig, LlmConfig
    from pipelines.data.generator import generate_tickets
    from pipelines.llm.chat_data import prompt_messages, system_prompt

    cfg = GenerateConfig(n_rows=max(n, 100), n_customers=max(n, 25), seed=seed, html_rate=0.0, pii_rate=0.0)
    df = generate_tickets(cfg).head(n)
    system = system_prompt(LlmConfig().system_prompt, GENERATOR_LABELS)
    texts = (df["subject"] + "\n" + df["body"]).tolist()
    rendered = [
        tokenizer.apply_chat_template(prompt_messages(t, system), add_generation_prompt=True, tokenize=False)
        for t in texts
    ]
    return [tokenizer(r, add_special_tokens=False)["input_ids"] for r in rendered]


def max_tokens(n: int, seed: int) -> list[int]:
    """Log-uniform in [16, 256]: many short answers, some long ones."""
    rng = np.random.default_rng(seed)
    return [int(round(math.exp(x))) for x in rng.uniform(math.log(16), math.log(256), size=n)]


def _cut(ids: list[int], limit: int, eos: set[int]) -> list[int]:
    ids = ids[:limit]
    end = next((i for i, t in enumerate(ids) if t in eos), None)
    return ids if end is None else ids[: end + 1]


@torch.inference_mode()
def one_at_a_time(model, ids: list[list[int]], limits: list[int], eos: set[int]) -> tuple[list[list[int]], float]:
    outs, t0 = [], time.perf_counter()
    for p, m in zip(ids, limits):
        x = torch.tensor([p])
        y = model.generate(
            x, attention_mask=torch.ones_like(x), max_new_tokens=m, do_sample=False, eos_token_id=sorted(eos)
        )
        outs.append(_cut(y[0, len(p) :].tolist(), m, eos))
    return outs, time.perf_counter() - t0


@torch.inference_mode()
def static_batch(model, tokenizer, ids, limits, eos) -> tuple[list[list[int]], int, float]:
    """One left-padded batch of all ``ids``; (answers cut per row, tokens computed, seconds)."""
    width = max(len(p) for p in ids)
    pad = tokenizer.pad_token_id
    x = torch.tensor([[pad] * (width - len(p)) + p for p in ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids])
    t0 = time.perf_counter()
    y = model.generate(
        x, attention_mask=mask, max_new_tokens=max(limits), do_sample=False, eos_token_id=sorted(eos), pad_token_id=pad
    )
    seconds = time.perf_counter() - t0
    new = y[:, width:]
    computed = new.shape[0] * new.shape[1]
    return [_cut(r.tolist(), m, eos) for r, m in zip(new, limits)], computed, seconds


def run_engine(engine, ids, limits, at_once: bool) -> tuple[list[list[int]], float]:
    """All requests added up front (``at_once``), or one after the other (concurrency 1)."""
    from pipelines.llm.engine import SamplingParams

    outs: dict[str, list[int]] = {str(i): [] for i in range(len(ids))}
    t0 = time.perf_counter()
    pending = list(range(len(ids)))
    while pending or engine.has_unfinished():
        if pending and (at_once or not engine.has_unfinished()):
            for i in pending if at_once else pending[:1]:
                engine.add_request(str(i), ids[i], SamplingParams(max_tokens=limits[i]))
            pending = [] if at_once else pending[1:]
        for ev in engine.step():
            outs[ev.request_id] += ev.token_ids
    return [outs[str(i)] for i in range(len(ids))], time.perf_counter() - t0


def main(
    sizes: Annotated[str, Option(help="request counts (= concurrency), comma-separated")] = "16,32",
    precisions: Annotated[str, Option(help="fp32 and/or bf16, comma-separated")] = "fp32,bf16",
    sequential: Annotated[int, Option(help="requests measured one at a time with generate() (mode 1)")] = 16,
    threads: Annotated[int, Option(help="torch threads")] = 2,
    seed: Annotated[int, Option(help="seed of the tickets and the max_tokens draw")] = 0,
) -> None:
    from pipelines.llm.base_model import resolve_base_model
    from pipelines.llm.engine import engine_from_generator
    from pipelines.llm.generation import load_generator

    torch.set_num_threads(threads)
    base = resolve_base_model("smollm2-135m-instruct", cache_dir=ROOT / "models" / "cache")
    counts = [int(s) for s in sizes.split(",")]
    rows = []
    for precision in precisions.split(","):
        gen = load_generator(base, precision=precision)
        model, tok = gen.model, gen.tokenizer
        probe = engine_from_generator(gen)
        eos = set(probe.eos_token_ids)
        ids = prompts(tok, max(counts), seed)
        limits = max_tokens(len(ids), seed)
        k = min(sequential, len(ids))
        ref, seq_s = one_at_a_time(model, ids[:k], limits[:k], eos)
        seq_tokens = sum(map(len, ref))
        one, one_s = run_engine(engine_from_generator(gen, max_num_seqs=1), ids[:k], limits[:k], at_once=False)
        print(
            f"[{precision}] (1) generate() one at a time: {seq_tokens} tokens in {seq_s:.1f}s = "
            f"{seq_tokens / seq_s:.1f} tok/s, {1000 * seq_s / seq_tokens:.1f} ms/token; engine one at a time "
            f"{1000 * one_s / sum(map(len, one)):.1f} ms/token; prompts {min(map(len, ids))}-{max(map(len, ids))} "
            f"tokens",
            flush=True,
        )
        for n in counts:
            sub, lim = ids[:n], limits[:n]
            static, computed, static_s = static_batch(model, tok, sub, lim, eos)
            engine = engine_from_generator(gen, max_num_seqs=n, max_waiting=n)
            ours, ours_s = run_engine(engine, sub, lim, at_once=True)
            same = sum(a == b for a, b in zip(ours[:k], ref)) if n >= k else sum(a == b for a, b in zip(ours, ref))
            static_tok, ours_tok = sum(map(len, static)), sum(map(len, ours))
            row = {
                "precision": precision,
                "n": n,
                "seq": seq_tokens / seq_s,
                "static": static_tok / static_s,
                "static_computed": computed / static_s,
                "engine": ours_tok / ours_s,
                "c1": (one_s / sum(map(len, one))) / (seq_s / seq_tokens),
                "same": f"{same}/{min(n, k)}",
                "static_same": sum(a == b for a, b in zip(static, ours)),
                "tokens": ours_tok,
            }
            rows.append(row)
            print(
                f"[{precision}] N={n}: (2) static {row['static']:.1f} useful tok/s ({row['static_computed']:.1f} "
                f"computed, {static_s:.1f}s)  (3) engine {row['engine']:.1f} tok/s ({ours_s:.1f}s, {ours_tok} tokens, "
                f"{engine.counters['steps']} steps)  identical to (1): {row['same']}, to (2): {row['static_same']}/{n}",
                flush=True,
            )
    print()
    print("precision  N   (1) 1-at-a-time  (2) static  (3) engine  (3)/(2)  (3)/(1)  c=1 ms/token (3)/(1)  same as (1)")
    for r in rows:
        print(
            f"{r['precision']:<9} {r['n']:>3}  {r['seq']:>14.1f}  {r['static']:>10.1f}  {r['engine']:>10.1f}  "
            f"{r['engine'] / r['static']:>7.2f}  {r['engine'] / r['seq']:>7.2f}  {r['c1']:>21.2f}  {r['same']:>11}"
        )


if __name__ == "__main__":
    import typer

    typer.run(main)
