"""Monitoring of the generative model (``/v1``): one pass over its records, judged like the classifier's.

Reads ``generations/`` and ``generation_feedback/`` under ``monitor.log_dir`` (:mod:`serving.llm.records`
owns their schemas), judges the newest model version in the log (or the one given), in a window cut by
:func:`monitoring.windows.cut` (``monitor.generative.window_size`` answers), and checks:

- ``json_valid_rate``: of the answers that asked for JSON (``response_format`` json_object / json_schema, the
  log's ``json_valid`` flag set by serving on the raw answer) the share that parses; the detail names how many
  invalid answers were cut by ``max_tokens``;
- ``length_cut_share``: the share of answers with ``finish_reason == "length"`` (the whole mix is reported);
- ``category_accuracy`` and ``mean_field_score`` on the answers with corrected fields (``POST /feedback``):
  graded exactly as ``llm_eval`` grades (:func:`pipelines.llm.evaluation.field_matches` on
  :func:`pipelines.llm.chat_data.parse_triage`; an invalid answer is wrong on every field). Feedback may give
  only some fields (a field left out is not judged), so each field's score is over the answers whose feedback
  gives it, and ``mean_field_score`` is the mean of the field scores that have any;
- ``output_length_drift``: completion tokens vs the served version's *first window* (the answers before the
  current window, at most ``window_size`` of the oldest): the SFT data has no token counts for the served tokenizer;
- ``prompt_drift``: descriptors of the prompt's user turns (``length_chars``, ``word_count``, ``oov_share``) vs the
  SFT training prompts (``monitor.generative.reference``, what the sft_data stage writes); without that file, vs
  the first window (``length_chars``, ``word_count``, ``prompt_tokens``: no vocabulary to judge OOV words by).

Drift tests run through :mod:`monitoring.evidently_adapter` with ``monitor:``'s methods and thresholds. A breach
is confirmed after ``monitor.persistence`` consecutive windows (:func:`monitoring.decision.update`, its own state
in ``<reports_dir>/generative/state.json``). Results go to ``<reports_dir>/<utc>/generative.json`` (+ HTML), beside
the classifier's ``summary.json``. No generative log (the LM is not served) is a skip with a reason, never an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring import decision as dec
from monitoring import evidently_adapter as ev
from monitoring.features import DESCRIPTORS, descriptors, vocabulary
from monitoring.windows import cut
from pipelines.config import Params
from pipelines.llm.chat_data import parse_triage, read_examples, split_answer
from pipelines.llm.evaluation import FIELD_METRICS, GRADED_FIELDS, field_matches, rouge_l

SUMMARY_FILE = "generative.json"
STATE_DIR = "generative"  # <reports_dir>/generative/state.json: its own persistence count


@dataclass
class GenWindow:
    """The judged answers (with ``feedback``: the corrected fields, or None), the first window, or why skipped."""

    rows: pd.DataFrame
    first: pd.DataFrame
    version: str | None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identifies the window (newest answer, size, feedback count): the same window never counts twice."""
        if self.rows.empty:
            return ""
        last = self.rows.iloc[-1]
        return (
            f"{last['ts'].isoformat()}|{last['request_id']}|{len(self.rows)}|{int(self.rows['feedback'].notna().sum())}"
        )


# --------------------------------------------------------------------------- pure pieces
def user_turns(messages: list[dict]) -> str:
    """The user turns of a chat prompt, one per line (the system prompt is the same for every request)."""
    return "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")


def user_text(prompt: str | None) -> str | None:
    """The user turns of a logged prompt (chat: a JSON list of messages; completion: the text itself)."""
    if prompt is None or (isinstance(prompt, float) and np.isnan(prompt)):
        return None
    try:
        messages = json.loads(prompt)
    except ValueError:
        return prompt
    if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
        return user_turns(messages)
    return prompt


