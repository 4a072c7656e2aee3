"""Promotion: the gate, manual promotion and rollback, with MLflow aliases (never stages).

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

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipelines.config import load_params
from pipelines.errors import ConfigError, run_cli
from pipelines.registry.gate import gate_and_report, load_test_split, promote_version, rollback


def main(
    version: Annotated[Optional[str], typer.Option(help="promote this version to champion by hand")] = None,
    rollback_: Annotated[bool, typer.Option("--rollback", help="move champion back to the previous champion")] = False,
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    test: Annotated[Path, typer.Option(help="the test split the gate compares on")] = Path(
        "data/processed/test.parquet"
    ),
    report: Annotated[Path, typer.Option(help="markdown decision")] = Path("reports/promotion.md"),
    decision_json: Annotated[Path, typer.Option(help="JSON decision")] = Path("reports/promotion.json"),
) -> None:
    """Run the promotion gate on the challenger, or promote a version by hand, or roll back."""
    from pipelines.registry import tracking

    cfg = load_params(params)
    tracking.setup(cfg.mlflow)
    reg = tracking.Registry(cfg.mlflow)
    if not reg.exists():
        raise tracking.RegistryError(
            f"no registered model named '{reg.name}' (registry: {reg.uri}); run the register stage first"
        )
    if version is not None and rollback_:
        raise ConfigError("use either --version or --rollback, not both")
    if rollback_:
        old, new = rollback(reg)
        print(f"rolled back '{reg.name}': champion v{old} -> v{new}")
    elif version is not None:
        old = promote_version(reg, version, "manual: python -m pipelines.promote --version")
        print(f"promoted '{reg.name}' v{version} to champion (was {'v' + old if old else 'none'})")
    else:
        gate_and_report(reg, load_test_split(test), cfg, report, decision_json)


if __name__ == "__main__":
    run_cli(main)
