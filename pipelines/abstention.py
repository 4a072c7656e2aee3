"""Out-of-scope abstention: when a classifier should say "none of the above", for any model's ``predict_proba``.

A prediction is an **abstention** when its confidence is below the model's threshold, or when its arg-max
class is the data's out-of-scope class (``abstention.oos_label``, e.g. CLINC150's ``oos``). The label it would
have given stays the arg-max; abstaining only adds a flag. The confidence (``abstention.confidence``) is
``top_class``, the largest class probability, or, for a model trained with the out-of-scope class,
``in_scope``: one minus that class's probability, how sure the model is that the text is in scope at all.
Measured on CLINC150 (fully fine-tuned MiniLM, thresholds tuned on val): at the same 0.5% in-scope budget,
``in_scope`` gave 96.0% in-scope accuracy with 56.8% oos recall on the test file, ``top_class`` 96.1% with
44.0%: the top probability is spread over similar intents on hard in-scope texts, the oos probability is not.
``auto`` takes ``in_scope`` when the model has the out-of-scope class, else ``top_class``.

The threshold is tuned on the validation split for a target from ``params.yaml: abstention`` (the rows whose
label is ``oos_label`` are the out-of-scope rows, the others are in scope):

- ``in_scope_rate``: the **largest** threshold at which at most ``max_in_scope_rate`` of the in-scope
  validation rows are abstained (a false-rejection budget: the rows a person will have to route by hand).
  Abstained rows grow with the threshold, so where validation has out-of-scope rows this is also the most
  out-of-scope recall the budget buys (Neyman-Pearson: most detection at a fixed false-alarm rate).
- ``oos_recall``: the **smallest** threshold at which at least ``min_oos_recall`` of the out-of-scope
  validation rows are abstained (needs such rows): the fewest in-scope rejections that reach the recall.

Pure numpy, no model family: baselines, the fine-tuned transformer and serving share this one rule
(:class:`AbstentionRule`), which travels with the registered model (:mod:`pipelines.classifier.pyfunc`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from pipelines.config import AbstentionConfig
from pipelines.errors import DataError

EPS = 1e-9  # rates times row counts: 0.29 * 100 is 28.999999999999996 in floating point


CONFIDENCES = ("top_class", "in_scope")


@dataclass(frozen=True)
class AbstentionRule:
    """``threshold`` on the ``confidence`` (``top_class`` or ``in_scope``) and the out-of-scope class (or None):
    what makes a prediction abstain."""

    threshold: float = 0.0
    oos_label: str | None = None
    confidence: str = "top_class"

    def __post_init__(self) -> None:
        if self.confidence not in CONFIDENCES:
            raise DataError(f"abstention confidence must be one of {CONFIDENCES}; got {self.confidence!r}")

    def _checked(self, proba: np.ndarray, classes: Sequence[str]) -> np.ndarray:
        proba = np.asarray(proba, dtype=float)
        if proba.ndim != 2 or proba.shape[1] != len(classes):
            raise DataError(f"abstention needs one probability column per class {list(classes)}; got {proba.shape}")
        return proba

    def confidences(self, proba: np.ndarray, classes: Sequence[str]) -> np.ndarray:
        """The score compared with the threshold, one per row."""
        proba = self._checked(proba, classes)
        if self.confidence == "in_scope":
            if self.oos_label not in list(classes):
                raise DataError(
                    f"abstention confidence in_scope needs the class {self.oos_label!r}; classes: {list(classes)}"
                )
            return 1.0 - proba[:, list(classes).index(self.oos_label)]
        return proba.max(axis=1) if len(proba) else np.zeros(0)

    def abstained(self, proba: np.ndarray, classes: Sequence[str]) -> np.ndarray:
        """A boolean per row of ``proba`` (columns in the order of ``classes``)."""
        proba = self._checked(proba, classes)
        if not len(proba):
            return np.zeros(0, dtype=bool)
        out = self.confidences(proba, classes) < self.threshold
        if self.oos_label is not None and self.oos_label in classes:
            out |= proba.argmax(axis=1) == list(classes).index(self.oos_label)
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> AbstentionRule:
        """The rule stored with a model; a model registered without one never abstains (and one registered before
        the confidence was a choice used the top class probability)."""
        d = d or {}
        return cls(float(d.get("threshold", 0.0)), d.get("oos_label"), d.get("confidence", "top_class"))


NEVER = AbstentionRule()


def tune(
    labels: Sequence[str], proba: np.ndarray, classes: Sequence[str], cfg: AbstentionConfig
) -> tuple[AbstentionRule, dict]:
    """The rule for ``cfg``'s target from validation labels and probabilities; returns ``(rule, report)``.

    The report says what the rule does on these rows (``in_scope_rate``, ``oos_recall`` where there are
    out-of-scope rows) and, when the target cannot be met, why (``note``)."""
    labels = np.asarray([str(x) for x in labels])
    proba = np.asarray(proba, dtype=float)
    if len(labels) == 0 or proba.shape != (len(labels), len(classes)):
        raise DataError(f"abstention tuning needs one probability row per label; got {proba.shape} for {len(labels)}")
    oos = labels == cfg.oos_label if cfg.oos_label is not None else np.zeros(len(labels), dtype=bool)
    kind = resolve_confidence(cfg, classes)
    untuned = AbstentionRule(0.0, cfg.oos_label, kind)
    by_class = untuned.abstained(proba, classes)  # predicted out-of-scope class
    conf = untuned.confidences(proba, classes)
    note = None
    if not cfg.enabled:
        threshold = 0.0
    elif cfg.target == "in_scope_rate":
        if oos.all():
            raise DataError(f"abstention: every validation row is out of scope ({cfg.oos_label!r}): nothing to tune on")
        threshold, note = _largest_within(conf[~oos], by_class[~oos], cfg.max_in_scope_rate)
    else:
        if not oos.any():
            raise DataError(
                f"abstention.target: oos_recall needs validation rows labelled abstention.oos_label "
                f"({cfg.oos_label!r}); the validation split has none (use target: in_scope_rate)"
            )
        threshold = _smallest_reaching(conf[oos], by_class[oos], cfg.min_oos_recall)
    rule = AbstentionRule(float(threshold), cfg.oos_label, kind)
    report = {"threshold": rule.threshold, "confidence": kind, **rates(labels, proba, classes, rule)}
    if note:
        report["note"] = note
    return rule, report


def resolve_confidence(cfg: AbstentionConfig, classes: Sequence[str]) -> str:
    """``cfg.confidence`` for a model with ``classes``: ``auto`` is ``in_scope`` when the model predicts the
    out-of-scope class, else ``top_class``; ``in_scope`` for a model without that class is an error naming it."""
    has_oos = cfg.oos_label is not None and cfg.oos_label in list(classes)  # as the rule itself looks it up
    if cfg.confidence == "auto":
        return "in_scope" if has_oos else "top_class"
    if cfg.confidence == "in_scope" and not has_oos:
        raise DataError(
            f"abstention.confidence: in_scope needs a model trained with the out-of-scope class "
            f"(abstention.oos_label={cfg.oos_label!r}); this model's classes do not include it (use auto or top_class)"
        )
    return cfg.confidence


def _largest_within(conf: np.ndarray, forced: np.ndarray, rate: float) -> tuple[float, str | None]:
    """Largest ``t`` with ``#(forced | conf < t) <= floor(rate * n)``: the (a+1)-th smallest free confidence."""
    allowed = math.floor(rate * len(conf) + EPS) - int(forced.sum())
    free = np.sort(conf[~forced])
    if allowed < 0:
        return 0.0, (
            f"the model predicts the out-of-scope class for {forced.mean():.2%} of the in-scope validation rows, "
            f"above abstention.max_in_scope_rate={rate}: no confidence threshold (0)"
        )
    if allowed >= len(free):
        return 1.0, None
    return float(free[allowed]), None  # rows strictly below it abstain: at most `allowed` of them


