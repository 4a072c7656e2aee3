"""baselines: majority class, TF-IDF (word + char n-grams) + logistic regression / calibrated linear SVM,
and a frozen MiniLM encoder + logistic regression.

C is chosen by stratified CV on train only (``GridSearchCV``, macro-F1); the candidate with the
best *validation* macro-F1 is the one the register stage registers. Every model is scored by the
one evaluation module (:mod:`pipelines.metrics`) on val and test through the
:class:`~pipelines.classifier.model_api.TextClassifier` interface.

Outputs: ``models/baselines/<name>.joblib`` + ``selected.json``, ``metrics/baselines.json`` (each
model, val and test), ``metrics/eval.json`` (the selected model, per class), ``plots/baselines/``
(confusion CSV + PNG), and an MLflow run per model with lineage tags.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import joblib
import pandas as pd
import typer

from pipelines.classifier.classical import _track, evaluate_baselines, train_baselines
from pipelines.classifier.encoder import EncoderClassifier
from pipelines.config import load_params
from pipelines.errors import DataError, run_cli
from pipelines.io import atomic_outputs, write_json
from pipelines.metrics import write_plots


def main(
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    data_dir: Annotated[Path, typer.Option(help="model-ready splits")] = Path("data/processed"),
    model_dir: Annotated[Path, typer.Option(help="where the fitted models go")] = Path("models/baselines"),
    metrics: Annotated[Path, typer.Option(help="every model, val + test (JSON)")] = Path("metrics/baselines.json"),
    eval_json: Annotated[Path, typer.Option(help="the selected model, per class (JSON)")] = Path("metrics/eval.json"),
    plot_dir: Annotated[Path, typer.Option(help="confusion CSV + PNG of the selected model")] = Path("plots/baselines"),
    track: Annotated[bool, typer.Option(help="log runs to MLflow")] = True,
) -> None:
    """Train the baselines, score them on val and test, keep the best by val macro-F1."""
    cfg = load_params(params)
    t0 = time.perf_counter()
    splits = {}
    for k in ("train", "val", "test"):
        path = data_dir / f"{k}.parquet"
        if not path.is_file():
            raise DataError(f"missing split {path}; run `dvc repro leakage` first")
        splits[k] = pd.read_parquet(path)
    models = train_baselines(splits["train"], cfg.baselines)
    summary, selected, full = evaluate_baselines(models, splits["val"], splits["test"], cfg.evaluate)
    with atomic_outputs(model_dir, metrics, eval_json, plot_dir) as staged:
        staged[model_dir].mkdir(parents=True)
        for name, t in models.items():
            if isinstance(t.classifier, EncoderClassifier):
                t.classifier.encoder.progress = False
            joblib.dump(t.classifier, staged[model_dir] / f"{name}.joblib")
        write_json(
            {
                "name": selected,
                "file": f"{selected}.joblib",
                "classes": models[selected].classifier.classes,
                "val_macro_f1": summary[selected]["val"]["macro_f1"],
            },
            staged[model_dir] / "selected.json",
        )
        write_json({"selected": selected, "models": summary}, staged[metrics])
        write_json({"model": selected, **{split: m for split, (m, _) in full[selected].items()}}, staged[eval_json])
        test = splits["test"]["label"].astype(str).tolist()
        write_plots(
            test,
            full[selected]["test"][1],
            staged[plot_dir] / "confusion_test.csv",
            staged[plot_dir] / "confusion_test.png",
            title=f"{selected} (test)",
        )
    if track:
        _track(cfg, summary, selected, full, plot_dir, eval_json)
    for name, s in summary.items():
        print(
            f"  {name:>14}: val macro-F1 {s['val']['macro_f1']:.4f}  test macro-F1 {s['test']['macro_f1']:.4f}  "
            f"ECE {s['test']['ece']:.3f}  {s['test']['latency_ms_per_1k']:.0f} ms/1k  (fit {s['fit_seconds']:.1f}s)"
        )
    print(f"baselines: selected {selected} in {time.perf_counter() - t0:.0f}s -> {model_dir}")


if __name__ == "__main__":
    run_cli(main)