def latest_feedback(feedback: pd.DataFrame) -> pd.Series:
    """The corrected fields (dict) of each request id, the latest row winning."""
    if feedback.empty:
        return pd.Series(dtype=object)
    last = feedback.sort_values("ts", kind="stable").groupby("request_id").tail(1)
    return pd.Series([json.loads(f) for f in last["fields"]], index=last["request_id"].astype(str).tolist())


def select_window(
    gens: pd.DataFrame, feedback: pd.DataFrame, params: Params, now: datetime, version: str | None = None
) -> GenWindow:
    """The judged version's window (feedback attached) and its first window; skip with a reason when too small."""
    cfg, gcfg = params.monitor, params.monitor.generative
    fb = latest_feedback(feedback)
    known = set(gens["request_id"].astype(str))
    counts = {"log_rows": len(gens), "unknown_feedback": int(sum(r not in known for r in fb.index))}
    notes = []
    if counts["unknown_feedback"]:
        notes.append(f"{counts['unknown_feedback']} feedback row(s) name request ids with no logged answer; ignored")
    if gens.empty:
        return GenWindow(gens.assign(feedback=None), gens, None, "no generative records in the log", notes, counts)
    version = str(version or gens["model_version"].astype(str).iloc[-1])
    mine = gens[gens["model_version"].astype(str) == version].reset_index(drop=True)
    others = {v: n for v, n in gens["model_version"].astype(str).value_counts().items() if v != version}
    counts["other_version_rows"] = int(sum(others.values()))
    if others:
        notes.append(f"log has answers of other versions {others}; only v{version}'s are judged")
    rows = cut(mine, cfg, gcfg.window_size, now)
    first = mine.iloc[: len(mine) - len(rows)].head(gcfg.window_size) if len(rows) else mine.head(0)
    rows = rows.assign(feedback=[fb.get(r) for r in rows["request_id"].astype(str)]).reset_index(drop=True)
    counts.update(
        window_rows=len(rows), feedback_rows=int(rows["feedback"].notna().sum()), first_window_rows=len(first)
    )
    win = GenWindow(rows, first.reset_index(drop=True), version, None, notes, counts)
    if rows.empty:
        win.skipped = f"empty window: no answers of v{version} in the window"
    elif len(rows) < gcfg.min_window_rows:
        win.skipped = (
            f"window too small: {len(rows)} answer(s) of v{version}, "
            f"need monitor.generative.min_window_rows={gcfg.min_window_rows}"
        )
    return win


def json_validity(rows: pd.DataFrame) -> dict[str, Any]:
    """Of the answers that asked for JSON (``json_valid`` not null): how many parse, and the invalid ones cut short."""
    asked = rows[rows["json_valid"].notna()]
    invalid = asked[~asked["json_valid"].astype(bool)]
    return {
        "asked": len(asked),
        "valid": len(asked) - len(invalid),
        "rate": (len(asked) - len(invalid)) / len(asked) if len(asked) else None,
        "invalid_cut_by_length": int((invalid["finish_reason"] == "length").sum()),
    }


def finish_mix(rows: pd.DataFrame) -> dict[str, float]:
    """Share of each ``finish_reason`` (stop, length, abort)."""
    return {str(k): round(float(v), 6) for k, v in rows["finish_reason"].value_counts(normalize=True).items()}


