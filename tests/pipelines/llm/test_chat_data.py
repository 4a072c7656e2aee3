"""The triage prompt and target, bring-your-own chat JSONL (every refusal), and parse_triage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.errors import DataError
from pipelines.llm.chat_data import (
    TRIAGE_FIELDS,
    conversation_problem,
    parse_triage,
    prompt_messages,
    read_chat_jsonl,
    split_answer,
    system_prompt,
    triage_answer,
    triage_conversations,
)


# --------------------------------------------------------------------------- the triage task
def test_answer_is_compact_json_in_a_fixed_key_order(make_truth) -> None:
    answer = triage_answer(make_truth())
    assert answer == (
        '{"category":"billing","priority":"high","product":"Pro plan","order_id":null,'
        '"summary":"The customer was charged twice this month."}'
    )
    shuffled = dict(reversed(list(make_truth().items())))
    assert triage_answer(shuffled) == answer


def test_answer_nulls_and_non_string_values(make_truth) -> None:
    answer = json.loads(triage_answer(make_truth(product=np.nan, order_id=48213)))
    assert answer["product"] is None and answer["order_id"] == "48213"
    assert json.loads(triage_answer(make_truth(product=pd.NA)))["product"] is None
    assert "é" in triage_answer(make_truth(summary="Facture payée deux fois."))  # not \\u-escaped


def test_system_prompt_fills_categories_and_keeps_other_braces() -> None:
    assert system_prompt('Pick {categories}; answer {"a": 1}', ["x", "y"]) == 'Pick x, y; answer {"a": 1}'


def test_conversations_from_rows(system: str) -> None:
    df = pd.DataFrame(
        {
            "text": ["Invoice question\nCharged twice.", "Login broken"],
            "label": ["billing", "account_access"],
            "priority": ["high", "urgent"],
            "product": ["Pro plan", None],
            "order_id": [None, "A-1"],
            "summary": ["Charged twice.", "Cannot log in."],
        }
    )
    convs = triage_conversations(df, system)
    assert [m["role"] for m in convs[0]] == ["system", "user", "assistant"]
    assert convs[0][0]["content"] == system
    assert convs[0][1]["content"] == "Ticket:\nInvoice question\nCharged twice."
    assert convs[1][:2] == prompt_messages("Login broken", system)
    assert json.loads(convs[1][2]["content"]) == {
        "category": "account_access",
        "priority": "urgent",
        "product": None,
        "order_id": "A-1",
        "summary": "Cannot log in.",
    }
    prompt, reference = split_answer(convs[1])
    assert prompt == convs[1][:2] and reference == convs[1][2]["content"]


def test_conversations_refuse_missing_columns_and_empty_truth(system: str) -> None:
    df = pd.DataFrame({"text": ["a"], "label": ["billing"], "priority": ["low"], "summary": ["s"]})
    with pytest.raises(DataError, match=r"\['product', 'order_id'\]"):
        triage_conversations(df, system)
    df = df.assign(product=None, order_id=None, summary=["  "])
    with pytest.raises(DataError, match="'summary' is empty in 1 row"):
        triage_conversations(df, system)


# --------------------------------------------------------------------------- parse_triage
VALID = {"category": "billing", "priority": "high", "product": None, "order_id": "A-1", "summary": "Twice."}


def test_parse_round_trips_the_target(make_truth) -> None:
    assert parse_triage(triage_answer(make_truth())) == {k: make_truth()[k] for k in TRIAGE_FIELDS}


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(VALID),
        "Sure! Here is the triage:\n```json\n" + json.dumps(VALID, indent=2) + "\n```\nAnything else?",
        "{not json} then " + json.dumps(VALID),  # the first *parsable* object
        json.dumps({**VALID, "confidence": 0.9}),  # extra keys dropped
        json.dumps(VALID) + ' {"category": "refund"}',  # the first object wins
    ],
)
def test_parse_valid_answers(text: str) -> None:
    assert parse_triage(text) == VALID


def test_parse_reads_an_integer_order_id_as_its_digits() -> None:
    assert parse_triage(json.dumps({**VALID, "order_id": 48213}))["order_id"] == "48213"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "billing, high priority",
        '{"category": "billing", "priority": "high"',  # cut off
        "{'category': 'billing'}",  # not JSON
        json.dumps({k: v for k, v in VALID.items() if k != "summary"}),  # a key missing
        json.dumps({**VALID, "category": None}),  # only product/order_id may be null
        json.dumps({**VALID, "priority": 3}),
        json.dumps({**VALID, "product": ["a"]}),
        json.dumps({**VALID, "order_id": True}),
    ],
)
def test_parse_invalid_answers_are_none(text: str) -> None:
    assert parse_triage(text) is None


# --------------------------------------------------------------------------- bring your own JSONL
def write_jsonl(path: Path, *lines: object) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def test_reads_chat_and_prompt_completion_records(tmp_path: Path) -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "weight": 1},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Bye!"},
        ],
        "id": "x1",
    }
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        chat,
        "",
        {"prompt": "2+2?", "completion": "4"},
        {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}], "completion": "A"},
        {"prompt": "Q", "completion": [{"role": "assistant", "content": "A"}]},
    )
    convs = read_chat_jsonl(path)
    assert len(convs) == 4
    assert convs[0] == [{"role": m["role"], "content": m["content"]} for m in chat["messages"]]
    assert convs[1] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert [m["role"] for m in convs[2]] == ["system", "user", "assistant"]
    assert convs[3] == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


def test_a_byte_order_mark_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "q", "completion": "a"}).encode() + b"\n")
    assert read_chat_jsonl(path) == [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]


def msgs(*pairs: tuple[str, object]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


GOOD = msgs(("user", "Hi"), ("assistant", "Hello"))
REFUSALS = {
    "invalid_json": ('{"messages": [', "invalid JSON"),
    "not_an_object": ("[1, 2]", "expected a JSON object, got list"),
    "neither_format": ({"text": "hi", "label": "x"}, 'needs "messages" (chat format) or "prompt" and "completion"'),
    "both_formats": ({**GOOD, "prompt": "q", "completion": "a"}, "both 'messages' and 'prompt'/'completion'"),
    "prompt_without_completion": ({"prompt": "q"}, "has 'prompt' but no 'completion'"),
    "completion_without_prompt": ({"completion": "a"}, "has 'completion' but no 'prompt'"),
    "prompt_wrong_type": ({"prompt": 3, "completion": "a"}, "'prompt' must be a string or a list of messages"),
    "messages_not_a_list": ({"messages": "hi"}, "'messages' must be a non-empty list"),
    "messages_empty": ({"messages": []}, "'messages' must be a non-empty list"),
    "message_not_an_object": ({"messages": ["hi", "there"]}, "message 1 is not an object"),
    "unknown_role": (msgs(("user", "Hi"), ("bot", "Hello")), "message 2 has unknown role 'bot'"),
    "missing_role": ({"messages": [{"content": "Hi"}]}, "message 1 has unknown role None"),
    "missing_content": ({"messages": [{"role": "user"}]}, "message 1 (user) has no 'content'"),
    "non_string_content": (
        msgs(("user", [{"type": "text", "text": "Hi"}]), ("assistant", "Hello")),
        "message 1 (user): content must be a string, got list",
    ),
    "null_content": (msgs(("user", "Hi"), ("assistant", None)), "message 2 (assistant): content must be a string"),
    "system_not_first": (
        msgs(("user", "Hi"), ("system", "Be brief"), ("assistant", "Hello")),
        "message 2: a system message may only come first",
    ),
    "assistant_first": (
        msgs(
            ("assistant", "Hello"),
        ),
        "message 1: expected a user turn, got assistant",
    ),
    "two_users_in_a_row": (
        msgs(("user", "Hi"), ("user", "Again"), ("assistant", "Hello")),
        "message 2: expected an assistant turn, got user",
    ),
    "ends_with_user": (msgs(("user", "Hi"), ("assistant", "Hello"), ("user", "More?")), "last message must be"),
    "only_system": (
        msgs(
            ("system", "Be brief"),
        ),
        "the last message must be an assistant turn, got system",
    ),
    "empty_assistant": (msgs(("user", "Hi"), ("assistant", "  \n")), "message 2: empty assistant content"),
    "empty_completion": ({"prompt": "q", "completion": ""}, "message 2: empty assistant content"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_bad_record_is_refused_naming_file_line_and_problem(tmp_path: Path, case: str) -> None:
    bad, problem = REFUSALS[case]
    path = write_jsonl(tmp_path / "mine.jsonl", GOOD, "", bad, GOOD)
    with pytest.raises(DataError) as err:
        read_chat_jsonl(path)
    assert str(err.value).startswith(f"{path}: line 3: ")
    assert problem in str(err.value)


def test_not_utf8_missing_and_empty_files(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"prompt": "caf\xe9", "completion": "a"}'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.jsonl: line 2: not UTF-8 text"):
        read_chat_jsonl(path)
    with pytest.raises(DataError, match="nope.jsonl: cannot read"):
        read_chat_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="blank.jsonl: no chat records"):
        read_chat_jsonl(write_jsonl(tmp_path / "blank.jsonl", "", "  "))


def test_conversation_problem_accepts_a_valid_conversation() -> None:
    assert conversation_problem(GOOD["messages"]) is None
    assert conversation_problem([{"role": "system", "content": ""}, *GOOD["messages"]]) is None
