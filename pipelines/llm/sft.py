"""Tokenisation for supervised fine-tuning: loss on the assistant's answer only, batches of similar length.

**Labels.** A conversation is rendered with the tokenizer's own chat template. The tokens of assistant
turn *i* are found by rendering the messages before it with ``add_generation_prompt=True`` and checking
that this is a token-level prefix of the rendering that includes the turn (and that, in turn, of the whole
conversation); whatever the turn adds is the answer. Labels are -100 (:data:`IGNORE_INDEX`) everywhere
except the answer tokens up to and including the end-of-turn token (the tokenizer's eos, ``<|im_end|>``
for SmolLM2); the template's newline after it is not learnt. This needs no ``{% generation %}`` markers,
which SmolLM2's template lacks (``return_assistant_tokens_mask`` would mark nothing), and a template
that is not prefix-stable is refused instead of being mislabelled.

**Length.** An example longer than ``max_length`` keeps every answer whole: the last user turn (the
ticket) is shortened, by characters, until the rendering fits. When even an empty ticket does not fit
(the system prompt, earlier turns and the answer alone exceed it) the example is dropped and counted,
or with ``on_unencodable="refuse"`` refused. Content holding one of the tokenizer's control tokens
(``<|im_end|>`` typed into a ticket would end the turn early) is dropped or refused the same way.

**Batches.** :class:`SFTCollator` right-pads a batch (labels with -100, attention 0);
:func:`length_grouped_batches` / :class:`LengthGroupedBatchSampler` give batches of similar length
(padding is most of the cost on CPU) in a seeded random order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.utils.data import Sampler

from pipelines.errors import DataError
from pipelines.llm.chat_data import Conversation

IGNORE_INDEX = -100
REASONS = {
    "too_long": "the prompt without the ticket text plus the answer exceeds max_length",
    "control_token": "a message contains one of the tokenizer's control tokens",
    "template": "the chat template does not render the prompt as a prefix of the conversation",
    "no_answer": "the conversation has no assistant turn to learn",
}


class Unencodable(ValueError):
    """An example that cannot become a training example; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{REASONS[reason]} ({detail})")
        self.reason = reason


@dataclass
class EncodeStats:
    """What :func:`encode_dataset` did: examples kept (of which shortened) and dropped, by reason."""

    kept: int = 0
    truncated: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_index: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"kept": self.kept, "truncated": self.truncated, "dropped": dict(self.dropped)}


