"""Reference and current windows: what monitoring compares, with every bad input named.

Reference: a fixed-size stratified sample of the training split (text + label) and the
served model's predictions on the validation split. Current: the last ``window_size``
predictions of the served version (``serve.model_alias``) in the prediction log (or the last
``window_hours``), with the feedback labels that have arrived (the latest per
``(request_id, item)``, as :func:`serving.prediction_log.labelled_predictions` joins them).

Functions here are pure (frames in, frames out); :func:`read_log_frames` is the I/O edge.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from pipelines.classifier.model_api import TextClassifier, predict_labels
from pipelines.config import MonitorConfig
from pipelines.errors import DataError

KEY = ["request_id", "item"]


@dataclass
class Reference:
    """Training sample, the served model's validation predictions and its classes."""

    train: pd.DataFrame  # text, label (fixed-size sample)
    vocab_texts: list[str]  # the other training texts: the vocabulary for out-of-vocabulary shares
    val: pd.DataFrame  # text, label, prediction
    classes: list[str]
    version: str


@dataclass
class Window:
    """The current window (``rows``: ts, request_id, item, text, prediction, true_label) or why it was skipped."""

    rows: pd.DataFrame
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def labelled(self) -> pd.DataFrame:
        return self.rows[self.rows["true_label"].notna()]

    @property
    def key(self) -> str:
        """Identifies the window (its newest row), so the same window is never counted twice."""
        if self.rows.empty:
            return ""
        last = self.rows.iloc[-1]
        labelled = int(self.rows["true_label"].notna().sum())
        return f"{last['ts'].isoformat()}|{last['request_id']}:{last['item']}|{len(self.rows)}|{labelled}"


