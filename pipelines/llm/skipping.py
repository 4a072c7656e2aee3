"""The generative branch's off switch, ``llm.enabled: false``: what its four stages do instead of running.

Your own classification data (CLINC150, SMS spam, ...) has no triage answers, so there is nothing to fine-tune
the instruct LM on. With the switch off, each stage of the branch (sft_data, sft, llm_eval, register_llm)
publishes its declared DVC outputs as 'skipped' records (:func:`write_skipped`, atomically, as every stage
publishes), prints one line and exits 0, loading no model: the DAG's outputs exist, ``dvc repro`` goes through,
and every reader tells "skipped" from "missing" with :func:`is_skipped`. Each stage checks the switch itself
(:func:`skip_if_disabled`), so none depends on what its upstream wrote when the switch is flipped.

The same shape as ``finetune.enabled`` (:func:`pipelines.classifier.finetuning.write_skipped`), in one place for
the four stages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from pipelines.config import LlmConfig
from pipelines.io import atomic_outputs, write_json
from pipelines.plots import message_png

REASON = "llm.enabled is false"
MARKER = "skipped.json"  # what a skipped directory output (data/sft, models/llm) holds
CONFUSION_COLUMNS = "actual,predicted"  # the columns dvc.yaml's confusion plot reads (header only: no rows)


def skipped_record(stage: str, **extra: object) -> dict:
    """``{"stage", "skipped": true, "reason", ...extra}``: the JSON a skipped stage writes for each record."""
    return {"stage": stage, "skipped": True, "reason": REASON, **extra}


def is_skipped(record: object) -> bool:
    """A record (a loaded JSON) that a skipped stage wrote."""
    return isinstance(record, Mapping) and record.get("skipped") is True


def _note(stage: str) -> str:
    return (
        f"# {stage}: skipped\n\n"
        "The generative branch is switched off (`llm.enabled: false` in params.yaml): nothing was trained, "
        "evaluated or registered. Set `llm.enabled: true` to run it on the built-in tickets, or on your own "
        "chat JSONL (`sft_data.path`).\n"
    )


def write_skipped(stage: str, *outputs: Path, **extra: object) -> None:
    """Publish every output of ``stage`` as a skipped record, all together (nothing on failure).

    By the output's suffix: ``.json`` the record (:func:`skipped_record` with ``extra``); ``.md`` a short note
    saying why; ``.csv`` a confusion plot with no rows; ``.png`` a placeholder figure; no suffix a directory
    holding the record as :data:`MARKER`."""
    record = skipped_record(stage, **extra)
    with atomic_outputs(*outputs) as staged:
        for target, path in staged.items():
            suffix = target.suffix.lower()
            if not suffix:
                path.mkdir(parents=True)
                write_json(record, path / MARKER)
            elif suffix == ".json":
                write_json(record, path)
            elif suffix == ".md":
                path.write_text(_note(stage), encoding="utf-8")
            elif suffix == ".csv":
                path.write_text(CONFUSION_COLUMNS + "\n", encoding="utf-8")
            elif suffix == ".png":
                message_png(path, f"{stage}: skipped ({REASON})")
            else:
                raise ValueError(f"{stage}: no skipped form for the output {target} (suffix {suffix})")


def skip_if_disabled(llm: LlmConfig, stage: str, *outputs: Path, **extra: object) -> bool:
    """When ``llm.enabled`` is false, write ``stage``'s skipped outputs, print one line and return True (the
    stage then returns: exit 0); else do nothing and return False."""
    if llm.enabled:
        return False
    write_skipped(stage, *outputs, **extra)
    print(f"{stage}: skipped ({REASON}): no model loaded; skipped records in {', '.join(map(str, outputs))}")
    return True


def load_record(path: str | Path) -> dict | None:
    """The JSON object at ``path``; None when the file is absent or holds something else."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
