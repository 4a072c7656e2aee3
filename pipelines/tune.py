"""``python -m pipelines.tune`` (``make tune``): hyperparameter search for the finetune stage on Ray Tune.

Not part of ``make run``. Trials train with the finetune stage's own code on capped train/val rows; ASHA stops weak
ones on validation macro-F1; each trial is an MLflow child run of one parent run. The search itself is in
:mod:`pipelines.classifier.tuning`; this CLI reads the splits, writes the results and prints the best configuration
as a ``finetune:`` params snippet (``--apply`` writes it into params.yaml, where DVC sees the change and the next
``make run`` re-trains with it):

- ``<tune.out_dir>/best.json``: the best configuration, its score and epoch, the current one's score, the snippet;
- ``<tune.out_dir>/trials.csv`` and ``trials.png``: every trial's configuration and validation curve;
- ``reports/tune.md``: the same as a table a person reads.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
import yaml

from pipelines.config import Params, load_params, parse_params
from pipelines.errors import ConfigError, run_cli
from pipelines.io import atomic_outputs, write_json
from pipelines.registry import tracking


def rounded(config: dict[str, Any]) -> dict[str, Any]:
    """Floats to 3 significant digits (what a person writes in params); other values as they are."""
    return {k: float(f"{v:.3g}") if isinstance(v, float) else v for k, v in config.items()}


def yaml_value(v: Any) -> str:
    """One value as YAML on one line (``1.0e-05``, not ``1e-05``, which YAML would read as a string)."""
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()


def params_snippet(values: dict[str, Any]) -> str:
    return "finetune:\n" + "".join(f"  {k}: {yaml_value(v)}\n" for k, v in values.items())


def set_finetune_values(text: str, values: dict[str, Any]) -> str:
    """``text`` (a params.yaml) with ``finetune.<key>`` set to each value, comments and layout kept; a key the
    section does not list is added at its end."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"finetune:(\s|#|$)", line)), None)
    if start is None:
        lines += ["\n" if lines and not lines[-1].endswith("\n") else "", "finetune:\n"]
        start = len(lines) - 1
    end = next((j for j in range(start + 1, len(lines)) if re.match(r"[^\s#]", lines[j])), len(lines))
    for key, value in values.items():
        pattern = re.compile(rf"^( +{re.escape(key)}:[ \t]*)([^#\r\n]*?)([ \t]*#[^\r\n]*)?(\r?\n)?$")
        hit = next(((i, m) for i in range(start + 1, end) if (m := pattern.match(lines[i]))), None)
        if hit is None:
            last = max((j for j in range(start + 1, end) if lines[j].strip()), default=start)
            lines.insert(last + 1, f"  {key}: {yaml_value(value)}\n")
            end += 1
            continue
        i, m = hit
        if not m.group(2).strip():
            raise ConfigError(f"finetune.{key}: written over several lines in params.yaml; set it by hand")
        head, comment = f"{m.group(1)}{yaml_value(value)}", m.group(3) or ""
        if comment:  # keep the comment where it was when the new value fits
            width = len(m.group(1)) + len(m.group(2))
            comment = " " * max(1, width + len(comment) - len(comment.lstrip()) - len(head)) + comment.lstrip()
        lines[i] = f"{head}{comment}{m.group(4) or ''}"
    return "".join(lines)


def apply_best(params_path: Path, values: dict[str, Any]) -> None:
    """Write ``values`` into params.yaml's ``finetune`` section, checked by loading it, then atomically."""
    new = set_finetune_values(params_path.read_text(encoding="utf-8"), values)
    parsed = parse_params(yaml.safe_load(new), str(params_path))
    wrong = {k: getattr(parsed.finetune, k) for k, v in values.items() if getattr(parsed.finetune, k) != v}
    if wrong:
        raise ConfigError(f"{params_path}: could not set finetune {sorted(wrong)}; set them by hand")
    with atomic_outputs(params_path) as staged:
        staged[params_path].write_text(new, encoding="utf-8")


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown_table(df: pd.DataFrame) -> str:
    rows = [list(map(str, df.columns)), ["---"] * len(df.columns)]
    rows += [[_cell(v) for v in record] for record in df.itertuples(index=False)]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def markdown(result: dict, snippet: str, best_json: Path) -> str:
    best, current = result["best"], result["current"]
    table = result["table"].drop(columns=["mlflow_run_id"])
    cur = current["val_macro_f1"]
    lines = [
        "# Hyperparameter search (finetune)",
        "",
        f"{len(table)} trial(s) on {result['where']}, {result['seconds'] / 60:.1f} min; best: trial {best['trial']}, "
        f"val macro-F1 {best['val_macro_f1']:.4f} at epoch {best['epoch']}"
        + (f" (the current params: {cur:.4f}, trial {current['trial']})." if cur is not None else "."),
        "",
        markdown_table(table),
        "",
        f"Best configuration ({best_json}; `python -m pipelines.tune --apply` writes it into params.yaml):",
        "",
        "```yaml",
        snippet.rstrip(),
        "```",
        "",
        f"MLflow: parent run `{result['parent_run_id']}` (experiment of `mlflow.experiment`), one child run per trial.",
        "",
    ]
    return "\n".join(lines)


def plot(history: dict[int, list[dict]], best_trial: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for n, rows in sorted(history.items()):
        if rows:
            xs, ys = [r["epoch"] for r in rows], [r["val_macro_f1"] for r in rows]
            ax.plot(xs, ys, marker="o", lw=2.5 if n == best_trial else 1, label=f"trial {n}")
    ax.set(xlabel="epoch", ylabel="val macro-F1", title="Hyperparameter search: validation curves")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(
    params: Annotated[Path, typer.Option(help="params.yaml (sections tune, finetune, mlflow)")] = Path("params.yaml"),
    data_dir: Annotated[Path, typer.Option(help="model-ready splits (train and val are read)")] = Path(
        "data/processed"
    ),
    out_dir: Annotated[
        Path | None, typer.Option(help="best.json, trials.csv, trials.png (default: tune.out_dir)")
    ] = None,
    report: Annotated[Path, typer.Option(help="the search as a Markdown table")] = Path("reports/tune.md"),
    apply: Annotated[
        bool, typer.Option("--apply", help="write the best configuration into the finetune section of --params")
    ] = False,
) -> None:
    """Search finetune hyperparameters (tune.search_space) with Ray Tune and ASHA early stopping, within the
    budget of params' tune section; print the best configuration as a params snippet.

    Runs on an embedded Ray on 127.0.0.1, or on the Ray cluster at tune.ray_address / RAY_ADDRESS."""
    from pipelines.classifier import tuning
    from pipelines.classifier.finetune_worker import sample
    from pipelines.io import read_split

    p: Params = load_params(params)
    cfg = p.tune
    tuning.check(p)
    out = out_dir or Path(cfg.out_dir)
    train_df = sample(read_split(data_dir, "train"), cfg.max_train_samples, p.finetune.seed)
    val_df = sample(read_split(data_dir, "val"), cfg.max_eval_samples, p.finetune.seed)
    print(
        f"tune: {cfg.num_samples} trial(s) over {', '.join(cfg.search_space)}; {len(train_df):,} train / "
        f"{len(val_df):,} val rows; budget {cfg.time_budget_s / 60:.0f} min",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="ray-tune-") as storage:  # Tune's own files: the results are below
        result = tuning.search(p, train_df, val_df, storage)
    best = result["best"]
    values = rounded({k: best["config"][k] for k in cfg.search_space})  # in the order of params
    snippet = params_snippet(values)
    record = {
        "metric": tuning.METRIC,
        "best_val_macro_f1": best["val_macro_f1"],
        "best_epoch": best["epoch"],
        "best_trial": best["trial"],
        "finetune": values,
        "exact": best["config"],
        "current": result["current"],
        "params_snippet": snippet,
        "trials": len(result["table"]),
        "train_rows": len(train_df),
        "val_rows": len(val_df),
        "seconds": round(result["seconds"], 1),
        "ran_on": result["where"],
        "mlflow_parent_run_id": result["parent_run_id"],
        "mlflow_best_run_id": best["mlflow_run_id"],
    }
    best_json = out / "best.json"
    with atomic_outputs(best_json, out / "trials.csv", out / "trials.png", report) as staged:
        write_json(record, staged[best_json])
        result["table"].to_csv(staged[out / "trials.csv"], index=False)
        plot(result["history"], best["trial"], staged[out / "trials.png"])
        staged[report].write_text(markdown(result, snippet, best_json), encoding="utf-8")
    with tracking.run("", "tune", run_id=result["parent_run_id"]):  # the search's files on its parent run
        tracking.log_artifacts(best_json, out / "trials.csv", out / "trials.png", report)
    print(
        f"\nbest: trial {best['trial']}, val macro-F1 {best['val_macro_f1']:.4f} at epoch {best['epoch']} "
        f"({len(result['table'])} trials, {result['seconds'] / 60:.1f} min); wrote {best_json}, {report}\n\n{snippet}"
    )
    if best["trial"] == result["current"]["trial"]:
        print(f"the current finetune values scored best: {params} stays as it is")
    elif apply:
        apply_best(params, values)
        print(f"applied to {params}: `make run` re-trains finetune with it")
    else:
        print(f"to use it: python -m pipelines.tune --apply (writes it into {params}), or copy the lines above")


if __name__ == "__main__":
    run_cli(main)
