"""``python -m pipelines.ingest``: read ``data.path``, map columns, bound, strip HTML, scrub PII, write Parquet.

A thin CLI; the logic and its description are in :mod:`pipelines.data.ingestion`. The source is read, cleaned
and written ``ingest.batch_rows`` rows at a time (:func:`~pipelines.data.ingestion.iter_source` feeding an
:class:`~pipelines.data.ingestion.IngestRun`), so the stage's memory is bounded by a batch, not by the file:
each batch becomes a Parquet part, and the parts are combined, row group by row group, into the one
``data/interim/dataset.parquet`` the downstream stages read (same rows, types and summary at any batch size).
Nothing is published unless every batch went through (:func:`~pipelines.io.atomic_outputs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.config import load_params
from pipelines.data import distributed
from pipelines.data.ingestion import CANONICAL, IngestRun, iter_source, read_snapshots
from pipelines.errors import run_cli
from pipelines.io import ParquetParts, atomic_outputs, write_json


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
    batches = iter_source(p.data, quarantine=p.ingest.bad_rows == "quarantine", batch_rows=p.ingest.batch_rows)
    with atomic_outputs(out, summary_out, metrics_out, quarantine_out) as staged:
        parts = ParquetParts(staged[out].with_name(staged[out].name + ".parts"), first=CANONICAL)
        # compute.engine: ray cleans the texts on a Ray cluster, same result
        with distributed.session(p.compute), open(staged[quarantine_out], "w", encoding="utf-8", newline="") as qf:
            run = IngestRun(p.data, p.ingest, distributed.cleaner(p.compute))
            for i, raw in enumerate(batches):
                rows, quarantined = run.add(raw)
                parts.add(rows)
                quarantined.to_csv(qf, index=False, header=i == 0)
            parts.add(run.add_snapshots(read_snapshots(p.data)))
        run.check()  # a refused source: before the parts are combined
        schema = parts.combine(staged[out])
        summary = run.finish(schema)
        summary["engine"] = p.compute.engine
        summary["bad_rows"]["file"] = str(quarantine_out)
        write_json(summary, staged[summary_out])
        write_json({k: v for k, v in summary.items() if isinstance(v, int)}, staged[metrics_out])
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
