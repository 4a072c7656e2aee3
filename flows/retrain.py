"""retrain: labelled production rows → a new DVC-tracked snapshot → the ``training`` flow → on promotion, ``deploy``.

Started by hand or by the trigger on ``model.drift.detected`` (``flows/serve_all.py``); ``reason``
comes from the event's payload. The steps are :mod:`monitoring.feedback`'s, the same ones
``python -m monitoring.run`` composes without Prefect; here ``training`` does the reproduction.
With ``data.snapshots_review: true`` the flow stops after the snapshot while a snapshot awaits a person's
review (``python -m monitoring.feedback review``); run it (or the training flow) again once reviewed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from flows import common
from flows.common import Options
from flows.deploy import DeployOptions, deploy
from flows.training import TrainingOptions, training
from monitoring import feedback
from pipelines.config import Params
from pipelines.data.snapshots import snapshots_dir


class RetrainOptions(Options):
    """Parameters of the retrain flow."""

    deploy_on_promotion: bool | None = Field(
        None, description="run the deploy flow when the new model is promoted (empty: params flows.deploy_on_promotion)"
    )
    force: bool = Field(False, description="dvc repro --force")


@task(name="snapshot-feedback")
def take_snapshot(params: Params) -> Path:
    """Labelled production rows not yet in any snapshot → ``snapshot-<utc>.parquet`` + its ``.dvc`` file."""
    with common.dvc_lock(params):
        path = feedback.snapshot_feedback(params)
    get_run_logger().info("snapshot %s", path)
    return path


@task(name="tag-lineage")
def record_lineage(params: Params, snapshot: Path, version: str, reason: str) -> dict[str, str]:
    """Tag the version the training flow registered with the snapshot it was trained on."""
    return feedback.tag_lineage(params, snapshot, version, reason)


@flow(name="retrain", log_prints=True)
def retrain(reason: str = "manual", options: RetrainOptions = RetrainOptions()) -> dict[str, Any]:
    """Snapshot feedback, run training (DVC + gate), deploy on promotion."""
    params = common.params_of(options)
    snapshots_dir(params.data)  # before anything: a null data.snapshots_dir would retrain on unchanged data
    logger = get_run_logger()
    logger.info("retrain: %s", reason)
    path = take_snapshot(params)
    pending = feedback.awaiting_review(params)
    if pending:
        logger.warning("retrain: %d snapshot(s) await review (data.snapshots_review): %s", len(pending), pending)
        create_markdown_artifact(
            key="retrain",
            description=reason[:200],
            markdown=f"# Retrain: awaiting review\n\n- reason: {reason}\n"
            + "".join(
                f"- `{p}`: `python -m monitoring.feedback review {p} --reviewer <name> --approve`\n" for p in pending
            ),
        )
        return {"reason": reason, "snapshot": str(path), "awaiting_review": pending, "promoted": False}
    # the classifier's branch: monitoring judges the classifier; the generative model is not retrained here
    trained = training(TrainingOptions(branch="classifier", params_file=options.params_file, force=options.force))
    version = trained.get("challenger_version")
    outcome = record_lineage(params, path, str(version), reason) if version else {}
    deployed = None
    deploy_wanted = (
        params.flows.deploy_on_promotion if options.deploy_on_promotion is None else options.deploy_on_promotion
    )
    if trained.get("promoted") and deploy_wanted:
        deployed = deploy(DeployOptions(params_file=options.params_file))
    create_markdown_artifact(
        key="retrain",
        description=reason[:200],
        markdown=(
            f"# Retrain: {'PROMOTED' if trained.get('promoted') else 'not promoted'}\n\n- reason: {reason}\n"
            f"- snapshot: `{path}`\n- challenger v{trained.get('challenger_version')}; champion "
            f"v{trained.get('champion_version_before')} -> v{trained.get('champion_version_after')}\n"
            + "".join(f"- {r}\n" for r in trained.get("reasons") or [])
            + (f"- deployed: {deployed['url']}\n" if deployed else "")
            + "\n## Links\n\n"
            + common.links_markdown(common.mlflow_links(params, trained.get("champion_version_after")))
        ),
    )
    return {"reason": reason, "snapshot": str(path), **trained, "lineage": outcome, "deployed": deployed}
