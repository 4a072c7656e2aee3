"""Ingest in batches (``ingest.batch_rows``): a source read, cleaned and written a few rows at a time gives the
same Parquet, summary and quarantine file as the source in one piece, and no batch above the bound is ever read.

The "memory cap" of the issue is the batch bound: a source of 61 rows with ``batch_rows: 7`` is larger than any
batch the stage holds (9 batches); the tests prove the bound by watching what the reader hands over."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from pipelines import ingest as ingest_cli
from pipelines.config import IngestConfig, load_params, parse_params
from pipelines.data import ingestion
from pipelines.data.ingestion import ingest_with_quarantine, read_snapshots, read_source
from pipelines.errors import DataError, GateFailed
from tests.helpers.data import write_params

LABELS = ("billing", "refund", "shipping")
N = 61


def _rows(bad_label_at: int | None = None, odd_date_at: int | None = None) -> list[dict]:
    rows = []
    for i in range(N):
        rows.append(
            {
                "id": f"t{i}",
                # i % 20: the same text in several batches (duplicates across batch boundaries are kept, as ever)
                "body": f"<p>ticket {i % 20}: call me at +1 (555) 123-{4000 + i % 20}</p> or mail u{i % 20}@acme.com",
                "intent": LABELS[i % 3],
                "created": f"2024-01-{1 + i % 28:02d} 10:{i % 60:02d}:00",
                "customer": f"c{i % 5}",
                "priority": "" if i % 4 == 0 else str(i % 3),
            }
        )
    rows[12]["body"] = "<p> </p>"  # empty once cleaned: dropped and counted
    rows[33]["body"] = "x" * 500 + " mail me at long@acme.com"  # over ingest.max_text_chars
    if bad_label_at is not None:
        rows[bad_label_at]["intent"] = ""
        rows[bad_label_at + 3]["intent"] = " "
    if odd_date_at is not None:  # first row of a batch of 7: a batch alone would guess this format, not ISO
        rows[odd_date_at]["created"] = "01/05/2024"
    return rows


COLUMNS = {"text": ["body"], "label": "intent", "timestamp": "created", "group": "customer", "id": "id"}


def _setup(tmp_path: Path, fmt: str, rows: list[dict], extra_line: bool = False, snapshots: bool = False) -> Path:
    frame = pd.DataFrame(rows)
    src = tmp_path / f"raw.{fmt}"
    if fmt == "csv":
        text = frame.to_csv(index=False)
        if extra_line:  # a line with more fields than the header, late in the file (quarantine: set aside)
            lines = text.splitlines(keepends=True)
            text = "".join(lines[:45] + ["t-x,too,many,fields,here,really,yes\n"] + lines[45:])
        src.write_text(text)
    elif fmt == "jsonl":
        records = frame.to_dict(orient="records")
        for i, r in enumerate(records):
            r["priority"] = None if r["priority"] == "" else int(r["priority"])  # ints, null in some batches
            if i % 9 == 0:
                del r["customer"]  # a key some records (and so some batches) lack
        src.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        frame.to_parquet(src, index=False, row_group_size=10)
    snap_dir = tmp_path / "snapshots"
    if snapshots:
        snap_dir.mkdir()
        pd.DataFrame(
            {
                "id": ["r1:0", "r1:1"],
                "text": ["copilot ate my credits, mail bob@y.org", "parcel lost"],
                "label": ["refund", "shipping"],
                "timestamp": pd.to_datetime(["2025-02-01", "2025-02-02"], utc=True),
            }
        ).to_parquet(snap_dir / "snapshot-1.parquet")
    return src


def _params(tmp_path: Path, src: Path, batch_rows: int, **ingest: object) -> Path:
    return write_params(
        tmp_path / f"params-{batch_rows}.yaml",
        data={"path": src.name, "snapshots_dir": "snapshots", "columns": COLUMNS},
        ingest={"max_text_chars": 200, "batch_rows": batch_rows, **ingest},
        compute={"engine": "pandas"},
    )


def _run(tmp_path: Path, params: Path, tag: str) -> dict:
    """The stage in-process; its outputs (read back) or the DataError it raised."""
    outs = {k: tmp_path / tag / f"{k}" for k in ("data.parquet", "ingest.json", "metrics.json", "quarantine.csv")}
    try:
        ingest_cli.main(
            params=params,
            out=outs["data.parquet"],
            summary_out=outs["ingest.json"],
            metrics_out=outs["metrics.json"],
            quarantine_out=outs["quarantine.csv"],
        )
    except DataError as err:
        assert not (tmp_path / tag).exists()  # nothing half-written
        assert not list(tmp_path.glob(".staging-*"))
        return {"error": str(err)}
    summary = json.loads(outs["ingest.json"].read_text())
    summary["bad_rows"]["file"] = summary["bad_rows"]["file"].replace(tag, "T")
    return {
        "frame": pd.read_parquet(outs["data.parquet"]),
        "summary": summary,
        "metrics": outs["metrics.json"].read_text(),
        "quarantine": outs["quarantine.csv"].read_text(),
    }


def _in_one_piece(params: Path) -> dict:
    """The in-memory path: the whole source read at once (read_source) and ingested as one frame."""
    p = load_params(params)
    try:
        raw = read_source(p.data, quarantine=p.ingest.bad_rows == "quarantine")
        df, summary, q = ingest_with_quarantine(raw, p.data, p.ingest, read_snapshots(p.data))
    except DataError as err:
        return {"error": str(err)}
    return {"frame": df, "summary": summary, "quarantine": q.to_csv(index=False)}


def _assert_same(batched: dict, whole: dict, in_memory: dict) -> None:
    if "error" in whole:
        assert batched == whole == in_memory
        return
    for got in (batched, in_memory):
        pd.testing.assert_frame_equal(got["frame"], whole["frame"])
        assert got["quarantine"] == whole["quarantine"]
    assert batched["summary"] == whole["summary"] and batched["metrics"] == whole["metrics"]
    assert {k: v for k, v in whole["summary"].items() if k != "engine"} == {
        **in_memory["summary"],
        "bad_rows": {**in_memory["summary"]["bad_rows"], "file": whole["summary"]["bad_rows"]["file"]},
    }


@pytest.fixture
def watched(monkeypatch):
    """The sizes of the batches the stage received from the reader."""
    sizes: list[int] = []
    real = ingestion.IngestRun.add

    def add(self, raw):
        sizes.append(len(raw))
        return real(self, raw)

    monkeypatch.setattr(ingestion.IngestRun, "add", add)
    return sizes


CASES = {
    # name: (format, rows, ingest params, a CSV line with extra fields, snapshots)
    "csv-clean": ("csv", _rows(), {}, False, True),
    "csv-refuse-late-bad-label": ("csv", _rows(bad_label_at=50), {}, False, False),
    "csv-quarantine-late-bad-rows": (
        "csv",
        _rows(bad_label_at=50, odd_date_at=21),
        {"bad_rows": "quarantine"},
        True,
        True,
    ),
    "csv-refuse-odd-date": ("csv", _rows(odd_date_at=21), {}, False, False),
    "csv-drop-over-long": ("csv", _rows(), {"over_long": "drop"}, False, False),
    "jsonl-quarantine": ("jsonl", _rows(bad_label_at=40), {"bad_rows": "quarantine"}, False, True),
    "parquet": ("parquet", _rows(), {}, False, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_batches_of_7_give_the_output_of_the_source_in_one_piece(tmp_path, monkeypatch, watched, case):
    fmt, rows, ingest_params, extra_line, snapshots = CASES[case]
    monkeypatch.chdir(tmp_path)
    src = _setup(tmp_path, fmt, rows, extra_line, snapshots)
    small, big = _params(tmp_path, src, 7, **ingest_params), _params(tmp_path, src, 1_000_000, **ingest_params)

    batched = _run(tmp_path, small, "batched")
    assert len(watched) >= N // 7 and max(watched) <= 7  # many batches, none above the bound
    watched.clear()
    whole = _run(tmp_path, big, "whole")
    assert len(watched) == 1 + extra_line  # one batch (and the unparsed lines, which come last)
    _assert_same(batched, whole, _in_one_piece(big))


@pytest.mark.parametrize("bad_rows", ["refuse", "quarantine"])
def test_given_splits_in_batches_name_the_same_unknown_values_and_rows(tmp_path, monkeypatch, bad_rows):
    monkeypatch.chdir(tmp_path)
    rows = [{**r, "part": ("train", "val", "test")[i % 3]} for i, r in enumerate(_rows())]
    rows[44]["part"] = ""  # a row without its split, late
    src = _setup(tmp_path, "csv", rows)
    outs = []
    for batch in (7, 1_000_000):
        params = write_params(
            tmp_path / f"params-{batch}.yaml",
            data={"path": src.name, "snapshots_dir": None, "columns": {**COLUMNS, "split": "part"}},
            ingest={"batch_rows": batch, "bad_rows": bad_rows},
        )
        outs.append(_run(tmp_path, params, f"out-{batch}"))
    if bad_rows == "refuse":
        assert outs[0] == outs[1] and "(first: raw.csv row 45)" in outs[0]["error"]
    else:
        pd.testing.assert_frame_equal(outs[0]["frame"], outs[1]["frame"])
        assert outs[0]["summary"] == outs[1]["summary"] and outs[0]["quarantine"] == outs[1]["quarantine"]
        assert outs[0]["summary"]["split_rows"] == {"train": 20, "val": 20, "test": 19}  # 61 - row 45 - row 13 (empty)

    for i, value in ((3, "holdout"), (50, "dev"), (58, "holdout")):  # values that name no split, in late batches
        rows[i]["part"] = value
    src = _setup(tmp_path, "csv", rows)
    errors = [_run(tmp_path, tmp_path / f"params-{batch}.yaml", f"err-{batch}")["error"] for batch in (7, 1_000_000)]
    assert errors[0] == errors[1] and "value(s) ['dev', 'holdout']" in errors[0]


def test_the_cases_show_what_they_claim(tmp_path, monkeypatch):
    """The fixtures are not vacuous: PII scrubbed, texts dropped, late rows refused or quarantined by name."""
    monkeypatch.chdir(tmp_path)
    src = _setup(tmp_path, "csv", _rows(bad_label_at=50, odd_date_at=21), extra_line=True, snapshots=True)
    out = _run(tmp_path, _params(tmp_path, src, 7, bad_rows="quarantine"), "q")
    s = out["summary"]
    assert s["pii_rows"] > 50 and s["html_rows"] > 50 and s["empty_text_dropped"] == 1
    assert s["over_long"]["rows"] == 1 and s["over_long"]["first"] == "raw.csv row 34"
    assert s["bad_rows"]["reasons"] == {"unparsed_line": 1, "missing_label": 2, "bad_timestamp": 1}
    q = pd.read_csv(pd.io.common.StringIO(out["quarantine"]))
    assert list(q["source_row"].dropna().astype(int)) == [22, 51, 54] and list(q["source_line"].dropna()) == [46]
    assert not out["frame"]["text"].str.contains("@acme.com").any()
    assert out["frame"]["text"].duplicated().sum() > 10  # duplicate texts across batches are kept, as before
    assert out["frame"]["id"].iloc[-2:].tolist() == ["r1:0", "r1:1"] and s["snapshot_rows"] == 2

    refused = _run(tmp_path, _params(tmp_path, src, 7), "r")  # refuse: the line with extra fields first
    assert refused["error"].startswith("raw.csv: cannot be parsed as CSV") and "line 46: 7 fields" in refused["error"]
    src = _setup(tmp_path, "csv", _rows(bad_label_at=50))
    refused = _run(tmp_path, _params(tmp_path, src, 7), "r")
    assert refused["error"].startswith("label column 'intent' has 2 null or empty value(s)")
    assert "(first: raw.csv row 51, raw.csv row 54)" in refused["error"]


def test_a_late_odd_date_is_judged_by_the_format_of_the_first(tmp_path, monkeypatch):
    """pandas guesses a date column's format from its first value: a batch must not guess its own."""
    monkeypatch.chdir(tmp_path)
    src = _setup(tmp_path, "csv", _rows(odd_date_at=21))
    refused = _run(tmp_path, _params(tmp_path, src, 7), "r")
    assert refused["error"] == "timestamp column 'created': 1 value(s) are not dates (e.g. '01/05/2024')"