def field_accuracy(rows: pd.DataFrame) -> dict[str, Any]:
    """llm_eval's field scores on the answers with feedback, each field over the answers whose feedback gives it."""
    graded = rows[rows["feedback"].notna() & rows["output"].notna()]
    hits: dict[str, list[float]] = {f: [] for f in GRADED_FIELDS}
    summaries, valid = [], []
    for output, given in zip(graded["output"], graded["feedback"]):
        answer = parse_triage(output)
        valid.append(float(answer is not None))
        matches = field_matches(answer, {f: given.get(f) for f in GRADED_FIELDS})
        for f in GRADED_FIELDS:
            if f in given:
                hits[f].append(float(matches[f]))
        if given.get("summary") is not None:
            summaries.append(rouge_l(answer["summary"], given["summary"]) if answer else 0.0)
    out: dict[str, Any] = {
        "n": len(graded),
        "no_stored_output": int((rows["feedback"].notna() & rows["output"].isna()).sum()),
    }
    out["triage_valid_rate"] = float(np.mean(valid)) if valid else None
    for f, metric in FIELD_METRICS.items():
        out[metric] = float(np.mean(hits[f])) if hits[f] else None
        out[f"{f}_n"] = len(hits[f])
    scored = [out[m] for m in FIELD_METRICS.values() if out[m] is not None]
    out["mean_field_score"] = float(np.mean(scored)) if scored else None
    out["summary_rouge_l"] = float(np.mean(summaries)) if summaries else None
    return out


def sft_prompts(path: str | Path) -> list[str]:
    """The user turns of the SFT training examples (what the model learnt to answer)."""
    return [user_turns(split_answer(list(e["messages"]))[0]) for e in read_examples(path)]


