"""Scoring a generative model's answers against the reference answers: pure functions, no model.

**Triage references** (every reference parses with :func:`~pipelines.llm.chat_data.parse_triage`):

- ``json_valid_rate``: the share of answers that parse as a triage answer;
- ``category_accuracy``, ``priority_accuracy``, ``product_exact_match``, ``order_id_exact_match``: per field,
  over *all* rows (an invalid answer scores 0 on every field). Values are compared after ``strip()``;
  category, priority and product also case-insensitively; order_id exactly. For the nullable fields
  (product, order_id) JSON null, ``""``, ``"null"`` and ``"none"`` all mean "none", and none = none is a match;
- ``mean_field_score``: the mean of those four;
- ``summary_rouge_l``: ROUGE-L F1 of the answer's summary against the reference's (0 for an invalid answer).

**Other references** (your own chat data, where the last turn is any text): fields cannot be graded, so
``exact_match`` (after ``strip()``) and ``rouge_l`` of the whole answer are reported, and
``json_valid_rate`` / ``mean_field_score`` are None with a ``reason``.

:func:`evaluate_system` generates and scores one system (a loaded model, optionally with few-shot turns) on
the test examples: the stage compares systems with it, and the registration gate scores a registered
champion on the same rows with it.

ROUGE-L is written here rather than taken from ``rouge-score`` (not a dependency; it needs nltk and absl):
the F1 of the longest common subsequence of word tokens, ``2PR/(P+R)`` with ``P = LCS/len(answer)`` and
``R = LCS/len(reference)``, tokens being runs of letters and digits of the lowercased text. On ASCII text
this is ``rouge_score.rouge_scorer.RougeScorer(["rougeL"]).score(ref, answer)["rougeL"].fmeasure``
(no stemming); unlike it, non-ASCII letters are kept. Empty on either side scores 0, as there.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pipelines.io import file_sha256  # noqa: F401 (re-exported: the adapter the scores belong to)
from pipelines.llm.chat_data import NULLABLE_FIELDS, PRIORITIES, Conversation, parse_triage, split_answer

if TYPE_CHECKING:  # a loaded model and the stage's settings are only types here
    from pipelines.config import LlmEvalConfig
    from pipelines.llm.generation import Generator

Example = Mapping  # {"id": str, "messages": [...]}: a record of data/sft/<split>.jsonl

GRADED_FIELDS = ("category", "priority", "product", "order_id")
FIELD_METRICS = {
    "category": "category_accuracy",
    "priority": "priority_accuracy",
    "product": "product_exact_match",
    "order_id": "order_id_exact_match",
}
CASE_INSENSITIVE = ("category", "priority", "product")
NULL_STRINGS = ("", "null", "none")
INVALID = "(invalid)"  # the predicted value of an answer that is not a triage answer, in confusions
NOT_TRIAGE = "the references are not triage JSON (your own chat data): fields cannot be graded"
_TOKEN = re.compile(r"[^\W_]+")


# --------------------------------------------------------------------------- ROUGE-L
def tokens(text: str) -> list[str]:
    """Lowercased runs of letters and digits (rouge-score's tokenizer, without dropping non-ASCII letters)."""
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (one DP row, O(len(a)·len(b)))."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1 of ``answer`` against ``reference`` (word tokens, lowercased; 0 when either is empty)."""
    a, r = tokens(answer), tokens(reference)
    lcs = lcs_length(a, r) if a and r else 0
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(a), lcs / len(r)
    return 2 * p * rec / (p + rec)


# --------------------------------------------------------------------------- field comparison
def normalise(field: str, value: str | None) -> str | None:
    """The value compared for a field: stripped, lowercased where case does not matter, null-like → None."""
    if value is None:
        return None
    value = value.strip()
    if field in NULLABLE_FIELDS and value.lower() in NULL_STRINGS:
        return None
    return value.lower() if field in CASE_INSENSITIVE else value


def field_matches(answer: dict | None, reference: dict) -> dict[str, bool]:
    """Per graded field: does the parsed answer (None: invalid) give the reference's value?"""
    if answer is None:
        return dict.fromkeys(GRADED_FIELDS, False)
    return {f: normalise(f, answer[f]) == normalise(f, reference[f]) for f in GRADED_FIELDS}


def is_triage(references: Sequence[str]) -> bool:
    """True when every reference is a triage answer (so fields can be graded)."""
    return bool(references) and all(parse_triage(r) is not None for r in references)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def score_answers(answers: Sequence[str], references: Sequence[str]) -> dict:
    """The scores of ``answers`` against ``references`` (same order, same length); see the module docstring."""
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers for {len(references)} references")
    n = len(references)
    if not is_triage(references):
        return {
            "n": n,
            "json_valid_rate": None,
            "mean_field_score": None,
            "reason": NOT_TRIAGE,
            "exact_match": _mean([float(a.strip() == r.strip()) for a, r in zip(answers, references)]),
            "rouge_l": _mean([rouge_l(a, r) for a, r in zip(answers, references)]),
        }
    parsed = [parse_triage(a) for a in answers]
    refs = [parse_triage(r) for r in references]
    matches = [field_matches(p, r) for p, r in zip(parsed, refs)]
    out: dict = {"n": n, "json_valid_rate": _mean([float(p is not None) for p in parsed])}
    for field, metric in FIELD_METRICS.items():
        out[metric] = _mean([float(m[field]) for m in matches])
    out["mean_field_score"] = _mean([out[m] for m in FIELD_METRICS.values()])
    out["summary_rouge_l"] = _mean(
        [rouge_l(p["summary"], r["summary"]) if p is not None else 0.0 for p, r in zip(parsed, refs)]
    )
    return out


# --------------------------------------------------------------------------- what went wrong
def field_pairs(answers: Sequence[str], references: Sequence[str], field: str) -> tuple[list[str], list[str]]:
    """(actual, predicted) values of one field per row; an invalid answer predicts :data:`INVALID`, null is "null"."""

    def shown(value: str | None) -> str:
        return "null" if value is None else value

    actual, predicted = [], []
    for a, r in zip(answers, references):
        ref, ans = parse_triage(r), parse_triage(a)
        if ref is None:
            continue
        actual.append(shown(normalise(field, ref[field])))
        predicted.append(INVALID if ans is None else shown(normalise(field, ans[field])))
    return actual, predicted


def field_confusion(answers: Sequence[str], references: Sequence[str], field: str) -> dict[str, dict[str, int]]:
    """``{actual: {predicted: count}}`` for one field (a crosstab as a dict; labels sorted, priorities in order)."""
    actual, predicted = field_pairs(answers, references, field)
    order = {p: i for i, p in enumerate(PRIORITIES)} if field == "priority" else {}
    labels = sorted(set(actual) | set(predicted), key=lambda v: (v == INVALID, order.get(v, len(order)), v))
    table = {a: dict.fromkeys(labels, 0) for a in labels if a in set(actual)}
    for a, p in zip(actual, predicted):
        table[a][p] += 1
    return table


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def worst_examples(
    answers: Sequence[str],
    references: Sequence[str],
    ids: Sequence[str] | None = None,
    k: int = 5,
    width: int = 240,
) -> list[dict]:
    """Up to ``k`` of the worst answers (invalid ones first, then the most wrong fields), texts clipped to ``width``."""
    ids = list(ids) if ids is not None else [str(i) for i in range(len(answers))]
    triage = is_triage(references)
    rows = []  # (goodness: -1 invalid, else the share of fields right / ROUGE-L; row; what is wrong)
    for i, (a, r) in enumerate(zip(answers, references)):
        if triage:
            parsed = parse_triage(a)
            wrong = [f for f, ok in field_matches(parsed, parse_triage(r)).items() if not ok]
            goodness = -1.0 if parsed is None else 1 - len(wrong) / len(GRADED_FIELDS)
            problem = "not a valid triage answer" if parsed is None else f"wrong: {', '.join(wrong)}"
        else:
            goodness = rouge_l(a, r)
            problem = f"ROUGE-L {goodness:.2f}"
        if goodness < 1.0:
            rows.append((goodness, i, problem))
    rows.sort()
    return [
        {"id": ids[i], "problem": problem, "answer": _clip(answers[i], width), "reference": _clip(references[i], width)}
        for _, i, problem in rows[:k]
    ]


# --------------------------------------------------------------------------- what was scored
def ids_sha256(ids: Sequence[str]) -> str:
    """sha256 hex digest of the ordered row ids joined by newlines (the rows the scores belong to)."""
    return hashlib.sha256("\n".join(map(str, ids)).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- prompts and one system's run
FEW_SHOT_SEED = 0


def user_chars(example: Example) -> int:
    return sum(len(m["content"]) for m in example["messages"] if m["role"] == "user")


def pick_shots(train: Sequence[Example], k: int, seed: int = FEW_SHOT_SEED) -> list[Example]:
    """``k`` train examples for few-shot prompts: drawn (seeded) from the shortest quarter, one per category
    while categories last (the category of a triage answer; any example for other data)."""
    pool = sorted(train, key=lambda e: (user_chars(e), str(e["id"])))[: max(4 * k, len(train) // 4)]
    random.Random(seed).shuffle(pool)
    chosen, categories = [], set()
    for e in pool:
        parsed = parse_triage(e["messages"][-1]["content"])
        category = parsed["category"].strip().lower() if parsed else None
        if category is None or category not in categories:
            chosen.append(e)
            categories.add(category)
        if len(chosen) == k:
            return chosen
    return chosen + [e for e in pool if e not in chosen][: k - len(chosen)]


def few_shot_prompt(prompt: Conversation, shots: Sequence[Example]) -> Conversation:
    """The prompt's system turn, each shot's turns as user/assistant pairs, then the prompt's own turns."""
    system = [m for m in prompt if m["role"] == "system"]
    turns = [m for shot in shots for m in shot["messages"] if m["role"] != "system"]
    return [*system, *turns, *(m for m in prompt if m["role"] != "system")]


def prompts_and_references(
    examples: Sequence[Example], shots: Sequence[Example] = ()
) -> tuple[list[Conversation], list[str]]:
    """Each example's messages before its last (assistant) turn, with ``shots`` in front; and that turn's text."""
    pairs = [split_answer(list(e["messages"])) for e in examples]
    return [few_shot_prompt(p, shots) if shots else p for p, _ in pairs], [r for _, r in pairs]


def evaluate_system(
    gen: Generator,
    examples: Sequence[Example],
    cfg: LlmEvalConfig,
    *,
    shots: Sequence[Example] = (),
    desc: str | None = None,
) -> tuple[dict, list[str]]:
    """Greedy answers of one loaded model (``gen``, :func:`pipelines.llm.generation.load_generator`) to the
    examples' prompts (``shots`` in front: few-shot) and their :func:`score_answers` scores, plus ``seconds``,
    ``new_tokens`` and ``tokens_per_s`` of the generation; returns ``(scores, answers)`` in the examples' order."""
    from pipelines.llm.generation import generate

    prompts, references = prompts_and_references(examples, shots)
    # a triage answer is one JSON object: generation ends with it (a base model would talk on to the cap)
    out = generate(gen, prompts, cfg.max_new_tokens, cfg.batch_size, desc=desc, stop_after_json=is_triage(references))
    scores = score_answers(out.texts, references)
    scores |= {
        "seconds": round(out.seconds, 2),
        "new_tokens": out.new_tokens,
        "tokens_per_s": round(out.tokens_per_s, 1),
    }
    return scores, out.texts
