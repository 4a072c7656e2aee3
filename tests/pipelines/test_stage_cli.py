"""Stage CLIs end to end in a temporary directory: baselines then register on tiny splits (no MiniLM), and the
error record a failing stage leaves for its caller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.errors import ERROR_FILE_ENV

pytestmark = pytest.mark.integration

WORDS = {
    "billing": "invoice charged payment card",
    "shipping": "parcel delivery courier tracking",
    "security": "phishing breach password leaked",
}


def split(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice(list(WORDS), size=n)
    return pd.DataFrame(
        {
            "id": [f"{seed}-{i}" for i in range(n)],
            "label": labels,
            "text": [" ".join(rng.choice(WORDS[y].split(), size=3)) + " help" for y in labels],
        }
    )


def run(cwd: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", **extra_env}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_baselines_then_register_twice_registers_once(tmp_path: Path) -> None:
    data = tmp_path / "data" / "processed"
    data.mkdir(parents=True)
    for name, (n, seed) in {"train": (240, 0), "val": (90, 1), "test": (90, 2)}.items():
        split(n, seed).to_parquet(data / f"{name}.parquet")
    (tmp_path / "params.yaml").write_text(
        "mlflow:\n  artifact_root: art\n  registered_model: tiny\n"
        "baselines:\n  models: [majority, tfidf_logreg]\n  c_grid: [1.0]\n  cv_folds: 2\n  n_jobs: 1\n  min_df: 1\n"
    )
    r = run(tmp_path, "pipelines.baselines")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "metrics" / "baselines.json").read_text())
    assert summary["selected"] == "tfidf_logreg" and summary["models"]["tfidf_logreg"]["test"]["macro_f1"] > 0.9
    assert (tmp_path / "plots" / "baselines" / "confusion_test.png").is_file()

    selected = json.loads((tmp_path / "models" / "baselines" / "selected.json").read_text())
    tuned = summary["models"]["tfidf_logreg"]["abstention"]  # tuned on its own val rows
    assert selected["abstention"] == {k: tuned[k] for k in ("threshold", "oos_label", "confidence")}

    first = run(tmp_path, "pipelines.register")
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads((tmp_path / "reports" / "promotion.json").read_text())["champion_version_after"] == "1"
    # metrics/eval.json is the champion's, on the test split as the gate scored it
    ev = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    assert (ev["version"], ev["role"], ev["model"]) == ("1", "champion", "tfidf_logreg")
    assert ev["test"]["macro_f1"] == pytest.approx(summary["models"]["tfidf_logreg"]["test"]["macro_f1"])
    assert {"accuracy", "abstention_rate", "answered_accuracy"} <= set(ev["test"])
    again = run(tmp_path, "pipelines.register")
    assert again.returncode == 0 and "not registering it again" in again.stdout

    (data / "test.parquet").unlink()
    split(0, 3).to_parquet(data / "test.parquet")
    bad = run(tmp_path, "pipelines.register")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: the test split")
    assert "Traceback" not in bad.stderr


def test_a_failing_stage_leaves_an_error_record_for_its_caller(tmp_path: Path) -> None:
    """DVC hides a stage's exit code; the record (``TICKETOPS_ERROR_FILE``) tells a config error from a crash."""
    (tmp_path / "params.yaml").write_text("split:\n  test_fraction: 0.9\n")
    record = tmp_path / "error.json"
    r = run(tmp_path, "pipelines.split", **{ERROR_FILE_ENV: str(record)})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    written = json.loads(record.read_text())
    assert written["error"] == "ConfigError" and written["kinds"] == ["ConfigError", "PipelineError"]
    assert written["exit_code"] == 2 and "split.test_fraction" in written["message"]

    record.unlink()
    assert run(tmp_path, "pipelines.split").returncode == 2  # no variable: no record anywhere
    assert not record.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
