"""``python -m pipelines.baselines``: majority, TF-IDF + linear models, frozen MiniLM + LR; the best by val macro-F1.

A thin CLI; the logic and its description are in :mod:`pipelines.classifier.classical`. The selected model's
abstention rule (tuned on its validation predictions) goes into ``selected.json`` beside it, for the register stage.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import joblib
import typer

from pipelines.classifier.classical import _track, evaluate_baselines, train_baselines
from pipelines.classifier.encoder import EncoderClassifier
from pipelines.config import load_params
from pipelines.errors import run_cli
from pipelines.io import atomic_outputs, read_split, write_json
from pipelines.metrics import abstention_line, write_plots


def main(
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    data_dir: Annotated[Path, typer.Option(help="model-ready splits")] = Path("data/processed"),
    model_dir: Annotated[Path, typer.Option(help="where the fitted models go")] = Path("models/baselines"),
    metrics: Annotated[Path, typer.Option(help="every model, val + test (JSON)")] = Path("metrics/baselines.json"),
    plot_dir: Annotated[Path, typer.Option(help="confusion CSV + PNG of the selected model")] = Path("plots/baselines"),
    track: Annotated[bool, typer.Option(help="log runs to MLflow")] = True,
) -> None:
    """Train the baselines, score them on val and test, keep the best by val macro-F1."""
    cfg = load_params(params)
    t0 = time.perf_counter()
    splits = {k: read_split(data_dir, k) for k in ("train", "val", "test")}
    models = train_baselines(splits["train"], cfg.baselines)
    summary, selected, full = evaluate_baselines(models, splits["val"], splits["test"], cfg.evaluate, cfg.abstention)
    with atomic_outputs(model_dir, metrics, plot_dir) as staged:
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
                "abstention": models[selected].abstention.to_dict(),
                "precision": getattr(models[selected].classifier, "precision", None),  # None: not a torch model
                "val": summary[selected]["val"],
                "test": summary[selected]["test"],
            },
            staged[model_dir] / "selected.json",
        )
        write_json({"selected": selected, "models": summary}, staged[metrics])
        test = splits["test"]["label"].astype(str).tolist()
        write_plots(
            test,
            full[selected]["test"][1],
            staged[plot_dir] / "confusion_test.csv",
            staged[plot_dir] / "confusion_test.png",
            title=f"{selected} (test)",
        )
    if track:
        _track(cfg, summary, selected, full, plot_dir, metrics)
    for name, s in summary.items():
        print(
            f"  {name:>14}: val macro-F1 {s['val']['macro_f1']:.4f}  test macro-F1 {s['test']['macro_f1']:.4f}  "
            f"ECE {s['test']['ece']:.3f}  {s['test']['latency_ms_per_1k']:.0f} ms/1k  (fit {s['fit_seconds']:.1f}s)  "
            f"{abstention_line(s['test'])}"
        )
        if "note" in s["abstention"]["tuned"]:
            print(f"  {name:>14}: abstention target not met on val: {s['abstention']['tuned']['note']}")
    print(f"baselines: selected {selected} in {time.perf_counter() - t0:.0f}s -> {model_dir}")


if __name__ == "__main__":
    run_cli(main)
