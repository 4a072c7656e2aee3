"""Bad inputs of the windows: each is skipped with a reason or fails with a message, never a silent pass."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from monitoring.windows import (
    Window,
    build_reference,
    check_schema,
    current_window,
    read_log_frames,
    read_window_frames,
)
from pipelines.config import MonitorConfig, Params
from pipelines.errors import DataError
from tests.helpers.monitoring import T0, tickets, train_model, write_window

CFG = MonitorConfig(window_size=100, min_window_rows=50, reference_size=100)


@pytest.fixture(scope="module")
def small():
    df = tickets(400, seed=3)
    return df, train_model(df.iloc[:250])


def _window(tmp_path, cfg=CFG, version="1"):
    return current_window(*read_log_frames(tmp_path), version, cfg, now=T0 + timedelta(hours=1))


def test_empty_log_is_skipped_with_a_reason(tmp_path):
    win = _window(tmp_path)
    assert win.skipped and "empty window" in win.skipped and win.rows.empty


def test_too_small_window_is_skipped(tmp_path, small):
    df, model = small
    write_window(tmp_path, model, df.head(20), "1", T0)
    win = _window(tmp_path)
    assert "too small: 20" in win.skipped and "min_window_rows=50" in win.skipped


def test_last_n_window_has_fixed_size_and_feedback(tmp_path, small):
    df, model = small
    write_window(tmp_path, model, df.head(150), "1", T0, feedback=0.5)
    win = _window(tmp_path)
    assert win.skipped is None and len(win.rows) == 100
    assert win.rows["request_id"].iloc[-1] == "w-149"  # the newest rows
    assert win.counts["labelled_rows"] == 25  # feedback arrived for the first 75 of 150


def test_time_window_takes_recent_rows_only(tmp_path, small):
    df, model = small
    write_window(tmp_path, model, df.head(80), "1", T0 - timedelta(days=3), tag="old")
    write_window(tmp_path, model, df.iloc[80:160], "1", T0, tag="new")
    win = _window(tmp_path, MonitorConfig(window_mode="time", window_hours=24, min_window_rows=50))
    assert len(win.rows) == 80 and win.rows["request_id"].str.startswith("new").all()


def test_rows_of_other_versions_are_excluded_and_reported(tmp_path, small):
    df, model = small
    write_window(tmp_path, model, df.head(120), "1", T0, tag="old")
    write_window(tmp_path, model, df.iloc[120:240], "2", T0 + timedelta(minutes=5), tag="new")
    win = _window(tmp_path, version="2")
    assert win.rows["request_id"].str.startswith("new").all()
    assert win.counts["other_version_rows"] == 120
    assert any("other model versions {'1': 120}" in n for n in win.notes)
    only_old = _window(tmp_path, version="3")
    assert "no predictions of the served v3" in only_old.skipped and "'1': 120" in only_old.skipped


def test_feedback_for_unknown_request_ids_is_counted(tmp_path, small):
    from serving.prediction_log import FEEDBACK, feedback_row, write_part

    df, model = small
    write_window(tmp_path, model, df.head(100), "1", T0)
    ghosts = [feedback_row(ts=T0, request_id=f"ghost-{i}", item=0, true_label="billing") for i in range(7)]
    write_part(tmp_path, FEEDBACK, ghosts)
    win = _window(tmp_path)
    assert win.counts["unknown_feedback"] == 7
    assert any("7 feedback row(s) name request ids with no logged prediction" in n for n in win.notes)


def test_log_without_text_is_judged_without_text_drift(tmp_path, small, monkeypatch):
    """serve.log_text: false (the default) stores no text: the pass says so and runs the checks that need none."""
    from monitoring.context import Context
    from monitoring.run import evaluate

    df, model = small
    write_window(tmp_path, model, df.head(100), "1", T0)
    frames = list(read_log_frames(tmp_path))
    frames[0]["text"] = None
    win = current_window(*frames, "1", CFG, now=T0 + timedelta(hours=1))
    assert win.skipped is None and any("stores no text" in n for n in win.notes)
    ctx = Context.__new__(Context)
    ctx.reference = build_reference(df.iloc[:250], df.iloc[250:], model, "1", CFG)
    ctx.features = lambda texts: pytest.fail("text features computed without text")
    ctx.registered, ctx.val_perf = {}, None
    checks, extra = evaluate(ctx, win, Params(monitor=CFG))
    by = {c["metric"]: c for c in checks}
    assert by["data_drift"]["value"] is None and "serve.log_text: false" in by["data_drift"]["detail"]
    assert by["prediction_drift"]["value"] is not None and "data_drift" not in extra["snapshots"]


def test_reference_schema_must_match(small):
    df, model = small
    with pytest.raises(DataError, match=r"lacks column\(s\) \['label'\]"):
        build_reference(df.drop(columns="label"), df, model, "1", CFG)
    ref = build_reference(df.iloc[:250], df.iloc[250:], model, "1", CFG)
    assert len(ref.train) == 100 and len(ref.vocab_texts) == 150  # the vocabulary never sees the sample
    rows = pd.DataFrame(
        {"ts": [T0], "request_id": ["r"], "item": [0], "text": ["x"], "prediction": ["spam"], "true_label": [None]}
    )
    with pytest.raises(DataError, match=r"class\(es\) \['spam'\]"):
        check_schema(ref, Window(rows))
    notes = check_schema(ref, Window(rows.assign(prediction="billing", true_label="new_topic")))
    assert "new_topic" in notes[0]


def _opened(monkeypatch) -> list[str]:
    """The part files a read opens (pyarrow's read_table, which every log read goes through)."""
    import pyarrow.parquet as pq

    seen, real = [], pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda f, *a, **k: seen.append(str(f)) or real(f, *a, **k))
    return seen


