"""``python -m pipelines.ingest``: read ``data.path``, map columns, bound, strip HTML, scrub PII, write Parquet.

A thin CLI; the logic and its description are in :mod:`pipelines.data.ingestion`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.config import load_params
from pipelines.data import distributed
from pipelines.data.ingestion import ingest_with_quarantine, read_snapshots, read_source
from pipelines.errors import run_cli
from pipelines.io import atomic_outputs, write_json, write_parquet


def main(
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="interim Parquet to write")] = Path("data/interim/dataset.parquet"),
    summary_out: Annotated[Path, typer.Option(help="row counts, class counts and schema (JSON)")] = Path(
        "reports/ingest.json"
    ),
    metrics_out: Annotated[Path, typer.Option(help="row counts (JSON, a DVC metric)")] = Path("metrics/ingest.json"),
    quarantine_out: Annotated[
        Path, typer.Option(help="broken records set aside by ingest.bad_rows: quarantine (CSV; header only if none)")
    ] = Path("data/interim/quarantine.csv"),
) -> None:
    """Read data.path (or its split files), map columns, strip HTML, scrub PII and write typed Parquet."""
    p = load_params(params)
    raw = read_source(p.data, quarantine=p.ingest.bad_rows == "quarantine")
    with distributed.session(p.compute):  # compute.engine: ray cleans the texts on a Ray cluster, same result
        df, summary, quarantined = ingest_with_quarantine(
            raw, p.data, p.ingest, read_snapshots(p.data), distributed.cleaner(p.compute)
        )
    summary["engine"] = p.compute.engine
    summary["bad_rows"]["file"] = str(quarantine_out)
    with atomic_outputs(out, summary_out, metrics_out, quarantine_out) as staged:
        write_parquet(df, staged[out])
        write_json(summary, staged[summary_out])
        write_json({k: v for k, v in summary.items() if isinstance(v, int)}, staged[metrics_out])
        quarantined.to_csv(staged[quarantine_out], index=False)
    print(
        f"ingest: {summary['rows_read']:,} rows read, {summary['rows_written']:,} written to {out} "
        f"({summary['n_classes']} classes, {summary['pii_rows']:,} rows had PII scrubbed, "
        f"{summary['empty_text_dropped']:,} empty texts dropped)"
    )
    if "split_rows" in summary:
        print("  given splits: " + ", ".join(f"{k} {v:,}" for k, v in summary["split_rows"].items()))
    long = summary["over_long"]
    if long["rows"]:
        done = "cut to" if long["action"] == "truncate" else "dropped: above"
        print(
            f"  {long['rows']:,} over-long texts {done} ingest.max_text_chars={long['max_text_chars']:,} "
            f"(longest {long['longest_chars']:,} chars; first: {long['first']})"
        )
    bad = summary["bad_rows"]
    if bad["quarantined"]:
        why = ", ".join(f"{k} {v:,}" for k, v in bad["reasons"].items())
        print(f"  {bad['quarantined']:,} broken rows quarantined to {quarantine_out} ({why})")
    for col, dtype in summary["schema"].items():
        print(f"  {col:<20} {dtype}")


if __name__ == "__main__":
    run_cli(main)
