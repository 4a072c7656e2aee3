"""promote: promote a given version to champion, roll back, or re-run the gate, on one model family.

The dispatch is the library's (:func:`pipelines.promotion.run_promotion`, the same as
``python -m pipelines.promote``); this flow only validates its parameters and publishes the result
as a Prefect artifact with links into MLflow. ``family`` picks the registered model: the classifier
(``mlflow.registered_model``) or the generative triage model (``register_llm.registered_model``);
the other family's aliases are never touched. What a move guarantees (compare-and-swap under the one registry
lock, a rollback marking the version it leaves, an unloadable version never promoted) is the library's too
(:mod:`pipelines.registry.gate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field, model_validator

from flows import common
from flows.common import Options
from pipelines import promotion
from pipelines.errors import ConfigError
from pipelines.registry.aliases import CHAMPION
from pipelines.registry.families import Family

ARTIFACT_KEYS = {"classifier": "promotion", "llm": "promotion-llm"}  # one artifact history per registered model


class PromoteOptions(Options):
    """Parameters of the promote flow: a version, or rollback, or neither (re-run the gate on the challenger)."""

    family: Family = Field(
        "classifier",
        description="which registered model: classifier (the register stage's) or llm (the register_llm stage's)",
    )
    version: str | None = Field(None, pattern=r"^\d+$", description="promote this registered version to champion")
    rollback: bool = Field(
        False, description="move champion back to the previous champion (never re-promoted by the gate)"
    )
    reason: str | None = Field(
        None, max_length=2000, description="why (recorded on the version promoted by hand or rolled back)"
    )
    test_split: str | None = Field(
        None,
        description="the rows the gate compares on (empty: the family's own, "
        f"classifier {promotion.DEFAULT_PATHS['classifier']['test']}, llm {promotion.DEFAULT_PATHS['llm']['test']})",
    )

    @model_validator(mode="after")
    def _one_action(self) -> PromoteOptions:
        try:  # the library's rule, refused here already so the UI form names the field
            promotion.choose_action(self.version, self.rollback)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return self


@flow(name="promote", log_prints=True)
def promote(options: PromoteOptions = PromoteOptions()) -> dict[str, Any]:
    """Move the champion alias (by hand or by the gate) and publish what changed."""
    from pipelines.registry.gate import fail_on_refusal

    params = common.params_of(options)
    result = promotion.run_promotion(
        params,
        family=options.family,
        version=options.version,
        rollback=options.rollback,
        test=Path(options.test_split) if options.test_split else None,
        requested_by="Prefect flow promote",
        reason=options.reason,
    )
    before, after = result.champion_before, result.champion_after
    get_run_logger().info(result.message)
    create_markdown_artifact(
        key=ARTIFACT_KEYS[options.family],
        markdown=f"# Promotion: `{result.model}`\n\n{result.message}\n\n## Links\n\n"
        + common.links_markdown(common.mlflow_links(params, after, options.family)),
        description=f"{result.model}: {CHAMPION} v{before} -> v{after}",
    )
    fail_on_refusal(result.decision, params)
    return {"champion_before": before, "champion_after": after, "message": result.message}
