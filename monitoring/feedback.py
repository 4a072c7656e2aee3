"""Retraining on feedback, as small steps that both the CLI and the Prefect ``retrain`` flow compose.

1. :func:`snapshot_feedback`: the labelled rows of the prediction log not yet in any snapshot become a
   new snapshot (:mod:`pipelines.data.snapshots` owns the file and its schema) with its own ``.dvc`` file;
   with ``data.snapshots_review: true`` retraining stops here until a person reviews it
   (``python -m monitoring.feedback review <snapshot> --approve --reviewer <name>``);
2. a reproduction through DVC: :func:`reproduce` (``dvc repro``, for ``python -m monitoring.run`` and the
   drift demo, which have no Prefect) or the ``training`` flow (stage by stage under the DVC lock); the
   register stage's gate decides and writes ``reports/promotion.json``;
3. :func:`tag_lineage`: the registered version records, as MLflow tags, which snapshot trained it;
4. :func:`monitoring.decision.reset_state`: whoever acted on the breach acknowledges it.

:func:`retrain_on_feedback` is steps 1-3 for the CLI. Nothing here calls back into flows or orchestration;
the retraining needs ``data.snapshots_dir`` (it fails first, naming it, when that is null).

Feedback is untrusted input (whoever can call ``POST /feedback`` writes it): its rows may train but never
enter the test split the gate scores (:mod:`pipelines.data.splitting`); several labels for one
``(request_id, item)`` are resolved by ``monitor.feedback_conflict`` (:func:`resolve_labels`), and a row
once snapshotted keeps its label (a later label for it is ignored).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
import typer
import yaml

from monitoring.windows import read_log_frames
from pipelines import io as pipeline_io
from pipelines.config import Params
from pipelines.data import snapshots
from pipelines.data.snapshots import new_rows, snapshot_frame, snapshots_dir, used_ids, write_snapshot
from pipelines.errors import PipelineError, fail

DECISION = Path("reports/promotion.json")  # the register stage's gate decision
KEY = ["request_id", "item"]
Conflict = Literal["latest", "majority", "drop"]


def resolve_labels(feedback: pd.DataFrame, rule: Conflict = "latest") -> pd.DataFrame:
    """One feedback row per ``(request_id, item)`` (``monitor.feedback_conflict``):

    * ``latest``: the label given last (by ``ts``) wins: a correction replaces a mistake, and so does a wrong
      label sent after a right one;
    * ``majority``: the label given most often; a tie keeps no label (the log does not say who sent a label,
      so repeating one counts each time);
    * ``drop``: an item given two different labels keeps none.
    """
    fb = feedback[feedback["true_label"].notna()].sort_values("ts", kind="stable")
    last = fb.drop_duplicates(KEY, keep="last")
    if rule == "latest" or fb.empty:
        return last.reset_index(drop=True)
    if rule == "drop":
        agreed = fb.groupby(KEY)["true_label"].nunique().loc[lambda n: n == 1].index
        return last.set_index(KEY).loc[agreed].reset_index()[list(fb.columns)]
    votes = fb.groupby([*KEY, "true_label"]).size().rename("votes").reset_index()
    top = votes.groupby(KEY)["votes"].transform("max")
    winners = votes[votes["votes"] == top]
    winners = winners[~winners.duplicated(KEY, keep=False)]  # a tie: no label
    ts = fb.groupby([*KEY, "true_label"])["ts"].max().rename("ts").reset_index()
    return winners.merge(ts, on=[*KEY, "true_label"])[list(fb.columns)].reset_index(drop=True)


def labelled_rows(predictions: pd.DataFrame, feedback: pd.DataFrame, rule: Conflict = "latest") -> pd.DataFrame:
    """Predictions joined with their one resolved label (:func:`resolve_labels`); a prediction logged twice
    (a replayed segment) counts once."""
    preds = predictions.drop_duplicates(KEY, keep="first")
    return preds.merge(resolve_labels(feedback, rule)[[*KEY, "true_label"]], on=KEY, how="inner")


def feedback_rows(labelled: pd.DataFrame) -> pd.DataFrame:
    """Labelled predictions (with text) as snapshot rows; the id is ``request_id:item``."""
    df = labelled[labelled["text"].notna() & labelled["true_label"].notna()]
    ids = df["request_id"].astype(str) + ":" + df["item"].astype(str)
    return snapshot_frame(ids, df["text"], df["true_label"], df["ts"])


def snapshot_feedback(params: Params, now: datetime | None = None) -> Path:
    """Snapshot the labelled production rows no snapshot holds yet and ``dvc add`` it; return its path.

    Run it where ``dvc.yaml`` is (the paths in params are relative to the repository)."""
    directory = snapshots_dir(params.data)  # before anything: null means retraining on unchanged data
    predictions, _, feedback = read_log_frames(params.monitor.log_dir)
    labelled = labelled_rows(predictions, feedback, params.monitor.feedback_conflict)
    path = write_snapshot(new_rows(feedback_rows(labelled), used_ids(directory)), directory, now)
    dvc_add(path)
    return path


def dvc_add(path: Path) -> Path:
    """``dvc add`` the snapshot (its own ``.dvc`` file); return the ``.dvc`` path."""
    pipeline_io.run_command([pipeline_io.tool("dvc"), "add", str(path)], check=True)
    return Path(f"{path}.dvc")


def reproduce() -> dict[str, Any]:
    """``dvc repro register``: the classifier's branch (the model monitoring judges), whose register stage runs
    the gate; return the decision the register stage made now. The generative branch is not retrained here.

    A decision older than this run means DVC did not re-run the pipeline on the new snapshot: an error,
    rather than tagging an earlier version with this snapshot."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    pipeline_io.run_command([pipeline_io.tool("dvc"), "repro", "register"], check=True)
    decision = read_decision()
    if str(decision.get("decided_at", "")) < started:
        raise PipelineError(
            f"`dvc repro` did not re-run the register stage ({DECISION} is older than this run): the new "
            "snapshot changed nothing DVC tracks; is data.snapshots_dir among the ingest stage's deps in dvc.yaml?"
        )
    return decision


