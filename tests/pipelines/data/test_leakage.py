"""leakage: each classic poisoning case planted into otherwise clean splits is caught; clean data passes."""

from __future__ import annotations

import pytest

import json

import numpy as np
import pandas as pd
from tests.helpers.data import make_clean, run_stage, time_parts, write_params

from pipelines.config import LeakageConfig
from pipelines.data.leakage_checks import audit


def _checks(report, check):
    return [f for f in report["findings"] if f["check"] == check]


def _with(parts, **frames):
    return {**{k: v.copy() for k, v in parts.items()}, **frames}


def test_clean_data_has_no_blockers_and_no_leaky_columns(clean_parts):
    clean, report = audit(clean_parts, LeakageConfig())
    assert report["passed"] and report["counts"]["blockers"] == 0
    assert report["dropped_columns"] == []
    # legit weak columns (channel, tier, attachment count) are not flagged: no false positives
    assert report["findings"] == [], report["findings"]
    assert report["counts"]["exact_duplicates"] == report["counts"]["near_duplicates"] == 0
    for k in clean:
        assert len(clean[k]) == len(clean_parts[k])
        assert {"channel", "customer_tier", "attachment_count"} <= set(clean[k].columns)


def test_leaky_categorical_column_is_flagged_and_dropped(clean_parts):
    teams = {"alpha": "Finance Ops", "beta": "Logistics", "gamma": "Identity Team"}
    rng = np.random.default_rng(0)
    parts = {}
    for k, v in clean_parts.items():
        v = v.copy()
        v["resolved_by_team"] = [
            teams[lab] if rng.random() < 0.96 else str(rng.choice(list(teams.values()))) for lab in v["label"]
        ]
        parts[k] = v
    clean, report = audit(parts, LeakageConfig())
    leaky = _checks(report, "leaky_column")
    assert [f["columns"] for f in leaky] == [["resolved_by_team"]]
    assert leaky[0]["action"] == "dropped" and leaky[0]["severity"] == "warning" and leaky[0]["macro_f1"] > 0.9
    assert report["dropped_columns"] == ["resolved_by_team"] and report["counts"]["leaky_columns"] == 1
    assert all("resolved_by_team" not in v for v in clean.values())
    assert report["passed"]

    _, blocked = audit(parts, LeakageConfig(leaky_column_action="block"))
    assert not blocked["passed"] and _checks(blocked, "leaky_column")[0]["severity"] == "blocker"
    kept, reported = audit(parts, LeakageConfig(leaky_column_action="report"))
    assert reported["passed"] and "resolved_by_team" in kept["train"]


def test_post_outcome_datetime_column_is_flagged(clean_parts):
    rng = np.random.default_rng(1)
    parts = {
        k: v.assign(resolved_at=v["timestamp"] + pd.to_timedelta(rng.gamma(2.0, 12.0, len(v)), unit="h"))
        for k, v in clean_parts.items()
    }
    clean, report = audit(parts, LeakageConfig())
    post = _checks(report, "post_outcome_column")
    assert [f["columns"] for f in post] == [["resolved_at"]]
    assert "later than the timestamp in 100.0% of rows" in post[0]["detail"]
    assert "resolved_at" in report["dropped_columns"] and "resolved_at" not in clean["train"]


def test_post_outcome_dates_kept_as_text_are_flagged(clean_parts):
    """CSV and JSONL sources reach the leakage stage with other columns as strings."""
    parts = {
        k: v.assign(
            closed_on=(v["timestamp"] + pd.Timedelta(hours=5)).dt.strftime("%Y-%m-%dT%H:%M:%S").astype("string")
        )
        for k, v in clean_parts.items()
    }
    _, report = audit(parts, LeakageConfig())
    assert [f["columns"] for f in _checks(report, "post_outcome_column")] == [["closed_on"]]
    assert report["dropped_columns"] == ["closed_on"]


def test_a_datetime_column_before_the_timestamp_is_not_post_outcome(clean_parts):
    parts = {k: v.assign(signed_up_at=v["timestamp"] - pd.Timedelta(days=30)) for k, v in clean_parts.items()}
    _, report = audit(parts, LeakageConfig())
    assert _checks(report, "post_outcome_column") == []


