"""The promotion gate's machinery, manual promotion and rollback, with MLflow aliases (never stages).

The same for every model family (:mod:`pipelines.registry.families`): :func:`run_gate` takes how to
score a registered model and how to decide as parameters. The classifier scores both models on the
current test split and decides on macro-F1 and per-class F1 (:mod:`pipelines.classifier.gate`);
the generative model on JSON validity and mean field score (:mod:`pipelines.llm.registration`). Either way
challenger and champion are compared on the *same* current test rows, never on numbers from another split.
The first model becomes champion.

Used by the ``register`` and ``register_llm`` stages (gate after registering) and, through the one
dispatch in :mod:`pipelines.promotion`, by ``python -m pipelines.promote`` and the ``promote`` flow.

Aliases: ``challenger`` (the newest candidate), ``champion`` (served), ``previous-champion``
(where ``--rollback`` goes). The registered model's tag ``champion_history`` lists every
champion in order. Moving the ``champion`` alias is the single commit point: anything that
fails before it leaves the previous champion in place.

What is guaranteed, for both families:

- the gate resolves the aliases once and from then on loads and scores version *numbers*
  (``models:/<name>/<version>``), so what it compared is what it promotes;
- every alias move holds the registry lock (:mod:`pipelines.registry.lock`), and a move that depends on the
  current state (the gate's promotion, a manual promotion, a rollback) is a compare-and-swap: when
  ``challenger`` or ``champion`` moved meanwhile, :class:`~pipelines.registry.tracking.RegistryConflict` and
  nothing moves (of two racing promotions exactly one wins);
- a rollback marks the version it leaves (``rolled_back=true`` with time, reason, target) before moving, and
  takes ``challenger`` off it; the gate refuses a marked challenger forever (a person may still promote it by
  hand, which clears the mark);
- a challenger (or the champion it is compared with, or a version promoted by hand) that cannot be loaded as
  serving loads it fails the run loudly (:class:`ModelLoadFailed`, exit 3, naming the version); nothing moves.

    python -m pipelines.promote [--family llm]                # run the gate on the current challenger
    python -m pipelines.promote [--family llm] --version 3    # promote version 3 by hand
    python -m pipelines.promote [--family llm] --rollback     # champion -> previous champion
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from pipelines.config import Params
from pipelines.errors import ConfigError, GateFailed
from pipelines.io import atomic_outputs, write_json
from pipelines.registry.aliases import CHALLENGER, CHAMPION, PREVIOUS
from pipelines.registry.families import Family, gate_settings
from pipelines.registry.tracking import RegistryConflict

HISTORY_TAG = "champion_history"
ROLLED_BACK = "rolled_back"  # version tag "true": a rollback moved the champion off this version
ROLLBACK_TAGS = (ROLLED_BACK, "rolled_back_at", "rolled_back_reason", "rolled_back_to")

Score = Callable[[str, str], dict]  # (version, role: CHALLENGER or CHAMPION) -> its metrics on the current test rows
Decide = Callable[[dict, dict | None], dict]  # (challenger, champion or None) -> {"promote", "reasons", ...}
T = TypeVar("T")
_ANY: Any = object()  # "no expectation" (None is a real one: no champion yet)


class ModelLoadFailed(GateFailed):
    """A version the gate (or a manual promotion) would make champion, or the champion it compares with, cannot be
    loaded as serving would load it: nothing is moved, the run fails (exit 3) naming the version."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _v(version: str | None) -> str:
    return f"v{version}" if version is not None else "none"


def load_checked(reg, version: str, role: str, load: Callable[[str], T]) -> T:
    """``load(version)`` (a version *number*, never an alias that could move meanwhile), or
    :class:`ModelLoadFailed` naming the registered model, the version and its role."""
    try:
        return load(str(version))
    except Exception as err:
        detail = f"{type(err).__name__}: {err}"
        raise ModelLoadFailed(
            f"registered model '{reg.name}' v{version} ({role}) cannot be loaded: {detail[:600]}; no alias was moved"
        ) from err


