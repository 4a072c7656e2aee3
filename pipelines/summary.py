"""summary: the few numbers a person wants after ``make run`` (``dvc metrics show`` has them all).

The classifier's data, models and gate; then, when the generative branch has run, its systems side by side
(``metrics/llm_eval.json``) and its gate (``reports/promotion_llm.json``); one line when it was skipped
(``llm.enabled: false``). A missing file skips its lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.errors import run_cli
from pipelines.llm.skipping import is_skipped


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _count(d: dict, key: str) -> str:
    """``1,234`` for a number, ``?`` where the metrics file lacks it (an older or partial run)."""
    v = d.get(key)
    return f"{v:,}" if isinstance(v, (int, float)) else "?"


def _score(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "n/a"


def _verdict(decision: dict) -> str:
    """What the gate did to the challenger, in a few words (as in the promotion report)."""
    before = decision.get("champion_version_before")
    if before is not None and decision.get("challenger_version") == before:
        return "unchanged (already the champion)"
    if decision.get("promoted", decision.get("promote")):
        return "promoted to champion"
    return "passed the gate (not auto-promoted)" if decision.get("promote") else "not promoted"


def _gate_line(label: str, decision: dict, report: Path) -> str:
    champion = decision.get("champion_version_after")
    shown = f"; champion {'v' + str(champion) if champion else 'none'}" if "champion_version_after" in decision else ""
    return f"{label}: challenger v{decision.get('challenger_version')} {_verdict(decision)}{shown}; see {report}"


LLM_SYSTEMS = ("finetuned", "zero_shot", "few_shot", "classical")  # the order of pipelines.llm_eval


def summarise_llm(metrics_dir: Path, reports_dir: Path) -> list[str]:
    """The generative model's systems on the same test rows, and its gate; no lines for a missing file, one line
    when the branch was skipped."""
    lines: list[str] = []
    ev, decision = _load(metrics_dir / "llm_eval.json"), _load(reports_dir / "promotion_llm.json")
    if is_skipped(ev) or is_skipped(decision):
        why = (ev if is_skipped(ev) else decision).get("reason", "skipped")
        return [f"generative model: skipped ({why}; set llm.enabled: true to train it)"]
    if ev:
        lines.append(f"generative model: {_count(ev, 'rows')} test rows ({metrics_dir / 'llm_eval.json'})")
        lines.append(f"{'system':<18} {'valid JSON':>12} {'field score':>13} {'summary ROUGE-L':>16}")
        for name in LLM_SYSTEMS:
            m = ev.get(name)
            if not isinstance(m, dict):
                continue
            if "skipped" in m:
                lines.append(f"{name:<18} skipped: {m['skipped']}")
                continue
            lines.append(
                f"{name:<18} {_score(m.get('json_valid_rate')):>12} {_score(m.get('mean_field_score')):>13} "
                f"{_score(m.get('summary_rouge_l')):>16}"
            )
    if decision:
        lines.append(_gate_line("registry (generative)", decision, reports_dir / "promotion_llm.md"))
    return lines


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
        lines.append(_gate_line("registry", decision, reports_dir / "promotion.md"))
    return lines + summarise_llm(metrics_dir, reports_dir)


def main(
    metrics_dir: Annotated[Path, typer.Option()] = Path("metrics"),
    reports_dir: Annotated[Path, typer.Option()] = Path("reports"),
) -> None:
    """Print the headline numbers of the last pipeline run."""
    print("\n".join(summarise(metrics_dir, reports_dir)))


if __name__ == "__main__":
    run_cli(main)
