"""The one interface every text classifier implements (baselines now, the fine-tuned transformer later).

A :class:`TextClassifier` has ``classes`` (label names, in the order of the
probability columns) and ``predict_proba(texts) -> (n, n_classes)``. Evaluation
(:mod:`pipelines.metrics`), the MLflow pyfunc wrapper (:mod:`pipelines.classifier.pyfunc`) and
serving only talk to this interface.

Output contract of every registered model (pyfunc ``predict``): a DataFrame with
``label`` (the arg-max class, also when the model abstains), ``abstained`` (the model's
:class:`~pipelines.abstention.AbstentionRule` says "none of the above") and one float column
per class named ``proba_<class>`` (see :func:`output_frame`), in the order of ``classes``.

Inference precision (``params.yaml: evaluate.precision``) is one of :data:`PRECISIONS`; :func:`resolve_precision`
turns ``auto`` into what this machine computes natively, and a torch model takes the resolved value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from pipelines.errors import DataError

TEXT_COLUMN = "text"
LABEL_COLUMN = "label"
ABSTAINED_COLUMN = "abstained"
PROBA_PREFIX = "proba_"
PRECISIONS = ("auto", "fp32", "bf16")
Precision = Literal["auto", "fp32", "bf16"]


def resolve_precision(precision: str) -> Literal["fp32", "bf16"]:
    """``auto`` → ``bf16`` where the CPU computes natively in bf16 (avx512_bf16 / AMX), else ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        from pipelines.training.precision import bf16_supported

        return "bf16" if bf16_supported("cpu") else "fp32"
    return precision  # type: ignore[return-value]


@runtime_checkable
class TextClassifier(Protocol):
    """Anything that maps texts to class probabilities."""

    classes: list[str]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Shape ``(len(texts), len(classes))``; rows sum to 1."""
        ...


def predict_labels(model: TextClassifier, texts: list[str]) -> list[str]:
    """Arg-max labels of :meth:`TextClassifier.predict_proba`."""
    proba = model.predict_proba(list(texts))
    return [model.classes[i] for i in np.asarray(proba).argmax(axis=1)]


def output_frame(classes: Sequence[str], proba: np.ndarray, abstained: Sequence[bool] | None = None) -> pd.DataFrame:
    """The pyfunc output: ``label``, ``abstained`` (all False when not given) + ``proba_<class>`` per class."""
    proba = np.asarray(proba, dtype=float)
    columns = {
        LABEL_COLUMN: [classes[i] for i in proba.argmax(axis=1)] if len(proba) else [],
        ABSTAINED_COLUMN: np.zeros(len(proba), dtype=bool) if abstained is None else np.asarray(abstained, bool),
    }
    for j, c in enumerate(classes):  # built at once: one insert per class fragments a 150-class frame (a warning)
        columns[f"{PROBA_PREFIX}{c}"] = proba[:, j] if len(proba) else np.zeros(0)
    return pd.DataFrame(columns)


def proba_from_frame(frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """Inverse of :func:`output_frame`: the probability matrix in the order of ``classes``."""
    cols = [f"{PROBA_PREFIX}{c}" for c in classes]
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise DataError(f"model output lacks probability column(s) {missing}; got {list(frame.columns)}")
    return frame[cols].to_numpy(dtype=float)


def texts_from_input(model_input: pd.DataFrame | Sequence[str]) -> list[str]:
    """Accept a DataFrame with a ``text`` column (the pyfunc input) or a list of strings."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN not in model_input.columns:
            raise DataError(f"input needs a '{TEXT_COLUMN}' column; got {list(model_input.columns)}")
        col = model_input[TEXT_COLUMN]
    else:
        col = pd.Series(list(model_input), dtype=object)
    return col.fillna("").astype(str).tolist()


class SklearnTextClassifier:
    """A fitted scikit-learn estimator whose input is a list of texts (e.g. a TF-IDF pipeline)."""

    def __init__(self, estimator: object, name: str = "sklearn") -> None:
        self.estimator = estimator
        self.name = name
        self.classes = [str(c) for c in estimator.classes_]  # type: ignore[attr-defined]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, len(self.classes)))
        return np.asarray(self.estimator.predict_proba(list(texts)))  # type: ignore[attr-defined]
