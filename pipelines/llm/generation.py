"""Greedy generation for evaluation: the base LM with or without its LoRA adapter, prompts in batches.

:func:`load_generator` loads the base causal LM (a folder from
:func:`pipelines.llm.base_model.resolve_base_model`) and, when given, the adapter saved by the SFT
stage on top of it (peft). :func:`generate` renders each conversation with the tokenizer's chat
template (generation prompt added), sorts the prompts by length so a batch pads little, left-pads
them and decodes greedily, then returns the answers in the input order with the tokens generated
and the seconds spent (tokens/s in the report).

This is plain ``model.generate()``: every batch runs until its longest answer ends. The serving
engine (iteration-level batching, issue 16) replaces it when it exists.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.llm.chat_data import Conversation, first_json_object
from pipelines.training.precision import bf16_supported


@dataclass
class Generated:
    texts: list[str]
    new_tokens: int  # generated tokens, end-of-turn included, padding excluded
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Generator:
    model: torch.nn.Module
    tokenizer: object
    bf16: bool  # the weights are bf16 (cast once at load)


class StopAfterJson:
    """A ``StoppingCriteria``: a row is done once its answer holds a complete JSON object.

    The triage answer is one object; a base model asked zero-shot writes it and then keeps talking
    until ``max_new_tokens``. Checked on the decoded answer with the same parser that grades it
    (:func:`pipelines.llm.chat_data.first_json_object`), so a stop never cuts an object short.
    """

    def __init__(self, tokenizer, prompt_width: int) -> None:
        self.tokenizer, self.prompt_width = tokenizer, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        answers = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        done = [("}" in a and first_json_object(a) is not None) for a in answers]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def load_generator(base_path: str, adapter: str | Path | None = None, precision: str = "auto") -> Generator:
    """The base LM (+ the LoRA adapter in ``adapter``), in eval mode, with its tokenizer (left padding).

    ``precision``: ``auto`` runs bf16 autocast where the hardware has it, ``fp32`` never.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(adapter or base_path))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        # folded into the base weights: one matmul per layer instead of three (+50% tokens/s here)
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = precision == "bf16" or (precision == "auto" and bf16_supported(device))
    if bf16:  # cast once: autocast would re-cast every weight at every decoding step (1.5x slower here)
        model = model.to(torch.bfloat16)
    return Generator(model.to(device), tokenizer, bf16)


def prompt_texts(tokenizer, conversations: Sequence[Conversation]) -> list[str]:
    """Each conversation rendered by the chat template with the assistant's generation prompt."""
    return [tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True) for c in conversations]


@torch.no_grad()
def generate(
    gen: Generator,
    conversations: Sequence[Conversation],
    max_new_tokens: int,
    batch_size: int = 16,
    desc: str | None = None,
    stop_after_json: bool = False,
) -> Generated:
    """Greedy answers to ``conversations`` (each ends before the assistant turn), in input order.

    ``stop_after_json``: a row also ends once it holds a complete JSON object (:class:`StopAfterJson`).
    """
    from tqdm.auto import tqdm
    from transformers import StoppingCriteriaList

    tok, model = gen.tokenizer, gen.model
    prompts = prompt_texts(tok, conversations)
    lengths = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    texts: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    stop = tok.eos_token_id
    pad = tok.pad_token_id
    new_tokens, t0 = 0, time.perf_counter()
    bar = tqdm(total=len(prompts), desc=desc, unit="answer", disable=desc is None)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        width = enc["input_ids"].shape[1]
        criteria = StoppingCriteriaList([StopAfterJson(tok, width)] if stop_after_json else [])
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=pad,
            stopping_criteria=criteria,
        )
        answers = out[:, width:]
        for i, row in zip(idx, answers):
            ids = row.tolist()
            ids = ids[: ids.index(stop) + 1] if stop in ids else ids  # what follows the end of turn is padding
            new_tokens += len(ids)
            texts[i] = tok.decode(ids, skip_special_tokens=True)
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{new_tokens / (time.perf_counter() - t0):.0f}")
    bar.close()
    return Generated(texts, new_tokens, time.perf_counter() - t0)
