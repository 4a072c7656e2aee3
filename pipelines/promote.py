"""``python -m pipelines.promote``: re-run the promotion gate on the challenger, promote a version, or roll back.

    python -m pipelines.promote                # run the gate on the current challenger
    python -m pipelines.promote --version 3    # promote version 3 by hand
    python -m pipelines.promote --rollback     # champion -> previous champion

A thin CLI: it prints what :func:`pipelines.registry.promotion.run_promotion` (the dispatch it shares with
the ``promote`` flow) did; the gate's rules are described in :mod:`pipelines.registry.gate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipelines.config import load_params
from pipelines.errors import run_cli
from pipelines.registry import promotion
from pipelines.registry.gate import fail_on_refusal


def main(
    version: Annotated[Optional[str], typer.Option(help="promote this version to champion by hand")] = None,
    rollback_: Annotated[bool, typer.Option("--rollback", help="move champion back to the previous champion")] = False,
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    test: Annotated[Path, typer.Option(help="the test split the gate compares on")] = Path(
        "data/processed/test.parquet"
    ),
    report: Annotated[Path, typer.Option(help="markdown decision")] = Path("reports/promotion.md"),
    decision_json: Annotated[Path, typer.Option(help="JSON decision")] = Path("reports/promotion.json"),
) -> None:
    """Run the promotion gate on the challenger, or promote a version by hand, or roll back."""
    cfg = load_params(params)
    result = promotion.run_promotion(
        cfg,
        version=version,
        rollback=rollback_,
        test=test,
        report=report,
        decision_json=decision_json,
        requested_by="python -m pipelines.promote --version",
    )
    print(result.message)
    fail_on_refusal(result.decision, cfg)


if __name__ == "__main__":
    run_cli(main)