def test_declared_post_outcome_column_is_flagged(clean_parts):
    parts = {k: v.assign(csat=np.arange(len(v)) % 5) for k, v in clean_parts.items()}
    _, report = audit(parts, LeakageConfig(post_outcome_columns=["csat", "not_a_column"]))
    assert [f["columns"] for f in _checks(report, "post_outcome_column")] == [["csat"]]
    assert report["dropped_columns"] == ["csat"]


def test_numeric_feature_padded_for_one_class_is_flagged(clean_parts):
    parts = {}
    for k, v in clean_parts.items():
        v = v.copy()
        v["attachment_count"] = v["attachment_count"] + np.where(v["label"] == "gamma", 100, 0)
        parts[k] = v
    clean, report = audit(parts, LeakageConfig())
    leaky = _checks(report, "leaky_column")
    assert [f["columns"] for f in leaky] == [["attachment_count"]]
    assert "attachment_count" not in clean["test"]


def _copied_into_train(parts, n):
    """Test rows copied into train (stamped in the train period, so only the text gives them away)."""
    copied = parts["test"].iloc[:n].copy()
    copied = copied.assign(id=copied["id"] + "-copy", timestamp=parts["train"]["timestamp"].iloc[0], group="copied")
    return pd.concat([parts["train"], copied], ignore_index=True), copied


def test_test_rows_copied_into_train_are_counted_and_removed_from_test(clean_parts):
    train, copied = _copied_into_train(clean_parts, 25)
    clean, report = audit(_with(clean_parts, train=train), LeakageConfig())
    exact = _checks(report, "cross_split_exact_duplicates")
    assert [(f["splits"], f["count"]) for f in exact] == [(["train", "test"], 25)]
    assert exact[0]["action"] == "removed from test"
    assert report["counts"]["exact_duplicates"] == 25 and report["counts"]["removed_eval_rows"] == 25
    assert len(clean["test"]) == len(clean_parts["test"]) - 25
    assert not set(copied["text"]) & set(clean["test"]["text"])
    assert len(clean["train"]) == len(train)  # train is never trimmed
    assert report["passed"]

    _, blocked = audit(_with(clean_parts, train=train), LeakageConfig(duplicate_action="block"))
    assert not blocked["passed"]


def test_exact_duplicates_ignore_case_and_punctuation(clean_parts):
    test = clean_parts["test"].copy()
    test.loc[0, "text"] = clean_parts["val"]["text"].iloc[3].upper() + " !!"
    _, report = audit(_with(clean_parts, test=test), LeakageConfig())
    assert [(f["splits"], f["count"]) for f in _checks(report, "cross_split_exact_duplicates")] == [
        (["val", "test"], 1)
    ]


def test_near_duplicates_with_small_edits_are_caught(clean_parts):
    val = clean_parts["val"].copy()
    train_texts = clean_parts["train"]["text"]
    edits = [
        lambda t: "Following up on this. " + t,
        lambda t: t + " thanks again",
        lambda t: t[:-2],
        lambda t: t.replace(" ", "  x ", 1),
    ]
    for i in range(12):
        val.loc[i, "text"] = edits[i % len(edits)](train_texts.iloc[i * 7])
    clean, report = audit(_with(clean_parts, val=val), LeakageConfig())
    near = _checks(report, "cross_split_near_duplicates")
    assert [(f["splits"], f["count"]) for f in near] == [(["train", "val"], 12)]
    assert len(clean["val"]) == len(val) - 12
    assert report["counts"]["near_duplicates"] == 12


def test_group_on_both_sides_is_detected(clean_parts):
    test = clean_parts["test"].copy()
    test.loc[:9, "group"] = clean_parts["train"]["group"].iloc[0]
    _, report = audit(_with(clean_parts, test=test), LeakageConfig())
    overlap = _checks(report, "group_overlap")
    assert [(f["splits"], f["count"], f["severity"]) for f in overlap] == [(["train", "test"], 10, "warning")]
    assert report["counts"]["group_overlap_rows"] == 10 and report["passed"]
    _, blocked = audit(_with(clean_parts, test=test), LeakageConfig(group_overlap_action="block"))
    assert not blocked["passed"]


