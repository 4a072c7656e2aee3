"""Training throughput and memory: the DeepSpeed path vs a plain PyTorch loop, measured side by side.

    .venv/bin/python benchmarks/training.py [--steps 20] [--batch 16] [--precision auto]

Runs, on the same LoRA model (pipelines.classifier.lora.build_model), the same tokenised
tickets and the same global batch size:

* a plain PyTorch loop (one process, torch.optim.AdamW, autocast for bf16);
* the DeepSpeed engine (pipelines.training.engine) with ZeRO-2 and ZeRO-3, world size 1 and 2,
  launched with the ``deepspeed`` launcher (DS_ACCELERATOR=cpu without a GPU).

Prints samples/s and peak RSS per rank for each, and the ratios to the plain loop.
Never run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _batches(tokenizer, n_rows: int, batch: int, seed: int = 0):
    from transformers import DataCollatorWithPadding

    from pipelines.config import GenerateConfig
    from pipelines.data.generator import CATEGORIES, generate_tickets

    df = generate_tickets(GenerateConfig(n_rows=n_rows, n_customers=max(10, n_rows // 4), seed=seed))
    texts = (df["subject"] + "\n" + df["body"]).tolist()
    enc = tokenizer(texts, truncation=True, max_length=128)
    label_id = {c: i for i, c in enumerate(CATEGORIES)}
    rows = [
        {
            "input_ids": enc["input_ids"][i],
            "attention_mask": enc["attention_mask"][i],
            "labels": label_id[df["category"].iloc[i]],
        }
        for i in range(len(texts))
    ]
    collate = DataCollatorWithPadding(tokenizer)
    return [collate(rows[i : i + batch]) for i in range(0, len(rows) - batch + 1, batch)], CATEGORIES


def _model(precision: str, labels):
    from pipelines.classifier.base_model import resolve_base_model
    from pipelines.classifier.lora import build_model
    from pipelines.config import FinetuneConfig

    cfg = FinetuneConfig(precision=precision)
    return build_model(resolve_base_model(cfg.base_model), list(labels), cfg), cfg


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_plain(args) -> dict:
    import torch
    from transformers import AutoTokenizer

    from pipelines.classifier.base_model import resolve_base_model

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    tok = AutoTokenizer.from_pretrained(resolve_base_model("minilm"))
    batches, labels = _batches(tok, (args.steps + args.warmup) * args.batch, args.batch)
    model, cfg = _model(args.precision, labels)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    model.train()
    t0 = None
    for i, b in enumerate(batches[: args.steps + args.warmup]):
        if i == args.warmup:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.gradient_clipping)
        opt.step()
        opt.zero_grad()
    dt = time.perf_counter() - t0
    return {"samples_per_s": args.steps * args.batch / dt, "peak_rss_mb": [_peak_rss_mb()]}


def worker_ds(args) -> dict:
    import torch
    import torch.distributed as dist
    from transformers import AutoTokenizer

    from pipelines.classifier.base_model import resolve_base_model
    from pipelines.training import engine as dse

    dse.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    tok = AutoTokenizer.from_pretrained(resolve_base_model("minilm"))
    micro = args.batch // world
    batches, labels = _batches(tok, (args.steps + args.warmup) * args.batch, micro)
    model, cfg = _model(args.precision, labels)
    cfg = cfg.model_copy(update={"zero_stage": args.zero, "micro_batch_size": micro})
    engine = dse.initialize(
        model,
        dse.build_config(
            cfg, precision=args.precision, accelerator=dse.accelerator_name(), total_steps=args.steps + args.warmup
        ),
    )
    mine = batches[rank::world][: args.steps + args.warmup]
    dist.barrier()
    t0 = None
    for i, b in enumerate(mine):
        if i == args.warmup:
            dist.barrier()
            t0 = time.perf_counter()
        loss = engine(**b).loss
        engine.backward(loss)
        engine.step()
    dist.barrier()
    dt = time.perf_counter() - t0
    peaks: list = [None] * world
    dist.all_gather_object(peaks, _peak_rss_mb())
    dist.destroy_process_group()
    return {"samples_per_s": args.steps * args.batch / dt, "peak_rss_mb": peaks, "rank": rank}


def run_case(name: str, cmd: list[str], out: Path, env: dict) -> dict:
    print(f"... {name}", flush=True)
    proc = subprocess.run(cmd + ["--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{name} failed (exit {proc.returncode})")
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per case")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=16, help="global batch size (split across ranks)")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--worker", choices=["plain", "ds"], help=argparse.SUPPRESS)
    ap.add_argument("--zero", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    from pipelines.config import FinetuneConfig
    from pipelines.training import engine as dse

    if args.precision == "auto":
        args.precision = dse.resolve_precision(FinetuneConfig(), dse.accelerator_name())
    if args.worker:
        result = worker_plain(args) if args.worker == "plain" else worker_ds(args)
        if result.get("rank", 0) == 0:
            args.out.write_text(json.dumps(result))
        return

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    if dse.accelerator_name() == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    common = [
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
        "--precision",
        args.precision,
    ]
    ds = str(Path(sys.executable).with_name("deepspeed"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["plain PyTorch, 1 process"] = run_case(
            "plain", [sys.executable, __file__, "--worker", "plain", *common], Path(tmp) / "plain.json", env
        )
        for zero in (2, 3):
            for world in (1, 2):
                name = f"DeepSpeed ZeRO-{zero}, world size {world}"
                cmd = [
                    ds,
                    "--num_gpus",
                    str(world),
                    "--master_port",
                    str(29700 + 10 * zero + world),
                    __file__,
                    "--worker",
                    "ds",
                    "--zero",
                    str(zero),
                    *common,
                ]
                results[name] = run_case(name, cmd, Path(tmp) / f"ds{zero}{world}.json", env)
    base = results["plain PyTorch, 1 process"]["samples_per_s"]
    print(
        f"\nLoRA MiniLM-L6, global batch {args.batch}, {args.precision}, {args.steps} timed steps, "
        f"{os.cpu_count()} CPU cores, accelerator {dse.accelerator_name()}"
    )
    print(f"{'case':<34} {'samples/s':>10} {'vs plain':>9}  peak RSS per rank (MB)")
    for name, r in results.items():
        peaks = ", ".join(f"{p:,.0f}" for p in r["peak_rss_mb"])
        print(f"{name:<34} {r['samples_per_s']:>10.1f} {r['samples_per_s'] / base:>8.2f}x  {peaks}")


if __name__ == "__main__":
    main()
