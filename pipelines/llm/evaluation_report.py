"""What a person reads after ``llm_eval``: a markdown report, a bar chart of the fields, a confusion CSV for DVC.

- :func:`render_report`: the systems side by side on the same rows (skipped ones with their reason), the
  fine-tuned model's category and priority confusions, and a few of its failures;
- :func:`write_field_plot`: per-field scores by system (matplotlib, Agg backend, as
  :func:`pipelines.metrics.write_plots`); systems that were skipped are left out;
- :func:`write_confusion_csv`: one ``actual,predicted`` row per example (DVC's confusion template).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

SYSTEMS = ("finetuned", "zero_shot", "few_shot", "classical")
TRIAGE_COLUMNS = {
    "json_valid_rate": "valid JSON",
    "category_accuracy": "category",
    "priority_accuracy": "priority",
    "product_exact_match": "product",
    "order_id_exact_match": "order_id",
    "mean_field_score": "mean field",
    "summary_rouge_l": "summary ROUGE-L",
}
TEXT_COLUMNS = {"exact_match": "exact match", "rouge_l": "ROUGE-L"}
SPEED_COLUMNS = {"tokens_per_s": "tokens/s", "seconds": "seconds"}


def _cell(value: object, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], digits: Sequence[int] = ()) -> list[str]:
    """A markdown table; ``digits``: decimals per column (3 where not given)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    places = list(digits) + [3] * (len(header) - len(digits))
    return lines + ["| " + " | ".join(_cell(v, d) for v, d in zip(row, places)) + " |" for row in rows]


def scores_table(metrics: Mapping[str, Mapping]) -> list[str]:
    """Systems × metrics (the triage fields, or exact match / ROUGE-L for other data) and speed."""
    columns = TRIAGE_COLUMNS if metrics.get("graded") == "triage" else TEXT_COLUMNS
    rows = []
    for system in SYSTEMS:
        m = metrics.get(system)
        if m is None:
            continue
        if "skipped" in m:
            rows.append([system, f"skipped: {m['skipped']}", *[None] * (len(columns) + len(SPEED_COLUMNS) - 1)])
        else:
            rows.append([system, *(m.get(k) for k in columns), *(m.get(k) for k in SPEED_COLUMNS)])
    digits = [0, *[3] * len(columns), *[1] * len(SPEED_COLUMNS)]
    return _table(["system", *columns.values(), *SPEED_COLUMNS.values()], rows, digits)


def confusion_table(confusion: Mapping[str, Mapping[str, int]]) -> list[str]:
    """A ``{actual: {predicted: count}}`` crosstab as a markdown table (rows: actual; columns: predicted)."""
    if not confusion:
        return ["(no rows)"]
    predicted = list(next(iter(confusion.values())))
    rows = [[actual, *(counts.get(p, 0) for p in predicted)] for actual, counts in confusion.items()]
    return _table(["actual \\ predicted", *predicted], rows)


def _quote(text: str) -> str:
    return "`" + text.replace("`", "'") + "`" if text.strip() else "(empty)"


def render_report(
    metrics: Mapping,
    confusions: Mapping[str, Mapping[str, Mapping[str, int]]],
    failures: Sequence[Mapping[str, str]],
    notes: Sequence[str] = (),
) -> str:
    """The markdown report: ``metrics`` as written to ``metrics/llm_eval.json``, the fine-tuned model's
    ``confusions`` per field (:func:`~pipelines.llm.evaluation.field_confusion`) and ``failures``
    (:func:`~pipelines.llm.evaluation.worst_examples`); ``notes`` are extra lines under the table."""
    graded = metrics.get("graded") == "triage"
    lines = [
        "# Generative triage model: evaluation",
        "",
        f"{metrics['rows']} test examples, the same rows for every system, greedy decoding. "
        + (
            "Fields are scored over all rows: an answer that is not valid triage JSON scores 0 on every field."
            if graded
            else "The reference answers are not triage JSON, so whole answers are compared."
        ),
        "",
        f"- adapter sha256: `{metrics.get('adapter_sha256')}`",
        f"- test ids sha256: `{metrics.get('test_ids_sha256')}`",
        *(f"- {n}" for n in notes),
        "",
        "## Scores",
        "",
        *scores_table(metrics),
        "",
    ]
    for field, table in confusions.items():
        lines += [f"## Fine-tuned model: {field} (rows: reference, columns: answer)", "", *confusion_table(table), ""]
    lines += ["## Fine-tuned model: failures", ""]
    if not failures:
        lines.append("None: every answer was right on every graded field." if graded else "None.")
    for f in failures:
        lines += [
            f"- **{f['id']}**: {f['problem']}",
            f"  - answer: {_quote(f['answer'])}",
            f"  - reference: {_quote(f['reference'])}",
        ]
    return "\n".join(lines) + "\n"


def write_field_plot(metrics: Mapping[str, Mapping], png_path: Path) -> None:
    """Grouped bars: each scored metric (x) by system (one colour), 0–1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = TRIAGE_COLUMNS if metrics.get("graded") == "triage" else TEXT_COLUMNS
    scored = [s for s in SYSTEMS if isinstance(metrics.get(s), Mapping) and "skipped" not in metrics[s]]
    fig, ax = plt.subplots(figsize=(2.2 + 1.1 * len(columns), 3.6))
    width = 0.8 / max(len(scored), 1)
    for i, system in enumerate(scored):
        values = [metrics[system].get(k) or 0.0 for k in columns]
        xs = [j + (i - (len(scored) - 1) / 2) * width for j in range(len(columns))]
        ax.bar(xs, values, width=width, label=system)
    ax.set_xticks(range(len(columns)), list(columns.values()), rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title(f"llm_eval: {metrics.get('rows', 0)} test examples")
    if scored:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def write_confusion_csv(actual: Sequence[str], predicted: Sequence[str], csv_path: Path) -> None:
    """``actual,predicted`` per example (header only when there is none, as DVC needs the declared plot)."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"actual": list(actual), "predicted": list(predicted)}).to_csv(csv_path, index=False)
