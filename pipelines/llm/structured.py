"""JSON-schema constrained decoding for the generation engine, with llguidance (the only module that imports it).

``response_format`` (``json_object`` or a JSON schema) must make the answer always parse and match the schema,
so at every decoding step the logits of the tokens that cannot continue a valid answer are set to ``-inf``
before sampling. The grammar work (schema → grammar → per-step token mask) is llguidance's: a Rust matcher
that computes the mask over the whole vocabulary in well under a millisecond for schemas like ours. What is
here is the glue: compile and check a schema (:class:`ValueError` with the reason when it is not a usable
JSON Schema), one :class:`JsonMatcher` per request, and :meth:`StructuredDecoder.mask_logits` for the rows of
a batch that are constrained (its own bitmask unpacking: llguidance's torch helper goes through
``torch.compile``, which needs a C++ toolchain at first call).

:func:`triage_schema` is the default answer schema of the triage task (the fields of
:mod:`pipelines.llm.chat_data`).
"""

from __future__ import annotations

from collections.abc import Sequence

import llguidance
import llguidance.hf
import torch
from llguidance.torch import fill_next_token_bitmask

from pipelines.llm.chat_data import PRIORITIES, TRIAGE_FIELDS

JSON_OBJECT_SCHEMA: dict = {"type": "object"}  # OpenAI's response_format {"type": "json_object"}
# compact JSON (``,`` and ``:`` with no whitespace), as the SFT targets are written: with flexible whitespace a
# weak model can pad between tokens until max_tokens (a schema's "x-guidance" options still override this)
COMPILE_OPTIONS = {"whitespace_flexible": False}


def triage_schema(categories: Sequence[str]) -> dict:
    """The triage answer as a JSON Schema: the five fields of ``TRIAGE_FIELDS``, all required, nothing else.

    ``category`` is one of ``categories``, ``priority`` one of ``PRIORITIES``; ``product`` and ``order_id``
    are a string or null; ``summary`` a non-empty string.
    """
    if not categories:
        raise ValueError("triage_schema needs at least one category")
    nullable = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    properties = {
        "category": {"type": "string", "enum": list(dict.fromkeys(categories))},
        "priority": {"type": "string", "enum": list(PRIORITIES)},
        "product": nullable,
        "order_id": nullable,
        "summary": {"type": "string", "minLength": 1},
    }
    return {
        "type": "object",
        "properties": {k: properties[k] for k in TRIAGE_FIELDS},
        "required": list(TRIAGE_FIELDS),
        "additionalProperties": False,
    }


class JsonMatcher:
    """One request's grammar state: which tokens may come next, and whether the answer is complete."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self._m = matcher

    def consume(self, token_id: int) -> bool:
        """Advance by the sampled token; False if it was not allowed (the matcher is then in an error state)."""
        return bool(self._m.consume_token(token_id))

    @property
    def done(self) -> bool:
        """The answer is complete: nothing but the end of the sequence may follow (or the matcher failed)."""
        return bool(self._m.is_stopped() or self._m.is_error())

    @property
    def error(self) -> str | None:
        return self._m.get_error() if self._m.is_error() else None


class StructuredDecoder:
    """Compiles schemas into matchers for one tokenizer and masks a batch's logits (build once per engine).

    Wrapping the tokenizer costs about 0.3 s for a 49k vocabulary, hence one instance per engine.
    """

    def __init__(self, tokenizer, eos_token_ids: Sequence[int] | None = None) -> None:
        eos = list(eos_token_ids) if eos_token_ids else None
        self._tok = llguidance.hf.from_tokenizer(tokenizer, eos_token=eos)
        self.vocab_size: int = self._tok.vocab_size
        self._words = (self.vocab_size + 31) // 32
        self._shifts = torch.arange(32, dtype=torch.int32)

    def compile(self, schema: dict) -> JsonMatcher:
        """A fresh matcher for ``schema``; :class:`ValueError` saying why when it is not a usable JSON Schema."""
        if not isinstance(schema, dict):
            raise ValueError(f"json_schema must be a JSON object (a dict), got {type(schema).__name__}")
        _check_json_schema(schema)
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=COMPILE_OPTIONS)
        except ValueError as e:
            raise ValueError(f"invalid JSON schema: {e}") from e
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self._tok)
        if is_error:
            raise ValueError(f"unsupported JSON schema: {'; '.join(messages)}")
        matcher = llguidance.LLMatcher(self._tok, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"unsupported JSON schema: {matcher.get_error()}")
        return JsonMatcher(matcher)

    def mask_logits(self, logits: torch.Tensor, rows: Sequence[tuple[int, JsonMatcher]]) -> None:
        """In place: ``logits[i]`` (a ``[batch, vocab]`` tensor) keeps only the tokens ``matcher`` allows next."""
        if not rows:
            return
        bitmask = torch.full((len(rows), self._words), -1, dtype=torch.int32)
        for j, (_, matcher) in enumerate(rows):
            fill_next_token_bitmask(matcher._m, bitmask, j)
        allowed = ((bitmask.unsqueeze(-1) >> self._shifts) & 1).reshape(len(rows), -1).bool()
        width = min(logits.shape[-1], self.vocab_size)
        index = torch.tensor([i for i, _ in rows], device=logits.device)
        block = logits.index_select(0, index)
        block[:, :width].masked_fill_(~allowed[:, :width].to(block.device), float("-inf"))
        block[:, width:] = float("-inf")  # model rows beyond the tokenizer's vocabulary are never text
        logits.index_copy_(0, index, block)


def _check_json_schema(schema: dict) -> None:
    """:class:`ValueError` when ``schema`` is not valid JSON Schema (its own metaschema), when jsonschema exists."""
    try:
        import jsonschema
    except ImportError:  # llguidance still rejects what it cannot compile
        return
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise ValueError(f"invalid JSON schema at {where}: {e.message}") from e