def rollback_mark(reg, version: str) -> dict[str, str] | None:
    """The rollback tags of ``version`` when a rollback marked it (``rolled_back=true``), else None."""
    tags = reg.version(version).tags
    return {k: tags.get(k, "") for k in ROLLBACK_TAGS} if tags.get(ROLLED_BACK) == "true" else None


def expect_alias(reg, alias: str, expected: str | None, doing: str) -> None:
    """Compare: refuse with :class:`RegistryConflict` unless ``alias`` still points at ``expected`` (hold the
    registry lock from this check to the move)."""
    now = reg.alias(alias)
    if now != expected:
        raise RegistryConflict(
            f"registered model '{reg.name}': '{alias}' moved from {_v(expected)} to {_v(now)} while {doing}; "
            "nothing was moved (another register, promote or rollback won): run it again on the new state"
        )


def _move_champion(reg, version: str, reason: str) -> str | None:
    """Point ``champion`` at ``version`` (the caller holds the registry lock); return the old champion."""
    old = reg.alias(CHAMPION)
    if old == str(version):
        return old
    if old is not None:
        reg.set_alias(PREVIOUS, old)  # harmless if we stop here: champion unchanged
    reg.set_alias(CHAMPION, version)  # commit point
    history = [v for v in reg.model_tag(HISTORY_TAG).split(",") if v]
    reg.set_model_tag(HISTORY_TAG, ",".join([*history, str(version)]))
    reg.tag_version(version, {"promoted_at": _now(), "promotion_reason": reason[:4000]})
    if rollback_mark(reg, version):  # only a person promotes a rolled-back version (the gate refuses it)
        reg.untag_version(version, *ROLLBACK_TAGS)
        reg.tag_version(version, {"rollback_cleared_by": reason[:4000]})
    return old


def promote_version(
    reg,
    version: str,
    reason: str,
    *,
    expected_champion: str | None = _ANY,
    verify: Callable[[str], Any] | None = None,
) -> str | None:
    """Point ``champion`` at ``version``; return the old champion. The alias move is the commit point.

    ``verify(version)`` (optional) loads the version first: one that cannot be loaded is
    :class:`ModelLoadFailed` and nothing moves. ``expected_champion`` makes the move a compare-and-swap: when
    the champion is no longer that version, :class:`RegistryConflict` and nothing moves."""
    reg.version(version)  # raises if it does not exist
    if verify is not None:
        load_checked(reg, str(version), "to be promoted", verify)
    with reg.lock():
        if expected_champion is not _ANY:
            expect_alias(reg, CHAMPION, expected_champion, f"promoting v{version}")
        return _move_champion(reg, str(version), reason)


