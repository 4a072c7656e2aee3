"""Greedy generation for evaluation: the base LM with or without its LoRA adapter, prompts in batches.

:func:`load_generator` loads the base causal LM (a folder from
:func:`pipelines.llm.base_model.resolve_base_model`) and, when given, the adapter saved by the SFT
stage on top of it (peft). :func:`generate` renders each conversation with the tokenizer's chat
template (generation prompt added), sorts the prompts by length so a batch pads little, left-pads
them and decodes greedily, then returns the answers in the input order with the tokens generated
and the seconds spent (tokens/s in the report).

Answers come from the serving engine (:class:`pipelines.llm.engine.LLMEngine`, iteration-level continuous
batching): every prompt is queued up front and a finished answer frees its row at once, so a short answer
never waits for the longest one of its batch, and the evaluation measures the scheduler that serves.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.llm.chat_data import Conversation
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


def _dense_strides(shape: torch.Size) -> tuple[int, ...]:
    """The strides of a contiguous tensor of ``shape`` (``is_contiguous`` ignores the strides of size-1 dims)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def dense_head_input(model: torch.nn.Module) -> None:
    """Give ``model``'s output layer (``lm_head``) a densely strided input.

    A prompt's forward keeps only the last position's hidden state (``logits_to_keep=1``): a ``[1, 1, d]`` view
    of ``[1, T, d]`` that keeps the big strides. When the head's weight does not require grad (a peft model,
    merged or not), torch's ``matmul`` will not fold such a view into a plain matrix product: it runs a batched
    product instead, copying the transposed weight (vocabulary x width, 56 MB for SmolLM2) at every prefill.
    In bf16 on this CPU that made a 64-token prefill 2.7x slower (225 against 84 ms); the copy of one row avoids
    it. Decode steps (``[rows, 1, d]``, already dense) are not touched."""

    def densify(module: torch.nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        if x.dim() < 3 or x.stride() == _dense_strides(x.shape):
            return None
        return (x.clone(memory_format=torch.contiguous_format), *args[1:])

    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(densify)


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
    if device == "cpu":  # decode steps: grouped-query products instead of CPU SDPA (pipelines.llm.attention)
        from pipelines.llm.attention import use_grouped_decode

        use_grouped_decode(model)
    dense_head_input(model)
    return Generator(model.to(device), tokenizer, bf16)


def prompt_texts(tokenizer, conversations: Sequence[Conversation]) -> list[str]:
    """Each conversation rendered by the chat template with the assistant's generation prompt."""
    return [tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True) for c in conversations]


def generate(
    gen: Generator,
    conversations: Sequence[Conversation],
    max_new_tokens: int,
    batch_size: int = 16,
    desc: str | None = None,
    stop_after_json: bool = False,
) -> Generated:
    """Greedy answers to ``conversations`` (each ends before the assistant turn), in input order.

    ``batch_size`` is the engine's ``max_num_seqs`` (rows decoded together); ``stop_after_json``: an answer also
    ends once it holds a complete JSON object (a base model asked zero-shot writes the object, then talks on).
    ``new_tokens`` counts every generated token, the end of turn included.
    """
    from tqdm.auto import tqdm

    from pipelines.llm.engine import SamplingParams, engine_from_generator

    tok = gen.tokenizer
    prompts = [ids for ids in tok(prompt_texts(tok, conversations), add_special_tokens=False)["input_ids"]]
    engine = engine_from_generator(gen, max_num_seqs=batch_size, max_waiting=max(1, len(prompts)))
    params = SamplingParams(max_tokens=max_new_tokens, stop_after_json=stop_after_json)
    # longest first: the rows that decide the cache width start together and leave it narrow behind them
    for i in sorted(range(len(prompts)), key=lambda i: -len(prompts[i])):
        engine.add_request(str(i), prompts[i], params)
    texts: list[str] = [""] * len(prompts)
    new_tokens, t0 = 0, time.perf_counter()
    bar = tqdm(total=len(prompts), desc=desc, unit="answer", disable=desc is None)
    while engine.has_unfinished():
        for event in engine.step():
            i = int(event.request_id)
            texts[i] += event.text
            if event.finished:
                new_tokens += event.completion_tokens
                bar.update(1)
                bar.set_postfix(tok_s=f"{new_tokens / (time.perf_counter() - t0):.0f}")
    bar.close()
    return Generated(texts, new_tokens, time.perf_counter() - t0)