def test_the_stage_never_reads_the_whole_file(tmp_path, monkeypatch):
    """Every reader is asked for chunks of batch_rows: pandas' CSV and JSONL readers get ``chunksize``, Parquet is
    read by ``iter_batches``; a call that would read a whole file fails the test."""
    monkeypatch.chdir(tmp_path)
    real_csv, real_json = pd.read_csv, pd.read_json

    def read_csv(*args, **kwargs):
        assert kwargs.get("chunksize") == 7 or kwargs.get("nrows") == 0, kwargs
        return real_csv(*args, **kwargs)

    def read_json(*args, **kwargs):
        assert kwargs.get("chunksize") == 7, kwargs
        return real_json(*args, **kwargs)

    def whole(real):
        def read(source, *args, **kwargs):
            assert not str(source).endswith("raw.parquet"), "the source is read in row batches"
            return real(source, *args, **kwargs)

        return read

    for fmt in ("csv", "jsonl", "parquet"):
        src = _setup(tmp_path, fmt, _rows())  # (written before the readers are watched)
        with monkeypatch.context() as m:
            m.setattr(pd, "read_csv", read_csv)
            m.setattr(pd, "read_json", read_json)
            m.setattr(pd, "read_parquet", whole(pd.read_parquet))
            m.setattr(ingestion.pq, "read_table", whole(ingestion.pq.read_table))
            out = _run(tmp_path, _params(tmp_path, src, 7), f"out-{fmt}")
        assert out["summary"]["rows_read"] == N, fmt


