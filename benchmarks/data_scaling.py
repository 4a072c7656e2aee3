"""How the data stages' time and peak memory grow with the data (issue: linear-cost data stages).

Runs ``generate -> ingest -> validate -> split -> leakage`` (the stages of dvc.yaml, as DVC runs them: one
process each, ``python -m pipelines.<stage>``) on the built-in generator at each size, in a scratch project
per size, and prints per stage the wall time, the peak resident memory of its process, and the growth
exponent between consecutive sizes (``log(t2 / t1) / log(n2 / n1)``: 1 is linear, 2 quadratic).

Targets: every stage's time at 100k <= 6x its time at 20k; peak memory at 500k <= 1.5 GB; leakage at
100k <= 30 s. Measure on an idle machine: the figures are side by side in one run, so load skews all sizes.

    .venv/bin/python benchmarks/data_scaling.py                 # 20k, 100k, 500k (about 15-25 min here)
    .venv/bin/python benchmarks/data_scaling.py --sizes 20000 100000
    .venv/bin/python benchmarks/data_scaling.py --sizes 100000 --workdir /tmp/scaling   # keep the projects
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["generate", "ingest", "validate", "split", "leakage"]
ARGS = {"generate": ["--out", "data/raw/tickets.parquet"]}


def run_stage(stage: str, cwd: Path) -> tuple[float, float]:
    """(seconds, peak RSS in GB) of one stage's process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", f"pipelines.{stage}", *ARGS.get(stage, [])],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{stage} failed in {cwd} (exit {proc.returncode}):\n{out[-3000:]}")
    return seconds, usage.ru_maxrss / 1024**2  # Linux: KiB


def project(tmp: Path, rows: int) -> Path:
    cwd = tmp / f"n{rows}"
    cwd.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["generate"]["n_rows"] = rows
    (cwd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for d in ("data/raw", "data/interim", "data/processed", "reports", "metrics"):
        (cwd / d).mkdir(parents=True)
    return cwd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000, 500_000])
    ap.add_argument("--json", type=Path, default=ROOT / "reports" / "benchmarks" / "data_scaling.json")
    ap.add_argument(
        "--workdir", type=Path, default=None,
        help="keep each size's scratch project here (n<rows>/, to re-run or profile one stage); default: a temp dir",
    )  # fmt: skip
    args = ap.parse_args()
    sizes = sorted(args.sizes)
    results: dict[str, dict[int, tuple[float, float]]] = {s: {} for s in STAGES}
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="data-scaling-") as tmp:
        for n in sizes:
            cwd = project(args.workdir or Path(tmp), n)
            for stage in STAGES:
                results[stage][n] = run_stage(stage, cwd)
                t, gb = results[stage][n]
                print(f"  {n:>9,} rows  {stage:<9} {t:8.1f} s  {gb:5.2f} GB", flush=True)
    print(f"\n| stage | {' | '.join(f'{n:,} rows' for n in sizes)} | growth exponent (time) | peak memory |")
    print(f"|---|{'---|' * len(sizes)}---|---|")
    report = {}
    for stage in STAGES:
        r = results[stage]
        exps = [
            math.log(r[b][0] / r[a][0]) / math.log(b / a) for a, b in zip(sizes, sizes[1:], strict=False) if r[a][0] > 0
        ]
        cells = " | ".join(f"{r[n][0]:.1f} s" for n in sizes)
        print(f"| {stage} | {cells} | {', '.join(f'{e:.2f}' for e in exps)} | {max(g for _, g in r.values()):.2f} GB |")
        report[stage] = {str(n): {"seconds": r[n][0], "peak_gb": r[n][1]} for n in sizes} | {"exponents": exps}
    if 20_000 in sizes and 100_000 in sizes:
        print("\ntime at 100k / time at 20k (target <= 6):")
        for stage in STAGES:
            print(f"  {stage:<9} {results[stage][100_000][0] / results[stage][20_000][0]:.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