def _smallest_reaching(conf: np.ndarray, forced: np.ndarray, recall: float) -> float:
    """Smallest ``t`` with ``#(forced | conf < t) >= ceil(recall * n)`` over the out-of-scope rows."""
    extra = math.ceil(recall * len(conf) - EPS) - int(forced.sum())
    if extra <= 0:
        return 0.0
    free = np.sort(conf[~forced])
    return float(np.nextafter(free[extra - 1], np.inf))  # just above the extra-th smallest: it abstains too


def rates(labels: Sequence[str], proba: np.ndarray, classes: Sequence[str], rule: AbstentionRule) -> dict:
    """What ``rule`` does on labelled rows, as the CLINC150 paper reports it where there are out-of-scope rows.

    Always ``abstention_rate`` (share of all rows). With out-of-scope rows (label ``rule.oos_label``):
    ``in_scope_accuracy`` (in-scope rows answered with their label; an abstention counts as wrong),
    ``in_scope_rate`` (in-scope rows abstained) and ``oos_recall`` (out-of-scope rows abstained). Without:
    ``in_scope_rate`` and ``answered_accuracy`` (accuracy over the rows not abstained; None if none is)."""
    labels = np.asarray([str(x) for x in labels])
    proba = np.asarray(proba, dtype=float)
    abstain = rule.abstained(proba, classes)
    pred = np.asarray([str(c) for c in classes])[proba.argmax(axis=1)] if len(labels) else labels
    correct = pred == labels
    oos = labels == rule.oos_label if rule.oos_label is not None else np.zeros(len(labels), dtype=bool)
    out: dict = {"abstention_rate": float(abstain.mean()) if len(labels) else 0.0}
    ins = ~oos
    out["in_scope_rate"] = float(abstain[ins].mean()) if ins.any() else 0.0
    if oos.any():
        out["in_scope_accuracy"] = float((correct & ~abstain)[ins].mean()) if ins.any() else None
        out["oos_recall"] = float(abstain[oos].mean())
    else:
        answered = ~abstain
        out["answered_accuracy"] = float(correct[answered].mean()) if answered.any() else None
    return out
