"""``llm.enabled: false``: each stage CLI of the generative branch, run as DVC runs it, writes every output
dvc.yaml declares for it as a 'skipped' record, prints one line, exits 0 and loads no model.

Each stage runs alone in an empty workspace (no upstream output at all: every stage checks the switch itself),
with ``llm.base_model`` naming a folder that does not exist, so resolving or loading any model would fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines.llm.skipping import CONFUSION_COLUMNS, MARKER, REASON, is_skipped
from tests.helpers import ROOT
from tests.helpers.llm import run_module

pytestmark = pytest.mark.integration

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
BRANCH = ("sft_data", "sft", "llm_eval", "register_llm")


def declared_outputs(stage: str) -> list[str]:
    """outs, metrics and plots of ``stage`` in dvc.yaml."""
    items = [i for key in ("outs", "metrics", "plots") for i in STAGES[stage].get(key, [])]
    return [next(iter(i)) if isinstance(i, dict) else str(i) for i in items]


def assert_skipped_output(path: Path, stage: str) -> None:
    assert path.exists(), f"{stage}: {path} was not written"
    if path.is_dir():
        assert sorted(p.name for p in path.iterdir()) == [MARKER]
        path = path / MARKER
    if path.suffix == ".json":
        record = json.loads(path.read_text(encoding="utf-8"))
        assert is_skipped(record) and record["stage"] == stage and record["reason"] == REASON
    elif path.suffix == ".md":
        assert path.read_text(encoding="utf-8").startswith(f"# {stage}: skipped") and "llm.enabled" in path.read_text()
    elif path.suffix == ".csv":
        assert path.read_text(encoding="utf-8") == CONFUSION_COLUMNS + "\n"
    elif path.suffix == ".png":
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        raise AssertionError(f"{stage}: unexpected output {path}")


@pytest.mark.parametrize("stage", BRANCH)
def test_a_disabled_stage_publishes_skipped_records_and_exits_0(tmp_path: Path, stage: str) -> None:
    assert "llm.enabled" in STAGES[stage]["params"], f"dvc.yaml: {stage} must re-run when the switch flips"
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "llm": {"enabled": False, "base_model": str(tmp_path / "no-such-model"), "cache_dir": "cache"},
                "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "artifact_root": "mlartifacts"},
            }
        ),
        encoding="utf-8",
    )
    proc = run_module(f"pipelines.{stage}", cwd=tmp_path, timeout=300)  # every path at its default, as dvc runs it

    assert proc.returncode == 0, f"{stage} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{stage}: skipped ({REASON})"), proc.stdout
    for out in declared_outputs(stage):
        assert_skipped_output(tmp_path / out, stage)
    left = {p.name for p in tmp_path.iterdir()} - {"params.yaml", *(o.split("/")[0] for o in declared_outputs(stage))}
    assert not left, f"{stage} left {sorted(left)} (no model cache, no registry, no staging directory)"
