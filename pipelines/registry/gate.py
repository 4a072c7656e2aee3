"""The promotion gate's machinery, manual promotion and rollback, with MLflow aliases (never stages).

The same for every model family (:mod:`pipelines.registry.families`): :func:`run_gate` takes how to
score a registered model and how to decide as parameters. The classifier scores both models on the
current test split and decides on macro-F1 and per-class F1 (:mod:`pipelines.registry.classifier_gate`);
the generative model on JSON validity and mean field score (:mod:`pipelines.llm.registration`). Either way
challenger and champion are compared on the *same* current test rows, never on numbers from another split.
The first model becomes champion.

Used by the ``register`` and ``register_llm`` stages (gate after registering) and, through the one
dispatch in :mod:`pipelines.registry.promotion`, by ``python -m pipelines.promote`` and the ``promote`` flow.

Aliases: ``challenger`` (the newest candidate), ``champion`` (served), ``previous-champion``
(where ``--rollback`` goes). The registered model's tag ``champion_history`` lists every
champion in order. Moving the ``champion`` alias is the single commit point: anything that
fails before it leaves the previous champion in place.

    python -m pipelines.promote [--family llm]                # run the gate on the current challenger
    python -m pipelines.promote [--family llm] --version 3    # promote version 3 by hand
    python -m pipelines.promote [--family llm] --rollback     # champion -> previous champion
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from pipelines.config import Params
from pipelines.errors import ConfigError, GateFailed
from pipelines.io import atomic_outputs, write_json
from pipelines.registry.aliases import CHALLENGER, CHAMPION, PREVIOUS
from pipelines.registry.families import Family, gate_settings

HISTORY_TAG = "champion_history"

Score = Callable[[str], dict]  # "@challenger" / "@champion" -> that model's metrics on the current test rows
Decide = Callable[[dict, dict | None], dict]  # (challenger, champion or None) -> {"promote", "reasons", ...}


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


def run_gate(
    reg,
    score: Score,
    decide: Decide,
    *,
    rows: int,
    brief: Callable[[dict], dict] = dict,
    family: Family = "classifier",
    basis: str | None = None,
    auto_promote: bool = True,
) -> dict:
    """Score the challenger (and the champion, when there is another one), decide, record and act.

    ``score(ref)`` gives a model's metrics on the current ``rows`` test rows; ``decide(challenger, champion)``
    the verdict (``champion`` is None for the first model); ``brief`` the metrics kept in the decision (its
    numbers are also tagged on the challenger version as ``gate.test_<name>``). ``basis`` says in the report
    how the two were compared. Returns the decision dict (written by :func:`write_decision`)."""
    chall_v, champ_v = reg.alias(CHALLENGER), reg.alias(CHAMPION)
    if chall_v is None:
        raise ConfigError(f"registered model '{reg.name}' has no '{CHALLENGER}' alias; run the register stage first")
    chall = score(f"@{CHALLENGER}")
    champ = score(f"@{CHAMPION}") if champ_v is not None and champ_v != chall_v else None
    decision = (
        decide(chall, champ)
        if champ_v != chall_v
        else {"promote": False, "reasons": ["challenger is already the champion"]}
    )
    decision.update(
        {
            "model": reg.name,
            "family": family,
            "challenger_version": chall_v,
            "champion_version_before": champ_v,
            "test_rows": rows,
            "basis": basis or default_basis(rows),
            "challenger": brief(chall),
            "champion": brief(champ) if champ else None,
            "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    numbers = {k: v for k, v in decision["challenger"].items() if _is_number(v)}
    reg.tag_version(
        chall_v,
        {
            "gate.decision": "promote" if decision["promote"] else "refuse",
            "gate.reasons": " | ".join(decision["reasons"])[:4000],
            **{f"gate.test_{k}": f"{v:.6f}" for k, v in numbers.items()},
            "gate.compared_with": champ_v or "none",
        },
    )
    decision["promoted"] = False
    if decision["promote"] and auto_promote:
        promote_version(reg, chall_v, "gate: " + "; ".join(decision["reasons"]))
        decision["promoted"] = True
    decision["champion_version_after"] = reg.alias(CHAMPION)
    return decision


def report_markdown(d: dict) -> str:
    """The decision as a short markdown report (reports/promotion.md, reports/promotion_llm.md).

    A classifier's decision shows its per-class F1; any other family a table of its metrics."""
    verdict = "PROMOTED" if d.get("promoted") else ("PASSED (not auto-promoted)" if d["promote"] else "REFUSED")
    if d["challenger_version"] == d["champion_version_before"]:
        verdict = "UNCHANGED"
    basis = d.get("basis") or default_basis(d["test_rows"])
    lines = [
        f"# Promotion decision: {verdict}",
        "",
        f"- model: `{d['model']}`; challenger v{d['challenger_version']}; champion before: "
        f"{'v' + d['champion_version_before'] if d['champion_version_before'] else 'none'}; "
        f"champion after: {'v' + str(d['champion_version_after']) if d['champion_version_after'] else 'none'}",
        f"- {basis}",
        f"- decided at {d['decided_at']}",
        "",
        "## Reasons",
        "",
    ]
    lines += [f"- {r}" for r in d["reasons"]]
    chall, champ = d.get("challenger") or {}, d.get("champion")
    if "per_class_f1" in chall:
        shown = [k for k in ("abstention_rate", "in_scope_accuracy", "oos_recall", "answered_accuracy") if k in chall]
        if shown:  # reported, not judged: the decision is on the labels given
            lines += ["", "## Abstention (test, each model with its own threshold)", ""]
            lines += ["| metric | champion | challenger |", "|---|---|---|"]
            lines += [f"| {k} | {_num((champ or {}).get(k))} | {_num(chall[k])} |" for k in shown]
        if champ:
            lines += ["", "## Per-class F1 (test)", "", "| class | champion | challenger | drop |", "|---|---|---|---|"]
            for c, f in champ["per_class_f1"].items():
                ch = chall["per_class_f1"].get(c, 0.0)
                lines.append(f"| {c} | {f:.4f} | {ch:.4f} | {f - ch:+.4f} |")
    elif chall:
        lines += ["", "## Metrics (test)", ""]
        lines += (
            ["| metric | champion | challenger | delta |", "|---|---|---|---|"]
            if champ
            else ["| metric | challenger |", "|---|---|"]
        )
        for k, v in chall.items():
            if champ:
                lines.append(f"| {k} | {_num(champ.get(k))} | {_num(v)} | {_delta(v, champ.get(k))} |")
            else:
                lines.append(f"| {k} | {_num(v)} |")
    return "\n".join(lines) + "\n"


