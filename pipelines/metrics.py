"""The one evaluation module for every model (baselines now, the fine-tuned transformer later).

Takes any :class:`~pipelines.classifier.model_api.TextClassifier` and a labelled split and
returns plain JSON-able numbers: accuracy, macro-F1, per-class precision /
recall / F1 / support, expected calibration error, latency per 1,000 texts and
the confusion matrix. :func:`write_plots` writes the DVC plots (a per-row
``actual,predicted`` CSV for DVC's confusion template, and a PNG).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from pipelines.errors import DataError

if TYPE_CHECKING:  # shared by every model family: the classifier interface is only a type here
    from pipelines.classifier.model_api import TextClassifier


def expected_calibration_error(y_true: Sequence[int], proba: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: ``sum_b |B_b|/n * |accuracy(B_b) - mean confidence(B_b)|``.

    Confidence is the largest probability of a row; bins are equal-width on
    (0, 1], right-closed (a confidence of exactly 0 falls in the first bin).
    """
    proba = np.asarray(proba, dtype=float)
    y_true = np.asarray(y_true)
    if len(y_true) == 0:
        raise DataError("cannot compute calibration error on zero rows")
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(float)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def check_labels(
    labels: Sequence[str], classes: Sequence[str], split: str = "split", *, allow_unseen: bool = False
) -> None:
    """Refuse an empty split, and (unless ``allow_unseen``) labels the model has no class for."""
    if len(labels) == 0:
        raise DataError(f"the {split} split is empty: nothing to evaluate")
    unseen = sorted(set(map(str, labels)) - set(classes))
    if unseen and not allow_unseen:
        raise DataError(
            f"the {split} split has class(es) {unseen} that the model never saw in training "
            f"(model classes: {list(classes)})"
        )


def score(labels: Sequence[str], proba: np.ndarray, classes: Sequence[str], *, ece_bins: int = 15) -> dict:
    """All metrics from labels and a probability matrix whose columns follow ``classes``."""
    classes = [str(c) for c in classes]
    y_true = [str(x) for x in labels]
    y_pred = [classes[i] for i in np.asarray(proba).argmax(axis=1)]
    report_labels = classes + sorted(set(y_true) - set(classes))  # unseen classes score 0, not silently dropped
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=report_labels, zero_division=0)
    index = {c: i for i, c in enumerate(classes)}
    y_idx = np.array([index.get(y, -1) for y in y_true])
    present = [c for c in report_labels if c in set(y_true)]
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=present, average="weighted", zero_division=0)),
        "ece": expected_calibration_error(y_idx, proba, ece_bins),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(report_labels)
        },
        "confusion": {
            "labels": report_labels,
            "matrix": confusion_matrix(y_true, y_pred, labels=report_labels).tolist(),
        },
    }


def evaluate(
    model: TextClassifier,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    split: str = "test",
    ece_bins: int = 15,
    allow_unseen: bool = False,
) -> tuple[dict, list[str]]:
    """Predict ``texts`` with ``model`` and score them; returns ``(metrics, predicted labels)``.

    ``latency_ms_per_1k`` is the wall time of ``predict_proba`` over the whole split, per 1,000 texts.
    """
    check_labels(labels, model.classes, split, allow_unseen=allow_unseen)
    t0 = time.perf_counter()
    proba = np.asarray(model.predict_proba(list(texts)))
    elapsed = time.perf_counter() - t0
    if proba.shape != (len(texts), len(model.classes)):
        raise DataError(
            f"model returned probabilities of shape {proba.shape}, expected {(len(texts), len(model.classes))}"
        )
    out = score(labels, proba, model.classes, ece_bins=ece_bins)
    out["latency_ms_per_1k"] = round(1000.0 * elapsed / len(texts) * 1000.0, 3)
    preds = [model.classes[i] for i in proba.argmax(axis=1)]
    return out, preds


def headline(m: dict) -> dict:
    """The scalar metrics (for MLflow and ``dvc metrics show``)."""
    return {k: m[k] for k in ("accuracy", "macro_f1", "weighted_f1", "ece", "latency_ms_per_1k", "n") if k in m}


def write_plots(labels: Sequence[str], preds: Sequence[str], csv_path: Path, png_path: Path, title: str = "") -> None:
    """Confusion data for DVC (``actual,predicted`` per row) and a PNG of the count matrix (a stage that scored
    nothing, such as a skipped one, gets the header-only CSV and a PNG saying so: DVC needs its declared plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csv_path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"actual": list(map(str, labels)), "predicted": list(map(str, preds))}).to_csv(csv_path, index=False)
    names = sorted(set(map(str, labels)) | set(map(str, preds)))
    if names:
        cm = confusion_matrix(list(map(str, labels)), list(map(str, preds)), labels=names)
        fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(names), 0.8 + 0.6 * len(names)))
        ax.imshow(cm, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black",
                )
        ax.set_title(title)
        fig.tight_layout()
    else:
        fig, ax = plt.subplots(figsize=(4, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, title or "no predictions", ha="center", va="center")
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
