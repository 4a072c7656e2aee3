"""``python -m pipelines.generate``: write the built-in support tickets (the embedded default data set).

A thin CLI; the logic and its description are in :mod:`pipelines.data.generator`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.config import GenerateConfig, load_params
from pipelines.data.generator import generate_tickets
from pipelines.errors import run_cli
from pipelines.io import atomic_outputs, write_parquet


def main(
    params: Annotated[Path, typer.Option(help="params.yaml to read the `generate` section from")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="Parquet file to write")] = Path("data/raw/tickets.parquet"),
    drift: Annotated[bool, typer.Option("--drift", help="generate the later, drifted period instead")] = False,
    n_rows: Annotated[int | None, typer.Option(help="override generate.n_rows")] = None,
    seed: Annotated[int | None, typer.Option(help="override generate.seed")] = None,
) -> None:
    """Write the synthetic support-ticket data set (the embedded default) to OUT."""
    cfg = load_params(params).generate
    updates = {k: v for k, v in {"n_rows": n_rows, "seed": seed}.items() if v is not None}
    cfg = GenerateConfig.model_validate({**cfg.model_dump(), **updates})
    df = generate_tickets(cfg, drift=drift)
    with atomic_outputs(out) as staged:
        write_parquet(df, staged[out])
    print(f"wrote {len(df):,} tickets ({'drift period' if drift else 'base period'}) to {out}")


if __name__ == "__main__":
    run_cli(main)
