"""sft_data: chat examples from the classifier's splits or your JSONL; caps, contamination, checks, atomic outputs."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from pipelines import sft_data
from pipelines.config import LlmConfig, SftDataConfig
from pipelines.errors import DataError
from pipelines.llm.chat_data import TRIAGE_FIELDS, TRUTH_COLUMNS, USER_TEMPLATE, parse_triage
from pipelines.llm.examples import (
    SPLITS,
    build_sft_data,
    check_examples,
    example_frame,
    read_examples,
    split_by_prompt,
    write_outputs,
)
from tests.helpers.data import make_clean, time_parts, write_params

ALL = {"max_train_samples": None, "max_val_samples": None, "max_test_samples": None}
LLM = LlmConfig()


@pytest.fixture(scope="module")
def tokenizer(smol_tokenizer_dir: Path):
    """The SmolLM2 tokenizer, loaded once for this module (the stage only reads it)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_tokenizer_dir)


def tickets(n: int = 90, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The classifier's splits with the triage ground truth (as the generator and leakage stage leave them)."""
    df = make_clean(n, seed)
    df["priority"] = pd.array([("low", "normal", "high", "urgent")[i % 4] for i in range(n)], dtype="string")
    df["product"] = pd.array([None if i % 3 == 0 else f"Product {i % 5}" for i in range(n)], dtype="string")
    df["order_id"] = pd.array([f"ORD-{100000 + i}" if i % 2 else None for i in range(n)], dtype="string")
    df["summary"] = pd.array([f"The customer writes about {c} ({i})." for i, c in enumerate(df["label"])], "string")
    return time_parts(df)


def ids(examples: list[dict]) -> list[str]:
    return [e["id"] for e in examples]


# --------------------------------------------------------------------------- built-in mode
def test_builtin_keeps_each_ticket_in_its_split_and_answers_its_truth(tokenizer, tmp_path: Path) -> None:
    parts = tickets()
    examples, report = build_sft_data(SftDataConfig(**ALL), LLM, tokenizer, parts=parts)
    assert report["mode"] == "builtin" and report["categories"] == ["alpha", "beta", "gamma"]
    for name in SPLITS:
        rows = parts[name].set_index("id")
        assert ids(examples[name]) == rows.index.tolist()  # every ticket, in its own split, in order
        for ex in examples[name]:
            system, user, assistant = ex["messages"]
            assert [system["role"], user["role"], assistant["role"]] == ["system", "user", "assistant"]
            assert "one of: alpha, beta, gamma" in system["content"]
            row = rows.loc[ex["id"]]
            assert user["content"] == USER_TEMPLATE.format(text=row["text"])
            truth = {f: None if pd.isna(row[TRUTH_COLUMNS[f]]) else row[TRUTH_COLUMNS[f]] for f in TRIAGE_FIELDS}
            assert parse_triage(assistant["content"]) == truth
    assert report["counts"]["train"] == {"pool": len(parts["train"]), "written": len(parts["train"])}
    assert all(c["success"] for c in report["checks"]) and len(report["checks"]) == 6
    sizes = {k: len(v) for k, v in parts.items()}
    assert report["checks"][0] == {
        "check": "examples",
        "expectation": "expect_column_distinct_values_to_contain_set",
        "column": "split",
        "success": True,
        "observed": f"examples per split: {sizes}",
    }
    assert report["tokens"]["test"]["max"] <= LLM.max_length and report["tokens"]["test"]["shortened"] == 0

    out = tmp_path / "data" / "sft"
    write_outputs(examples, report, out, tmp_path / "report.json", tmp_path / "metrics.json")
    assert sorted(p.name for p in out.iterdir()) == ["test.jsonl", "train.jsonl", "val.jsonl"]
    assert read_examples(out / "val.jsonl") == examples["val"]
    first = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert list(first) == ["id", "messages"] and first["id"] == parts["train"]["id"][0]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["examples_val"] == len(parts["val"]) and metrics["contaminated_exact"] == 0


def test_caps_are_seeded_stratified_and_respected(tokenizer) -> None:
    parts = tickets(300)
    cfg = SftDataConfig(max_train_samples=30, max_val_samples=9, max_test_samples=12, seed=1)
    first, _ = build_sft_data(cfg, LLM, tokenizer, parts=parts)
    again, _ = build_sft_data(cfg, LLM, tokenizer, parts=parts)
    other, _ = build_sft_data(cfg.model_copy(update={"seed": 2}), LLM, tokenizer, parts=parts)
    assert {k: len(v) for k, v in first.items()} == {"train": 30, "val": 9, "test": 12}
    assert first == again and ids(first["train"]) != ids(other["train"])
    for name in SPLITS:
        assert set(ids(first[name])) <= set(parts[name]["id"])
    pool = parts["train"]["label"].value_counts(normalize=True)
    got = Counter(parse_triage(e["messages"][-1]["content"])["category"] for e in first["train"])
    assert all(abs(got[c] - 30 * share) <= 1 for c, share in pool.items())  # stratified by label


# --------------------------------------------------------------------------- contamination
def planted() -> tuple[dict[str, pd.DataFrame], str, str, str]:
    """Val holds an exact copy (case, punctuation) of a train ticket, test a near copy (one word changed)."""
    parts = tickets()
    train = parts["train"]
    words = str(train.at[1, "text"]).split()
    parts["val"].loc[0, "text"] = str(train.at[0, "text"]).upper() + " !"
    parts["test"].loc[0, "text"] = " ".join([*words[:-1], "zzzz"])
    return parts, train.at[0, "id"], parts["val"].at[0, "id"], parts["test"].at[0, "id"]


def test_contamination_is_removed_from_val_and_test(tokenizer) -> None:
    parts, train_id, val_id, test_id = planted()
    examples, report = build_sft_data(SftDataConfig(**ALL), LLM, tokenizer, parts=parts)
    assert val_id not in ids(examples["val"]) and test_id not in ids(examples["test"])
    assert len(examples["val"]) == len(parts["val"]) - 1 and len(examples["test"]) == len(parts["test"]) - 1
    found = report["contamination"]
    assert (found["val"]["exact"], found["val"]["near"], found["test"]["exact"], found["test"]["near"]) == (1, 0, 0, 1)
    assert found["val"]["examples"] == [{"id": val_id, "kind": "exact", "train_id": train_id}]
    assert found["test"]["examples"] == [{"id": test_id, "kind": "near"}]
    assert found["val"]["removed"] + found["test"]["removed"] == 2 and found["test"]["written"] == 0

    capped, _ = build_sft_data(SftDataConfig(**{**ALL, "max_val_samples": 5}), LLM, tokenizer, parts=parts)
    assert len(capped["val"]) == 5 and val_id not in ids(capped["val"])  # drawn from the clean rest


def test_contamination_blocks_naming_counts_and_an_example(tokenizer) -> None:
    parts, train_id, val_id, _ = planted()
    cfg = SftDataConfig(**ALL, contamination_action="block")
    with pytest.raises(DataError, match="contamination") as err:
        build_sft_data(cfg, LLM, tokenizer, parts=parts)
    message = str(err.value)
    assert "val: 1 exact and 0 near" in message and "test: 0 exact and 1 near" in message
    assert f"val example {val_id!r} is an exact copy of train example {train_id!r}" in message


def test_contamination_is_reported_and_kept(tokenizer) -> None:
    parts, _, val_id, test_id = planted()
    examples, report = build_sft_data(SftDataConfig(**ALL, contamination_action="report"), LLM, tokenizer, parts=parts)
    assert val_id in ids(examples["val"]) and test_id in ids(examples["test"])
    found = report["contamination"]
    assert found["val"]["written"] == 1 and found["test"]["written"] == 1 and found["val"]["removed"] == 0


# --------------------------------------------------------------------------- bring your own
def chats(n: int = 40) -> list[dict]:
    texts = make_clean(n, seed=3)["text"].tolist()
    return [
        {"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": f"Answer {i}: {t[:20]}"}]}
        for i, t in enumerate(texts)
    ]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def run_byo(tmp_path: Path, tokenizer, monkeypatch: pytest.MonkeyPatch):
    """Run the stage CLI's main in-process on a JSONL of records; returns the output paths."""
    monkeypatch.chdir(tmp_path)  # atomic_outputs stages in the working directory
    monkeypatch.setattr(sft_data, "load_tokenizer", lambda llm: tokenizer)
    outs = {"out": tmp_path / "data/sft", "report": tmp_path / "reports/sft.json", "metrics": tmp_path / "m/sft.json"}

    def run(records: list, max_length: int = 512, **sft: object) -> dict[str, Path]:
        data = write_jsonl(tmp_path / "chat.jsonl", records)
        params = write_params(
            tmp_path / "params.yaml", sft_data={**ALL, "path": str(data), **sft}, llm={"max_length": max_length}
        )
        sft_data.main(params=params, data_dir=tmp_path / "absent", **outs)
        return outs

    return run