def _require(df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{what} lacks column(s) {missing}; has {list(df.columns)}")


def build_reference(
    train: pd.DataFrame, val: pd.DataFrame, model: TextClassifier, version: str, cfg: MonitorConfig
) -> Reference:
    """Sample ``reference_size`` training rows (stratified, seeded) and predict the validation split."""
    _require(train, ["text", "label"], "reference (train split)")
    _require(val, ["text", "label"], "reference (validation split)")
    if train.empty or val.empty:
        raise DataError("the reference is empty: the train or validation split has no rows (run dvc repro)")
    train = train[["text", "label"]].astype({"text": str, "label": str})
    # The vocabulary comes from the rows *not* sampled: a text is never judged against its own words.
    size = min(cfg.reference_size, len(train) // 2)
    if size < 1:
        raise DataError(f"the train split has {len(train)} row(s): too few for a reference")
    sample, rest = _stratified_sample(train, size, cfg.seed)
    val = val[["text", "label"]].astype({"text": str, "label": str}).reset_index(drop=True)
    val["prediction"] = predict_labels(model, val["text"].tolist())
    return Reference(
        sample.reset_index(drop=True), rest["text"].tolist(), val, [str(c) for c in model.classes], str(version)
    )


def _stratified_sample(train: pd.DataFrame, size: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exactly ``size`` rows, the class mix kept (scikit-learn's stratified split; a plain seeded draw when a
    class has a single row or there are more classes than ``size``), and the rest."""
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(train, train_size=size, stratify=train["label"], random_state=seed)
    except ValueError:
        return train_test_split(train, train_size=size, random_state=seed)


def unknown_feedback(preds: pd.DataFrame, feedback: pd.DataFrame) -> int:
    """Feedback rows whose (request_id, item) matches no logged prediction."""
    if feedback.empty:
        return 0
    known = pd.MultiIndex.from_frame(preds[KEY]) if len(preds) else pd.MultiIndex.from_tuples([], names=KEY)
    return int((~pd.MultiIndex.from_frame(feedback[KEY]).isin(known)).sum())


def cut(rows: pd.DataFrame, cfg: MonitorConfig, size: int, now: datetime) -> pd.DataFrame:
    """The current window of ``rows`` (one model version, oldest first): the last ``size`` rows (``last_n``, a
    fixed size so statistics compare) or, in ``time`` mode, those of the last ``monitor.window_hours``. Both
    models' passes cut their windows here."""
    if cfg.window_mode == "time":
        return rows[rows["ts"] >= pd.Timestamp(now - timedelta(hours=cfg.window_hours))]
    return rows.tail(size)


def current_window(
    preds: pd.DataFrame,
    labelled: pd.DataFrame,
    feedback: pd.DataFrame,
    version: str,
    cfg: MonitorConfig,
    now: datetime | None = None,
) -> Window:
    """Select the served version's rows, cut the window, attach feedback labels; skip (with a reason) if too small."""
    now = now or datetime.now(timezone.utc)
    counts = {"log_rows": len(preds), "unknown_feedback": unknown_feedback(preds, feedback)}
    notes = []
    if counts["unknown_feedback"]:
        notes.append(
            f"{counts['unknown_feedback']} feedback row(s) name request ids with no logged prediction; ignored"
        )
    versions = preds["model_version"].astype(str).value_counts().to_dict() if len(preds) else {}
    mine = preds[preds["model_version"].astype(str) == str(version)] if len(preds) else preds
    others = {v: n for v, n in versions.items() if v != str(version)}
    counts["other_version_rows"] = int(sum(others.values()))
    if others:
        notes.append(f"log has rows of other model versions {others}; only the served v{version}'s rows are judged")
    rows = cut(mine, cfg, cfg.window_size, now)
    rows = rows.rename(columns={"label": "prediction"})
    fb = labelled[KEY + ["true_label"]] if len(labelled) else pd.DataFrame(columns=[*KEY, "true_label"])
    rows = rows.merge(fb, on=KEY, how="left").reset_index(drop=True)
    counts.update(window_rows=len(rows), labelled_rows=int(rows["true_label"].notna().sum()))
    win = Window(rows[["ts", "request_id", "item", "text", "prediction", "true_label"]], None, notes, counts)
    if rows.empty:
        win.skipped = f"empty window: no predictions of the served v{version} in the log" + (
            f" (rows of other versions: {others})" if others else ""
        )
    elif len(rows) < cfg.min_window_rows:
        win.skipped = (
            f"window too small: {len(rows)} prediction(s) of the served v{version}, "
            f"need monitor.min_window_rows={cfg.min_window_rows}"
        )
    elif rows["text"].isna().all():
        win.notes.append(
            "the prediction log stores no text (serve.log_text: false): text drift is not computed; prediction "
            "drift, label drift and performance are"
        )
    return win


def check_schema(ref: Reference, win: Window) -> list[str]:
    """Fail when reference and current cannot be compared; return notes for what can be judged with care."""
    unknown = sorted(set(win.rows["prediction"].dropna().astype(str)) - set(ref.classes))
    if unknown:
        raise DataError(
            f"current predictions use class(es) {unknown} the reference model (v{ref.version}) does not "
            f"have {ref.classes}: reference and current come from different schemas"
        )
    new_labels = sorted(set(win.labelled["true_label"].astype(str)) - set(ref.classes))
    if new_labels:
        return [f"feedback labels {new_labels} are not classes of the model: they count as errors (a new class?)"]
    return []


def read_log_frames(root: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(predictions, labelled predictions, feedback): the WHOLE prediction log (the feedback snapshot's input;
    a monitoring pass reads only its window: :func:`read_window_frames`)."""
    from serving.prediction_log import FEEDBACK, PREDICTIONS, labelled_predictions, read_log

    return read_log(root, PREDICTIONS), labelled_predictions(root), read_log(root, FEEDBACK)


def _dated(root: str | Path, kind: str) -> list[tuple[date, Path]]:
    """The log's ``<kind>/date=YYYY-MM-DD`` partitions, oldest first (other folders are ignored)."""
    out = []
    for d in (Path(root) / kind).glob("date=*"):
        try:
            out.append((date.fromisoformat(d.name.removeprefix("date=")), d))
        except ValueError:
            continue
    return sorted(out)


def _read(dirs: list[Path], kind: str) -> pd.DataFrame:
    from serving.prediction_log import live_parts, read_parts

    # live_parts: a compacted partition's file, not the parts it already holds (monitoring/compaction.py)
    df = read_parts([f for d in dirs for f in live_parts(d)], kind)
    return df.sort_values(["ts", "request_id", "item"], kind="stable").reset_index(drop=True)


def read_window_frames(
    root: str | Path, version: str, cfg: MonitorConfig, now: datetime
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(predictions, labelled predictions, feedback) for one pass, reading only the date partitions its window
    can need, so a pass costs the same on day 1 and day 300 of a deployment:

    * ``time`` mode: the partitions from the window's first day on;
    * ``last_n``: partitions newest first until they hold ``window_size`` rows of the served ``version``;
    * feedback: its partitions from the oldest prediction partition read on (a label comes after its answer).

    The counts of the pass (rows of other versions, feedback naming no prediction) are therefore over the
    partitions read, not the whole log; feedback on an answer older than those partitions is not this
    window's either."""
    from serving.prediction_log import FEEDBACK, PREDICTIONS, join_labels

    days = _dated(root, PREDICTIONS)
    if cfg.window_mode == "time":
        first = (now - timedelta(hours=cfg.window_hours)).date()
        chosen = [d for day, d in days if day >= first]
        preds = _read(chosen, PREDICTIONS)
        oldest = first
    else:
        frames, n, oldest = [], 0, None
        for day, d in reversed(days):
            frame = _read([d], PREDICTIONS)
            frames.insert(0, frame)
            oldest = day
            n += int((frame["model_version"].astype(str) == str(version)).sum())
            if n >= cfg.window_size:
                break
        preds = pd.concat(frames, ignore_index=True) if frames else _read([], PREDICTIONS)
    # a row flushed just after midnight sits in the next day's partition: one day of slack for its label
    fb_days = [d for day, d in _dated(root, FEEDBACK) if oldest is not None and day >= oldest - timedelta(days=1)]
    feedback = _read(fb_days, FEEDBACK)
    return preds, join_labels(preds, feedback), feedback


def apply_retention(root: str | Path, days: int | None, now: datetime) -> list[str]:
    """Delete the log's ``<kind>/date=YYYY-MM-DD`` partitions (every kind) older than ``days`` before ``now``'s
    date; return what was removed (``kind/date=...``). A whole day goes at once, so no row is half-kept."""
    if days is None:
        return []
    first_kept = (now - timedelta(days=days)).date()
    removed = []
    for kind in sorted(d for d in Path(root).glob("*") if d.is_dir() and not d.name.startswith(("_", "."))):
        for day, d in _dated(root, kind.name):
            if day < first_kept:
                shutil.rmtree(d)
                removed.append(f"{kind.name}/{d.name}")
    return removed
