"""Broken records: refused naming the rows (the default), or quarantined to a CSV a person can inspect and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import IngestConfig, parse_params
from pipelines.data.ingestion import ingest, ingest_with_quarantine, read_source
from pipelines.errors import DataError
from tests.helpers.data import run_stage, write_params

GOOD = [
    ("I am still waiting on my card", "card_arrival"),
    ("what is the exchange rate today", "exchange_rate"),
    ("my card arrived so how do I activate it", "card_arrival"),
    ("which currencies can I exchange", "exchange_rate"),
    ("top up failed again", "top_up_failed"),
    ("why did my top up not go through", "top_up_failed"),
]
# Two records split across two lines (a text without its label, then a label without its text), as in a real file.
SPLIT_RECORDS = (
    "when will my new card be sent to me\n"
    ",card_arrival\n"
    "please call me at +1 (555) 123-4567 about the top up\n"
    ",top_up_failed\n"
)
EXTRA_FIELD = "top up failed, please help,top_up_failed\n"  # an unquoted comma: three fields


def _csv(rows: list[tuple[str, str]], broken: str = "") -> str:
    head = "text,intent\n" + "".join(f"{t.replace(',', ' ')},{label}\n" for t, label in rows[:3])
    return head + broken + "".join(f"{t.replace(',', ' ')},{label}\n" for t, label in rows[3:])


def _cli(tmp_path: Path, text: str, **ingest_params) -> tuple:
    (tmp_path / "raw.csv").write_text(text)
    params = write_params(
        tmp_path / "params.yaml",
        data={
            "path": "raw.csv",
            "snapshots_dir": None,
            "columns": {"text": "text", "label": "intent", "timestamp": None, "group": None, "id": None},
        },
        ingest=ingest_params,
    )
    return run_stage("ingest", "--params", str(params), cwd=tmp_path), tmp_path


def test_refuse_is_the_default_and_names_the_rows(tmp_path):
    r, root = _cli(tmp_path, _csv(GOOD, SPLIT_RECORDS))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("error: label column 'intent' has 2 null or empty value(s)")
    assert "(first: raw.csv row 4, raw.csv row 6)" in first  # record numbers: 1 is the first after the header
    assert "ingest.bad_rows: quarantine" in first
    assert not (root / "data" / "interim").exists() and not (root / "reports").exists()


def test_refuse_names_the_line_with_extra_fields(tmp_path):
    r, _ = _cli(tmp_path, _csv(GOOD, EXTRA_FIELD))
    assert r.returncode == 1
    assert "Expected 2 fields in line 5, saw 3" in r.stderr and "ingest.bad_rows: quarantine" in r.stderr


def test_quarantine_moves_broken_rows_to_a_file_and_counts_them(tmp_path):
    r, root = _cli(tmp_path, _csv(GOOD, SPLIT_RECORDS + EXTRA_FIELD), bad_rows="quarantine")
    assert r.returncode == 0, r.stderr
    assert (
        "5 broken rows quarantined to data/interim/quarantine.csv (unparsed_line 1, missing_label 2, missing_text 2)"
    ) in r.stdout
    q = pd.read_csv(root / "data" / "interim" / "quarantine.csv")
    assert list(q.columns) == [
        "quarantine_reason",
        "source_file",
        "source_row",
        "source_line",
        "raw_line",
        "text",
        "intent",
    ]
    assert list(q["quarantine_reason"]) == [
        "missing_label",
        "missing_text",
        "missing_label",
        "missing_text",
        "unparsed_line",
    ]
    assert list(q["source_row"].astype("Int64")) == [4, 5, 6, 7, pd.NA]
    assert (q["source_file"] == "raw.csv").all()
    assert q.loc[2, "text"] == "please call me at <PHONE> about the top up"  # PII scrubbed here too
    assert q.loc[4, "source_line"] == 9 and q.loc[4, "raw_line"] == EXTRA_FIELD.strip()

    summary = json.loads((root / "reports" / "ingest.json").read_text())
    assert summary["bad_rows"] == {
        "action": "quarantine",
        "quarantined": 5,
        "reasons": {"unparsed_line": 1, "missing_label": 2, "missing_text": 2},
        "file": "data/interim/quarantine.csv",
    }
    assert summary["rows_read"] == 11 and summary["rows_written"] == len(GOOD) == 6
    assert json.loads((root / "metrics" / "ingest.json").read_text())["quarantined_rows"] == 5
    kept = pd.read_parquet(root / "data" / "interim" / "dataset.parquet")
    assert sorted(kept["text"]) == sorted(t for t, _ in GOOD)


def test_the_quarantine_file_is_written_with_a_header_when_nothing_is_broken(tmp_path):
    r, root = _cli(tmp_path, _csv(GOOD))
    assert r.returncode == 0, r.stderr
    q = pd.read_csv(root / "data" / "interim" / "quarantine.csv")
    assert q.empty and list(q.columns)[:3] == ["quarantine_reason", "source_file", "source_row"]
    assert json.loads((root / "reports" / "ingest.json").read_text())["bad_rows"]["quarantined"] == 0
    assert "quarantined" not in r.stdout


def _data(**columns):
    base = {"text": "text", "label": "label", "timestamp": "when", "group": None, "id": "id"}
    return parse_params({"data": {"columns": {**base, **columns}}}).data


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"t{i}" for i in range(6)],
            "text": ["a one", "b two", "a three", "", "b five", "a six"],
            "label": ["a", "b", None, "b", "b", "a"],
            "when": ["2025-01-01", "2025-01-02", "2025-01-03", "2025-01-04", "soon", "2025-01-06"],
        }
    )


def test_in_memory_quarantine_keeps_the_counts_whole():
    df, summary, q = ingest_with_quarantine(_frame(), _data(), IngestConfig(bad_rows="quarantine"))
    assert list(df["id"]) == ["t0", "t1", "t5"]
    assert list(q["id"]) == ["t2", "t3", "t4"]
    assert list(q["quarantine_reason"]) == ["missing_label", "missing_text", "bad_timestamp"]
    assert list(q["source_row"]) == [pd.NA] * 3  # an in-memory frame has no file to point to
    assert summary["rows_read"] == summary["rows_written"] + summary["quarantined_rows"] + summary["empty_text_dropped"]
    # ingest() is the same stage function without the rows set aside
    assert ingest(_frame(), _data(), IngestConfig(bad_rows="quarantine"))[0].equals(df)


def test_refuse_keeps_the_old_behaviour_for_dates_and_empty_texts():
    frame = _frame()
    frame.loc[2, "label"] = "a"
    with pytest.raises(DataError, match=r"timestamp column 'when': 1 value\(s\) are not dates \(e.g. 'soon'\)"):
        ingest(frame, _data(), IngestConfig())
    frame.loc[4, "when"] = "2025-01-05"
    df, summary = ingest(frame, _data(), IngestConfig())
    assert summary["empty_text_dropped"] == 1 and summary["quarantined_rows"] == 0 and len(df) == 5


def test_a_row_without_its_split_is_refused_or_quarantined():
    frame = _frame().assign(fold=["train", "train", "test", "test", None, "val"])
    frame.loc[[2, 3, 4], ["label", "text", "when"]] = ["a", "a four", "2025-01-03"]
    data = _data(split="fold")
    with pytest.raises(DataError, match=r"split column 'fold' has 1 null or empty value\(s\) \(first: row 5\)"):
        ingest(frame, data, IngestConfig())
    df, summary, q = ingest_with_quarantine(frame, data, IngestConfig(bad_rows="quarantine"))
    assert list(q["quarantine_reason"]) == ["missing_split"] and summary["split_rows"] == {
        "train": 2,
        "val": 1,
        "test": 2,
    }


def test_read_source_sets_extra_field_lines_aside_only_when_quarantining(tmp_path):
    f = tmp_path / "raw.csv"
    f.write_text(_csv(GOOD, EXTRA_FIELD))
    data = parse_params({"data": {"path": str(f), "columns": {"text": "text", "label": "intent"}}}).data
    with pytest.raises(DataError, match="cannot be parsed as CSV"):
        read_source(data)
    raw = read_source(data, quarantine=True)
    assert len(raw) == 7 and raw["_raw_line"].notna().sum() == 1
