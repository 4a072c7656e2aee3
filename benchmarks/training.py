"""Training throughput and memory: the DeepSpeed path vs a plain PyTorch loop, measured side by side.

    .venv/bin/python benchmarks/training.py [--model classifier|lm|both] [--steps 20] [--warmup 2]
                                            [--batch N] [--precision auto|bf16|fp32] [--rounds 1]

For each model family (``--model``, default ``both``: the classifier's table, then the LM's), runs, on the
same LoRA model, the same data and the same global batch:

* a plain PyTorch loop (one process, all cores, torch.optim.AdamW, bf16 autocast when the precision is bf16);
* the DeepSpeed engine (pipelines.training.engine) with ZeRO-2 and ZeRO-3, world size 1 and 2, launched with
  the ``deepspeed`` launcher (DS_ACCELERATOR=cpu without a GPU); each rank starts as the pipeline's workers do
  (pipelines.training.ranks.start: gloo, torch threads = cores // local ranks).

Families:

* ``classifier``: LoRA MiniLM-L6 (pipelines.classifier.lora.build_model) on generated tickets, global batch 16
  by default; throughput in samples/s.
* ``lm``: the generative triage model: the ``llm.base_model`` causal LM (SmolLM2-135M-Instruct) with the LoRA
  adapter of pipelines.llm.lora.build_lora_model, on the sft_data stage's data/sft/train.jsonl (or generated
  tickets when it is missing) tokenised as SFT does (encode_dataset, LengthGroupedBatchSampler, collator_for),
  loss pipelines.llm.sft.causal_lm_loss; the DeepSpeed config from params ``sft``. Global batch by default
  ``sft.micro_batch_size x sft.world_size``, what the pipeline trains with (4 x 2 = 8: micro 8 on 1 rank, 4 on
  each of 2); mind the memory of a larger one in one process (16 peaked at 11 GB RSS); throughput in real
  (non-padding) tokens/s. Every case runs the same global batches: with 2 ranks each takes every other row of a
  length-sorted global batch (the pipeline's sampler instead gives each rank its own micro-batch, so its ranks
  can wait on each other; that cost is not measured here).

``--warmup`` steps run first and are not timed: the first batch is the longest (memory peaks early), and
ZeRO-3's second step costs about 3x a normal one (a one-off, as DeepSpeed settles its parameter fetching), so
the default is 2. Prints, per case, the throughput, its ratio to the plain loop, the mean seconds per step split
into forward (loss), backward and optimizer step, peak RSS per rank, and how many cores *other* processes
used meanwhile (busy CPU time from /proc/stat less this benchmark's own): another job on the same cores skews
every ratio, and a 2-thread process suffers more from it than two 1-thread ranks.
``--rounds N`` runs the cases N times, alternating their order, and keeps each case's fastest round.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PLAIN = "plain PyTorch, 1 process"
PORTS = {"classifier": 29700, "lm": 29750}


@dataclass
class Job:
    """What one process trains: the LoRA model, its DeepSpeed section, this rank's batches and the loss."""

    model: Any
    cfg: Any  # a DeepSpeedConfig section (finetune / sft)
    batches: list[dict]
    loss: Callable[[Any, dict], tuple[Any, int]]  # (model or engine, batch) -> (loss, units counted)
    data: str


