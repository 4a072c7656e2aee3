"""Feedback loop: labelled production rows → a new DVC-tracked raw snapshot → ``dvc repro`` → the same gate.

``data/snapshots/snapshot-<utc>.parquet`` holds ``id`` (``request_id:item``), ``text``, ``label``
(the feedback label) and ``timestamp`` (when it was predicted); ingest appends every snapshot
(:func:`pipelines.ingest.read_snapshots`). Rows already in an earlier snapshot are left out
("since the last training" = not yet used by any snapshot); a file is never overwritten. Each
snapshot gets its own ``.dvc`` file. :func:`retrain` is a plain function (no orchestration) a
Prefect flow can call; it records which snapshot trained which registered version as MLflow tags.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import yaml

from pipelines.errors import DataError, PipelineError
from pipelines.io import tool

Runner = Callable[..., subprocess.CompletedProcess]


def used_ids(snapshots_dir: Path) -> set[str]:
    """Ids of every row already in a snapshot."""
    return {
        i
        for f in sorted(Path(snapshots_dir).glob("snapshot-*.parquet"))
        for i in pd.read_parquet(f, columns=["id"])["id"].astype(str)
    }


def snapshot_rows(labelled: pd.DataFrame, used: set[str]) -> pd.DataFrame:
    """Labelled predictions (with text) not yet in a snapshot, in canonical columns id/text/label/timestamp."""
    df = labelled[labelled["text"].notna() & labelled["true_label"].notna()]
    out = pd.DataFrame(
        {
            "id": df["request_id"].astype(str) + ":" + df["item"].astype(str),
            "text": df["text"].astype(str),
            "label": df["true_label"].astype(str),
            "timestamp": pd.to_datetime(df["ts"], utc=True),
        }
    )
    out = out.drop_duplicates("id", keep="last")
    return out[~out["id"].isin(used)].reset_index(drop=True)


def write_snapshot(rows: pd.DataFrame, snapshots_dir: Path, now: datetime | None = None) -> Path:
    """Write ``snapshot-<utc>.parquet`` (exclusive create: an existing snapshot is never overwritten)."""
    if rows.empty:
        raise DataError("no new labelled production rows to snapshot (all labelled rows are in earlier snapshots)")
    now = now or datetime.now(timezone.utc)
    path = Path(snapshots_dir) / f"snapshot-{now:%Y%m%dT%H%M%S%fZ}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    rows.to_parquet(tmp, index=False)
    try:
        os.link(tmp, path)  # fails if the name exists: never overwrite
    except FileExistsError:
        raise DataError(f"snapshot {path} already exists; not overwriting it") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def run_checked(cmd: list[str], cwd: Path, runner: Runner = subprocess.run) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd``; a non-zero exit is a PipelineError carrying the tail of its output."""
    r = runner(cmd, cwd=str(cwd), capture_output=True, text=True)
    if r.returncode != 0:
        raise PipelineError(
            f"`{' '.join(cmd)}` failed (exit {r.returncode}):\n{(r.stdout or '')[-2000:]}{(r.stderr or '')[-2000:]}"
        )
    return r


def dvc_add(path: Path, repo: Path, runner: Runner = subprocess.run) -> Path:
    """``dvc add`` the snapshot (its own ``.dvc`` file); return the ``.dvc`` path."""
    run_checked([tool("dvc"), "add", str(Path(path).resolve().relative_to(Path(repo).resolve()))], repo, runner)
    return Path(str(path) + ".dvc")


def snapshot_md5(dvc_file: Path) -> str:
    doc = yaml.safe_load(Path(dvc_file).read_text(encoding="utf-8")) if Path(dvc_file).is_file() else {}
    return str((doc or {}).get("outs", [{}])[0].get("md5", ""))


def retrain(
    repo: Path, snapshot: Path, *, params_file: str = "params.yaml", reason: str = "", runner: Runner = subprocess.run
) -> dict:
    """``dvc repro`` in ``repo`` (the register stage runs the gate) and tag the new version with the snapshot."""
    from pipelines.config import load_params
    from pipelines.registry import tracking

    repo = Path(repo)
    run_checked([tool("dvc"), "repro"], repo, runner)
    decision_path = repo / "reports" / "promotion.json"
    decision = json.loads(decision_path.read_text(encoding="utf-8")) if decision_path.is_file() else {}
    version = decision.get("challenger_version")
    if version:
        cfg = load_params(repo / params_file)
        cwd = Path.cwd()
        os.chdir(repo)  # the tracking URI / artifact root in params are relative to the repository
        try:
            tracking.setup(cfg.mlflow)
            dvc_file = Path(str(snapshot) + ".dvc")
            tracking.Registry(cfg.mlflow).tag_version(
                version,
                {
                    "lineage.snapshot": str(Path(snapshot).name),
                    "lineage.snapshot_md5": snapshot_md5(dvc_file),
                    "lineage.snapshot_rows": len(pd.read_parquet(snapshot, columns=["id"])),
                    "lineage.retrain_reason": reason[:4000] or "monitoring breach",
                },
            )
        finally:
            os.chdir(cwd)
    return {
        "version": version,
        "promoted": bool(decision.get("promoted")),
        "reasons": decision.get("reasons", []),
        "champion_after": decision.get("champion_version_after"),
        "snapshot": str(snapshot),
    }


def feedback_loop(
    repo: Path, labelled: pd.DataFrame, snapshots_dir: Path, *, reason: str = "", runner: Runner = subprocess.run
) -> dict:
    """Snapshot the new labelled rows, ``dvc add`` it, retrain. Returns what happened."""
    rows = snapshot_rows(labelled, used_ids(snapshots_dir))
    path = write_snapshot(rows, snapshots_dir)
    dvc_add(path, repo, runner)
    return {"snapshot_rows": len(rows), **retrain(repo, path, reason=reason, runner=runner)}