def prompt_frames(win: GenWindow, params: Params) -> tuple[pd.DataFrame, pd.DataFrame, list[str], str] | str:
    """(reference, current, columns, what the reference is) for prompt drift, or why it cannot be judged."""
    gcfg = params.monitor.generative
    texts = [user_text(p) for p in win.rows["prompt"]]
    if all(t is None for t in texts):
        return "the log stores no prompts (serve_llm.log_text: false)"
    current = [t or "" for t in texts]
    ref_path = Path(gcfg.reference) if gcfg.reference else None
    if ref_path is not None and ref_path.is_file():
        prompts = sft_prompts(ref_path)
        rng = np.random.default_rng(params.monitor.seed)
        size = min(gcfg.reference_size, len(prompts) // 2)
        pick = set(rng.choice(len(prompts), size=size, replace=False).tolist())
        sample = [p for i, p in enumerate(prompts) if i in pick]
        vocab = vocabulary(p for i, p in enumerate(prompts) if i not in pick)
        what = f"SFT training prompts {ref_path} ({len(sample)} sampled, {len(prompts) - len(sample)} as vocabulary)"
        return descriptors(sample, vocab), descriptors(current, vocab), list(DESCRIPTORS), what
    if len(win.first) < gcfg.min_window_rows:
        missing = f"{ref_path} does not exist" if ref_path else "monitor.generative.reference is null"
        return f"{missing} and the first window has {len(win.first)} answer(s) < min_window_rows={gcfg.min_window_rows}"
    cols = ["length_chars", "word_count", "prompt_tokens"]

    def frame(rows: pd.DataFrame, texts: list[str]) -> pd.DataFrame:
        d = descriptors(texts, frozenset())
        return d.assign(prompt_tokens=rows["prompt_tokens"].astype(float).to_numpy())[cols]

    first = [user_text(p) or "" for p in win.first["prompt"]]
    return (
        frame(win.first, first),
        frame(win.rows, current),
        cols,
        f"the first window of v{win.version} ({len(win.first)} answers)",
    )


def _below(name: str, value: float | None, minimum: float, what: str, reason: str) -> dict[str, Any]:
    if value is None:
        return dec.check(name, None, minimum, None, reason)
    return dec.check(
        name, value, minimum, value < minimum, f"{value:.4f} {'<' if value < minimum else '>='} min {minimum} ({what})"
    )


def evaluate(win: GenWindow, params: Params) -> tuple[list[dict], dict[str, Any]]:
    """The checks of one window, the figures behind them and the Evidently snapshots."""
    cfg, gcfg = params.monitor, params.monitor.generative
    rows, snaps, notes = win.rows, {}, []
    validity, mix, fields = json_validity(rows), finish_mix(rows), field_accuracy(rows)
    cut_share = mix.get("length", 0.0)
    checks = [
        _below(
            "json_valid_rate", validity["rate"], gcfg.min_json_valid_rate,
            f"{validity['asked'] - validity['valid']} of {validity['asked']} JSON answers invalid, "
            f"{validity['invalid_cut_by_length']} of them cut by max_tokens",
            "no answer in the window asked for JSON (response_format text)",
        ),
        dec.check(
            "length_cut_share", cut_share, gcfg.max_length_cut_share, cut_share > gcfg.max_length_cut_share,
            f"{cut_share:.1%} of answers cut by max_tokens (finish reasons {mix})",
        ),
    ]  # fmt: skip
    few = f"{fields['n']} answers with feedback < monitor.generative.min_feedback_rows={gcfg.min_feedback_rows}"
    enough_cat = fields["category_n"] >= gcfg.min_feedback_rows
    checks += [
        _below(
            "category_accuracy", fields["category_accuracy"] if enough_cat else None, gcfg.min_category_accuracy,
            f"on {fields['category_n']} corrected answers", few if fields["n"] < gcfg.min_feedback_rows
            else f"{fields['category_n']} feedback rows give a category < {gcfg.min_feedback_rows}",
        ),
        _below(
            "mean_field_score", fields["mean_field_score"] if fields["n"] >= gcfg.min_feedback_rows else None,
            gcfg.min_mean_field_score, f"mean of the field scores on {fields['n']} corrected answers", few,
        ),
    ]  # fmt: skip
    if fields["no_stored_output"]:
        notes.append(f"{fields['no_stored_output']} answer(s) with feedback have no stored output: not graded")
    lengths = {"mean_now": float(rows["completion_tokens"].mean()), "mean_first_window": None}
    if len(win.first) >= gcfg.min_window_rows:
        lengths["mean_first_window"] = float(win.first["completion_tokens"].mean())
        col = ["completion_tokens"]
        res = ev.column_drift(
            "output_length_drift", win.first[col].astype(float), rows[col].astype(float), col, [], cfg
        )
        c = dec.drift_check("output_length_drift", res, cfg.num_threshold)
        c["detail"] = (
            f"completion tokens mean {lengths['mean_now']:.1f} now vs {lengths['mean_first_window']:.1f} in the first "
            f"window ({len(win.first)} answers); {c['detail']} test, drift when the score is past {c['threshold']}"
        )
        checks.append(c)
        snaps["output_length_drift"] = res.snapshot
    else:
        checks.append(
            dec.check(
                "output_length_drift", None, cfg.num_threshold, None,
                f"the reference is the first window: {len(win.first)} earlier answer(s) of v{win.version} "
                f"< min_window_rows={gcfg.min_window_rows}",
            )
        )  # fmt: skip
    prompt = prompt_frames(win, params)
    if isinstance(prompt, str):
        checks.append(dec.check("prompt_drift", None, cfg.drift_share, None, prompt))
        reference = None
    else:
        ref, cur, cols, reference = prompt
        res = ev.column_drift("prompt_drift", ref, cur, cols, [], cfg)
        c = dec.drift_check("prompt_drift", res, cfg.drift_share)
        c["detail"] += f" vs {reference}"
        checks.append(c)
        snaps["prompt_drift"] = res.snapshot
        lengths["prompt_columns"] = res.columns
    extra = {
        "json_validity": validity,
        "finish_reasons": mix,
        "field_accuracy": fields,
        "lengths": lengths,
        "prompt_reference": reference,
        "snapshots": snaps,
        "notes": notes,
    }
    return checks, extra


# --------------------------------------------------------------------------- the pass (I/O at the edge)
def read_records(root: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(generations, generation feedback) from the log (serving's contract); empty frames when absent."""
    from serving.llm.records import GENERATION_FEEDBACK, GENERATIONS, read_generations

    return read_generations(root, GENERATIONS), read_generations(root, GENERATION_FEEDBACK)


def monitor_generative(
    params: Params, *, now: datetime | None = None, version: str | None = None, log_mlflow: bool = False
) -> dict[str, Any]:
    """One pass over the generative log; returns (and writes) its summary. Reports only: a confirmed breach that
    should retrain sets ``summary["retrain_reason"]`` for the caller (the monitor flow emits an event)."""
    cfg, now = params.monitor, now or datetime.now(timezone.utc)
    out = Path(cfg.reports_dir) / f"{now:%Y%m%dT%H%M%S%fZ}"
    summary: dict[str, Any] = {
        "at": now.isoformat(),
        "model": params.register_llm.registered_model,
        "model_version": None,
        "window": {"mode": cfg.window_mode, "size": cfg.generative.window_size},
        "notes": [],
        "reports_dir": str(out),
        "breached": [],
        "confirmed": False,
        "checks": [],
    }
    if not cfg.generative.enabled:
        return _finish(summary, out, skipped="monitor.generative.enabled is false")
    if not (Path(cfg.log_dir) / "generations").is_dir():
        return _finish(
            summary, out, skipped=f"no generative log ({Path(cfg.log_dir) / 'generations'}): the LM is not served"
        )
    gens, feedback = read_records(cfg.log_dir)
    win = select_window(gens, feedback, params, now, version)
    summary.update(model_version=win.version, notes=win.notes, window={**summary["window"], **win.counts})
    if len(win.rows):
        summary["model_served_as"] = str(win.rows["model_name"].iloc[-1])
    if win.skipped:
        return _finish(summary, out, skipped=win.skipped)
    checks, extra = evaluate(win, params)
    state_dir = Path(cfg.reports_dir) / STATE_DIR
    breached = [c["metric"] for c in checks if c["breach"]]
    state, confirmed, note = dec.update(dec.load_state(state_dir), win.key, breached, cfg)
    dec.save_state(state, state_dir)
    summary["notes"] += extra.pop("notes")
    snaps = extra.pop("snapshots")
    summary.update(checks=checks, breached=breached, confirmed=confirmed, persistence=note, **extra)
    summary["reports"] = {k: str(ev.save_html(s, out / f"generative_{k}.html")) for k, s in snaps.items()}
    if confirmed and cfg.retrain_on_breach:
        summary["retrain_reason"] = (
            f"generative v{win.version}: confirmed breach of {breached} over {cfg.persistence} windows"
        )
    _finish(summary, out)
    if log_mlflow:
        _log(params, summary, out)
    return summary


def _finish(summary: dict[str, Any], out: Path, skipped: str | None = None) -> dict[str, Any]:
    if skipped:
        summary["skipped"] = skipped
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return summary


def _log(params: Params, summary: dict, out: Path) -> None:
    from pipelines.registry import tracking

    tracking.setup(params.mlflow)
    tags = {
        "model": summary["model"],
        "model_version": str(summary["model_version"]),
        "confirmed": str(summary["confirmed"]).lower(),
    }
    with tracking.run("monitor-generative", "monitor", tags=tags):
        tracking.log_metrics({c["metric"]: c["value"] for c in summary["checks"] if c["value"] is not None})
        tracking.log_artifacts(out / SUMMARY_FILE, *summary.get("reports", {}).values(), artifact_path="monitoring")


def format_generative(s: dict) -> str:
    lines = [f"monitor (generative): {s['model']} v{s['model_version']}, window {s['window']}"]
    lines += [f"  note: {n}" for n in s["notes"]]
    if s.get("skipped"):
        return "\n".join([*lines, f"  SKIPPED: {s['skipped']}"])
    lines += dec.check_lines(s["checks"], 20)
    lines.append(f"  {s['persistence']}; summary: {s['reports_dir']}/{SUMMARY_FILE}")
    if s.get("retrain_reason"):
        lines.append(f"  retraining recommended: {s['retrain_reason']}")
    return "\n".join(lines)
