"""retrain: labelled production rows → a new DVC-tracked snapshot → the ``training`` flow → on promotion, ``deploy``.

Started by hand or by the trigger on ``model.drift.detected`` (``flows/serve_all.py``); ``reason``
comes from the event's payload. The snapshot functions are monitoring's (:mod:`monitoring.feedback`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from flows import common
from flows.common import Options
from flows.deploy import DeployOptions, deploy
from flows.training import TrainingOptions, training
from pipelines.config import Params


class RetrainOptions(Options):
    """Parameters of the retrain flow."""

    deploy_on_promotion: bool | None = Field(
        None, description="run the deploy flow when the new model is promoted (empty: params flows.deploy_on_promotion)"
    )
    force: bool = Field(False, description="dvc repro --force")


@task(name="snapshot-feedback")
def snapshot(params: Params) -> Path:
    """Labelled production rows not yet in any snapshot → ``snapshot-<utc>.parquet`` + its ``.dvc`` file."""
    from monitoring.feedback import dvc_add, snapshot_rows, used_ids, write_snapshot
    from monitoring.windows import read_log_frames

    snapshots_dir = Path(params.data.snapshots_dir or "data/snapshots")
    _, labelled, _ = read_log_frames(params.monitor.log_dir)
    path = write_snapshot(snapshot_rows(labelled, used_ids(snapshots_dir)), snapshots_dir)
    with common.dvc_lock(params):
        dvc_add(path, Path("."), runner=lambda cmd, **kw: common.run_command(cmd, kw.get("cwd", ".")))
    get_run_logger().info("snapshot %s", path)
    return path


@task(name="tag-lineage")
def tag_lineage(snapshot_path: Path, reason: str, params_file: str) -> dict:
    """Tag the registered version with its snapshot: :func:`monitoring.feedback.retrain` after ``dvc repro``.

    ``dvc repro`` already ran in the training flow, so the runner given here answers that command
    without running it; everything after it (reading the decision, the ``lineage.*`` tags) is monitoring's.
    """
    from monitoring.feedback import retrain as tag_after_repro

    def already_reproduced(cmd: list[str], **_: Any) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(cmd, 0, "reproduced by the training flow", "")

    return tag_after_repro(Path("."), snapshot_path, params_file=params_file, reason=reason, runner=already_reproduced)


@flow(name="retrain", log_prints=True)
def retrain(reason: str = "manual", options: RetrainOptions = RetrainOptions()) -> dict[str, Any]:
    """Snapshot feedback, run training (DVC + gate), deploy on promotion."""
    params = common.params_of(options)
    logger = get_run_logger()
    logger.info("retrain: %s", reason)
    path = snapshot(params)
    trained = training(TrainingOptions(params_file=options.params_file, force=options.force))
    outcome = tag_lineage(path, reason, options.params_file) if trained.get("challenger_version") else {}
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
