"""The triage task as chat examples, bring-your-own chat files, and reading a model's answer back.

- **Prompt**: a system prompt (``llm.system_prompt``, with ``{categories}`` filled in) and one user turn
  holding the ticket's ``text`` (subject and body, merged and PII-scrubbed by ingest).
- **Target**: one compact JSON object, keys always in :data:`TRIAGE_FIELDS` order, from a row's ground
  truth (``label`` is the category; ``priority``, ``product``, ``order_id``, ``summary``; product and
  order_id may be null).
- **Bring your own**: JSONL in the chat format of OpenAI fine-tuning files and TRL
  (``{"messages": [{"role", "content"}, ...]}``) or ``{"prompt", "completion"}`` pairs (strings or
  message lists), normalised to messages. The first bad record stops the read with one
  :class:`DataError` naming the file, the line and the problem.
- :func:`parse_triage` turns generated text back into the five fields (None when it is not a valid answer).

Pure functions, no model or tokenizer here: the SFT tokenisation is :mod:`pipelines.llm.sft`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from pipelines.errors import DataError

Message = dict[str, str]
Conversation = list[Message]

ROLES = ("system", "user", "assistant")
TRIAGE_FIELDS = ("category", "priority", "product", "order_id", "summary")
NULLABLE_FIELDS = ("product", "order_id")
PRIORITIES = ("low", "normal", "high", "urgent")
# answer field -> the ground-truth column of a canonical row (the category is the classifier's label)
TRUTH_COLUMNS = {
    "category": "label",
    "priority": "priority",
    "product": "product",
    "order_id": "order_id",
    "summary": "summary",
}
USER_TEMPLATE = "Ticket:\n{text}"


# --------------------------------------------------------------------------- the triage task
def system_prompt(template: str, categories: Sequence[str]) -> str:
    """The system prompt with ``{categories}`` replaced by the label set (``a, b, c``); other braces are kept."""
    return template.replace("{categories}", ", ".join(categories))


def prompt_messages(text: str, system: str) -> Conversation:
    """What the model sees for one ticket: the system prompt and the ticket as the user turn."""
    return [{"role": "system", "content": system}, {"role": "user", "content": USER_TEMPLATE.format(text=text)}]


def _is_null(value: object) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def triage_answer(fields: Mapping[str, object]) -> str:
    """The assistant target: compact JSON, keys in :data:`TRIAGE_FIELDS` order, null product/order_id kept."""
    answer = {k: None if _is_null(fields.get(k)) else str(fields[k]) for k in TRIAGE_FIELDS}
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":"))


def triage_conversations(df: pd.DataFrame, system: str) -> list[Conversation]:
    """One chat example per row (``text`` + the ground-truth columns); refuses missing columns or empty truth."""
    needed = ["text", *TRUTH_COLUMNS.values()]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"triage examples need the columns {missing} (the ticket text and its ground truth)")
    for col in ["text", *(TRUTH_COLUMNS[f] for f in TRIAGE_FIELDS if f not in NULLABLE_FIELDS)]:
        empty = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if empty.any():
            rows = df.index[empty][:5].tolist()
            raise DataError(f"triage examples: column {col!r} is empty in {int(empty.sum())} row(s), e.g. {rows}")
    conversations = []
    for row in df[needed].to_dict("records"):
        answer = triage_answer({field: row[col] for field, col in TRUTH_COLUMNS.items()})
        conversations.append([*prompt_messages(str(row["text"]), system), {"role": "assistant", "content": answer}])
    return conversations


def split_answer(conversation: Conversation) -> tuple[Conversation, str]:
    """(the messages before the final assistant turn, that turn's content): prompt and reference for evaluation."""
    if not conversation or conversation[-1]["role"] != "assistant":
        raise ValueError("the conversation does not end with an assistant turn")
    return conversation[:-1], conversation[-1]["content"]


# --------------------------------------------------------------------------- reading answers back
_DECODER = json.JSONDecoder()


def first_json_object(text: str) -> dict | None:
    """The first ``{...}`` in ``text`` that parses as a JSON object (code fences and chatter around it are fine)."""
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = _DECODER.raw_decode(text, start)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            return obj
        start = text.find("{", start + 1)
    return None


def parse_triage(text: str) -> dict | None:
    """The five triage fields from a model's answer, or None when it is not a valid answer.

    Valid: the first JSON object in the text has every key of :data:`TRIAGE_FIELDS`, string values
    (product and order_id may also be null; an integer order_id is read as its digits). Extra keys are
    dropped. Values are not checked against the label set or :data:`PRIORITIES`: a wrong value is a
    field error for evaluation to score, not an invalid answer.
    """
    obj = first_json_object(text)
    if obj is None or any(k not in obj for k in TRIAGE_FIELDS):
        return None
    out: dict[str, str | None] = {}
    for key in TRIAGE_FIELDS:
        value = obj[key]
        if isinstance(value, str):
            out[key] = value
        elif key in NULLABLE_FIELDS and value is None:
            out[key] = None
        elif key == "order_id" and isinstance(value, int) and not isinstance(value, bool):
            out[key] = str(value)
        else:
            return None
    return out


# --------------------------------------------------------------------------- bring your own chat data
def conversation_problem(messages: object) -> str | None:
    """What is wrong with a message list (None: usable for SFT).

    Every message is ``{"role", "content"}`` with a known role and string content; a system message only
    first; then user and assistant alternate, starting with user and ending with a non-empty assistant turn.
    """
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of {role, content} objects"
    expect = "user"
    for i, msg in enumerate(messages, 1):
        if not isinstance(msg, dict):
            return f"message {i} is not an object"
        role = msg.get("role")
        if role not in ROLES:
            return f"message {i} has unknown role {role!r} (expected one of {', '.join(ROLES)})"
        if "content" not in msg:
            return f"message {i} ({role}) has no 'content'"
        content = msg["content"]
        if not isinstance(content, str):
            return f"message {i} ({role}): content must be a string, got {type(content).__name__}"
        if role == "system":
            if i != 1:
                return f"message {i}: a system message may only come first"
            continue
        if role != expect:
            article = "an" if expect == "assistant" else "a"
            return f"message {i}: expected {article} {expect} turn, got {role} (user and assistant turns alternate)"
        if role == "assistant" and not content.strip():
            return f"message {i}: empty assistant content"
        expect = "assistant" if role == "user" else "user"
    if messages[-1].get("role") != "assistant":
        return f"the last message must be an assistant turn, got {messages[-1].get('role')}"
    return None


def _as_messages(value: object, role: str, key: str) -> list | str:
    """A prompt/completion value as a message list, or the problem with it."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return value
    return f"{key!r} must be a string or a list of messages, got {type(value).__name__}"


def record_messages(record: object) -> Conversation | str:
    """One JSONL record normalised to its message list, or a description of what is wrong with it."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    has_pc = [k for k in ("prompt", "completion") if k in record]
    if "messages" in record:
        if has_pc:
            return "has both 'messages' and 'prompt'/'completion': use one format per record"
        messages = record["messages"]
    elif len(has_pc) == 2:
        prompt = _as_messages(record["prompt"], "user", "prompt")
        completion = _as_messages(record["completion"], "assistant", "completion")
        for part in (prompt, completion):
            if isinstance(part, str):
                return part
        messages = [*prompt, *completion]
    elif has_pc:
        other = "completion" if has_pc == ["prompt"] else "prompt"
        return f"has {has_pc[0]!r} but no {other!r}"
    else:
        return 'needs "messages" (chat format) or "prompt" and "completion"'
    problem = conversation_problem(messages)
    if problem:
        return problem
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_chat_jsonl(path: str | Path) -> list[Conversation]:
    """Every record of a chat JSONL file as a message list; the first bad record raises one :class:`DataError`.

    Blank lines are skipped; keys other than the ones read (ids, metadata, ``weight``) are ignored.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the chat file ({err.strerror})") from None
    conversations = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        try:
            text = line.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path}: line {lineno}: not UTF-8 text") from None
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError as err:
            raise DataError(f"{path}: line {lineno}: invalid JSON ({err})") from None
        messages = record_messages(record)
        if isinstance(messages, str):
            raise DataError(f"{path}: line {lineno}: {messages}")
        conversations.append(messages)
    if not conversations:
        raise DataError(f"{path}: no chat records (expected one JSON object per line)")
    return conversations


# --------------------------------------------------------------------------- the stages' example files
def examples_path(out_dir: str | Path, split: str) -> Path:
    """``<out_dir>/<split>.jsonl``."""
    return Path(out_dir) / f"{split}.jsonl"


def read_examples(path: str | Path) -> list[dict]:
    """The ``{"id", "messages"}`` records of one split file written by the sft_data stage; a missing or bad file is a
    :class:`DataError` naming it (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist: run the sft_data stage first (dvc repro sft_data)")
    records = []
    for lineno, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise DataError(f"{path}: line {lineno}: invalid JSON ({err})") from None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise DataError(f'{path}: line {lineno}: expected {{"id": <string>, "messages": [...]}}')
        problem = conversation_problem(record.get("messages"))
        if problem:
            raise DataError(f"{path}: line {lineno}: {problem}")
        records.append({"id": record["id"], "messages": record["messages"]})
    if not records:
        raise DataError(f"{path}: no examples; re-run the sft_data stage")
    return records