def test_eval_older_than_train_is_a_blocker_by_default(clean_parts):
    test = clean_parts["test"].copy()
    test.loc[:4, "timestamp"] = clean_parts["train"]["timestamp"].iloc[0]
    parts = _with(clean_parts, test=test)
    clean, report = audit(parts, LeakageConfig())
    older = _checks(report, "eval_older_than_train")
    assert [(f["splits"], f["count"], f["severity"]) for f in older] == [(["train", "test"], 5, "blocker")]
    assert not report["passed"] and report["counts"]["blockers"] == 1
    _, relaxed = audit(parts, LeakageConfig(time_order_action="report"))
    assert relaxed["passed"] and _checks(relaxed, "eval_older_than_train")[0]["severity"] == "warning"


def test_class_unseen_in_train_is_a_blocker(clean_parts):
    test = clean_parts["test"].copy()
    test.loc[:2, "label"] = "brand_new"
    _, report = audit(_with(clean_parts, test=test), LeakageConfig())
    unseen = _checks(report, "class_unseen_in_train")
    assert [(f["count"], f["severity"]) for f in unseen] == [(3, "blocker")]
    assert "'brand_new'" in unseen[0]["detail"] and not report["passed"]


def test_class_balance_shift_is_a_warning(clean_parts):
    test = clean_parts["test"]
    skewed = pd.concat([test[test["label"] == "alpha"]] * 3 + [test], ignore_index=True)
    skewed["text"] = skewed["text"] + pd.Series(
        [f" variant{i}zz{i * 7919}" for i in range(len(skewed))], dtype="string"
    )
    _, report = audit(_with(clean_parts, test=skewed), LeakageConfig(duplicate_action="report"))
    shift = _checks(report, "class_balance_shift")
    assert [f["splits"] for f in shift] == [["train", "test"]] and shift[0]["severity"] == "warning"


def test_missing_values_in_one_class_only_are_flagged(clean_parts):
    rng = np.random.default_rng(2)
    parts = {}
    for k, v in clean_parts.items():
        v = v.copy()
        v["discount"] = np.where(v["label"] == "beta", np.nan, rng.integers(0, 30, len(v)).astype(float))
        parts[k] = v
    clean, report = audit(parts, LeakageConfig())
    miss = _checks(report, "missingness_predicts_label")
    assert [f["columns"] for f in miss] == [["discount"]]
    assert miss[0]["cramers_v"] > 0.9 and "class 'beta'" in miss[0]["detail"]
    assert miss[0]["count"] == sum(int((v["label"] == "beta").sum()) for v in parts.values())
    assert "discount" not in clean["train"]


def test_missing_values_at_random_are_not_flagged(clean_parts):
    rng = np.random.default_rng(3)
    parts = {k: v.assign(discount=np.where(rng.random(len(v)) < 0.3, np.nan, 5.0)) for k, v in clean_parts.items()}
    _, report = audit(parts, LeakageConfig())
    assert _checks(report, "missingness_predicts_label") == []


# --------------------------------------------------------------------------- the CLI
def _write_parts(d, parts):
    d.mkdir(parents=True, exist_ok=True)
    for k, v in parts.items():
        v.to_parquet(d / f"{k}.parquet")


def _run(tmp_path):
    params = write_params(tmp_path / "params.yaml")
    return run_stage(
        "leakage",
        "--params",
        str(params),
        "--split-dir",
        str(tmp_path / "split"),
        "--out-dir",
        str(tmp_path / "processed"),
        "--report",
        str(tmp_path / "leakage.json"),
        "--metrics",
        str(tmp_path / "metrics.json"),
        cwd=tmp_path,
    )


@pytest.mark.integration
def test_cli_writes_model_ready_splits_report_and_metrics(tmp_path, clean_parts):
    _write_parts(tmp_path / "split", _with(clean_parts, train=_copied_into_train(clean_parts, 5)[0]))
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["exact_duplicates"] == 5 and metrics["blockers"] == 0
    assert len(pd.read_parquet(tmp_path / "processed" / "test.parquet")) == len(clean_parts["test"]) - 5
    assert json.loads((tmp_path / "leakage.json").read_text())["passed"] is True


