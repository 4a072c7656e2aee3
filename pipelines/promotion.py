"""Promote or roll back: the one dispatch behind ``python -m pipelines.promote`` and the ``promote`` flow.

Three actions, exactly one per call: re-run the gate on the current challenger (the default), promote a
given version by hand, or roll the champion back to the previous champion; each on one model family's
registered model (``classifier``, the default, or ``llm``: :mod:`pipelines.registry.families`). Both callers
go through :func:`run_promotion` and only present its :class:`PromotionResult` their own way (the CLI prints
it, the flow publishes a Prefect artifact), so a refusal reads the same from either. Promotion and rollback
live in :mod:`pipelines.registry.gate`; each family's gate in :mod:`pipelines.classifier.gate` and
:mod:`pipelines.llm.registration`. It sits beside the stages, above the families it dispatches to (the
registry layer below knows no family's code).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipelines.config import Params
from pipelines.errors import ConfigError
from pipelines.io import read_split
from pipelines.registry.aliases import CHAMPION
from pipelines.registry.families import Family, registered_model

Action = Literal["gate", "version", "rollback"]


@dataclass(frozen=True)
class PromotionResult:
    """What one promotion action did: the champion before and after, a human message, the gate's decision."""

    action: Action
    model: str
    champion_before: str | None
    champion_after: str | None
    message: str
    decision: dict | None = None  # the gate's decision (``gate`` only)
    family: Family = "classifier"

    @property
    def refused(self) -> bool:
        """The gate refused the challenger (never true for a manual promotion or a rollback)."""
        return self.decision is not None and not self.decision["promote"]


def choose_action(version: str | None, rollback: bool) -> Action:
    """The action asked for; a version *and* rollback together is refused (which one was meant is unknown)."""
    if version is not None and rollback:
        raise ConfigError(f"version and rollback were both given (version {version}): use one of them, not both")
    return "rollback" if rollback else "version" if version is not None else "gate"


# where each family's gate reads its test rows and writes its decision, unless the caller says otherwise
DEFAULT_PATHS: dict[str, dict[str, Path]] = {
    "classifier": {
        "test": Path("data/processed/test.parquet"),
        "report": Path("reports/promotion.md"),
        "decision_json": Path("reports/promotion.json"),
    },
    "llm": {
        "test": Path("data/sft/test.jsonl"),
        "report": Path("reports/promotion_llm.md"),
        "decision_json": Path("reports/promotion_llm.json"),
        "eval_metrics": Path("metrics/llm_eval.json"),
    },
}


def run_promotion(
    cfg: Params,
    *,
    family: Family = "classifier",
    version: str | None = None,
    rollback: bool = False,
    test: Path | None = None,
    report: Path | None = None,
    decision_json: Path | None = None,
    eval_metrics: Path | None = None,
    requested_by: str = "python -m pipelines.promote",
    reason: str | None = None,
) -> PromotionResult:
    """Run one action on ``family``'s registered model and return what changed.

    ``gate`` scores challenger and champion on the ``test`` rows now and writes the decision to ``report``
    and ``decision_json`` (the classifier: ``data/processed/test.parquet``, ``reports/promotion.{md,json}``;
    the LLM: ``data/sft/test.jsonl``, ``reports/promotion_llm.{md,json}``, its challenger's scores from
    ``eval_metrics``, ``metrics/llm_eval.json``); ``version`` points the champion at that version (recorded as
    a manual promotion by ``requested_by``, with ``reason``) once it loaded as serving loads it; ``rollback``
    moves it back and marks the version it leaves (``reason`` recorded on it) so the gate never re-promotes it.
    A missing registered model or an unknown version is a :class:`~pipelines.registry.tracking.RegistryError`,
    a champion that moved since it was read here a :class:`~pipelines.registry.tracking.RegistryConflict`, a
    version that cannot be loaded :class:`~pipelines.registry.gate.ModelLoadFailed`; nothing is moved then.
    """
    from pipelines.registry import gate, tracking

    action = choose_action(version, rollback)
    name = registered_model(cfg, family)  # also refuses an unknown family
    paths = DEFAULT_PATHS[family]
    tracking.setup(cfg.mlflow)
    reg = tracking.Registry(cfg.mlflow, name)
    if not reg.exists():
        raise tracking.RegistryError(
            f"no registered model named '{reg.name}' (registry: {reg.uri}); "
            f"run the {'register_llm' if family == 'llm' else 'register'} stage first"
        )
    before, decision = reg.alias(CHAMPION), None
    why = f"manual: {requested_by}" + (f": {reason}" if reason else "")
    if action == "rollback":
        old, new = gate.rollback(reg, why, expected_champion=before)
        message = f"rolled back '{reg.name}': {CHAMPION} v{old} -> v{new}"
    elif action == "version":
        old = gate.promote_version(reg, str(version), why, expected_champion=before, verify=loader(reg, cfg, family))
        message = f"promoted '{reg.name}' v{version} to {CHAMPION} (was {'v' + old if old else 'none'})"
    else:
        test, report = test or paths["test"], report or paths["report"]
        decision_json = decision_json or paths["decision_json"]
        if family == "llm":
            from pipelines.llm.registration import gate_and_report as llm_gate_and_report

            eval_metrics = eval_metrics or paths["eval_metrics"]
            decision = llm_gate_and_report(reg, cfg, test, eval_metrics, report, decision_json)
        else:
            from pipelines.classifier.gate import gate_and_report

            decision = gate_and_report(reg, read_split(test), cfg, report, decision_json)
        message = gate.report_markdown(decision)
    after = decision["champion_version_after"] if decision else new if action == "rollback" else str(version)
    return PromotionResult(action, reg.name, before, after, message, decision, family)


def loader(reg, cfg: Params, family: Family) -> Callable[[str], Any]:
    """How ``family``'s serving loads a version: the classifier in ``evaluate.precision``, the LLM as its pyfunc."""
    if family == "llm":
        return reg.load_pyfunc
    from pipelines.classifier.pyfunc import load_registered

    return lambda version: load_registered(reg, version, precision=cfg.evaluate.precision)
