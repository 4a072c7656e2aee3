"""One monitoring pass: window → Evidently reports → checks → persistence → (on a confirmed breach) retrain.

    python -m monitoring.run                 # one pass on the prediction log; retrains on a confirmed breach
    python -m monitoring.run --no-retrain    # report only

:func:`monitor_once` judges the model serving serves (``serve.model_alias``) and only reports: on a
confirmed breach (with ``monitor.retrain_on_breach``) its summary carries ``retrain_reason``. Acting on
it is the caller's: :func:`run_pass` (this CLI and the drift demo) retrains inline through
:mod:`monitoring.feedback`; the Prefect ``monitor`` flow emits an event that starts the ``retrain`` flow.
The CLI then runs the generative model's pass (:mod:`monitoring.generative`, ``generative.json`` in the same
folder). Writes ``reports/monitoring/<utc>/`` (HTML reports + ``summary.json``: each metric, its threshold,
breach true/false), logs them to MLflow (run ``monitor``), and keeps the breach count in
``reports/monitoring/state.json``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from monitoring import decision as dec
from monitoring import evidently_adapter as ev
from monitoring.compaction import Compaction, compact_log
from monitoring.context import Context, prepare, served_model
from monitoring.features import Encode
from monitoring.feedback import retrain_on_feedback
from monitoring.windows import apply_retention, check_schema, current_window, read_window_frames
from pipelines.config import Params, load_params
from pipelines.data.snapshots import snapshots_dir
from pipelines.errors import run_cli


def evaluate(ctx: Context, win: Any, params: Params) -> tuple[list[dict], dict[str, Any]]:
    """Run the reports for one window; return the checks and the Evidently snapshots by report name."""
    cfg, ref = params.monitor, ctx.reference
    data = None  # a log without text (serve.log_text: false): no text drift, the other checks still run
    if win.rows["text"].notna().any():
        cur = ctx.features(win.rows["text"].fillna("").astype(str).tolist())
        data = ev.column_drift("data_drift", ctx.ref_features, cur, ctx.text_columns, [], cfg)
    pred = ev.column_drift("prediction_drift", ref.val, win.rows.astype({"prediction": str}), [], ["prediction"], cfg)
    lab = win.labelled.assign(
        label=lambda d: d["true_label"].astype(str), prediction=lambda d: d["prediction"].astype(str)
    )
    enough = len(lab) >= cfg.min_labelled_rows
    label = ev.column_drift("label_drift", ref.train, lab, [], ["label"], cfg) if enough else None
    perf = dec.performance(lab["label"], lab["prediction"], ref.classes) if len(lab) else None
    checks = [
        dec.drift_check("data_drift", data, cfg.drift_share, "no text in the log (serve.log_text: false)"),
        dec.drift_check("prediction_drift", pred, cfg.cat_threshold),
        dec.drift_check(
            "label_drift",
            label,
            cfg.cat_threshold,
            f"{len(lab)} labelled rows < monitor.min_labelled_rows={cfg.min_labelled_rows}",
        ),
        *dec.performance_checks(perf, ctx.registered, ctx.val_perf, cfg),
    ]
    snaps = {"prediction_drift": pred.snapshot} | ({"data_drift": data.snapshot} if data is not None else {})
    notes = []
    if label is not None:
        snaps["label_drift"] = label.snapshot
        # Evidently's report compares each current label with the reference and fails on one the reference
        # lacks: those rows stay out of the HTML report (the checks above score them, as errors).
        shown = lab[lab["label"].isin(set(ref.val["label"]))]
        if len(shown) < len(lab):
            left_out = sorted(set(lab["label"]) - set(shown["label"]))
            notes.append(
                f"performance.html leaves out {len(lab) - len(shown)} row(s) labelled {left_out} (not in the reference)"
            )
        if len(shown):
            snaps["performance"] = ev.classification_report(
                ref.val.rename(columns={"label": "target"}), shown.rename(columns={"label": "target"}), ref.classes
            )
    extra = {"performance": perf, "data_drift_columns": data.columns if data is not None else {}, "notes": notes}
    return checks, {"snapshots": snaps, **extra}


def monitor_once(
    params: Params,
    *,
    ctx: Context | None = None,
    now: datetime | None = None,
    log_mlflow: bool = True,
    encode: Encode | None = None,
) -> tuple[dict, Context]:
    """One pass; returns the summary and the (reusable) context. Reports only: a confirmed breach that
    should retrain sets ``summary["retrain_reason"]`` for the caller to act on."""
    cfg, now = params.monitor, now or datetime.now(timezone.utc)
    reg, alias, version, model = served_model(params)
    if ctx is None or ctx.reference.version != version:
        ctx = prepare(params, reg, version, model, encode=encode)
    pruned = apply_retention(cfg.log_dir, cfg.log_retention_days, now)
    compacted = compact_log(cfg.log_dir, now) if cfg.log_compact else Compaction()
    preds, labelled, feedback = read_window_frames(cfg.log_dir, version, cfg, now)
    win = current_window(preds, labelled, feedback, version, cfg, now)
    out = Path(cfg.reports_dir) / f"{now:%Y%m%dT%H%M%S%fZ}"
    summary: dict[str, Any] = {
        "at": now.isoformat(),
        "model": reg.name,
        "model_alias": alias,
        "model_version": version,
        "window": {"mode": cfg.window_mode, **win.counts},
        "notes": win.notes
        + (
            [f"retention: removed {len(pruned)} log partition(s) older than {cfg.log_retention_days} days"]
            if pruned
            else []
        )
        + ([compacted.note()] if compacted.note() else []),
        "reports_dir": str(out),
    }
    state = dec.load_state(Path(cfg.reports_dir))
    if win.skipped:
        summary.update(skipped=win.skipped, breached=[], confirmed=False, checks=[])
    else:
        summary["notes"] += check_schema(ctx.reference, win)
        checks, extra = evaluate(ctx, win, params)
        summary["notes"] += extra["notes"]
        breached = [c["metric"] for c in checks if c["breach"]]
        state, confirmed, note = dec.update(state, win.key, breached, cfg)
        summary.update(
            checks=checks,
            breached=breached,
            confirmed=confirmed,
            persistence=note,
            performance=extra["performance"],
            registered=ctx.registered,
        )
        summary["reports"] = {k: str(ev.save_html(s, out / f"{k}.html")) for k, s in extra["snapshots"].items()}
        if confirmed and cfg.retrain_on_breach:
            summary["retrain_reason"] = f"confirmed breach of {breached} over {cfg.persistence} windows"
    dec.save_state(state, Path(cfg.reports_dir))
    write_summary(summary)
    if log_mlflow:
        _log(summary, out, version)
    return summary, ctx


def write_summary(summary: dict) -> Path:
    """``<reports_dir>/summary.json`` of a pass (written again when the caller adds what it did)."""
    path = Path(summary["reports_dir"]) / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def run_pass(
    params: Params,
    *,
    retrain_inline: bool = True,
    ctx: Context | None = None,
    encode: Encode | None = None,
    log_mlflow: bool = True,
) -> tuple[dict, Context]:
    """One pass as the CLI and the drift demo run it (no Prefect): on ``retrain_reason``, retrain inline
    (:func:`monitoring.feedback.retrain_on_feedback`) and acknowledge the breach.

    With retraining on, a null ``data.snapshots_dir`` fails before the pass: it could only retrain on
    unchanged data."""
    if retrain_inline and params.monitor.retrain_on_breach:
        snapshots_dir(params.data)
    summary, ctx = monitor_once(params, ctx=ctx, encode=encode, log_mlflow=log_mlflow)
    reason = summary.get("retrain_reason")
    if reason and retrain_inline:
        summary["retrain"] = retrain_on_feedback(params, reason)
        dec.reset_state(Path(params.monitor.reports_dir), f"retrained: v{summary['retrain'].get('version')}")
        write_summary(summary)
    return summary, ctx


def _log(summary: dict, out: Path, version: str) -> None:
    from pipelines.registry import tracking

    with tracking.run(
        "monitor",
        "monitor",
        tags={
            "model_alias": summary["model_alias"],
            "model_version": version,
            "breach": str(bool(summary["breached"])),
            "confirmed": str(summary["confirmed"]).lower(),
        },
    ):
        tracking.log_metrics({c["metric"]: c["value"] for c in summary["checks"] if c["value"] is not None})
        tracking.log_artifacts(out, artifact_path="monitoring")


def main(
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    retrain: Annotated[bool, typer.Option(help="on a confirmed breach, snapshot feedback and run dvc repro")] = True,
) -> None:
    """Run one monitoring pass on the prediction log against the served model's training reference, then the
    generative model's pass (:mod:`monitoring.generative`; skipped with a reason when the LM is not served)."""
    from monitoring.generative import format_generative, monitor_generative

    cfg = load_params(params)
    summary, _ = run_pass(cfg, retrain_inline=retrain)
    print(format_summary(summary))
    gen = monitor_generative(cfg, now=datetime.fromisoformat(summary["at"]), log_mlflow=True)
    print(format_generative(gen))
    if gen.get("retrain_reason"):
        print("  (this CLI retrains the classifier only; the monitor flow emits the generative model's drift event)")


def format_summary(s: dict) -> str:
    lines = [f"monitor: {s['model']}@{s['model_alias']} v{s['model_version']}, window {s['window']}"]
    lines += [f"  note: {n}" for n in s["notes"]]
    if s.get("skipped"):
        return "\n".join([*lines, f"  SKIPPED: {s['skipped']}"])
    lines += dec.check_lines(s["checks"], 17)
    lines.append(f"  {s['persistence']}; reports: {s['reports_dir']}")
    if "retrain" in s:
        lines.append(f"  retrain: {s['retrain']}")
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