@pytest.mark.parametrize("mode", ["last_n", "time"])
def test_a_pass_reads_only_the_partitions_of_its_window(tmp_path, small, monkeypatch, mode):
    df, model = small
    for day in range(30):  # a month of answers, 40 a day; the newest day is T0
        start = T0 - timedelta(days=29 - day)
        write_window(tmp_path, model, df.iloc[day * 10 : day * 10 + 40], "1", start, tag=f"d{day}")
    cfg = MonitorConfig(window_mode=mode, window_size=100, window_hours=30, min_window_rows=50)
    assert len(list(tmp_path.glob("predictions/date=*"))) == 30
    now = T0 + timedelta(hours=1)
    seen = _opened(monkeypatch)
    frames = read_window_frames(tmp_path, "1", cfg, now)
    days = sorted({p.split("date=")[1][:10] for p in seen})
    # last_n: 100 rows need the 3 newest days of 40; time: 30 h before 01:00 is Feb 27 19:00; labels: one day more
    assert days == ["2026-02-26", "2026-02-27", "2026-02-28", "2026-03-01"]
    win, everything = current_window(*frames, "1", cfg, now), current_window(*read_log_frames(tmp_path), "1", cfg, now)
    pd.testing.assert_frame_equal(win.rows, everything.rows)  # the same window as reading the whole log


def test_retention_removes_whole_partitions_older_than_the_policy_of_every_kind(tmp_path, small):
    from monitoring.windows import apply_retention

    df, model = small
    for day in range(10):  # predictions + feedback on each of 10 days up to T0
        write_window(
            tmp_path, model, df.iloc[day * 10 : day * 10 + 20], "1", T0 - timedelta(days=9 - day), tag=f"d{day}"
        )
    (tmp_path / "generations" / "date=2026-02-01").mkdir(parents=True)  # another kind's old partition
    (tmp_path / "_wal").mkdir()  # the write-ahead folder is not a kind
    assert apply_retention(tmp_path, None, T0) == []
    removed = apply_retention(tmp_path, 3, T0 + timedelta(hours=1))  # keep Feb 26 .. Mar 1
    days = sorted(p.name for p in (tmp_path / "predictions").glob("date=*"))
    assert days == ["date=2026-02-26", "date=2026-02-27", "date=2026-02-28", "date=2026-03-01"]
    assert sorted(p.name for p in (tmp_path / "feedback").glob("date=*")) == days
    assert "generations/date=2026-02-01" in removed and len(removed) == 2 * 6 + 1
    assert (tmp_path / "_wal").is_dir()
    kept = read_log_frames(tmp_path)[0]
    assert len(kept) == 4 * 20 and kept["ts"].min() >= pd.Timestamp(T0 - timedelta(days=3))
