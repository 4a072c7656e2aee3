"""``make demo-drift``: train on period A, serve drifted period B, detect, retrain on A + labelled B, recover.

Runs in a temporary copy of the repository (your workspace is untouched) with small params:
4,000 generated tickets, TF-IDF baselines only, and ``split.strategy: stratified`` (a time split
would put the snapshot, the newest rows, only into val/test, so the retrained model would never
learn period B; ``leakage.time_order_action: report`` for the same reason). Traffic goes through
the real Ray Serve endpoint (``python -m serving.app``); with ``--in-process`` (or if the endpoint
does not come up) the served model predicts in-process and rows go to the log through
:func:`serving.prediction_log.write_part`. Retraining is :func:`monitoring.run.run_pass`'s, as in
``python -m monitoring.run``. Recovery is measured on *fresh* period-B data (a seed
neither model saw), not on the rows it was retrained on.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

from monitoring import demo_traffic as traffic
from pipelines.io import run_command, tool

ROOT = Path(__file__).resolve().parents[1]
COPY = ("pipelines", "serving", "monitoring", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore", ".gitignore")
SMALL = {
    "generate": {"n_rows": 4000, "n_customers": 1200},
    "validate": {"min_class_count": 20},
    "split": {"strategy": "stratified"},
    "leakage": {"time_order_action": "report"},
    "baselines": {"models": ["majority", "tfidf_logreg"]},
    "finetune": {"enabled": False},
    "monitor": {
        "window_size": 300,
        "min_window_rows": 200,
        "min_labelled_rows": 100,
        "reference_size": 800,
        "persistence": 3,
    },
    "serve": {"watch_interval_s": 5, "log_flush_s": 1.0, "log_text": True},  # drift is measured on the text
    # the generative branch, when a copy runs all of dvc.yaml (a Prefect UI run): a smoke-sized one
    "sft_data": {"max_train_samples": 16, "max_val_samples": 8, "max_test_samples": 8},
    "sft": {"epochs": 1, "smoke_steps": 2},
    "llm_eval": {"systems": ["finetuned", "zero_shot"], "max_new_tokens": 24},
    "flows": {"deploy_on_promotion": False},  # the demo's Serve replicas follow the alias themselves
}


def make_repo(dst: Path, extra: tuple[str, ...] = ()) -> Path:
    """Copy the project (code, dvc.yaml, params) into ``dst`` as a fresh git + DVC repo with small params."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in COPY + extra:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dst / name)
    snapshots = dst / "data" / "snapshots"
    snapshots.mkdir(parents=True)
    (snapshots / "README.md").write_text("Labelled production snapshots (pipelines/data/snapshots.py).\n")
    params = yaml.safe_load((dst / "params.yaml").read_text())
    for section, values in SMALL.items():
        if section in params or section in ("finetune",):
            params.setdefault(section, {}).update(values)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], [tool("dvc"), "init", "-q"], [tool("dvc"), "config", "core.analytics", "false"]):
        run_command(cmd, dst, check=True)
    return dst


def train_period_a() -> None:
    """``dvc repro register`` in the demo repository (the current directory): period A only, classifier champion
    registered (the drift demo is the classifier's)."""
    run_command([tool("dvc"), "repro", "register"], check=True)


def main(
    workdir: Annotated[
        Optional[Path], typer.Option(help="where to build the demo repo (default: a new temp dir)")
    ] = None,
    in_process: Annotated[bool, typer.Option(help="skip Ray Serve; log predictions in-process")] = False,
) -> None:
    """Drift demo end to end in a temporary copy of the repository; prints before/after numbers."""
    from monitoring.run import format_summary, run_pass
    from pipelines.config import load_params

    t0 = time.time()
    repo = make_repo(workdir or Path(tempfile.mkdtemp(prefix="demo-drift-")))
    os.chdir(repo)
    print(f"[demo] repository copy: {repo}\n[demo] 1/3 train on period A: dvc repro register ...", flush=True)
    train_period_a()
    params = load_params(Path("params.yaml"))
    sender = traffic.Sender(params, in_process)
    try:
        print(f"[demo] 2/3 traffic {sender.mode}; one window of period A (fresh seed), then period B", flush=True)
        ctx, windows = None, [("A", 101)] + [("B", 200 + i) for i in range(params.monitor.persistence)]
        for period, seed in windows:
            sender.send(traffic.period(params.monitor.window_size, seed, drift=period == "B"))
            summary, ctx = run_pass(params, ctx=ctx)
            print(f"\n[demo] period {period} window (seed {seed}):\n{format_summary(summary)}", flush=True)
            if "retrain" in summary:
                break
        print("\n[demo] 3/3 accuracy on NEW period-B data (seed 999) and new period-A data (seed 998):", flush=True)
        print(traffic.before_after(params), flush=True)
    finally:
        sender.close()
    print(
        f"\n[demo] reports: {repo / params.monitor.reports_dir}/<utc>/*.html (+ summary.json), state.json;"
        f" MLflow: {repo / 'mlflow.db'}; snapshot(s): {sorted(map(str, Path('data/snapshots').glob('*.parquet')))}"
        f"\n[demo] done in {time.time() - t0:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    from pipelines.errors import run_cli

    run_cli(main)