def test_the_parquet_is_written_in_parts_one_row_group_per_batch(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    src = _setup(tmp_path, "csv", _rows())
    _run(tmp_path, _params(tmp_path, src, 7), "b")
    meta = pq.ParquetFile(tmp_path / "b" / "data.parquet").metadata
    assert meta.num_row_groups == 9 and max(meta.row_group(i).num_rows for i in range(9)) <= 7


@pytest.mark.parametrize("value", [0, -5, "many"])
def test_batch_rows_must_be_a_positive_integer(value):
    with pytest.raises(ValidationError, match="batch_rows"):
        IngestConfig(batch_rows=value)
    with pytest.raises(Exception, match="batch_rows"):
        parse_params({"ingest": {"batch_rows": value}})


def test_batch_rows_defaults_to_50_000():
    assert IngestConfig().batch_rows == 50_000


# --------------------------------------------------------------------------- downstream: split and validate


def _interim(tmp_path: Path, n: int = 300, **columns: object) -> Path:
    """An interim file as ingest writes it, with an extra source column the downstream stages need not load."""
    rows = [
        {**r, "id": f"t{i}", "intent": LABELS[i % 3], "customer": f"c{i % 40}", "created": f"2024-{1 + i % 12:02d}-03"}
        for i, r in enumerate(_rows() * (n // N + 1))
    ][:n]
    src = tmp_path / "raw.csv"
    pd.DataFrame(rows).to_csv(src, index=False)
    params = write_params(
        tmp_path / "params-interim.yaml",
        data={"path": src.name, "snapshots_dir": "snapshots", "columns": {**COLUMNS, **columns}},
        ingest={"batch_rows": 50},
    )
    _run(tmp_path, params, "interim")
    return tmp_path / "interim" / "data.parquet"


@pytest.mark.parametrize(
    "strategy,columns",
    [("time", {}), ("stratified", {"timestamp": None, "group": None}), ("group", {"timestamp": None})],
)
def test_split_from_key_columns_writes_what_split_frame_writes(tmp_path, monkeypatch, strategy, columns):
    from pipelines import split as split_cli
    from pipelines.data.splitting import split_frame

    monkeypatch.chdir(tmp_path)
    data = _interim(tmp_path, **columns)
    snap = tmp_path / "snapshots"
    snap.mkdir()
    pd.DataFrame({"id": ["t5", "t77"], "text": ["a", "b"], "label": ["refund", "billing"]}).to_parquet(
        snap / "snapshot-1.parquet"
    )  # feedback ids: kept out of test
    params = write_params(
        tmp_path / "params-split.yaml", data={"snapshots_dir": "snapshots"}, split={"strategy": strategy}
    )
    monkeypatch.setattr(split_cli, "TAKE_ROWS", 16)  # each split copied out of the input 16 rows at a time
    split_cli.main(params=params, data=data, out_dir=tmp_path / "split", report=tmp_path / "split.json")

    expected, report = split_frame(pd.read_parquet(data), load_params(params).split, {"t5", "t77"})
    assert json.loads((tmp_path / "split.json").read_text()) == json.loads(json.dumps(report, default=str))
    for name, part in expected.items():
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "split" / f"{name}.parquet"), part)
    assert "priority" in expected["train"]  # the source's other columns are carried, taken by position


def test_validate_reads_only_the_columns_its_suite_checks_and_judges_every_row(tmp_path, monkeypatch):
    from pipelines import validate as validate_cli
    from pipelines.data.quality import SUITE_COLUMNS, run_validation

    monkeypatch.chdir(tmp_path)
    data = _interim(tmp_path)
    asked: list = []
    real = validate_cli.read_parquet

    def read_parquet(path, columns=None):
        asked.append(columns)
        return real(path, columns=columns)

    monkeypatch.setattr(validate_cli, "read_parquet", read_parquet)
    params = write_params(
        tmp_path / "params-validate.yaml", validate={"expected_labels": list(LABELS), "min_class_count": 5}
    )
    with pytest.raises(GateFailed, match="proportion_of_unique_values"):  # the fixture's texts repeat (i % 20)
        validate_cli.main(params=params, data=data, out_dir=tmp_path / "validation")
    assert asked == [list(SUITE_COLUMNS)]  # not group, priority, ... (which ingest keeps for leakage)
    got = json.loads((tmp_path / "validation" / "result.json").read_text())["results"]
    whole = run_validation(pd.read_parquet(data), load_params(params).validate_).results
    assert got == whole and got[0]["observed"].startswith("observed 295")  # every row counted, not a sample
    assert [r["expectation"] for r in got if not r["success"]] == [
        "expect_column_proportion_of_unique_values_to_be_between"
    ]
