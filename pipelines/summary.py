"""summary: the few numbers a person wants after ``make run`` (``dvc metrics show`` has them all)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.errors import run_cli


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _count(d: dict, key: str) -> str:
    """``1,234`` for a number, ``?`` where the metrics file lacks it (an older or partial run)."""
    v = d.get(key)
    return f"{v:,}" if isinstance(v, (int, float)) else "?"


def summarise(metrics_dir: Path, reports_dir: Path) -> list[str]:
    ingest, leak = _load(metrics_dir / "ingest.json"), _load(metrics_dir / "leakage.json")
    lines = [
        f"data: {_count(ingest, 'rows_read')} rows read, {_count(ingest, 'rows_written')} kept "
        f"({_count(ingest, 'empty_text_dropped')} empty texts dropped, "
        f"{_count(ingest, 'pii_rows')} rows with PII scrubbed)"
        if ingest
        else "data: no metrics/ingest.json",
        f"leakage: {_count(leak, 'findings')} findings, {_count(leak, 'blockers')} blockers, "
        f"{_count(leak, 'dropped_columns')} leaky columns dropped, "
        f"{_count(leak, 'removed_eval_rows')} duplicate eval rows removed; "
        f"splits train {_count(leak, 'rows_train')} / val {_count(leak, 'rows_val')} / test {_count(leak, 'rows_test')}"
        if leak
        else "leakage: no metrics/leakage.json",
    ]
    lines.append(f"{'model':<18} {'val macro-F1':>12} {'test macro-F1':>13} {'test ECE':>9} {'ms / 1k texts':>14}")
    models = dict(_load(metrics_dir / "baselines.json").get("models", {}))
    ft = _load(metrics_dir / "finetune.json")
    if ft and not ft.get("skipped"):
        models["lora_transformer"] = ft
    for name, m in models.items():
        val, test = m.get("val", {}), m.get("test", {})
        lines.append(
            f"{name:<18} {val.get('macro_f1', float('nan')):>12.4f} {test.get('macro_f1', float('nan')):>13.4f} "
            f"{test.get('ece', float('nan')):>9.3f} {test.get('latency_ms_per_1k', float('nan')):>14,.0f}"
        )
    decision = _load(reports_dir / "promotion.json")
    if decision:
        verdict = "promoted to champion" if decision.get("promote") else "not promoted"
        lines.append(
            f"registry: challenger v{decision.get('challenger_version')} {verdict}; see {reports_dir / 'promotion.md'}"
        )
    return lines


def main(
    metrics_dir: Annotated[Path, typer.Option()] = Path("metrics"),
    reports_dir: Annotated[Path, typer.Option()] = Path("reports"),
) -> None:
    """Print the headline numbers of the last pipeline run."""
    print("\n".join(summarise(metrics_dir, reports_dir)))


if __name__ == "__main__":
    run_cli(main)
