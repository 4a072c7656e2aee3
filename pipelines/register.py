"""``python -m pipelines.register``: register the best candidate as ``challenger`` and run the promotion gate.

A thin CLI; the logic and its description are in :mod:`pipelines.classifier.registration`. Writes
``metrics/eval.json``: the champion after the gate (registered version, candidate, precision) and its metrics on
the current test split as the gate scored them (``test.accuracy``, ``test.macro_f1``, and the abstention
metrics: ``test.in_scope_accuracy`` / ``test.oos_recall`` where the data has out-of-scope rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipelines.abstention import AbstentionRule
from pipelines.classifier.gate import gate_and_report
from pipelines.classifier.registration import (
    load_candidate,
    register_candidate,
    register_logged,
    selected_record,
    transformer_candidate,
)
from pipelines.config import load_params
from pipelines.errors import run_cli
from pipelines.io import atomic_outputs, read_split, write_json
from pipelines.registry.gate import fail_on_refusal, report_markdown


def main(
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    candidate_dir: Annotated[Optional[Path], typer.Option(help="default: register.candidate_dir")] = None,
    eval_json: Annotated[Path, typer.Option(help="the champion after the gate, its test metrics (JSON)")] = Path(
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
    cdir = candidate_dir or Path(cfg.register_.candidate_dir)
    name, path, clf = load_candidate(cdir)
    selected = selected_record(cdir)
    tracking.setup(cfg.mlflow)
    reg = tracking.Registry(cfg.mlflow)
    baseline_val = selected.get("val_macro_f1", -1.0)
    tr = transformer_candidate(transformer_dir)
    if tr is not None:
        print(f"register: candidates by val macro-F1: {name} {baseline_val:.4f}, {tr['name']} {tr['val_macro_f1']:.4f}")
    if tr is not None and tr["val_macro_f1"] > baseline_val:
        register_logged(reg, tr, transformer_dir)
    else:
        register_candidate(
            reg,
            cfg,
            name,
            path,
            clf,
            test_df["text"].astype(str).head(3).tolist(),
            {k: selected[k] for k in ("val", "test") if k in selected},
            abstention=AbstentionRule.from_dict(selected.get("abstention")),
        )
    scores: dict[str, dict] = {}
    decision = gate_and_report(reg, test_df, cfg, report, decision_json, scores=scores)
    with atomic_outputs(eval_json) as staged:
        write_json(champion_metrics(reg, decision, scores), staged[eval_json])
    print(report_markdown(decision))
    fail_on_refusal(decision, cfg)


def champion_metrics(reg, decision: dict, scores: dict[str, dict]) -> dict:
    """``metrics/eval.json``: the champion after the gate and its test metrics as the gate scored them (with no
    champion yet, as when ``auto_promote`` is false for the first model, the challenger, marked so)."""
    champion = decision.get("champion_version_after")
    version = champion if champion in scores else decision["challenger_version"]
    metrics = dict(scores.get(version, {}))  # a rolled-back challenger is not scored
    tags = reg.version(version).tags
    return {
        "registered_model": reg.name,
        "version": version,
        "role": "champion" if version == champion else "challenger (no champion)",
        "model": tags.get("candidate"),
        "precision": metrics.pop("precision", None),
        "test": metrics,
    }


if __name__ == "__main__":
    run_cli(main)
