"""``python -m pipelines.register_llm``: register the fine-tuned triage adapter as ``challenger`` of its own
registered model (``register_llm.registered_model``) and run its promotion gate.

A thin CLI; the logic and its description are in :mod:`pipelines.llm.registration`. With ``llm.enabled: false``
the decision files are 'skipped' records and the registry is not touched (:mod:`pipelines.llm.skipping`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.config import load_params
from pipelines.errors import run_cli
from pipelines.llm.registration import (
    adapter_sha256,
    challenger_scores,
    gate_and_report,
    register_adapter,
    served_system_prompt,
    test_examples,
)
from pipelines.llm.skipping import skip_if_disabled
from pipelines.registry.gate import fail_on_refusal, report_markdown


def main(
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    adapter: Annotated[Path, typer.Option(help="the SFT stage's adapter folder")] = Path("models/llm"),
    data_dir: Annotated[Path, typer.Option(help="chat examples; the gate compares on test.jsonl")] = Path("data/sft"),
    eval_metrics: Annotated[Path, typer.Option(help="llm_eval's scores (the challenger's)")] = Path(
        "metrics/llm_eval.json"
    ),
    report: Annotated[Path, typer.Option(help="markdown decision")] = Path("reports/promotion_llm.md"),
    decision: Annotated[Path, typer.Option(help="JSON decision")] = Path("reports/promotion_llm.json"),
) -> None:
    """Register the adapter as challenger (once per adapter file) and gate it against the champion."""
    cfg = load_params(params)
    if skip_if_disabled(cfg.llm, "register_llm", report, decision, family="llm"):
        return
    import torch

    from pipelines.registry import tracking

    test = data_dir / "test.jsonl"
    examples, ids_sha = test_examples(test)  # cheap checks first: nothing is registered for a stale evaluation
    scores = challenger_scores(eval_metrics, adapter_sha256(adapter), ids_sha)
    torch.set_num_threads(cfg.llm_eval.torch_threads)
    tracking.setup(cfg.mlflow)
    reg = tracking.Registry(cfg.mlflow, cfg.register_llm.registered_model)
    register_adapter(
        reg,
        cfg,
        adapter,
        served_system_prompt(examples, cfg.llm.system_prompt),
        scores=scores,
    )
    d = gate_and_report(reg, cfg, test, eval_metrics, report, decision)
    print(report_markdown(d))
    fail_on_refusal(d, cfg)


if __name__ == "__main__":
    run_cli(main)
