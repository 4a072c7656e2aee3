"""The classical pipeline the generative model must beat: a classifier and a few rules, answering in triage JSON.

- **category**: the registered classifier champion's label (the caller predicts it; see
  :func:`pipelines.llm_eval.champion_classifier`);
- **priority**: a short list of general English cue phrases (whole words, any casing), checked from the
  calmest up so "not urgent" is low and a hedged "quite urgent" is high; failing those, cues learnt from train
  tickets (phrases of one to three words in at least :data:`MIN_CUE_SUPPORT` of them, nearly always
  (:data:`MIN_PRECISION`) of one level other than normal); no cue is normal;
- **product**: the product names seen in the *train* answers, found in the text by name (any casing, spaces
  optional) or by an alias learnt from train texts: a word or word pair that appears in at least
  :data:`MIN_ALIAS_SUPPORT` train tickets, nearly always (:data:`MIN_PRECISION`) ones about that product.
  The most often named product wins, the first named on a tie;
- **order_id**: a number after "order" (``order #482913``, ``order number 482 913``, ``my order 482913``,
  ``order ID 482913``, ``order no. 482913``) or after the canonical prefix (``ORD-482913``), written back in the
  canonical form learnt from the train answers (their common non-digit prefix, e.g. ``ORD-``);
- **summary**: the body's first sentence that says something (greeting and sign-off lines skipped), else the
  subject line.

The rules read the ticket's words, never the generator's tables: they are what a team would write by hand.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipelines.llm.chat_data import USER_TEMPLATE, Conversation, parse_triage, triage_answer
from pipelines.llm.evaluation import Example, prompts_and_references, score_answers

MIN_ALIAS_SUPPORT = 5  # train tickets a learnt product alias appears in
MIN_CUE_SUPPORT = 4  # train tickets a learnt priority cue appears in
MIN_PRECISION = 0.9  # share of those tickets that have that product / priority

# General English cue phrases per level, in the order they are checked (the first level with a cue wins):
# the calm ones first ("not urgent" is low), then hedged urgency ("quite urgent" is high). Train adds its own.
PRIORITY_CUES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("low", ("not urgent", "no rush", "no hurry", "low priority", "whenever", "can wait", "minor", "not a priority")),
    (
        "high",
        ("quite urgent", "fairly urgent", "high priority", "important", "prioritise", "prioritize", "quickly", "soon"),
    ),
    ("urgent", ("urgent", "asap", "emergency", "critical", "immediately", "blocked", "right now")),
)
DEFAULT_PRIORITY = "normal"

_WORD = re.compile(r"[^\W_]+")
_NUMBER = r"(\d{3,}(?:[ -]\d{3})*)(?!\d)"  # digits, maybe grouped by threes with a space or hyphen
_ORDER_WORDS = re.compile(
    r"\border\s*(?:(?:number|no\.?|nr\.?|id|ref\.?)\s*)?(?:[#:]\s*)?" + _NUMBER, re.IGNORECASE
)  # "order #1", "order number 1", "order ID 1", "order 1"; "my order 1" contains "order 1"
_SIGN_OFF = re.compile(r"^(regards|best|thanks|thank you|cheers|sincerely)\b", re.IGNORECASE)
_GREETING = re.compile(r"^(hi|hello|hey|dear|good (morning|afternoon|evening))\b[^.!?\n]{0,40},?$", re.IGNORECASE)


def ticket_text(prompt: Conversation) -> str:
    """The ticket in a triage prompt: the last user turn, without the ``Ticket:`` line the prompt adds."""
    content = next(m["content"] for m in reversed(prompt) if m["role"] == "user")
    return content.removeprefix(USER_TEMPLATE.split("{text}")[0])


# --------------------------------------------------------------------------- priority, summary
def priority_of(text: str, learnt: dict[str, list[str]] | None = None) -> str:
    """The first level of :data:`PRIORITY_CUES` with a listed cue in ``text``; failing that, the first with a
    ``learnt`` cue (listed cues are trusted first); else normal. Cues are whole words or phrases, any casing."""
    learnt = learnt or {}
    for source in ({level: cues for level, cues in PRIORITY_CUES}, learnt):
        for level, _ in PRIORITY_CUES:
            if any(re.search(rf"\b{re.escape(c)}\b", text, re.IGNORECASE) for c in source.get(level, ())):
                return level
    return DEFAULT_PRIORITY


def summary_of(text: str) -> str:
    """The first sentence of the body with at least four words (greeting and sign-off lines skipped), else the
    first line (the subject)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in lines[1:] or lines:
        if _GREETING.match(line) or _SIGN_OFF.match(line):
            continue
        for sentence in re.split(r"(?<=[.!?])\s+", line):
            if len(_WORD.findall(sentence)) >= 4:
                return sentence if sentence.endswith((".", "!", "?")) else sentence + "."
    return lines[0] if lines else ""