def read_decision(path: Path = DECISION) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8")) if Path(path).is_file() else {}


def snapshot_md5(dvc_file: Path) -> str:
    """The md5 DVC recorded for the snapshot (its content address), or '' without a ``.dvc`` file."""
    doc = yaml.safe_load(Path(dvc_file).read_text(encoding="utf-8")) if Path(dvc_file).is_file() else {}
    return str((doc or {}).get("outs", [{}])[0].get("md5", ""))


def tag_lineage(params: Params, snapshot: Path, version: str, reason: str) -> dict[str, str]:
    """Tag registered ``version`` with the snapshot it was trained on (name, DVC md5, rows, why); return the tags."""
    from pipelines.registry import tracking

    tags = {
        "lineage.snapshot": Path(snapshot).name,
        "lineage.snapshot_md5": snapshot_md5(Path(f"{snapshot}.dvc")),
        "lineage.snapshot_rows": str(len(pd.read_parquet(snapshot, columns=["id"]))),
        "lineage.retrain_reason": reason[:4000] or "monitoring breach",
    }
    tracking.Registry(params.mlflow).tag_version(version, tags)
    return tags


def awaiting_review(params: Params) -> list[str]:
    """With ``data.snapshots_review``, the snapshots no one reviewed yet (retraining waits for them); else []."""
    if not params.data.snapshots_review:
        return []
    return [str(p) for p in snapshots.pending_review(params.data.snapshots_dir)]


def retrain_on_feedback(params: Params, reason: str) -> dict[str, Any]:
    """Steps 1-3 without Prefect: snapshot, ``dvc repro``, lineage tags. Returns what happened.

    With ``data.snapshots_review`` and a snapshot not reviewed yet, it stops after the snapshot."""
    path = snapshot_feedback(params)
    pending = awaiting_review(params)
    if pending:
        return {"version": None, "promoted": False, "snapshot": str(path), "awaiting_review": pending, "lineage": {}}
    decision = reproduce()
    version = decision.get("challenger_version")
    return {
        "version": version,
        "promoted": bool(decision.get("promoted")),
        "reasons": decision.get("reasons", []),
        "champion_after": decision.get("champion_version_after"),
        "snapshot": str(path),
        "lineage": tag_lineage(params, path, str(version), reason) if version else {},
    }


cli = typer.Typer(
    add_completion=False, pretty_exceptions_enable=False, help="Labelled production snapshots: review them before use."
)


@cli.command()
def review(
    snapshot: Annotated[Path, typer.Argument(help="a snapshot file in data.snapshots_dir")],
    reviewer: Annotated[str, typer.Option(help="who reviewed it")],
    approve: Annotated[bool, typer.Option("--approve/--reject", help="use it (approve) or never (reject)")] = True,
) -> None:
    """Record a review of ``snapshot`` (``data.snapshots_review: true`` uses only approved snapshots)."""
    record = snapshots.review(snapshot, approve, reviewer)
    print(f"{'approved' if approve else 'rejected'}: {snapshot} ({record})")


@cli.command()
def pending(params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml")) -> None:
    """List the snapshots no one reviewed yet."""
    from pipelines.config import load_params

    for path in snapshots.pending_review(load_params(params).data.snapshots_dir):
        print(path)


if __name__ == "__main__":
    try:
        cli()
    except PipelineError as err:
        fail(err)
