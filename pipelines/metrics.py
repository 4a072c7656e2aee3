"""The one evaluation module for every model (baselines now, the fine-tuned transformer later).

Takes any :class:`~pipelines.classifier.model_api.TextClassifier` and a labelled split and
returns plain JSON-able numbers: accuracy, macro-F1, per-class precision /
recall / F1 / support, expected calibration error, latency per 1,000 texts and
the confusion matrix. :func:`write_plots` writes the DVC plots (a per-row
``actual,predicted`` CSV for DVC's confusion template, and a PNG).

Accuracy and F1 score the arg-max label (the label the model would give, abstaining or not). With an
abstention rule (:mod:`pipelines.abstention`) a split also gets ``abstention_rate`` and
``in_scope_rate``; where it has out-of-scope rows, ``in_scope_accuracy`` (an abstention counts as wrong) and
``oos_recall`` (out-of-scope rows abstained), as the CLINC150 paper reports them; where it has none,
``answered_accuracy`` (accuracy over the rows not abstained). :func:`evaluate_splits` tunes the rule on the
validation split and scores every split with it: what every candidate goes through before it is logged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from pipelines.abstention import AbstentionRule, rates, tune
from pipelines.config import AbstentionConfig
from pipelines.errors import DataError
from pipelines.plots import message_png

if TYPE_CHECKING:  # shared by every model family: the classifier interface is only a type here
    from pipelines.classifier.model_api import TextClassifier

HEADLINE = (
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "ece",
    "abstention_rate",
    "in_scope_rate",
    "in_scope_accuracy",
    "oos_recall",
    "answered_accuracy",
    "abstention_threshold",
    "latency_ms_per_1k",
    "n",
)


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
    labels: Sequence[str],
    classes: Sequence[str],
    split: str = "split",
    *,
    allow_unseen: bool = False,
    oos_label: str | None = None,
) -> None:
    """Refuse an empty split, and (unless ``allow_unseen``) labels the model has no class for (the out-of-scope
    label ``oos_label`` excepted: a model may learn only the in-scope classes and abstain by threshold)."""
    if len(labels) == 0:
        raise DataError(f"the {split} split is empty: nothing to evaluate")
    unseen = sorted(set(map(str, labels)) - set(classes) - {oos_label})
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


def abstention_metrics(labels: Sequence[str], proba: np.ndarray, classes: Sequence[str], rule: AbstentionRule) -> dict:
    """What ``rule`` does on a labelled split (see the module docstring), with its threshold."""
    return {"abstention_threshold": rule.threshold, **rates(labels, proba, classes, rule)}


def predict_timed(model: TextClassifier, texts: Sequence[str]) -> tuple[np.ndarray, float]:
    """``(probabilities, seconds)`` of one ``predict_proba`` call over ``texts``, shape-checked."""
    t0 = time.perf_counter()
    proba = np.asarray(model.predict_proba(list(texts)))
    elapsed = time.perf_counter() - t0
    if proba.shape != (len(texts), len(model.classes)):
        raise DataError(
            f"model returned probabilities of shape {proba.shape}, expected {(len(texts), len(model.classes))}"
        )
    return proba, elapsed


def _scored(
    labels: Sequence[str],
    proba: np.ndarray,
    classes: Sequence[str],
    elapsed: float,
    ece_bins: int,
    rule: AbstentionRule | None,
) -> tuple[dict, list[str]]:
    out = score(labels, proba, classes, ece_bins=ece_bins)
    if rule is not None:
        out.update(abstention_metrics(labels, proba, classes, rule))
    out["latency_ms_per_1k"] = round(1000.0 * elapsed / len(labels) * 1000.0, 3)
    return out, [classes[i] for i in proba.argmax(axis=1)]


def evaluate(
    model: TextClassifier,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    split: str = "test",
    ece_bins: int = 15,
    allow_unseen: bool = False,
    abstention: AbstentionRule | None = None,
) -> tuple[dict, list[str]]:
    """Predict ``texts`` with ``model`` and score them; returns ``(metrics, predicted labels)``.

    ``latency_ms_per_1k`` is the wall time of ``predict_proba`` over the whole split, per 1,000 texts.
    With ``abstention`` the split's abstention metrics are added (the predicted labels stay the arg-max).
    """
    oos = abstention.oos_label if abstention is not None else None
    check_labels(labels, model.classes, split, allow_unseen=allow_unseen, oos_label=oos)
    proba, elapsed = predict_timed(model, texts)
    return _scored(labels, proba, list(model.classes), elapsed, ece_bins, abstention)


def evaluate_splits(
    model: TextClassifier,
    splits: dict[str, tuple[Sequence[str], Sequence[str]]],
    cfg: AbstentionConfig,
    *,
    ece_bins: int = 15,
    tune_on: str = "val",
) -> tuple[AbstentionRule, dict[str, tuple[dict, list[str]]]]:
    """Tune the abstention rule on ``splits[tune_on]`` and score every split with it (each predicted once).

    ``splits`` maps a split name to ``(texts, labels)``. Returns ``(rule, {split: (metrics, predicted labels)})``;
    the tuning split's metrics also carry ``abstention_tuning`` (the target and, if it could not be met, why)."""
    if tune_on not in splits:
        raise DataError(f"abstention is tuned on the {tune_on!r} split, which is not among {sorted(splits)}")
    classes = list(model.classes)
    for split, (_, labels) in splits.items():
        check_labels(labels, classes, split, oos_label=cfg.oos_label)
    predicted = {split: predict_timed(model, texts) for split, (texts, _) in splits.items()}
    rule, report = tune(splits[tune_on][1], predicted[tune_on][0], classes, cfg)
    out = {
        split: _scored(labels, predicted[split][0], classes, predicted[split][1], ece_bins, rule)
        for split, (_, labels) in splits.items()
    }
    out[tune_on][0]["abstention_tuning"] = {
        "target": cfg.target if cfg.enabled else "disabled",
        "value": cfg.max_in_scope_rate if cfg.target == "in_scope_rate" else cfg.min_oos_recall,
        **{k: v for k, v in report.items() if k == "note"},
    }
    return rule, out


def abstention_line(m: dict) -> str:
    """One line on what the abstention rule did on a split (for the stages' printout); empty without one."""
    if "abstention_rate" not in m:
        return ""

    def num(key: str) -> str:
        return "n/a" if m.get(key) is None else f"{m[key]:.4f}"

    line = f"abstains {m['abstention_rate']:.1%} (threshold {m['abstention_threshold']:.3f})"
    if "oos_recall" in m:
        return f"{line}: in-scope accuracy {num('in_scope_accuracy')}, oos recall {num('oos_recall')}"
    return f"{line}: accuracy on the rest {num('answered_accuracy')}"


def headline(m: dict) -> dict:
    """The scalar metrics (for MLflow and ``dvc metrics show``)."""
    return {k: m[k] for k in HEADLINE if k in m and m[k] is not None}


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
        message_png(png_path, title or "no predictions")
        return
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
