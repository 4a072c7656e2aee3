"""The promotion gate, manual promotion and rollback, with MLflow aliases (never stages).

Used by the ``register`` stage (gate after registering) and, through the one dispatch in
:mod:`pipelines.registry.promotion`, by ``python -m pipelines.promote`` and the ``promote`` flow.

The gate compares the challenger with the current champion on the *same* current test
split, recomputed now by loading both from the registry (never numbers logged on another
split). It promotes when the challenger's macro-F1 is not worse than the champion's by more
than ``register.gate_macro_f1_tolerance`` and no class's F1 drops by more than
``register.gate_class_f1_max_drop``. The first model becomes champion.

Aliases: ``challenger`` (the newest candidate), ``champion`` (served), ``previous-champion``
(where ``--rollback`` goes). The registered model's tag ``champion_history`` lists every
champion in order. Moving the ``champion`` alias is the single commit point: anything that
fails before it leaves the previous champion in place.

    python -m pipelines.promote                # run the gate on the current challenger
    python -m pipelines.promote --version 3    # promote version 3 by hand
    python -m pipelines.promote --rollback     # champion -> previous champion
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from pipelines.config import Params, RegisterConfig
from pipelines.errors import ConfigError, DataError, GateFailed
from pipelines.io import atomic_outputs, write_json
from pipelines.metrics import evaluate
from pipelines.registry.aliases import CHALLENGER, CHAMPION, PREVIOUS

HISTORY_TAG = "champion_history"


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


def promote_version(reg, version: str, reason: str) -> str | None:
    """Point ``champion`` at ``version``; return the old champion. The alias move is the commit point."""
    reg.version(version)  # raises if it does not exist
    old = reg.alias(CHAMPION)
    if old == str(version):
        return old
    if old is not None:
        reg.set_alias(PREVIOUS, old)  # harmless if we stop here: champion unchanged
    reg.set_alias(CHAMPION, version)  # commit point
    history = [v for v in reg.model_tag(HISTORY_TAG).split(",") if v]
    reg.set_model_tag(HISTORY_TAG, ",".join([*history, str(version)]))
    reg.tag_version(
        version,
        {"promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "promotion_reason": reason[:4000]},
    )
    return old


def rollback(reg) -> tuple[str, str]:
    """Move ``champion`` back to the previous champion; return ``(from, to)``."""
    current = reg.alias(CHAMPION)
    history = [v for v in reg.model_tag(HISTORY_TAG).split(",") if v]
    while history and history[-1] != current:  # champion moved outside this tool: trust the alias
        history.pop()
    target = history[-2] if len(history) >= 2 else reg.alias(PREVIOUS)
    if current is None or target is None or target == current:
        raise ConfigError(f"nothing to roll back to: registered model '{reg.name}' has no previous champion")
    reg.set_alias(CHAMPION, target)  # commit point
    history = history[:-1] if len(history) >= 2 else [target]
    reg.set_model_tag(HISTORY_TAG, ",".join(history))
    if len(history) >= 2:
        reg.set_alias(PREVIOUS, history[-2])
    else:
        reg.delete_alias(PREVIOUS)
    reg.tag_version(current, {"rolled_back_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return current, target


def run_gate(reg, test: pd.DataFrame, cfg: RegisterConfig, *, ece_bins: int = 15, auto_promote: bool = True) -> dict:
    """Load challenger and champion from the registry, score both on ``test`` now, decide, and act."""
    if test.empty:
        raise DataError("the test split is empty: the promotion gate has nothing to compare on")
    texts, labels = test["text"].astype(str).tolist(), test["label"].astype(str).tolist()
    chall_v, champ_v = reg.alias(CHALLENGER), reg.alias(CHAMPION)
    if chall_v is None:
        raise ConfigError(f"registered model '{reg.name}' has no '{CHALLENGER}' alias; run the register stage first")
    chall, _ = evaluate(reg.load(f"@{CHALLENGER}"), texts, labels, split="test", ece_bins=ece_bins)
    champ = None
    if champ_v is not None and champ_v != chall_v:
        champ, _ = evaluate(reg.load(f"@{CHAMPION}"), texts, labels, split="test", ece_bins=ece_bins, allow_unseen=True)
    decision = (
        gate_decision(chall, champ, cfg)
        if champ_v != chall_v
        else {"promote": False, "reasons": ["challenger is already the champion"], "class_f1_drops": {}}
    )
    decision.update(
        {
            "model": reg.name,
            "challenger_version": chall_v,
            "champion_version_before": champ_v,
            "test_rows": len(test),
            "challenger": _brief(chall),
            "champion": _brief(champ) if champ else None,
            "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    reg.tag_version(
        chall_v,
        {
            "gate.decision": "promote" if decision["promote"] else "refuse",
            "gate.reasons": " | ".join(decision["reasons"])[:4000],
            "gate.test_macro_f1": f"{chall['macro_f1']:.6f}",
            "gate.compared_with": champ_v or "none",
        },
    )
    decision["promoted"] = False
    if decision["promote"] and auto_promote:
        promote_version(reg, chall_v, "gate: " + "; ".join(decision["reasons"]))
        decision["promoted"] = True
    decision["champion_version_after"] = reg.alias(CHAMPION)
    return decision


def _brief(m: dict) -> dict:
    return {
        "macro_f1": m["macro_f1"],
        "accuracy": m["accuracy"],
        "ece": m["ece"],
        "per_class_f1": {c: v["f1"] for c, v in m["per_class"].items()},
    }


def report_markdown(d: dict) -> str:
    """The decision as a short markdown report (reports/promotion.md)."""
    verdict = "PROMOTED" if d.get("promoted") else ("PASSED (not auto-promoted)" if d["promote"] else "REFUSED")
    if d["challenger_version"] == d["champion_version_before"]:
        verdict = "UNCHANGED"
    lines = [
        f"# Promotion decision: {verdict}",
        "",
        f"- model: `{d['model']}`; challenger v{d['challenger_version']}; champion before: "
        f"{'v' + d['champion_version_before'] if d['champion_version_before'] else 'none'}; "
        f"champion after: {'v' + str(d['champion_version_after']) if d['champion_version_after'] else 'none'}",
        f"- compared on the current test split ({d['test_rows']:,} rows), both models loaded from the registry",
        f"- decided at {d['decided_at']}",
        "",
        "## Reasons",
        "",
    ]
    lines += [f"- {r}" for r in d["reasons"]]
    if d.get("champion"):
        lines += ["", "## Per-class F1 (test)", "", "| class | champion | challenger | drop |", "|---|---|---|---|"]
        for c, f in d["champion"]["per_class_f1"].items():
            ch = d["challenger"]["per_class_f1"].get(c, 0.0)
            lines.append(f"| {c} | {f:.4f} | {ch:.4f} | {f - ch:+.4f} |")
    return "\n".join(lines) + "\n"


def write_decision(d: dict, md: Path, js: Path) -> None:
    with atomic_outputs(md, js) as staged:
        staged[md].write_text(report_markdown(d), encoding="utf-8")
        write_json(d, staged[js])


def gate_and_report(reg, test_df: pd.DataFrame, cfg: Params, report: Path, decision_json: Path) -> dict:
    """Run the gate on the current challenger with ``cfg``'s settings and write the decision (markdown + JSON)."""
    d = run_gate(reg, test_df, cfg.register_, ece_bins=cfg.evaluate.ece_bins, auto_promote=cfg.register_.auto_promote)
    write_decision(d, report, decision_json)
    return d


def fail_on_refusal(decision: dict | None, cfg: Params) -> None:
    """Raise :class:`GateFailed` (exit 3) for a refused challenger when ``register.fail_on_refusal`` says so.

    Called after the decision is written and shown, so a failed run still leaves its reasons behind.
    ``None`` (no gate ran: a manual promotion or a rollback) passes."""
    if decision is not None and not decision["promote"] and cfg.register_.fail_on_refusal:
        raise GateFailed(f"challenger v{decision['challenger_version']} refused: {'; '.join(decision['reasons'])}")
