"""The classifier's promotion gate: macro-F1 and per-class F1 of challenger and champion on the current test split.

Both models are loaded from the registry by version number (:func:`pipelines.classifier.pyfunc.load_registered`) in
``evaluate.precision`` (the precision serving loads them in; one that cannot be loaded stops the gate) and scored
now with :func:`pipelines.metrics.evaluate` on the same rows, each with its registered abstention rule (its
in-scope accuracy / out-of-scope recall or abstention rate are reported; the decision itself is on the arg-max
labels); the machinery (aliases, tags, the champion move as the single commit point) is
:func:`pipelines.registry.gate.run_gate`. The challenger is promoted when its macro-F1 is not worse than the
champion's by more than ``register.gate_macro_f1_tolerance`` and no class's F1 drops by more than
``register.gate_class_f1_max_drop``; the first model becomes champion.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.config import Params, RegisterConfig
from pipelines.errors import DataError
from pipelines.registry.aliases import CHAMPION
from pipelines.registry.gate import load_checked, run_gate, write_decision


def gate_decision(challenger: dict, champion: dict | None, cfg: RegisterConfig) -> dict:
    """Pure gate on two metric dicts (from :func:`pipelines.metrics.evaluate` on the same split)."""
    if champion is None:
        return {"promote": True, "reasons": ["no champion yet: the first model becomes champion"], "class_f1_drops": {}}
    reasons, promote = [], True
    delta = challenger["macro_f1"] - champion["macro_f1"]
    if delta < -cfg.gate_macro_f1_tolerance:
        promote = False
        reasons.append(
            f"macro-F1 {challenger['macro_f1']:.4f} is {-delta:.4f} below the champion's "
            f"{champion['macro_f1']:.4f} (tolerance {cfg.gate_macro_f1_tolerance})"
        )
    else:
        reasons.append(
            f"macro-F1 {challenger['macro_f1']:.4f} vs champion {champion['macro_f1']:.4f} "
            f"(delta {delta:+.4f}, tolerance {cfg.gate_macro_f1_tolerance})"
        )
    drops = {
        c: round(m["f1"] - challenger["per_class"].get(c, {"f1": 0.0})["f1"], 6)
        for c, m in champion["per_class"].items()
        if m["support"] > 0
    }
    bad = {c: d for c, d in drops.items() if d > cfg.gate_class_f1_max_drop}
    if bad:
        promote = False
        reasons.append(
            "class F1 dropped by more than "
            f"{cfg.gate_class_f1_max_drop}: "
            + ", ".join(f"{c} -{d:.4f}" for c, d in sorted(bad.items(), key=lambda x: -x[1]))
        )
    return {"promote": promote, "reasons": reasons, "macro_f1_delta": round(delta, 6), "class_f1_drops": drops}


ABSTENTION_KEYS = ("abstention_rate", "in_scope_accuracy", "oos_recall", "answered_accuracy")


def brief(m: dict) -> dict:
    """What the decision keeps of a classifier's metrics (the training flow tabulates macro_f1/accuracy/ece)."""
    return {
        "macro_f1": m["macro_f1"],
        "accuracy": m["accuracy"],
        "ece": m["ece"],
        **{k: m[k] for k in ABSTENTION_KEYS if m.get(k) is not None},
        "per_class_f1": {c: v["f1"] for c, v in m["per_class"].items()},
    }


def run_classifier_gate(
    reg,
    test: pd.DataFrame,
    cfg: RegisterConfig,
    *,
    ece_bins: int = 15,
    auto_promote: bool = True,
    precision: str | None = None,
    scores: dict | None = None,
) -> dict:
    """Load challenger and champion from the registry (in ``precision``; None: as registered), score both on
    ``test`` now, decide, and act. ``scores``, if given, receives each scored version's full test metrics."""
    from pipelines.classifier.pyfunc import load_registered
    from pipelines.metrics import evaluate

    if test.empty:
        raise DataError("the test split is empty: the promotion gate has nothing to compare on")
    texts, labels = test["text"].astype(str).tolist(), test["label"].astype(str).tolist()

    def score(version: str, role: str) -> dict:
        unseen = role == CHAMPION  # the champion may not know a class new in this split; the challenger must
        model = load_checked(reg, version, role, lambda v: load_registered(reg, v, precision=precision))
        m = evaluate(
            model, texts, labels, split="test", ece_bins=ece_bins, allow_unseen=unseen, abstention=model.abstention
        )[0]
        if scores is not None:
            scores[version] = {**m, "precision": model.precision}
        return m

    return run_gate(
        reg,
        score,
        lambda chall, champ: gate_decision(chall, champ, cfg),
        rows=len(test),
        brief=brief,
        family="classifier",
        auto_promote=auto_promote,
    )


def gate_and_report(
    reg, test_df: pd.DataFrame, cfg: Params, report: Path, decision_json: Path, scores: dict | None = None
) -> dict:
    """Run the gate on the current challenger with ``cfg``'s settings and write the decision (markdown + JSON).

    ``scores`` (optional) receives ``{version: full test metrics}`` of the models scored."""
    d = run_classifier_gate(
        reg,
        test_df,
        cfg.register_,
        ece_bins=cfg.evaluate.ece_bins,
        auto_promote=cfg.register_.auto_promote,
        precision=cfg.evaluate.precision,
        scores=scores,
    )
    write_decision(d, report, decision_json)
    return d
