"""``python -m pipelines.split``: train / val / test as the data gives them, or by time, group or stratified random.

A thin CLI; the logic and its description are in :mod:`pipelines.data.splitting`. The rows of the labelled
production snapshots (``data.snapshots_dir``) are told apart by their ids and never put in test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.config import load_params
from pipelines.data.snapshots import used_ids
from pipelines.data.splitting import split_frame
from pipelines.errors import run_cli
from pipelines.io import atomic_outputs, read_parquet, write_json, write_parquet


def main(
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    data: Annotated[Path, typer.Option(help="interim Parquet")] = Path("data/interim/dataset.parquet"),
    out_dir: Annotated[Path, typer.Option(help="directory for train/val/test Parquet")] = Path("data/processed/split"),
    report: Annotated[Path, typer.Option(help="split report (JSON)")] = Path("reports/split.json"),
) -> None:
    """Split the interim data into train / val / test: as given by the data, or by time, group or stratified random."""
    loaded = load_params(params)
    # labelled production rows (feedback: untrusted labels) may train but never enter the gate's test split
    parts, rep = split_frame(read_parquet(data), loaded.split, used_ids(loaded.data.snapshots_dir))
    with atomic_outputs(out_dir, report) as staged:
        for name, part in parts.items():
            write_parquet(part, staged[out_dir] / f"{name}.parquet")
        write_json(rep, staged[report])
    sizes = ", ".join(f"{k} {v:,}" for k, v in rep["rows"].items())
    print(f"split: {rep['strategy']} ({rep['reason']}): {sizes}")


if __name__ == "__main__":
    run_cli(main)
