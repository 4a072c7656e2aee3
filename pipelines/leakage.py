"""``python -m pipelines.leakage``: leaky columns, cross-split duplicates, group/time overlap; fails on blockers.

A thin CLI; the logic and its description are in :mod:`pipelines.data.leakage_checks`. The splits are never read
whole: the checks read them by column and in batches (:func:`~pipelines.data.leakage_checks.audit_splits`), and the
model-ready splits are the rows they keep, copied from the input files batch by batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from joblib import parallel_config

from pipelines.config import load_params
from pipelines.data import distributed
from pipelines.data.leakage_checks import Splits, audit_splits
from pipelines.data.snapshots import used_ids
from pipelines.data.splitting import SPLITS
from pipelines.errors import GateFailed, run_cli
from pipelines.io import atomic_outputs, copy_rows, parquet_columns, remove_outputs, write_json

COPY_ROWS = 50_000  # rows of a split copied to its model-ready file at a time


def main(
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    split_dir: Annotated[Path, typer.Option(help="raw splits from the split stage")] = Path("data/processed/split"),
    out_dir: Annotated[Path, typer.Option(help="where the model-ready splits go")] = Path("data/processed"),
    report: Annotated[Path, typer.Option(help="findings (JSON)")] = Path("reports/leakage.json"),
    metrics: Annotated[Path, typer.Option(help="counts (JSON, a DVC metric)")] = Path("metrics/leakage.json"),
    split_report: Annotated[
        Path, typer.Option(help="the split stage's report: given splits are audited as given (if absent: not)")
    ] = Path("reports/split.json"),
) -> None:
    """Audit the splits for leakage; write model-ready splits, or fail (exit 3) on a blocker."""
    loaded = load_params(params)
    cfg = loaded.leakage
    parts = {k: split_dir / f"{k}.parquet" for k in SPLITS}
    splits = Splits(parts)
    splits.columns()  # a missing or unreadable split: a clear error before any work
    given = split_report.is_file() and json.loads(split_report.read_text(encoding="utf-8")).get("strategy") == "given"
    with (
        distributed.session(loaded.compute),  # compute.engine: ray computes the signatures on a Ray cluster
        parallel_config(n_jobs=cfg.n_jobs),  # joblib's workers for the n-gram counts and the single-column CV
    ):
        keep, rep = audit_splits(
            splits,
            cfg,
            given=given,
            feedback_ids=used_ids(loaded.data.snapshots_dir),
            near=distributed.near_search(loaded.compute),
        )
    targets = [out_dir / f"{k}.parquet" for k in SPLITS]
    with atomic_outputs(report, metrics, *([] if not rep["passed"] else targets)) as staged:
        write_json(rep, staged[report])
        write_json(rep["counts"], staged[metrics])
        if rep["passed"]:
            for k, t in zip(SPLITS, targets):
                columns = [c for c in parquet_columns(parts[k]) if c not in rep["dropped_columns"]]
                copy_rows(parts[k], keep[k], staged[t], columns, COPY_ROWS)  # bounded copies of the kept rows
    for f in rep["findings"]:
        print(f"  [{f['severity']:>7}] {f['check']}: {f['detail']} -> {f['action']}")
    if not rep["passed"]:
        remove_outputs(*targets)  # splits of an earlier run must not outlive a failed gate (training would read them)
        raise GateFailed(
            f"leakage check found {rep['counts']['blockers']} blocker(s); see {report}. "
            "Fix the data, or change the leakage.*_action params if this is intended."
        )
    print(
        f"leakage: {rep['counts']['findings']} findings, no blockers{' (given splits)' if given else ''}; "
        f"dropped columns {rep['dropped_columns']}; "
        f"removed {rep['counts']['removed_eval_rows']:,} duplicate rows from val/test -> {out_dir}"
    )


if __name__ == "__main__":
    run_cli(main)
