"""Fixtures for the generative serving tests: the SmolLM2 tokenizer, a fake engine that follows the engine's
contract (the HTTP layer's tests, fast), and a tiny registered LM (base + two LoRA adapter versions) for the real
engine and the end-to-end test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipelines.config import LlmConfig, MlflowConfig, ServeConfig, ServeLlmConfig
from pipelines.llm.chat_data import system_prompt
from pipelines.llm.engine import EngineError, QueueFull, TokenEvent
from serving.llm.service import LLMService, ModelLoader, Served
from serving.llm.source import LMVersion
from tests.helpers import mlflow_uris_restored

CATEGORIES = ["billing", "refund", "bug_report"]
SYSTEM = system_prompt(LlmConfig().system_prompt, CATEGORIES)
TRIAGE = {"category": "billing", "priority": "high", "product": None, "order_id": None, "summary": "Charged twice."}


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.llm import smol_tokenizer

    return smol_tokenizer(tmp_path_factory.mktemp("smol-tokenizer"))


@pytest.fixture(scope="session")
def tokenizer(tok_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir)


@dataclass
class FakeEngine:
    """AsyncLLMEngine's interface: answers ``answer`` (or TRIAGE JSON under a schema) one token per event."""

    tokenizer: object
    answer: str = "Hello there, how can I help?"
    delay: float = 0.0
    queue_full: bool = False
    calls: list = field(default_factory=list)
    aborted: list = field(default_factory=list)
    active: set = field(default_factory=set)
    stopped: bool = False
    lost: str | None = None  # as ProcessLLMEngine when its child process died

    def problem(self) -> str | None:
        return self.lost

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True

    async def generate(self, request_id, prompt_ids, params):
        if self.queue_full:
            raise QueueFull("64 requests are waiting (the limit)", 2.4)
        if self.lost:
            raise EngineError(self.lost)
        self.calls.append((request_id, list(prompt_ids), params))
        self.active.add(request_id)
        text = json.dumps(TRIAGE) if params.json_schema is not None else self.answer
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        cut = ids[: params.max_tokens]
        finished = False
        try:
            for i, t in enumerate(cut):
                if self.delay:
                    await asyncio.sleep(self.delay)
                last = i == len(cut) - 1
                reason = ("length" if len(ids) > len(cut) else "stop") if last else None
                text_i = self.tokenizer.decode(cut[: i + 1])[len(self.tokenizer.decode(cut[:i])) :]
                yield TokenEvent(request_id, [t], text_i, last, reason, len(prompt_ids), i + 1)
            finished = True
        finally:
            self.active.discard(request_id)
            if not finished:
                self.aborted.append(request_id)

    def stats(self) -> dict:
        return {"running": len(self.active), "waiting": 0, "kv_tokens_used": 10 * len(self.active),
                "kv_tokens_capacity": 1000}  # fmt: skip

    async def run_when_idle(self, fn):
        return fn()


class FakeSource:
    """A registry of one LM name whose champion is ``version`` (None: nothing registered)."""

    def __init__(self, name: str = "tiny-triage", version: str | None = "1") -> None:
        self.name, self.version = name, version

    def resolve(self) -> str | None:
        return self.version

    def fetch(self, version: str) -> LMVersion:
        return LMVersion(self.name, version, Path("."), "base", "cache", SYSTEM)

    def describe(self) -> str:
        return f"models:/{self.name}@champion"


class FakeLoader(ModelLoader):
    def __init__(self, cfg: ServeLlmConfig, tokenizer, max_model_len: int = 512) -> None:
        super().__init__(cfg)
        self.tokenizer, self.max_model_len, self.engines = tokenizer, max_model_len, []

    def load(self, v: LMVersion) -> Served:
        engine = FakeEngine(self.tokenizer)
        self.engines.append(engine)
        return Served(v.name, v.version, v.system_prompt, self.tokenizer, engine, self.max_model_len)

    def adapter_switch(self, served, v):
        return None

    def set_threads(self):
        return lambda: None


def fake_service(tmp: Path, tokenizer, version: str | None = "1", **llm: object) -> LLMService:
    cfg = ServeLlmConfig(**{"watch_interval_s": 0.2, **llm})
    scfg = ServeConfig(log_dir=str(tmp / "production"), log_flush_s=0.2, log_flush_rows=1000)
    return LLMService(
        cfg, scfg, FakeSource(version=version), system_template=LlmConfig().system_prompt,
        loader=FakeLoader(cfg, tokenizer),
    )  # fmt: skip


# --------------------------------------------------------------------------- a tiny registered LM
@dataclass
class TinyLM:
    mlflow: MlflowConfig
    name: str
    versions: list[str]
    adapters: dict[str, Path]
    base: Path


def make_adapter(base: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-identity) weights on q/v, saved with the tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft = get_peft_model(model, lora)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(20.0)  # make the versions' answers differ
    peft.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@contextlib.contextmanager
def mlflow_store(cfg: MlflowConfig):
    """``cfg``'s store as the process-wide MLflow target inside the block (restored after)."""
    from pipelines.registry.tracking import setup

    with mlflow_uris_restored():
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            os.environ.pop(name, None)
        setup(cfg)
        yield


def register_tiny_lm(cfg: MlflowConfig, work: Path, tok_dir: Path, name: str = "tiny-triage") -> TinyLM:
    """A tiny base and two adapter versions registered as ``name`` in ``cfg``'s store; champion -> version 1."""
    import mlflow

    from pipelines.llm.pyfunc import log_triage_model, model_config
    from pipelines.registry.tracking import Registry
    from tests.helpers.llm import tiny_base

    base = tiny_base(work / "base", tok_dir)
    versions, adapters = [], {}
    with mlflow_store(cfg):
        reg = Registry(cfg, name)
        for seed in (1, 2):
            adapter = make_adapter(base, work / f"adapter{seed}", seed)
            with mlflow.start_run():
                info = log_triage_model(adapter, model_config(str(base), str(work / "cache"), SYSTEM, 32))
            v = reg.register(info.model_uri, tags={"seed": str(seed)})
            versions.append(v)
            adapters[v] = adapter
        reg.set_alias("champion", versions[0])
    return TinyLM(cfg, name, versions, adapters, base)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory, tok_dir: Path, tiny_registry) -> TinyLM:
    """Registered in the serving tests' store beside the classifier (tests/serving/conftest.py), as one params.yaml
    has one MLflow store for both models."""
    return register_tiny_lm(tiny_registry.mlflow, tmp_path_factory.mktemp("tiny-lm"), tok_dir)
