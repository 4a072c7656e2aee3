"""A monitoring pass's log reading at two deployment ages: 10k rows of history vs 1M rows (same window).

Writes two synthetic prediction logs (one date partition per day, ``--per-day`` answers a day, with feedback
for a third of them) and times, side by side, what a pass reads: ``read_window_frames`` + ``current_window``
(the pass itself, the Evidently part, depends only on the window size), and for contrast the whole-log read
that every pass used to do. Target: the pass over 1M rows within 2x of the pass over 10k rows.

    .venv/bin/python benchmarks/monitoring_scaling.py            # 10k and 1M rows (writing 1M takes ~1 min)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, not benchmarks/serving.py

from monitoring.windows import current_window, read_log_frames, read_window_frames
from pipelines.config import MonitorConfig
from serving.prediction_log import FEEDBACK, PREDICTIONS, SCHEMAS, write_table_part

NOW = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
CLASSES = ["billing", "technical", "account", "shipping"]


def write_log(root: Path, rows: int, per_day: int) -> None:
    rng = np.random.default_rng(0)
    days = max(1, rows // per_day)
    for d in range(days):
        day = NOW - timedelta(days=days - 1 - d)
        n = per_day
        ts = [day - timedelta(seconds=int(s)) for s in sorted(rng.integers(0, 3600, n))[::-1]]
        ids = [f"d{d}-{i}" for i in range(n)]
        empty = SCHEMAS[PREDICTIONS].empty_table().to_pydict()
        cols = {name: [None] * n for name in empty}
        cols.update(
            ts=ts, request_id=ids, item=[0] * n, model_name=["ticket-router"] * n, model_version=["1"] * n,
            text=[f"ticket {i} about my invoice" for i in range(n)], label=list(rng.choice(CLASSES, n)),
        )  # fmt: skip
        schema = SCHEMAS[PREDICTIONS]
        for field in schema:
            if cols[field.name][0] is None and not field.nullable:
                cols[field.name] = [_filler(field.type)] * n
        write_table_part(root, PREDICTIONS, pa.Table.from_pydict(cols, schema=schema), day)
        k = n // 3
        fb = {"ts": ts[:k], "request_id": ids[:k], "item": [0] * k, "true_label": list(rng.choice(CLASSES, k))}
        fschema = SCHEMAS[FEEDBACK]
        fb = {f.name: fb.get(f.name, [_filler(f.type)] * k) for f in fschema}
        write_table_part(root, FEEDBACK, pa.Table.from_pydict(fb, schema=fschema), day)


def _filler(t: pa.DataType) -> object:
    if pa.types.is_floating(t):
        return 0.5
    if pa.types.is_integer(t):
        return 1
    if pa.types.is_boolean(t):
        return False
    if pa.types.is_list(t):
        return []
    return ""


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs=2, default=[10_000, 1_000_000])
    ap.add_argument("--per-day", type=int, default=3_300)
    ap.add_argument("--window-size", type=int, default=500)
    args = ap.parse_args()
    cfg = MonitorConfig(window_size=args.window_size, min_window_rows=20)
    out = {}
    with tempfile.TemporaryDirectory(prefix="monitor-scaling-") as tmp:
        for n in args.sizes:
            root = Path(tmp) / f"n{n}"
            t0 = time.perf_counter()
            write_log(root, n, args.per_day)
            print(f"wrote a log of {n:,} rows in {time.perf_counter() - t0:.0f} s", flush=True)
            window = timed(lambda r=root: current_window(*read_window_frames(r, "1", cfg, NOW), "1", cfg, NOW))
            whole = timed(lambda r=root: current_window(*read_log_frames(r), "1", cfg, NOW), repeat=1)
            out[n] = (window, whole)
    (a, b) = args.sizes
    print("\n| log rows | pass (window read) | pass (whole log read, before) |\n|---|---|---|")
    for n, (w, h) in out.items():
        print(f"| {n:,} | {w * 1000:.0f} ms | {h * 1000:.0f} ms |")
    print(f"\nwindow read: {b:,} rows / {a:,} rows = {out[b][0] / out[a][0]:.2f}x (target <= 2)")
    print(f"whole-log read: {out[b][1] / out[a][1]:.1f}x")


if __name__ == "__main__":
    main()
