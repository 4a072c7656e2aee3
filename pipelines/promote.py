"""``python -m pipelines.promote``: re-run the promotion gate on the challenger, promote a version, or roll back.

    python -m pipelines.promote                          # run the classifier's gate on its current challenger
    python -m pipelines.promote --version 3              # promote version 3 by hand
    python -m pipelines.promote --rollback --reason "..." # champion -> previous champion; never re-promoted
    python -m pipelines.promote --family llm --rollback  # the same on the generative model's registered model

A thin CLI: it prints what :func:`pipelines.promotion.run_promotion` (the dispatch it shares with
the ``promote`` flow) did; the gate's rules are described in :mod:`pipelines.classifier.gate` and
:mod:`pipelines.llm.registration`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipelines import promotion
from pipelines.config import load_params
from pipelines.errors import run_cli
from pipelines.registry.families import Family
from pipelines.registry.gate import fail_on_refusal


def main(
    family: Annotated[
        Family, typer.Option(help="which registered model: classifier (register) or llm (register_llm)")
    ] = "classifier",
    version: Annotated[Optional[str], typer.Option(help="promote this version to champion by hand")] = None,
    rollback_: Annotated[bool, typer.Option("--rollback", help="move champion back to the previous champion")] = False,
    reason: Annotated[
        Optional[str], typer.Option(help="why (recorded on the version promoted by hand or rolled back)")
    ] = None,
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    test: Annotated[
        Optional[Path],
        typer.Option(help="gate rows (default: data/processed/test.parquet; llm: data/sft/test.jsonl)"),
    ] = None,
    eval_metrics: Annotated[
        Optional[Path], typer.Option(help="llm only: the challenger's scores (default: metrics/llm_eval.json)")
    ] = None,
    report: Annotated[
        Optional[Path],
        typer.Option(help="markdown decision (default: reports/promotion.md; llm: reports/promotion_llm.md)"),
    ] = None,
    decision_json: Annotated[
        Optional[Path],
        typer.Option(help="JSON decision (default: reports/promotion.json; llm: reports/promotion_llm.json)"),
    ] = None,
) -> None:
    """Run the promotion gate on the challenger, or promote a version by hand, or roll back."""
    cfg = load_params(params)
    result = promotion.run_promotion(
        cfg,
        family=family,
        version=version,
        rollback=rollback_,
        test=test,
        report=report,
        decision_json=decision_json,
        eval_metrics=eval_metrics,
        requested_by="python -m pipelines.promote" + (" --rollback" if rollback_ else " --version" if version else ""),
        reason=reason,
    )
    print(result.message)
    fail_on_refusal(result.decision, cfg)


if __name__ == "__main__":
    run_cli(main)
