"""``python -m pipelines.split``: train / val / test as the data gives them, or by time, group or stratified random.

A thin CLI; the logic and its description are in :mod:`pipelines.data.splitting`. The rows of the labelled
production snapshots (``data.snapshots_dir``) are told apart by their ids and never put in test. The split is
decided on the key columns of every row (:func:`~pipelines.data.splitting.split_rows`); the other columns are
taken per split from Arrow buffers, never held as one pandas frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.config import load_params
from pipelines.data.snapshots import used_ids
from pipelines.data.splitting import KEY_COLUMNS, split_rows
from pipelines.errors import run_cli
from pipelines.io import atomic_outputs, read_parquet, with_pandas_metadata, write_json, write_rows

TAKE_ROWS = 50_000  # rows of a split copied out of the input at a time


def main(
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    data: Annotated[Path, typer.Option(help="interim Parquet")] = Path("data/interim/dataset.parquet"),
    out_dir: Annotated[Path, typer.Option(help="directory for train/val/test Parquet")] = Path("data/processed/split"),
    report: Annotated[Path, typer.Option(help="split report (JSON)")] = Path("reports/split.json"),
) -> None:
    """Split the interim data into train / val / test: as given by the data, or by time, group or stratified random."""
    import pyarrow.parquet as pq

    loaded = load_params(params)
    present = set(pq.read_schema(data).names) if data.exists() else set()
    keys = read_parquet(data, columns=[c for c in KEY_COLUMNS if c in present])  # a missing file: a clear error
    # labelled production rows (feedback: untrusted labels) may train but never enter the gate's test split
    rows, rep = split_rows(keys, loaded.split, used_ids(loaded.data.snapshots_dir))
    del keys
    table = pq.read_table(data)  # every column, as compact Arrow buffers (no Python object per text)
    with atomic_outputs(out_dir, report) as staged:
        table = table.drop_columns([c for c in ("split",) if c in present])
        schema = with_pandas_metadata(table.schema)
        staged[out_dir].mkdir(parents=True, exist_ok=True)
        for name, positions in rows.items():
            write_rows(table, positions, staged[out_dir] / f"{name}.parquet", schema, TAKE_ROWS)  # bounded copies
        write_json(rep, staged[report])
    sizes = ", ".join(f"{k} {v:,}" for k, v in rep["rows"].items())
    print(f"split: {rep['strategy']} ({rep['reason']}): {sizes}")


if __name__ == "__main__":
    run_cli(main)
