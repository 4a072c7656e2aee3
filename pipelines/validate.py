"""``python -m pipelines.validate``: the Great Expectations suite built from params; fails the pipeline on a breach.

A thin CLI; the logic and its description are in :mod:`pipelines.data.quality`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.config import load_params
from pipelines.data.quality import SUITE_COLUMNS, run_validation
from pipelines.errors import GateFailed, run_cli
from pipelines.io import atomic_outputs, read_parquet, write_json


def main(
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    data: Annotated[Path, typer.Option(help="interim Parquet to validate")] = Path("data/interim/dataset.parquet"),
    out_dir: Annotated[Path, typer.Option(help="where result JSON and Data Docs go")] = Path("reports/validation"),
) -> None:
    """Run the Great Expectations suite on the interim data; fail (exit 3) if any expectation fails."""
    import pyarrow.parquet as pq

    cfg = load_params(params).validate_
    present = set(pq.read_schema(data).names) if data.exists() else set()
    # every row, but only the columns the suite checks (not the source's other columns); a missing file: a clear error
    df = read_parquet(data, columns=[c for c in SUITE_COLUMNS if c in present])
    with atomic_outputs(out_dir) as staged:
        outcome = run_validation(df, cfg, docs_dir=staged[out_dir] / "data_docs")
        write_json(
            {"success": outcome.success, "results": outcome.results, "great_expectations": outcome.raw},
            staged[out_dir] / "result.json",
        )
    index = out_dir / "data_docs" / "index.html"
    if not outcome.success:
        # Keep the report for the user to read, but as a failed stage DVC will not cache it.
        raise GateFailed(
            f"data validation failed ({data}).\n{outcome.summary()}\nSee {out_dir}/result.json and {index}"
        )
    print(f"validate: all {len(outcome.results)} expectations passed on {len(df):,} rows; Data Docs: {index}")


if __name__ == "__main__":
    run_cli(main)
