"""``python -m pipelines.register``: register the best candidate as ``challenger`` and run the promotion gate.

A thin CLI; the logic and its description are in :mod:`pipelines.registry.candidates`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipelines.config import load_params
from pipelines.errors import run_cli
from pipelines.io import read_split
from pipelines.registry.candidates import load_candidate, register_candidate, register_logged, transformer_candidate
from pipelines.registry.classifier_gate import gate_and_report
from pipelines.registry.gate import fail_on_refusal, report_markdown


def main(
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    candidate_dir: Annotated[Optional[Path], typer.Option(help="default: register.candidate_dir")] = None,
    eval_json: Annotated[Path, typer.Option(help="the candidate's metrics (logged with the run)")] = Path(
        "metrics/eval.json"
    ),
    test: Annotated[Path, typer.Option(help="the test split the gate compares on")] = Path(
        "data/processed/test.parquet"
    ),
    report: Annotated[Path, typer.Option(help="markdown decision")] = Path("reports/promotion.md"),
    decision_json: Annotated[Path, typer.Option(help="JSON decision")] = Path("reports/promotion.json"),
    transformer_dir: Annotated[Path, typer.Option(help="the fine-tuned candidate (candidate.json)")] = Path(
        "models/transformer"
    ),
) -> None:
    """Register the best candidate (baseline or fine-tuned, by val macro-F1) as challenger; gate it
    against the champion."""
    from pipelines.registry import tracking

    cfg = load_params(params)
    test_df = read_split(test)  # cheap input checks before any model (and its native threads) is loaded
    name, path, clf = load_candidate(candidate_dir or Path(cfg.register_.candidate_dir))
    metrics = json.loads(eval_json.read_text(encoding="utf-8")) if eval_json.is_file() else None
    tracking.setup(cfg.mlflow)
    reg = tracking.Registry(cfg.mlflow)
    baseline_val = json.loads((path.parent / "selected.json").read_text(encoding="utf-8")).get("val_macro_f1", -1.0)
    tr = transformer_candidate(transformer_dir)
    if tr is not None:
        print(f"register: candidates by val macro-F1: {name} {baseline_val:.4f}, {tr['name']} {tr['val_macro_f1']:.4f}")
    if tr is not None and tr["val_macro_f1"] > baseline_val:
        register_logged(reg, tr, transformer_dir / "adapter_model.safetensors")
    else:
        register_candidate(reg, cfg, name, path, clf, test_df["text"].astype(str).head(3).tolist(), metrics)
    decision = gate_and_report(reg, test_df, cfg, report, decision_json)
    print(report_markdown(decision))
    fail_on_refusal(decision, cfg)


if __name__ == "__main__":
    run_cli(main)