# --------------------------------------------------------------------------- rendering
def render_ids(tokenizer, messages: Conversation, add_generation_prompt: bool = False) -> list[int]:
    """The chat template's rendering as token ids (what ``apply_chat_template(tokenize=True)`` gives)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def control_tokens(tokenizer) -> tuple[str, ...]:
    """The special token strings that must not appear inside message content."""
    specials = set(tokenizer.all_special_tokens)
    specials |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return tuple(sorted(t for t in specials if t))


def assistant_spans(tokenizer, messages: Conversation) -> tuple[list[int], list[tuple[int, int]]]:
    """(token ids of the conversation, ``[start, end)`` of each assistant answer incl. its end-of-turn token)."""
    full = render_ids(tokenizer, messages)
    eot = tokenizer.eos_token_id
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = render_ids(tokenizer, messages[:i], add_generation_prompt=True)
        upto = full if i == len(messages) - 1 else render_ids(tokenizer, messages[: i + 1])
        if upto[: len(prompt)] != prompt or full[: len(upto)] != upto:
            raise Unencodable("template", f"assistant turn {i + 1}")
        answer = upto[len(prompt) :]
        end = len(upto) if eot not in answer else len(prompt) + answer.index(eot) + 1
        spans.append((len(prompt), end))
    return full, spans


def _shorten_last_user(tokenizer, messages: Conversation, max_length: int) -> Conversation:
    """``messages`` with the last user turn cut (by characters) to the longest prefix that fits ``max_length``."""
    u = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if u is None:
        raise Unencodable("too_long", f"no user turn to shorten, max_length {max_length}")
    content = messages[u]["content"]

    def with_content(n: int) -> Conversation:
        return [*messages[:u], {**messages[u], "content": content[:n]}, *messages[u + 1 :]]

    floor = len(render_ids(tokenizer, with_content(0)))
    if floor > max_length:
        raise Unencodable("too_long", f"{floor} tokens with an empty ticket, max_length {max_length}")
    lo, hi = 0, len(content)  # with_content(lo) fits; with_content(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if len(render_ids(tokenizer, with_content(mid))) <= max_length:
            lo = mid
        else:
            hi = mid
    return with_content(lo)


def _encode(tokenizer, messages: Conversation, max_length: int, controls: Sequence[str]) -> tuple[dict, bool]:
    for i, msg in enumerate(messages, 1):
        hit = next((t for t in controls if t in msg["content"]), None)
        if hit:
            raise Unencodable("control_token", f"{hit!r} in message {i} ({msg['role']})")
    truncated = len(render_ids(tokenizer, messages)) > max_length
    if truncated:
        messages = _shorten_last_user(tokenizer, messages, max_length)
    ids, spans = assistant_spans(tokenizer, messages)
    if not spans:
        raise Unencodable("no_answer", f"roles {[m['role'] for m in messages]}")
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}, truncated


def encode_chat(tokenizer, messages: Conversation, max_length: int) -> dict[str, list[int]]:
    """``input_ids``, ``attention_mask``, ``labels`` of one conversation (ending with an assistant turn).

    Raises :class:`Unencodable` (a ``ValueError``) when it cannot fit or render; see the module docstring.
    """
    return _encode(tokenizer, messages, max_length, control_tokens(tokenizer))[0]


def encode_dataset(
    tokenizer,
    conversations: Sequence[Conversation],
    max_length: int,
    on_unencodable: Literal["drop", "refuse"] = "drop",
) -> tuple[list[dict[str, list[int]]], EncodeStats]:
    """Encode every conversation; an unencodable one is dropped and counted, or refused (:class:`DataError`)."""
    controls = control_tokens(tokenizer)
    examples, stats = [], EncodeStats()
    for i, messages in enumerate(conversations):
        try:
            example, truncated = _encode(tokenizer, messages, max_length, controls)
        except Unencodable as err:
            if on_unencodable == "refuse":
                raise DataError(f"example {i}: {err}") from None
            stats.dropped[err.reason] = stats.dropped.get(err.reason, 0) + 1
            stats.dropped_index.append(i)
            continue
        examples.append(example)
        stats.kept += 1
        stats.truncated += truncated
    if conversations and not examples:
        raise DataError(f"no example could be encoded with max_length {max_length}: dropped {stats.dropped}")
    return examples, stats


# --------------------------------------------------------------------------- batches
@dataclass
class SFTCollator:
    """Right-pads ``input_ids`` (pad token), ``attention_mask`` (0) and ``labels`` (-100) to the batch's longest."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            pad = width - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            batch["attention_mask"].append(list(f["attention_mask"]) + [0] * pad)
            batch["labels"].append(list(f["labels"]) + [IGNORE_INDEX] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def collator_for(tokenizer, pad_to_multiple_of: int | None = None) -> SFTCollator:
    """A collator padding with the tokenizer's pad token (its eos when it has none)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DataError("the tokenizer has neither a pad nor an eos token to pad batches with")
    return SFTCollator(pad_token_id=pad, pad_to_multiple_of=pad_to_multiple_of)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_mult: int = 50, drop_last: bool = False
) -> list[list[int]]:
    """Batches of indices of similar length, in a seeded random order, the longest batch first.

    The indices are shuffled, cut into mega-batches of ``batch_size * mega_batch_mult``, each sorted by
    length (longest first) and cut into batches; the batch order is shuffled again, so an epoch is not
    ordered by length, and the batch holding the longest example goes first (memory fails early, not late).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * mega_batch_mult
    batches = []
    for m in range(0, len(order), mega):
        chunk = sorted(order[m : m + mega], key=lambda i: -lengths[i])
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    rng.shuffle(batches)
    if batches:
        longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batches.insert(0, batches.pop(longest))
    return batches


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """A ``batch_sampler`` over :func:`length_grouped_batches`, reshuffled per epoch (:meth:`set_epoch`).

    With several ranks each gets every ``num_replicas``-th batch, and all ranks the same number of batches
    (the few left over are skipped that epoch), so they stay in step.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.num_replicas, self.rank, self.drop_last = num_replicas, rank, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _mine(self) -> list[list[int]]:
        batches = length_grouped_batches(
            self.lengths, self.batch_size, self.seed + self.epoch, drop_last=self.drop_last
        )
        usable = len(batches) - len(batches) % self.num_replicas
        return batches[self.rank : usable : self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._mine())

    def __len__(self) -> int:
        n, size = len(self.lengths), self.batch_size
        return (n // size if self.drop_last else math.ceil(n / size)) // self.num_replicas


# --------------------------------------------------------------------------- loss
def answer_window(labels: torch.Tensor) -> int:
    """How many final positions of a right-padded batch hold every learnt token, plus the one before them.

    The answer is the last turn, so with length-grouped batches it sits near the end of every row;
    only these positions need the LM head (a 49k-word vocabulary: most of the memory and a quarter of
    the compute of a 135M model), passed to the model as ``logits_to_keep``.
    """
    learnt = labels != IGNORE_INDEX
    if not bool(learnt.any()):
        return 1
    first = int(learnt.float().argmax(dim=1)[learnt.any(dim=1)].min())
    return min(labels.shape[1] - first + 1, labels.shape[1])


def causal_lm_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(mean next-token cross-entropy over the learnt tokens, how many there were) for one padded batch.

    Only the positions in :func:`answer_window` get logits; the prompt, system and padding tokens are
    -100 and contribute nothing. The same number as the model's own loss on the full logits.
    """
    labels = batch["labels"]
    keep = answer_window(labels)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    targets = labels[:, labels.shape[1] - keep + 1 :]
    n = int((targets != IGNORE_INDEX).sum())
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )
    return loss, n
