"""``python -m pipelines.ingest``: read ``data.path``, map columns, strip HTML, scrub PII, write typed Parquet.

A thin CLI; the logic and its description are in :mod:`pipelines.data.ingestion`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.config import load_params
from pipelines.data.ingestion import ingest, read_snapshots, read_source
from pipelines.errors import run_cli
from pipelines.io import atomic_outputs, write_json, write_parquet


def main(
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="interim Parquet to write")] = Path("data/interim/dataset.parquet"),
    summary_out: Annotated[Path, typer.Option(help="row counts, class counts and schema (JSON)")] = Path(
        "reports/ingest.json"
    ),
    metrics_out: Annotated[Path, typer.Option(help="row counts (JSON, a DVC metric)")] = Path("metrics/ingest.json"),
) -> None:
    """Read data.path, map columns, strip HTML, scrub PII and write typed Parquet."""
    p = load_params(params)
    df, summary = ingest(read_source(p.data), p.data, p.ingest, read_snapshots(p.data))
    with atomic_outputs(out, summary_out, metrics_out) as staged:
        write_parquet(df, staged[out])
        write_json(summary, staged[summary_out])
        write_json({k: v for k, v in summary.items() if isinstance(v, int)}, staged[metrics_out])
    print(
        f"ingest: {summary['rows_read']:,} rows read, {summary['rows_written']:,} written to {out} "
        f"({summary['n_classes']} classes, {summary['pii_rows']:,} rows had PII scrubbed, "
        f"{summary['empty_text_dropped']:,} empty texts dropped)"
    )
    for col, dtype in summary["schema"].items():
        print(f"  {col:<20} {dtype}")


if __name__ == "__main__":
    run_cli(main)
