"""summary: the few numbers a person wants after ``make run`` (``dvc metrics show`` has them all)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.errors import run_cli


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def summarise(metrics_dir: Path, reports_dir: Path) -> list[str]:
    ingest, leak = _load(metrics_dir / "ingest.json"), _load(metrics_dir / "leakage.json")
    lines = [f"data: {ingest.get('rows_read', '?'):,} rows read, {ingest.get('rows_written', '?'):,} kept "
             f"({ingest.get('empty_text_dropped', 0)} empty texts dropped, {ingest.get('pii_rows', 0):,} rows with PII scrubbed)"
             if ingest else "data: no metrics/ingest.json",
             f"leakage: {leak.get('findings', 0)} findings, {leak.get('blockers', 0)} blockers, "
             f"{leak.get('dropped_columns', 0)} leaky columns dropped, {leak.get('removed_eval_rows', 0)} duplicate eval rows removed; "
             f"splits train {leak.get('rows_train', 0):,} / val {leak.get('rows_val', 0):,} / test {leak.get('rows_test', 0):,}"]
    lines.append(f"{'model':<18} {'val macro-F1':>12} {'test macro-F1':>13} {'test ECE':>9} {'ms / 1k texts':>14}")
    models = dict(_load(metrics_dir / "baselines.json").get("models", {}))
    ft = _load(metrics_dir / "finetune.json")
    if ft and not ft.get("skipped"):
        models["lora_transformer"] = ft
    for name, m in models.items():
        val, test = m.get("val", {}), m.get("test", {})
        lines.append(f"{name:<18} {val.get('macro_f1', float('nan')):>12.4f} {test.get('macro_f1', float('nan')):>13.4f} "
                     f"{test.get('ece', float('nan')):>9.3f} {test.get('latency_ms_per_1k', float('nan')):>14,.0f}")
    decision = _load(reports_dir / "promotion.json")
    if decision:
        verdict = "promoted to champion" if decision.get("promote") else "not promoted"
        lines.append(f"registry: challenger v{decision.get('challenger_version')} {verdict}; "
                     f"see {reports_dir / 'promotion.md'}")
    return lines


def main(metrics_dir: Annotated[Path, typer.Option()] = Path("metrics"),
         reports_dir: Annotated[Path, typer.Option()] = Path("reports")) -> None:
    """Print the headline numbers of the last pipeline run."""
    print("\n".join(summarise(metrics_dir, reports_dir)))


if __name__ == "__main__":
    run_cli(main)
