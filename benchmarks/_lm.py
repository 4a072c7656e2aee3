"""The generative LM workload of ``benchmarks/training.py``: the SFT model, data and loss as training builds them.

- model: the ``llm.base_model`` causal LM (``resolve_base_model``; SmolLM2-135M-Instruct, de-quantized once into
  ``llm.cache_dir``) with the LoRA adapter of :func:`pipelines.llm.lora.build_lora_model`;
- data: the sft_data stage's ``data/sft/train.jsonl`` (:func:`pipelines.llm.chat_data.read_examples`), or, when
  that file is missing, triage conversations built the same way from generated tickets run through ingest
  (:func:`pipelines.llm.chat_data.triage_conversations`); tokenised by :func:`pipelines.llm.sft.encode_dataset`
  with ``llm.max_length``, grouped by :class:`pipelines.llm.sft.LengthGroupedBatchSampler`, padded by
  :func:`pipelines.llm.sft.collator_for`;
- loss: :func:`pipelines.llm.sft.causal_lm_loss` (answer tokens only, ``logits_to_keep``).

Every case sees the same *global* batches: the sampler cuts global batches (longest first, then a seeded
order), and with several ranks rank ``r`` takes rows ``r, r + world, ...`` of each (a global batch is sorted
by length, so the ranks' micro-batches are about as long as each other and the work is the same as the plain
loop's; the pipeline's own sampler gives each rank a different micro-batch, see the module docstring of
``benchmarks/training.py``).
"""

from __future__ import annotations

import itertools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SFT_TRAIN = ROOT / "data" / "sft" / "train.jsonl"
GENERATED_ROWS = 400  # fallback data: about the sft_data stage's 320 train examples


def params():
    from pipelines.config import load_params

    return load_params(ROOT / "params.yaml")


def base_path(p) -> str:
    from pipelines.llm.base_model import resolve_base_model

    return resolve_base_model(p.llm.base_model, str(ROOT / p.llm.cache_dir))


def conversations(p, seed: int = 0) -> tuple[list, str]:
    """(training conversations, where they came from): data/sft/train.jsonl, else generated tickets."""
    from pipelines.llm.chat_data import read_examples, system_prompt, triage_conversations

    if SFT_TRAIN.is_file():
        return [e["messages"] for e in read_examples(SFT_TRAIN)], str(SFT_TRAIN.relative_to(ROOT))
    from pipelines.config import DataConfig, GenerateConfig, IngestConfig
    from pipelines.data.generator import generate_tickets
    from pipelines.data.ingestion import ingest

    raw = generate_tickets(GenerateConfig(n_rows=GENERATED_ROWS, n_customers=GENERATED_ROWS // 4, seed=seed))
    df, _ = ingest(raw, DataConfig(), IngestConfig())
    system = system_prompt(p.llm.system_prompt, sorted(df["label"].astype(str).unique()))
    return triage_conversations(df.reset_index(drop=True), system), f"{GENERATED_ROWS} generated tickets"


def batches(p, n_steps: int, global_batch: int, world: int, rank: int, seed: int = 0) -> tuple[list[dict], str]:
    """``n_steps`` padded micro-batches of this rank (its rows of each global batch, cycled if the data runs out)."""
    from transformers import AutoTokenizer

    from pipelines.llm.sft import LengthGroupedBatchSampler, collator_for, encode_dataset

    tokenizer = AutoTokenizer.from_pretrained(base_path(p))
    convs, source = conversations(p, seed)
    rows, _ = encode_dataset(tokenizer, convs, p.llm.max_length)
    sampler = LengthGroupedBatchSampler([len(r["input_ids"]) for r in rows], global_batch, seed, drop_last=True)
    collate = collator_for(tokenizer)
    steps = itertools.islice(itertools.cycle(list(sampler)), n_steps)
    return [collate([rows[i] for i in step[rank::world]]) for step in steps], f"{len(rows)} examples from {source}"


def model(p):
    """The LoRA-wrapped base causal LM, fp32 weights (DeepSpeed casts to bf16 itself; the plain loop autocasts)."""
    from pipelines.llm.lora import build_lora_model, load_causal_lm

    return build_lora_model(load_causal_lm(base_path(p)), p.llm)


def loss(model_or_engine, batch: dict) -> tuple:
    """(loss, real non-padding tokens in the batch)."""
    from pipelines.llm.sft import causal_lm_loss

    value, _ = causal_lm_loss(model_or_engine, batch)
    return value, int(batch["attention_mask"].sum())