def default_basis(rows: int) -> str:
    """How both models were compared, unless the family says otherwise."""
    return f"compared on the current test split ({rows:,} rows), both models loaded from the registry"


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "n/a" if v is None else str(v)


def _delta(new: object, old: object) -> str:
    if _is_number(new) and _is_number(old):
        return f"{new - old:+.4f}"
    return ""


def write_decision(d: dict, md: Path, js: Path) -> None:
    """The decision as markdown and JSON, both or neither."""
    with atomic_outputs(md, js) as staged:
        staged[md].write_text(report_markdown(d), encoding="utf-8")
        write_json(d, staged[js])


def fail_on_refusal(decision: dict | None, cfg: Params) -> None:
    """Raise :class:`GateFailed` (exit 3) for a refused challenger when its family's ``fail_on_refusal`` says so
    (``register`` for the classifier, ``register_llm`` for the generative model: the decision's ``family``).

    Called after the decision is written and shown, so a failed run still leaves its reasons behind.
    ``None`` (no gate ran: a manual promotion or a rollback) passes."""
    if decision is None or decision["promote"]:
        return
    if gate_settings(cfg, decision.get("family", "classifier")).fail_on_refusal:
        raise GateFailed(f"challenger v{decision['challenger_version']} refused: {'; '.join(decision['reasons'])}")