def assert_nothing_written(tmp_path: Path) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.jsonl", "params.yaml"]  # no outputs, no staging


def turns(*pairs: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


BAD = {
    "bad role order": (turns(("user", "a"), ("user", "b")), "message 2: expected an assistant turn, got user"),
    "empty assistant": (turns(("user", "a"), ("assistant", " ")), "message 2: empty assistant content"),
    "unknown role": (turns(("tool", "a")), "message 1 has unknown role 'tool'"),
    "invalid JSON": ('{"messages": [', "invalid JSON"),
    "missing completion": ({"prompt": "a"}, "has 'prompt' but no 'completion'"),
    "missing messages": ({"text": "a"}, 'needs "messages"'),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_byo_record_is_refused_and_nothing_is_written(run_byo, tmp_path: Path, case: str) -> None:
    record, message = BAD[case]
    records = chats()
    records[3] = record
    with pytest.raises(DataError, match=re.escape(f"chat.jsonl: line 4: {message}")):
        run_byo(records)
    assert_nothing_written(tmp_path)


def test_a_byo_example_that_cannot_fit_max_length_is_refused(run_byo, tmp_path: Path) -> None:
    records = chats()
    records[5]["messages"][-1]["content"] = " ".join(["a very long answer"] * 200)
    with pytest.raises(DataError, match="'fits_max_length'.*1 of") as err:
        run_byo(records, max_length=256)
    assert "(record 6) (unencodable=too_long)" in str(err.value) and "exceeds max_length" in str(err.value)
    assert_nothing_written(tmp_path)


def test_too_many_examples_over_max_length_is_a_breach_but_one_is_shortened(run_byo, tmp_path: Path) -> None:
    records = chats()
    with pytest.raises(DataError, match="'length_within_max_length'"):
        run_byo(records, max_length=64)  # every ticket would be shortened (each still fits)
    assert_nothing_written(tmp_path)

    records[7]["messages"][0]["content"] *= 20  # one long ticket: shortened at tokenisation, the answer kept
    outs = run_byo(records, max_length=256)
    report = json.loads(outs["report"].read_text())
    assert sum(t["shortened"] for t in report["tokens"].values()) == 1
    assert json.loads(outs["metrics"].read_text())["shortened"] == 1


def test_byo_is_scrubbed_split_by_prompt_with_stable_ids(run_byo, tmp_path: Path) -> None:
    records = chats()
    records[0]["messages"][0]["content"] += " Mail me at jane.doe@example.com or call +1 415 555 0100."
    records[0]["messages"][1]["content"] += " We wrote to jane.doe@example.com."
    records[1:4] = [records[1]] * 3  # one prompt three times: one side of the split, ids still unique
    outs = run_byo(records, val_fraction=0.2, test_fraction=0.2)
    written = {k: read_examples(outs["out"] / f"{k}.jsonl") for k in SPLITS}
    everything = [e for k in SPLITS for e in written[k]]
    assert len(everything) == len(records) and len({e["id"] for e in everything}) == len(records)
    text = json.dumps(everything)
    assert "jane.doe@example.com" not in text and "555 0100" not in text and "<EMAIL>" in text and "<PHONE>" in text
    assert json.loads(outs["report"].read_text())["pii_replacements"] == 3
    dup = [k for k in SPLITS for e in written[k] if e["messages"] == records[1]["messages"]]
    assert len(dup) == 3 and len(set(dup)) == 1
    assert all(8 >= len(written[k]) >= 6 for k in ("val", "test"))

    again = run_byo(records, val_fraction=0.2, test_fraction=0.2)
    assert read_examples(again["out"] / "test.jsonl") == written["test"]  # seeded: the same split, the same ids

    run_byo(records, scrub_pii=False)
    assert "jane.doe@example.com" in "".join((outs["out"] / f"{k}.jsonl").read_text() for k in SPLITS)


def test_split_by_prompt_groups_copies_and_refuses_too_few() -> None:
    prompts = [f"prompt number {i}" for i in range(20)] + ["Same prompt!"] * 5 + ["same  PROMPT"] * 2
    sides = split_by_prompt(prompts, 0.2, 0.2, seed=0)
    assert len(set(sides[20:])) == 1 and set(sides) == set(SPLITS)
    with pytest.raises(DataError, match="too few to split"):
        split_by_prompt(["a", "a", "b"], 0.1, 0.1, seed=0)


# --------------------------------------------------------------------------- the checks themselves
def test_checks_name_every_breach_with_counts(tokenizer) -> None:
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    frame = {
        "train": pd.DataFrame(
            {
                "id": ["a", "b", "b"],
                "messages": pd.Series(
                    [good, [good[0], good[0], good[1]], [good[0], {"role": "assistant", "content": ""}]], dtype=object
                ),
            }
        ),
        "val": pd.DataFrame({"id": ["c"], "messages": pd.Series([good], dtype=object)}),
        "test": pd.DataFrame({"id": pd.Series([], dtype=object), "messages": pd.Series([], dtype=object)}),
    }
    with pytest.raises(DataError) as err:
        check_examples(example_frame(frame, tokenizer, 64), 64)
    message = str(err.value)
    assert message.startswith("sft_data checks failed (4 of 6)")
    assert "'examples' (every split has examples): no examples in ['test']" in message
    assert "'unique_ids'" in message and "'role_order'" in message and "'assistant_non_empty'" in message
    assert "1 of 4 examples (train 1), e.g. ['b (roles=user,user,assistant)']" in message


def test_read_examples_refuses_missing_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run the sft_data stage"):
        read_examples(tmp_path / "train.jsonl")
    bad = write_jsonl(tmp_path / "val.jsonl", [{"id": "x", "messages": [{"role": "user", "content": "a"}]}])
    with pytest.raises(DataError, match="val.jsonl: line 1: the last message must be an assistant turn"):
        read_examples(bad)