def rollback(reg, reason: str = "", *, expected_champion: str | None = _ANY) -> tuple[str, str]:
    """Move ``champion`` back to the previous champion; return ``(from, to)``.

    Under the registry lock: the version rolled back from is marked first (tags ``rolled_back=true``,
    ``rolled_back_at``, ``rolled_back_reason``, ``rolled_back_to``; the gate never promotes it again), then the
    champion moves (the commit point), then ``challenger`` is taken off it (deleted) when it pointed there.
    ``expected_champion``: as in :func:`promote_version`."""
    with reg.lock():
        current = reg.alias(CHAMPION)
        if expected_champion is not _ANY:
            expect_alias(reg, CHAMPION, expected_champion, "rolling back")
        history = [v for v in reg.model_tag(HISTORY_TAG).split(",") if v]
        while history and history[-1] != current:  # champion moved outside this tool: trust the alias
            history.pop()
        target = history[-2] if len(history) >= 2 else reg.alias(PREVIOUS)
        if current is None or target is None or target == current:
            raise ConfigError(f"nothing to roll back to: registered model '{reg.name}' has no previous champion")
        reg.tag_version(
            current,
            {ROLLED_BACK: "true", "rolled_back_at": _now(), "rolled_back_reason": (reason or "rollback")[:4000],
             "rolled_back_to": target},
        )  # fmt: skip
        reg.set_alias(CHAMPION, target)  # commit point
        history = history[:-1] if len(history) >= 2 else [target]
        reg.set_model_tag(HISTORY_TAG, ",".join(history))
        if len(history) >= 2:
            reg.set_alias(PREVIOUS, history[-2])
        else:
            reg.delete_alias(PREVIOUS)
        if reg.alias(CHALLENGER) == current:
            reg.delete_alias(CHALLENGER)
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
    challenger: str | None = None,
) -> dict:
    """Score the challenger (and the champion, when there is another one), decide, record and act.

    The aliases are resolved once, here (``challenger``: already resolved by the caller); from then on the gate
    works on version *numbers*: ``score(version, role)`` gives that version's metrics on the current ``rows``
    test rows (a family loads it with :func:`load_checked`: a version that cannot be loaded stops the gate,
    :class:`ModelLoadFailed`); ``decide(challenger, champion)`` the verdict (``champion`` is None for the first
    model); ``brief`` the metrics kept in the decision (its numbers are also tagged on the challenger version as
    ``gate.test_<name>``). ``basis`` says in the report how the two were compared.

    A challenger a rollback marked is refused without being scored. The promotion is a compare-and-swap under
    the registry lock: only when ``challenger`` and ``champion`` still point where they pointed when resolved
    (and the challenger was not rolled back meanwhile), else :class:`RegistryConflict` and nothing moves.
    Returns the decision dict (written by :func:`write_decision`)."""
    chall_v = str(challenger) if challenger is not None else reg.alias(CHALLENGER)
    champ_v = reg.alias(CHAMPION)
    if chall_v is None:
        raise ConfigError(f"registered model '{reg.name}' has no '{CHALLENGER}' alias; run the register stage first")
    mark = rollback_mark(reg, chall_v)
    chall = None if mark else score(chall_v, CHALLENGER)
    champ = score(champ_v, CHAMPION) if champ_v is not None and champ_v != chall_v else None
    if mark:
        decision = {
            "promote": False,
            "rolled_back": True,
            "reasons": [
                f"v{chall_v} was rolled back ({mark['rolled_back_at']}: {mark['rolled_back_reason']}): the gate never "
                f"promotes a rolled-back version again (a person can: python -m pipelines.promote --family {family} "
                f"--version {chall_v})"
            ],
        }
    elif champ_v == chall_v:
        decision = {"promote": False, "reasons": ["challenger is already the champion"]}
    else:
        decision = decide(chall, champ)
    decision.update(
        {
            "model": reg.name,
            "family": family,
            "challenger_version": chall_v,
            "champion_version_before": champ_v,
            "test_rows": rows,
            "basis": basis or default_basis(rows),
            "challenger": brief(chall) if chall is not None else None,
            "champion": brief(champ) if champ else None,
            "decided_at": _now(),
        }
    )
    numbers = {k: v for k, v in (decision["challenger"] or {}).items() if _is_number(v)}
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
        doing = f"the gate compared challenger v{chall_v} with champion {_v(champ_v)}"
        with reg.lock():  # compare-and-swap: both aliases as resolved, the challenger still not rolled back
            expect_alias(reg, CHALLENGER, chall_v, doing)
            expect_alias(reg, CHAMPION, champ_v, doing)
            if rollback_mark(reg, chall_v):
                raise RegistryConflict(f"registered model '{reg.name}': v{chall_v} was rolled back while {doing}")
            _move_champion(reg, chall_v, "gate: " + "; ".join(decision["reasons"]))
        decision["promoted"] = True
    decision["champion_version_after"] = chall_v if decision["promoted"] else champ_v
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
