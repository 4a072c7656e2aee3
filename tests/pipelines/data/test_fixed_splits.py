"""Fixed splits: the data's own train/val/test (one file each, or a split column) are kept exactly as given,
audited by the leakage checks (duplicates reported, or removed as params say; classes missing from train), and
wrong combinations of params are refused naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import LeakageConfig, SplitConfig, parse_params
from pipelines.data.ingestion import ingest, read_source
from pipelines.data.leakage_checks import audit
from pipelines.data.splitting import split_frame
from pipelines.errors import ConfigError, DataError
from tests.helpers.data import make_clean, run_stage, write_params

SIZES = {"train": 90, "val": 30, "test": 30}
COLUMNS = {"text": "query", "label": "intent", "timestamp": None, "group": None, "id": "qid", "split": None}


def _files(root: Path, unseen_in_test: bool = False, copy_into_test: bool = False) -> dict[str, pd.DataFrame]:
    """Three CSV files under ``root`` (ids ``<split>-<n>``); optionally a test text copied from train, and a
    test class train never saw."""
    df = make_clean(sum(SIZES.values()), seed=3)
    frames, start = {}, 0
    for name, n in SIZES.items():
        part = df.iloc[start : start + n]
        frames[name] = pd.DataFrame(
            {"qid": [f"{name}-{i}" for i in range(n)], "query": list(part["text"]), "intent": list(part["label"])}
        )
        start += n
    if copy_into_test:
        frames["test"].loc[4, "query"] = frames["train"].loc[7, "query"]
    if unseen_in_test:
        frames["test"].loc[[0, 1], "intent"] = "delta"
    root.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_csv(root / f"{name}.csv", index=False)
    return frames


def _params(root: Path, **data) -> object:
    paths = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
    return parse_params(
        {"data": {"path": str(root), "split_paths": paths, "snapshots_dir": None, "columns": COLUMNS, **data}}
    )


def _run(params) -> tuple[pd.DataFrame, dict, dict[str, pd.DataFrame], dict]:
    df, summary = ingest(read_source(params.data), params.data, params.ingest)
    parts, report = split_frame(df, params.split)
    return df, summary, parts, report


def test_split_files_are_kept_exactly_as_given(tmp_path):
    frames = _files(tmp_path / "raw")
    df, summary, parts, report = _run(_params(tmp_path / "raw"))
    assert summary["split_rows"] == SIZES and summary["rows_read"] == sum(SIZES.values())
    assert report["strategy"] == "given" and "kept as given" in report["reason"]
    assert report["rows"] == report["given_rows"] == SIZES
    for name, frame in frames.items():
        assert list(parts[name]["id"]) == list(frame["qid"]), name  # the same rows, in the file's order
        assert list(parts[name]["label"]) == list(frame["intent"]), name
        assert "split" not in parts[name]  # consumed by the split stage
    assert str(df["split"].dtype) == "string" and list(df.columns[:4]) == ["id", "text", "label", "split"]


def test_explicit_strategy_resplits_the_union_and_says_so(tmp_path):
    _files(tmp_path / "raw")
    df, _, _, _ = _run(_params(tmp_path / "raw"))
    parts, report = split_frame(df, SplitConfig(strategy="stratified"))
    assert report["strategy"] == "stratified" and "the data's own splits are ignored" in report["reason"]
    assert sum(report["rows"].values()) == len(df) and not any("split" in p for p in parts.values())


def test_no_val_file_gives_a_val_taken_from_train_and_leaves_test_alone(tmp_path):
    frames = _files(tmp_path / "raw")
    params = _params(tmp_path / "raw", split_paths={"train": "train.csv", "test": "test.csv"})
    _, summary, parts, report = _run(params)
    assert summary["split_rows"] == {"train": 90, "val": 0, "test": 30}
    assert list(parts["test"]["id"]) == list(frames["test"]["qid"])
    assert len(parts["val"]) == round(90 * params.split.val_fraction) and len(parts["train"]) + len(parts["val"]) == 90
    assert set(parts["val"]["id"]) <= set(frames["train"]["qid"])
    assert "no val given: val is 15% of train, stratified" in report["reason"]


def test_a_directory_per_split_is_read_whole(tmp_path):
    frames = _files(tmp_path / "flat")
    for name, frame in frames.items():
        (tmp_path / "raw" / name).mkdir(parents=True)
        frame.iloc[:10].to_csv(tmp_path / "raw" / name / "a.csv", index=False)
        frame.iloc[10:].to_json(tmp_path / "raw" / name / "b.jsonl", orient="records", lines=True)
    params = _params(tmp_path / "raw", split_paths={"train": "train", "val": "val", "test": "test"})
    _, summary, parts, _ = _run(params)
    assert summary["split_rows"] == SIZES
    assert sorted(parts["test"]["id"]) == sorted(frames["test"]["qid"])


def test_split_column_variant_with_its_own_values(tmp_path):
    frames = _files(tmp_path / "flat")
    fold = {"train": "training", "val": "dev", "test": "eval"}
    whole = pd.concat([f.assign(fold=fold[k]) for k, f in frames.items()]).sample(frac=1.0, random_state=0)
    (tmp_path / "raw").mkdir()
    whole.to_csv(tmp_path / "raw" / "all.csv", index=False)
    params = parse_params(
        {
            "data": {
                "path": str(tmp_path / "raw" / "all.csv"),
                "snapshots_dir": None,
                "columns": {**COLUMNS, "split": "fold"},
                "split_values": fold,
            }
        }
    )
    df, summary, parts, report = _run(params)
    assert report["strategy"] == "given" and summary["split_rows"] == SIZES
    for name in frames:
        assert list(parts[name]["id"]) == list(whole.loc[whole["fold"] == fold[name], "qid"]), name
    assert "fold" not in df and "fold_src" not in df  # the mapped column became the canonical split

    default_values = params.data.model_copy(update={"split_values": type(params.data.split_values)()})
    with pytest.raises(DataError) as exc:
        ingest(read_source(default_values), default_values, params.ingest)
    assert "split column 'fold' has value(s) ['dev', 'eval', 'training'] that data.split_values" in str(exc.value)


def test_an_unmapped_column_named_split_is_kept_aside_and_not_used(tmp_path):
    df = make_clean(60).drop(columns=["timestamp", "group"]).assign(split="test")
    params = parse_params({"data": {"columns": {"text": "text", "label": "label", "id": "id"}}})
    out, _ = ingest(df, params.data, params.ingest)
    assert "split" not in out and (out["split_src"] == "test").all()
    assert split_frame(out, SplitConfig())[1]["strategy"] == "stratified"


def test_strategy_given_without_given_splits_is_refused(clean_df):
    with pytest.raises(
        DataError, match=r"split.strategy is 'given' but the data gives no splits: set data.split_paths"
    ):
        split_frame(clean_df, SplitConfig(strategy="given"))


def test_an_empty_given_test_split_is_refused(tmp_path):
    frames = _files(tmp_path / "raw")
    frames["test"].iloc[:0].to_csv(tmp_path / "raw" / "test.csv", index=False)
    with pytest.raises(DataError, match=r"data.split_paths.test: .*test.csv has no rows"):
        read_source(_params(tmp_path / "raw").data)


# --------------------------------------------------------------------------- leakage on given splits
def test_duplicate_across_given_splits_is_reported_and_kept_with_report(tmp_path):
    frames = _files(tmp_path / "raw", copy_into_test=True)
    _, _, parts, _ = _run(_params(tmp_path / "raw"))
    kept, report = audit(parts, LeakageConfig(duplicate_action="report", target_columns=[]), given=True)
    exact = [f for f in report["findings"] if f["check"] == "cross_split_exact_duplicates"]
    assert [(f["splits"], f["count"], f["action"], f["severity"]) for f in exact] == [
        (["train", "test"], 1, "reported", "warning")
    ]
    assert report["passed"] and report["given_splits"] and report["counts"]["removed_eval_rows"] == 0
    assert list(kept["test"]["id"]) == list(frames["test"]["qid"])  # the official test file, untouched

    removed, report = audit(parts, LeakageConfig(duplicate_action="remove", target_columns=[]), given=True)
    assert report["counts"]["removed_eval_rows"] == 1 and "test-4" not in set(removed["test"]["id"])
    _, blocked = audit(parts, LeakageConfig(duplicate_action="block", target_columns=[]), given=True)
    assert not blocked["passed"]


def test_a_class_missing_from_train_is_reported(tmp_path):
    _files(tmp_path / "raw", unseen_in_test=True)
    _, _, parts, _ = _run(_params(tmp_path / "raw"))
    _, report = audit(parts, LeakageConfig(target_columns=[]), given=True)
    unseen = [f for f in report["findings"] if f["check"] == "class_unseen_in_train"]
    assert [(f["splits"], f["count"], f["severity"]) for f in unseen] == [(["train", "test"], 2, "blocker")]
    assert "test has classes train never saw: ['delta']" in unseen[0]["detail"]
    assert report["counts"]["unseen_class_rows"] == 2 and not report["passed"]


def test_time_order_and_group_overlap_of_given_splits_are_reported_not_blocked():
    """A given split the split stage did not choose may interleave in time or share groups: reported."""
    df = make_clean(300)
    parts = {
        "train": df.iloc[100:].reset_index(drop=True),  # newer than test
        "val": df.iloc[50:100].reset_index(drop=True),
        "test": df.iloc[:50].assign(group=df["group"].iloc[200:250].to_numpy()).reset_index(drop=True),
    }
    cfg = LeakageConfig(time_order_action="block", group_overlap_action="block")
    _, chosen = audit(parts, cfg)
    assert {f["check"] for f in chosen["findings"] if f["severity"] == "blocker"} == {
        "eval_older_than_train",
        "group_overlap",
    }
    _, given = audit(parts, cfg, given=True)
    found = {f["check"]: f for f in given["findings"]}
    assert given["passed"] and given["counts"]["blockers"] == 0
    for check in ("eval_older_than_train", "group_overlap"):
        assert found[check]["severity"] == "warning" and "the splits are given" in found[check]["detail"]


def test_snapshots_join_the_given_train_split(tmp_path):
    _files(tmp_path / "raw")
    params = _params(tmp_path / "raw")
    snap = pd.DataFrame({"id": ["p:0", "p:1"], "text": ["new text one", "new text two"], "label": ["alpha", "beta"]})
    df, summary = ingest(read_source(params.data), params.data, params.ingest, snap)
    assert summary["split_rows"] == {**SIZES, "train": SIZES["train"] + 2}
    assert set(df.loc[df["id"].isin(["p:0", "p:1"]), "split"]) == {"train"}


# --------------------------------------------------------------------------- params
@pytest.mark.parametrize(
    "data, words",
    [
        (
            {"split_paths": {"train": "a.csv", "test": "b.csv"}, "columns": {**COLUMNS, "split": "fold"}},
            ["data.split_paths and data.columns.split both give the splits"],
        ),
        ({"split_paths": {"train": "a.csv", "val": "v.csv"}}, ["data.split_paths.test: Field required"]),
        ({"split_paths": {"train": "a.csv", "test": "b.csv", "dev": "c.csv"}}, ["data.split_paths.dev: unknown key"]),
        (
            {"split_paths": {"train": "../a.csv", "test": "b.csv"}},
            ["data.split_paths.train: '../a.csv' must be a path inside data.path"],
        ),
        ({"split_paths": {"train": "/abs/a.csv", "test": "b.csv"}}, ["data.split_paths.train", "inside data.path"]),
        (
            {"split_paths": {"train": "a.csv", "test": "./a.csv"}},
            ["data.split_paths: ['a.csv'] named for more than one split"],
        ),
        ({"split_values": {"train": "x", "val": "x", "test": "y"}}, ["data.split_values: ", "distinct"]),
        ({"split_paths": {"train": "a.csv", "test": ""}}, ["data.split_paths.test: "]),
    ],
    ids=["two-ways", "missing-test", "unknown-split", "outside", "absolute", "repeated", "split-values", "empty"],
)
def test_wrong_split_params_are_refused_naming_the_key(data, words):
    with pytest.raises(ConfigError) as exc:
        parse_params({"data": {"path": "data/raw", "columns": COLUMNS, **data}})
    for w in words:
        assert w in str(exc.value), str(exc.value)


def test_split_paths_need_data_path_to_be_their_directory(tmp_path):
    _files(tmp_path / "raw")
    params = _params(tmp_path / "raw" / "train.csv")
    with pytest.raises(DataError, match=r"data.path: .*train.csv is a file; with data.split_paths it is the directory"):
        read_source(params.data)
    with pytest.raises(DataError, match=r"data.split_paths.val: .*nope.csv does not exist"):
        read_source(
            _params(tmp_path / "raw", split_paths={"train": "train.csv", "val": "nope.csv", "test": "test.csv"}).data
        )


# --------------------------------------------------------------------------- the stage CLIs
@pytest.mark.integration
def test_ingest_split_leakage_clis_keep_given_splits_and_report_them(tmp_path):
    frames = _files(tmp_path / "raw", copy_into_test=True)
    params = write_params(
        tmp_path / "params.yaml",
        data={
            "path": "raw",  # relative to the directory the stages run in (the repository, under DVC)
            "split_paths": {"train": "train.csv", "val": "val.csv", "test": "test.csv"},
            "columns": COLUMNS,
        },
        leakage={"duplicate_action": "report", "target_columns": []},
    )
    for stage in ("ingest", "split", "leakage"):
        r = run_stage(stage, "--params", str(params), cwd=tmp_path)
        assert r.returncode == 0, (stage, r.stderr)
        if stage == "ingest":
            assert "given splits: train 90, val 30, test 30" in r.stdout
        if stage == "split":
            assert r.stdout.startswith("split: given (")
        if stage == "leakage":
            assert "(given splits)" in r.stdout and "exact duplicates of train texts -> reported" in r.stdout
    ingest_report = json.loads((tmp_path / "reports" / "ingest.json").read_text())
    split_report = json.loads((tmp_path / "reports" / "split.json").read_text())
    leakage_report = json.loads((tmp_path / "reports" / "leakage.json").read_text())
    assert ingest_report["split_rows"] == SIZES and ingest_report["bad_rows"]["quarantined"] == 0
    assert split_report["strategy"] == "given" and split_report["rows"] == SIZES
    assert leakage_report["given_splits"] and leakage_report["counts"]["exact_duplicates"] == 1
    for name, frame in frames.items():
        assert list(pd.read_parquet(tmp_path / "data" / "processed" / f"{name}.parquet")["id"]) == list(frame["qid"])
    assert (tmp_path / "data" / "interim" / "quarantine.csv").is_file()