# --------------------------------------------------------------------------- what is learnt from train
@dataclass
class TriageRules:
    """What :func:`learn_rules` learns from train examples: product names and aliases, the order-id prefix and
    priority cues; :meth:`answer` applies them to one ticket."""

    products: dict[str, list[str]] = field(default_factory=dict)  # product -> lowercased phrases that name it
    order_prefix: str = ""  # the canonical order id is this prefix + the digits
    priority_cues: dict[str, list[str]] = field(default_factory=dict)  # level -> learnt cue phrases

    def product(self, text: str) -> str | None:
        """The product ``text`` names most often (its phrases, longest first, not overlapping; the name without
        spaces, "NimbusDrive", when no phrase is found), the first named on a tie; None when none is named."""
        lowered = text.lower()
        squeezed = re.sub(r"\s+", "", lowered)
        found: list[tuple[int, int, str]] = []
        for name, phrases in self.products.items():
            alternatives = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
            hits = [m.start() for m in re.finditer(rf"(?<!\w)(?:{alternatives})(?!\w)", lowered)] if phrases else []
            if not hits and name.lower().replace(" ", "") in squeezed:
                hits = [len(text)]
            if hits:
                found.append((-len(hits), min(hits), name))
        return min(found)[2] if found else None

    def order_id(self, text: str) -> str | None:
        """The order number in ``text`` in the canonical form, or None."""
        candidates = [_ORDER_WORDS.search(text)]
        if self.order_prefix.strip(" -#:"):
            prefix = re.escape(self.order_prefix.strip(" -#:"))
            candidates.append(re.search(rf"\b{prefix}\s*[-#:]?\s*{_NUMBER}", text, re.IGNORECASE))
        found = sorted((m.start(), m.group(1)) for m in candidates if m)
        return self.order_prefix + re.sub(r"\D", "", found[0][1]) if found else None

    def answer(self, text: str, category: str) -> str:
        """The triage answer (compact JSON, as the LM writes it) for one ticket and its predicted category."""
        fields = {
            "category": category,
            "priority": priority_of(text, self.priority_cues),
            "product": self.product(text),
            "order_id": self.order_id(text),
            "summary": summary_of(text),
        }
        return triage_answer(fields)


def _phrases(text: str, longest: int) -> set[str]:
    """Every run of one to ``longest`` words of the lowercased text."""
    words = _WORD.findall(text.lower())
    return {" ".join(words[i : i + n]) for n in range(1, longest + 1) for i in range(len(words) - n + 1)}


def _distinctive(groups: Sequence[tuple[str, set[str]]], min_support: int) -> dict[str, list[str]]:
    """Per group value: the phrases in at least ``min_support`` texts, nearly all (:data:`MIN_PRECISION`) of it."""
    seen: Counter[str] = Counter()
    per_value: dict[str, Counter[str]] = defaultdict(Counter)
    for value, phrases in groups:
        seen.update(phrases)
        per_value[value].update(phrases)
    return {
        value: sorted(
            (p for p, n in counts.items() if n >= min_support and n / seen[p] >= MIN_PRECISION),
            key=lambda p: (-len(p), p),
        )
        for value, counts in per_value.items()
    }


def learn_rules(texts: Sequence[str], references: Sequence[str]) -> TriageRules:
    """Product names and aliases, priority cues and the order-id format from train tickets and their answers."""
    pairs = [(t, a) for t, a in zip(texts, map(parse_triage, references)) if a is not None]

    def value(a: dict, key: str) -> str:
        return (a[key] or "").strip()

    aliases = _distinctive([(value(a, "product"), _phrases(t, 2)) for t, a in pairs], MIN_ALIAS_SUPPORT)
    products = {
        name: sorted({name.lower(), *found}, key=lambda p: (-len(p), p)) for name, found in aliases.items() if name
    }
    cues = _distinctive([(value(a, "priority").lower(), _phrases(t, 3)) for t, a in pairs], MIN_CUE_SUPPORT)
    priority_cues = {level: found for level, found in cues.items() if level != DEFAULT_PRIORITY and found}
    ids = [value(a, "order_id") for _, a in pairs if value(a, "order_id")]
    prefix = os.path.commonprefix([re.match(r"\D*", i).group(0) for i in ids]) if ids else ""
    return TriageRules(products, prefix, priority_cues)


def classical_answers(rules: TriageRules, texts: Sequence[str], categories: Sequence[str]) -> list[str]:
    """One triage answer per ticket (its text and the classifier's category)."""
    return [rules.answer(t, c) for t, c in zip(texts, categories)]


def classical_system(
    classify: Callable[[list[str]], list[str]], train: Sequence[Example], examples: Sequence[Example]
) -> tuple[dict, list[str]]:
    """The classical pipeline on ``examples``: rules learnt from ``train``, categories from ``classify`` (texts →
    labels, e.g. the registered classifier); ``(scores, answers)`` like
    :func:`~pipelines.llm.evaluation.evaluate_system`, with the ``seconds`` it took (learning included)."""
    t0 = time.perf_counter()
    train_prompts, train_refs = prompts_and_references(train)
    rules = learn_rules([ticket_text(p) for p in train_prompts], train_refs)
    prompts, references = prompts_and_references(examples)
    texts = [ticket_text(p) for p in prompts]
    answers = classical_answers(rules, texts, classify(texts))
    return score_answers(answers, references) | {"seconds": round(time.perf_counter() - t0, 2)}, answers
