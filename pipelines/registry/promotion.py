"""Promote or roll back: the one dispatch behind ``python -m pipelines.promote`` and the ``promote`` flow.

Three actions, exactly one per call: re-run the gate on the current challenger (the default), promote a
given version by hand, or roll the champion back to the previous champion. Both callers go through
:func:`run_promotion` and only present its :class:`PromotionResult` their own way (the CLI prints it, the
flow publishes a Prefect artifact), so a refusal reads the same from either. The gate itself, promotion and
rollback live in :mod:`pipelines.registry.gate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipelines.config import Params
from pipelines.errors import ConfigError
from pipelines.io import read_split
from pipelines.registry.aliases import CHAMPION

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

    @property
    def refused(self) -> bool:
        """The gate refused the challenger (never true for a manual promotion or a rollback)."""
        return self.decision is not None and not self.decision["promote"]


def choose_action(version: str | None, rollback: bool) -> Action:
    """The action asked for; a version *and* rollback together is refused (which one was meant is unknown)."""
    if version is not None and rollback:
        raise ConfigError(f"version and rollback were both given (version {version}): use one of them, not both")
    return "rollback" if rollback else "version" if version is not None else "gate"


def run_promotion(
    cfg: Params,
    *,
    version: str | None = None,
    rollback: bool = False,
    test: Path = Path("data/processed/test.parquet"),
    report: Path = Path("reports/promotion.md"),
    decision_json: Path = Path("reports/promotion.json"),
    requested_by: str = "python -m pipelines.promote",
) -> PromotionResult:
    """Run one action on the registered model of ``cfg.mlflow`` and return what changed.

    ``gate`` scores challenger and champion on the ``test`` split now and writes the decision to ``report``
    and ``decision_json``; ``version`` points the champion at that version (recorded as a manual promotion
    by ``requested_by``); ``rollback`` moves it back. A missing registered model or an unknown version is
    a :class:`~pipelines.registry.tracking.RegistryError`; nothing is moved then.
    """
    from pipelines.registry import gate, tracking

    action = choose_action(version, rollback)
    tracking.setup(cfg.mlflow)
    reg = tracking.Registry(cfg.mlflow)
    if not reg.exists():
        raise tracking.RegistryError(
            f"no registered model named '{reg.name}' (registry: {reg.uri}); run the register stage first"
        )
    before, decision = reg.alias(CHAMPION), None
    if action == "rollback":
        old, new = gate.rollback(reg)
        message = f"rolled back '{reg.name}': {CHAMPION} v{old} -> v{new}"
    elif action == "version":
        old = gate.promote_version(reg, str(version), f"manual: {requested_by}")
        message = f"promoted '{reg.name}' v{version} to {CHAMPION} (was {'v' + old if old else 'none'})"
    else:
        decision = gate.gate_and_report(reg, read_split(test), cfg, report, decision_json)
        message = gate.report_markdown(decision)
    return PromotionResult(action, reg.name, before, reg.alias(CHAMPION), message, decision)
