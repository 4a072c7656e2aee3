"""What a fine-tuning rank writes: a production run writes no test-only files (the reload probe is opt-in)."""

from __future__ import annotations

from pathlib import Path

from pipelines.classifier.finetune_worker import PROBE_ENV, probe_dir


def test_a_default_run_writes_no_probe() -> None:
    assert probe_dir({}) is None
    assert probe_dir({PROBE_ENV: ""}) is None
    assert probe_dir({"PATH": "/usr/bin", "FINETUNE_TRACEBACK": "1"}) is None


def test_only_an_explicit_probe_directory_asks_for_one(tmp_path: Path) -> None:
    assert probe_dir({PROBE_ENV: str(tmp_path / "probe")}) == tmp_path / "probe"
