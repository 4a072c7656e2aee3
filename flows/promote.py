"""promote: promote a given version to champion, roll back, or re-run the gate: the same functions as
``python -m pipelines.promote`` (``promote_version``, ``rollback``, ``run_gate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field, model_validator

from flows import common
from flows.common import Options
from pipelines.errors import DataError


class PromoteOptions(Options):
    """Parameters of the promote flow: a version, or rollback, or neither (re-run the gate on the challenger)."""

    version: str | None = Field(None, pattern=r"^\d+$", description="promote this registered version to champion")
    rollback: bool = Field(False, description="move champion back to the previous champion")
    test_split: str = Field("data/processed/test.parquet", description="the split the gate compares on")

    @model_validator(mode="after")
    def _one_action(self) -> PromoteOptions:
        if self.version is not None and self.rollback:
            raise ValueError("version and rollback: use one of them, not both")
        return self


@flow(name="promote", log_prints=True)
def promote(options: PromoteOptions = PromoteOptions()) -> dict[str, Any]:
    """Move the champion alias (by hand or by the gate) and publish what changed."""
    from pipelines.registry import tracking
    from pipelines.registry.gate import promote_version, report_markdown, rollback, run_gate, write_decision

    params = common.params_of(options)
    tracking.setup(params.mlflow)
    reg = tracking.Registry(params.mlflow)
    if not reg.exists():
        raise tracking.RegistryError(f"no registered model named '{reg.name}'; run the training flow first")
    before = reg.alias("champion")
    if options.rollback:
        old, new = rollback(reg)
        text = f"rolled back '{reg.name}': champion v{old} -> v{new}"
    elif options.version is not None:
        old = promote_version(reg, options.version, "manual: Prefect flow promote")
        text = f"promoted '{reg.name}' v{options.version} to champion (was {'v' + old if old else 'none'})"
    else:
        if not Path(options.test_split).is_file():
            raise DataError(f"missing test split {options.test_split}; run the training flow first")
        d = run_gate(
            reg,
            pd.read_parquet(options.test_split),
            params.register_,
            ece_bins=params.evaluate.ece_bins,
            auto_promote=params.register_.auto_promote,
        )
        write_decision(d, Path("reports/promotion.md"), Path("reports/promotion.json"))
        text = report_markdown(d)
    after = reg.alias("champion")
    get_run_logger().info(text)
    create_markdown_artifact(
        key="promotion",
        markdown=f"# Promotion\n\n{text}\n\n## Links\n\n" + common.links_markdown(common.mlflow_links(params, after)),
        description=f"champion v{before} -> v{after}",
    )
    return {"champion_before": before, "champion_after": after, "message": text}