# --------------------------------------------------------------------------- the two workloads
def _classifier_batches(tokenizer, n_rows: int, batch: int, seed: int = 0):
    from transformers import DataCollatorWithPadding

    from pipelines.config import GenerateConfig
    from pipelines.data.generator import CATEGORIES, generate_tickets

    df = generate_tickets(GenerateConfig(n_rows=max(100, n_rows), n_customers=max(10, n_rows // 4), seed=seed))
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


def classifier_job(args, world: int, rank: int) -> Job:
    from transformers import AutoTokenizer

    from pipelines.classifier.base_model import resolve_base_model
    from pipelines.classifier.lora import build_model
    from pipelines.config import FinetuneConfig

    n = args.steps + args.warmup
    tok = AutoTokenizer.from_pretrained(resolve_base_model("minilm"))
    batches, labels = _classifier_batches(tok, n * args.batch, args.batch // world)
    cfg = FinetuneConfig(precision=args.precision)
    model = build_model(resolve_base_model(cfg.base_model), list(labels), cfg)
    return Job(model, cfg, batches[rank::world][:n], lambda m, b: (m(**b).loss, len(b["input_ids"])), "generated")


def lm_job(args, world: int, rank: int) -> Job:
    from benchmarks import _lm

    p = _lm.params()
    batches, data = _lm.batches(p, args.steps + args.warmup, args.batch, world, rank, p.sft.seed)
    return Job(_lm.model(p), p.sft, batches, _lm.loss, data)


JOBS = {"classifier": classifier_job, "lm": lm_job}
UNITS = {"classifier": "samples", "lm": "tokens"}


# --------------------------------------------------------------------------- one case (a process or a rank)
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args) -> dict:
    import torch

    from pipelines.training import engine as dse

    if args.worker == "ds":
        import torch.distributed as dist

        from pipelines.training import ranks

        me = ranks.start()  # as the pipeline's workers: gloo, torch threads = cores // local ranks
        world, rank = me.world, me.rank
    else:
        torch.set_num_threads(os.cpu_count() or 1)
        world, rank = 1, 0
    torch.manual_seed(0)
    job = JOBS[args.model](args, world, rank)
    n = args.steps + args.warmup
    if args.worker == "ds":
        section = job.cfg.model_copy(update={"zero_stage": args.zero, "micro_batch_size": args.batch // world})
        accelerator = dse.accelerator_name()
        model = dse.initialize(
            job.model, dse.build_config(section, precision=args.precision, accelerator=accelerator, total_steps=n)
        )

        def backward(loss):
            model.backward(loss)

        def step():
            model.step()

    else:
        model = job.model
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=job.cfg.learning_rate, weight_decay=job.cfg.weight_decay)

        def backward(loss):
            loss.backward()

        def step():
            torch.nn.utils.clip_grad_norm_(trainable, job.cfg.gradient_clipping)
            opt.step()
            opt.zero_grad(set_to_none=True)

    model.train()  # from_pretrained leaves eval mode: train as the pipeline does (LoRA dropout on)
    bf16 = args.worker == "plain" and args.precision == "bf16"
    phases = torch.zeros(3, dtype=torch.float64)  # forward (loss), backward, step: timed steps only
    units, step_s = 0, []
    if world > 1:
        dist.barrier()
    for i, batch in enumerate(job.batches[:n]):
        if i == args.warmup:
            if world > 1:
                dist.barrier()
            t0 = time.perf_counter()
        ta = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, counted = job.loss(model, batch)
        tb = time.perf_counter()
        backward(loss)
        tc = time.perf_counter()
        step()
        td = time.perf_counter()
        step_s.append(td - ta)
        if i >= args.warmup:
            units += counted
            phases += torch.tensor([tb - ta, tc - tb, td - tc], dtype=torch.float64)
    if world > 1:
        dist.barrier()
    dt = time.perf_counter() - t0
    per_rank = [(_peak_rss_mb(), units, phases.tolist(), step_s)]
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, per_rank[0])
        per_rank = gathered
        dist.destroy_process_group()
    return {
        "rank": rank,
        "units_per_s": sum(r[1] for r in per_rank) / dt,
        "step_s": dt / args.steps,
        "phases_s": [max(r[2][k] for r in per_rank) / args.steps for k in range(3)],
        "peak_rss_mb": [r[0] for r in per_rank],
        "step_times_s": [r[3] for r in per_rank],
        "threads": torch.get_num_threads(),
        "data": job.data,
    }


# --------------------------------------------------------------------------- the driver
def _busy_s() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux), or None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def _own_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_case(name: str, cmd: list[str], out: Path, env: dict) -> dict:
    """One case in its own process(es); its result, with ``others_cores``: the cores other processes used."""
    print(f"... {name}", flush=True)
    busy, own, t = _busy_s(), _own_s(), time.perf_counter()
    proc = subprocess.run(cmd + ["--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{name} failed (exit {proc.returncode})")
    others = None if busy is None else max(0.0, _busy_s() - busy - (_own_s() - own)) / (time.perf_counter() - t)
    return {**json.loads(out.read_text()), "others_cores": others}


def default_batch(family: str) -> int:
    if family == "classifier":
        return 16
    from benchmarks import _lm

    sft = _lm.params().sft
    return sft.micro_batch_size * sft.world_size


def resolve(family: str, precision: str) -> str:
    from pipelines.training import engine as dse

    if precision != "auto":
        return precision
    if family == "classifier":
        from pipelines.config import FinetuneConfig

        return dse.resolve_precision(FinetuneConfig(), dse.accelerator_name())
    from benchmarks import _lm

    return dse.resolve_precision(_lm.params().sft, dse.accelerator_name())


def measure(family: str, args, env: dict) -> None:
    """Run the five cases of ``family`` one after another and print its table."""
    from pipelines.training import engine as dse

    batch = args.batch or default_batch(family)
    if batch % 2:
        raise SystemExit(f"--batch must be even (it is split across 2 ranks), got {batch}")
    precision = resolve(family, args.precision)
    common = ["--model", family, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    common += ["--batch", str(batch), "--precision", precision]
    ds = str(Path(sys.executable).with_name("deepspeed"))
    cases = [(PLAIN, [sys.executable, __file__, "--worker", "plain", *common])]
    for zero in (2, 3):
        for world in (1, 2):
            port = str(PORTS[family] + 10 * zero + world)
            cmd = [ds, "--num_gpus", str(world), "--master_port", port, __file__, "--worker", "ds", "--zero", str(zero)]
            cases.append((f"DeepSpeed ZeRO-{zero}, world size {world}", cmd + common))
    runs: dict[str, list[dict]] = {name: [] for name, _ in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (name, cmd) in enumerate(cases if r % 2 == 0 else cases[::-1]):
                runs[name].append(run_case(f"{family}, round {r + 1}: {name}", cmd, Path(tmp) / f"{r}-{i}.json", env))
    if args.json:
        args.json.with_name(f"{args.json.stem}-{family}{args.json.suffix}").write_text(json.dumps(runs, indent=2))
    results = {name: max(rs, key=lambda x: x["units_per_s"]) for name, rs in runs.items()}
    base = results[PLAIN]["units_per_s"]
    what = "LoRA MiniLM-L6 classifier" if family == "classifier" else "LoRA SmolLM2-135M-Instruct SFT"
    print(
        f"\n{what}, global batch {batch}, {precision}, {args.steps} timed steps after {args.warmup} warm-up, "
        f"best of {args.rounds} round(s), {os.cpu_count()} CPU cores, accelerator {dse.accelerator_name()}; "
        f"data: {results[PLAIN]['data']}"
    )
    unit = f"{UNITS[family]}/s"
    print(
        f"{'case':<34} {unit:>10} {'vs plain':>9} {'s/step':>7} {'fwd/bwd/step s':>17} {'others':>6}  "
        "peak RSS per rank (MB)"
    )
    for name, r in results.items():
        peaks = ", ".join(f"{p:,.0f}" for p in r["peak_rss_mb"])
        split = "/".join(f"{s:.2f}" for s in r["phases_s"])
        others = "?" if r["others_cores"] is None else f"{r['others_cores']:.2f}"
        print(
            f"{name:<34} {r['units_per_s']:>10.1f} {r['units_per_s'] / base:>8.2f}x "
            f"{r['step_s']:>7.2f} {split:>17} {others:>6}  {peaks}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="both", choices=["classifier", "lm", "both"], help="which family to measure")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per case")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (ZeRO-3's second step is slow)")
    ap.add_argument(
        "--batch",
        type=int,
        default=None,
        help="global batch size, split across ranks (default: classifier 16; lm sft.micro_batch_size x sft.world_size)",
    )
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="auto: as the stage would")
    ap.add_argument("--rounds", type=int, default=1, help="run every case this often (alternating), keep the fastest")
    ap.add_argument("--json", type=Path, help="also write each family's raw results to <stem>-<family>.json")
    ap.add_argument("--worker", choices=["plain", "ds"], help=argparse.SUPPRESS)
    ap.add_argument("--zero", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        ap.error("--steps and --rounds must be >= 1, --warmup >= 0")

    if args.worker:
        result = worker(args)
        if result["rank"] == 0:
            args.out.write_text(json.dumps(result))
        return

    from pipelines.training import engine as dse

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    if dse.accelerator_name() == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    for family in ("classifier", "lm") if args.model == "both" else (args.model,):
        measure(family, args, env)


if __name__ == "__main__":
    main()