@pytest.mark.integration
def test_cli_exits_3_on_a_blocker_and_writes_no_splits(tmp_path, clean_parts):
    # a previous good run left model-ready splits behind: a failed gate must not leave them for training
    (tmp_path / "processed").mkdir()
    for k in ("train", "val", "test"):
        clean_parts[k].to_parquet(tmp_path / "processed" / f"{k}.parquet")
    test = clean_parts["test"].copy()
    test.loc[:2, "label"] = "brand_new"
    _write_parts(tmp_path / "split", _with(clean_parts, test=test))
    r = _run(tmp_path)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: leakage check found 1 blocker(s)")
    assert not list((tmp_path / "processed").glob("*.parquet"))
    report = json.loads((tmp_path / "leakage.json").read_text())
    assert report["passed"] is False and _checks(report, "class_unseen_in_train")


def test_feedback_rows_copying_a_test_text_leave_train_and_the_test_split_stays_whole(clean_parts):
    """Feedback labels are untrusted: a feedback row in train that copies a test ticket must not take that
    (trusted) test row out of the gate's split; the feedback row goes instead. Without the ids, today's rule
    removes the test row."""
    test = clean_parts["test"]
    copies = test.head(5).assign(id=[f"fb-{i}" for i in range(5)], label=test["label"].iloc[0])
    near = test.iloc[5:7].assign(id=["fb-5", "fb-6"], text=lambda d: d["text"] + " thanks")
    train = pd.concat([clean_parts["train"], copies, near], ignore_index=True)
    parts = _with(clean_parts, train=train)
    ids = {f"fb-{i}" for i in range(7)}

    clean, report = audit(parts, LeakageConfig(time_order_action="report"), feedback_ids=ids)
    assert len(clean["test"]) == len(test) and report["counts"]["removed_eval_rows"] == 0
    assert not clean["train"]["id"].isin(ids).any() and len(clean["train"]) == len(clean_parts["train"])
    (f,) = _checks(report, "feedback_copies_test")
    assert f["count"] == 7 and f["action"] == "removed from train" and report["counts"]["removed_feedback_rows"] == 7

    untold, rep = audit(parts, LeakageConfig(time_order_action="report"))
    assert len(untold["test"]) == len(test) - 7 and rep["counts"]["removed_eval_rows"] == 7


def test_the_stratified_sample_keeps_each_class_share_and_rare_classes():
    from pipelines.data.leakage_checks import sample_positions

    labels = pd.Series(["big"] * 9000 + ["mid"] * 2900 + ["rare"] * 12)
    rows = sample_positions(labels, 2000, seed=1)
    counts = labels.iloc[rows].value_counts()
    assert counts["rare"] == 12  # all it has (fewer than 30): a rare class stays judgeable
    assert abs(counts["big"] - 9000 * 2000 / len(labels)) <= 1 and abs(counts["mid"] - 2900 * 2000 / len(labels)) <= 1
    assert len(set(rows)) == len(rows) and (np.diff(rows) > 0).all()  # real rows, in their order
    assert (rows == sample_positions(labels, 2000, seed=1)).all()  # seeded
    assert sample_positions(labels, None) is None and sample_positions(labels, len(labels)) is None


def test_single_column_check_on_a_sample_still_flags_a_planted_leak_and_says_so():
    rows = make_clean(n=3000, seed=3)
    rows["resolved_by_team"] = pd.array(
        [{"alpha": "Finance Ops", "beta": "Logistics", "gamma": "Identity Team"}[x] for x in rows["label"]],
        dtype="string",
    )
    parts = time_parts(rows)
    _, report = audit(parts, LeakageConfig(column_check_max_rows=1000))
    leaky = _checks(report, "leaky_column")
    assert [f["columns"] for f in leaky] == [["resolved_by_team"]]
    # three classes of 1,000 rows, each sampled at its share: 3 x round(1000 * 1000 / 3000)
    assert "stratified sample of 999 of 3,000 rows" in leaky[0]["detail"]
    assert report["single_column_rows"] == 999
    _, whole = audit(parts, LeakageConfig(column_check_max_rows=None))
    assert whole["single_column_rows"] == 3000 and "sample" not in _checks(whole, "leaky_column")[0]["detail"]


def test_column_check_max_rows_is_validated():
    with pytest.raises(ValueError, match="column_check_max_rows"):
        LeakageConfig(column_check_max_rows=10)
