"""JSON-schema constrained decoding: a tiny random Llama (which writes garbage unconstrained) answers valid JSON.

Also: the triage schema matches the answers the SFT data teaches, a schema that is not JSON Schema is refused at
``add_request`` with the reason, and the logit mask keeps exactly the tokens the grammar allows.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from pipelines.config import GENERATOR_LABELS
from pipelines.llm.chat_data import parse_triage, triage_answer
from pipelines.llm.engine import LLMEngine, SamplingParams
from pipelines.llm.structured import JSON_OBJECT_SCHEMA, StructuredDecoder, triage_schema

SMALL = {
    "type": "object",
    "properties": {
        "priority": {"type": "string", "enum": ["low", "normal", "high", "urgent"]},
        "escalate": {"type": "boolean"},
        "team": {"anyOf": [{"type": "string", "enum": ["billing", "tech"]}, {"type": "null"}]},
        "note": {"type": "string", "maxLength": 6},
    },
    "required": ["priority", "escalate", "team", "note"],
    "additionalProperties": False,
}


def run(engine: LLMEngine, prompt_ids: list[int], params: SamplingParams, rid: str = "a"):
    engine.add_request(rid, prompt_ids, params)
    events = []
    while engine.has_unfinished():
        events += [e for e in engine.step() if e.request_id == rid]
    return events


def chat_ids(tok, text: str) -> list[int]:
    rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return tok(rendered, add_special_tokens=False)["input_ids"]


def test_triage_schema_accepts_training_answers_and_rejects_wrong_values(make_truth):
    schema = triage_schema(list(GENERATOR_LABELS))
    jsonschema.Draft202012Validator.check_schema(schema)
    good = json.loads(triage_answer(make_truth()))
    jsonschema.validate(good, schema)
    jsonschema.validate(json.loads(triage_answer(make_truth(product=None, order_id=None))), schema)
    for bad in ({**good, "priority": "asap"}, {**good, "category": "weather"}, {k: good[k] for k in list(good)[:4]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    with pytest.raises(ValueError):
        triage_schema([])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_random_model_answers_valid_json_for_the_schema(tokenizer, tiny_lm, temperature):
    engine = LLMEngine(tiny_lm, tokenizer)
    ids = chat_ids(tokenizer, "Triage: my invoice is wrong")
    free = run(engine, ids, SamplingParams(max_tokens=40, temperature=temperature, seed=1))
    with pytest.raises(ValueError):  # unconstrained, the random model's text is no JSON
        json.loads("".join(e.text for e in free))
    for seed in range(3):
        params = SamplingParams(max_tokens=80, temperature=temperature, seed=seed, json_schema=SMALL)
        events = run(engine, ids, params, rid=f"s{seed}")
        answer = json.loads("".join(e.text for e in events))
        jsonschema.validate(answer, SMALL)
        assert events[-1].finish_reason == "stop"  # the JSON completed: the sequence ends at once


def test_constrained_and_free_rows_share_a_batch(tokenizer, tiny_lm):
    engine = LLMEngine(tiny_lm, tokenizer)
    ids = chat_ids(tokenizer, "Triage: the app crashes")
    alone = "".join(e.text for e in run(engine, ids, SamplingParams(max_tokens=30)))
    engine.add_request("free", ids, SamplingParams(max_tokens=30))
    engine.add_request("json", ids, SamplingParams(max_tokens=80, json_schema=SMALL))
    texts = {"free": "", "json": ""}
    while engine.has_unfinished():
        for e in engine.step():
            texts[e.request_id] += e.text
    assert texts["free"] == alone
    jsonschema.validate(json.loads(texts["json"]), SMALL)


def test_triage_schema_answer_parses_as_triage(tokenizer, tiny_lm):
    schema = triage_schema(list(GENERATOR_LABELS))
    schema["properties"]["summary"]["maxLength"] = 12  # a random model never closes an unbounded string
    for field in ("product", "order_id"):
        schema["properties"][field] = {"type": "null"}
    events = run(
        LLMEngine(tiny_lm, tokenizer), chat_ids(tokenizer, "Ticket: refund"), SamplingParams(120, json_schema=schema)
    )
    text = "".join(e.text for e in events)
    jsonschema.validate(json.loads(text), schema)
    assert parse_triage(text) is not None


@pytest.mark.parametrize(
    "schema, reason",
    [
        ({"type": "strnig"}, "invalid JSON schema"),
        ({"type": "object", "properties": 5}, "invalid JSON schema"),
        ({"type": "object", "required": "name"}, "invalid JSON schema"),
    ],
)
def test_an_invalid_schema_is_refused_at_add_request(tokenizer, tiny_lm, schema, reason):
    engine = LLMEngine(tiny_lm, tokenizer)
    with pytest.raises(ValueError, match=reason):
        engine.add_request("a", chat_ids(tokenizer, "hi"), SamplingParams(max_tokens=5, json_schema=schema))
    assert not engine.has_unfinished()


def test_mask_keeps_exactly_the_allowed_tokens(tokenizer):
    decoder = StructuredDecoder(tokenizer, [tokenizer.eos_token_id])
    matcher = decoder.compile({"type": "object", "properties": {"a": {"enum": ["x"]}}, "required": ["a"]})
    logits = torch.zeros(3, len(tokenizer) + 5)
    decoder.mask_logits(logits, [(1, matcher)])
    assert torch.isfinite(logits[[0, 2]]).all()  # rows without a matcher are untouched
    allowed = torch.isfinite(logits[1]).nonzero().flatten().tolist()
    assert allowed and all(tokenizer.decode([t]).lstrip().startswith("{") for t in allowed)
    assert not torch.isfinite(logits[1, len(tokenizer) :]).any()


def test_json_object_mode_compiles(tokenizer):
    matcher = StructuredDecoder(tokenizer).compile(JSON_OBJECT_SCHEMA)
    assert not matcher.done and matcher.error is None
