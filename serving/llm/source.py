"""Which LM to serve and how its weights get into the engine: the generative champion from MLflow, base + adapter.

A registered version of ``register_llm.registered_model`` is a :class:`~pipelines.llm.pyfunc.TriageLMPyfunc`:
the LoRA adapter folder as its one artifact (with the tokenizer) and, in ``model_config``, a *reference* to the
base (``base_model``, ``cache_dir``) and the system prompt (:mod:`pipelines.llm.registration`). Serving does not
load the pyfunc (it merges the adapter away, so it could not be swapped): :meth:`LMSource.fetch` downloads the
version's files and reads its ``model_config``; :func:`load_weights` loads the base once and puts the adapter on
it as a named peft adapter, merged into the weights (one matmul per layer, as evaluation runs it);
:func:`adapter_switch` returns the function that, run in the engine's thread while no sequence runs, unmerges the
old adapter, loads and merges the new one and drops the old: the base weights are never reloaded.

In fp32 unmerge/merge is exact to float rounding; in bf16 each swap leaves a rounding residue of the old adapter
(below bf16's own resolution per swap); a replica restart starts clean.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import MlflowConfig, ServeLlmConfig
from pipelines.errors import DataError
from pipelines.registry.tracking import Registry, tracking_uri

if TYPE_CHECKING:
    from pipelines.llm.engine import LLMEngine


@dataclass(frozen=True)
class LMVersion:
    """One registered LM version, its files on this machine and what its ``model_config`` says."""

    name: str
    version: str
    adapter_dir: Path
    base_model: str
    cache_dir: str
    system_prompt: str
    local_dir: Path | None = None  # the downloaded version (removed once the version is no longer served)

    @property
    def adapter_name(self) -> str:
        return f"v{self.version}"


class LMSource:
    """Resolve ``models:/<name>@<alias>`` to a version; fetch a version's adapter and config (blocking calls)."""

    def __init__(self, cfg: MlflowConfig, name: str, alias: str = "champion", download_dir: str | None = None):
        self.cfg, self.name, self.alias = cfg, name, alias
        self.uri = tracking_uri(cfg)
        self.download_dir = download_dir
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            os.environ["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_REGISTRY_URI"] = self.uri
            self._registry = Registry(self.cfg, self.name)
        return self._registry

    def resolve(self) -> str | None:
        if not self.registry.exists():
            return None
        return self.registry.alias(self.alias)

    def fetch(self, version: str) -> LMVersion:
        import mlflow.artifacts
        from mlflow.models import Model

        from pipelines.llm.pyfunc import ADAPTER_ARTIFACT, CONFIG_KEYS

        dest = tempfile.mkdtemp(prefix=f"lm-{self.name}-v{version}-", dir=self.download_dir)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{self.name}/{version}", dst_path=dest))
        flavor = Model.load(str(local / "MLmodel")).flavors.get("python_function", {})
        config = flavor.get("config") or flavor.get("model_config") or {}  # MLmodel keeps model_config as "config"
        missing = [k for k in CONFIG_KEYS if k not in config]
        if missing:
            raise DataError(f"models:/{self.name}/{version} is not a triage LM (model_config lacks {missing})")
        rel = (flavor.get("artifacts") or {}).get(ADAPTER_ARTIFACT, {}).get("path")
        adapter = local / rel if rel else local / "artifacts" / ADAPTER_ARTIFACT
        if not (adapter / "adapter_config.json").is_file():
            raise DataError(f"models:/{self.name}/{version} has no peft adapter at {adapter}")
        return LMVersion(
            self.name, str(version), adapter, config["base_model"], config["cache_dir"], config["system_prompt"],
            Path(dest),
        )  # fmt: skip

    def describe(self) -> str:
        return f"models:/{self.name}@{self.alias} (registry {self.uri})"


@dataclass
class Weights:
    """A base model with named peft adapters, one of them merged; ``model`` is what the engine runs."""

    peft: Any  # peft.PeftModel (manages the adapters)
    model: Any  # the underlying transformers model, its Linear layers carrying the LoRA modules
    tokenizer: Any
    base_path: str
    adapter_name: str
    bf16: bool


def base_path(v: LMVersion) -> str:
    from pipelines.llm.base_model import resolve_base_model

    return resolve_base_model(v.base_model, v.cache_dir)


def load_tokenizer(v: LMVersion) -> Any:
    """The version's tokenizer (saved with its adapter), with a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(v.adapter_dir))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_weights(v: LMVersion, precision: str = "auto") -> Weights:
    """The base (resolved from the version's reference) + its adapter, merged, in eval mode, in ``precision``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pipelines.llm.attention import use_grouped_decode
    from pipelines.llm.generation import dense_head_input
    from pipelines.training.precision import bf16_supported

    path = base_path(v)
    tokenizer = load_tokenizer(v)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, str(v.adapter_dir), adapter_name=v.adapter_name)
    peft.merge_adapter()  # in fp32, like evaluation's merge_and_unload; cast after
    peft.eval()
    bf16 = precision == "bf16" or (precision == "auto" and bf16_supported("cpu"))
    if bf16:
        peft.to(torch.bfloat16)
    use_grouped_decode(peft.get_base_model())  # served on the CPU: decode attention as load_generator runs it
    dense_head_input(peft.get_base_model())  # prefills: no copy of the head's weight (the base is frozen here)
    return Weights(peft, peft.get_base_model(), tokenizer, path, v.adapter_name, bf16)


def adapter_switch(w: Weights, v: LMVersion):  # noqa: ANN201 - returns a no-argument callable
    """The function to run in the engine thread while idle: put ``v``'s adapter in place of the merged one."""

    def switch() -> None:
        import torch

        old = w.adapter_name
        with torch.no_grad():
            w.peft.unmerge_adapter()
            w.peft.load_adapter(str(v.adapter_dir), adapter_name=v.adapter_name)
            if w.bf16:
                w.peft.to(torch.bfloat16)
            w.peft.set_adapter(v.adapter_name)
            w.peft.merge_adapter()
            w.peft.delete_adapter(old)
        w.peft.eval()
        w.adapter_name = v.adapter_name

    return switch


def build_engine(w: Weights, cfg: ServeLlmConfig) -> LLMEngine:
    """The continuous-batching engine over ``w`` with ``serve_llm``'s budgets."""
    from pipelines.llm.engine import LLMEngine

    return LLMEngine(
        w.model,
        w.tokenizer,
        max_num_seqs=cfg.max_num_seqs,
        max_prefill_tokens=cfg.max_prefill_tokens,
        max_waiting=cfg.max_waiting,
        max_model_len=cfg.max_model_len or int(getattr(w.model.config, "max_position_embeddings", 2048)),
        kv_cache_tokens=cfg.kv_cache_tokens,
        prefix_cache_tokens=cfg.prefix_cache_tokens,
        overlap_prefill=cfg.overlap_prefill,
    )


# --------------------------------------------------------------------------- in the engine process
_IN_PROCESS: dict[str, Weights] = {}  # the weights this engine process serves (for in-place adapter switches)


def engine_process_factory(v: LMVersion, cfg: ServeLlmConfig) -> LLMEngine:
    """Run in the engine's child process (``serve_llm.engine_process``): load ``v``'s weights there, keep them for
    :func:`switch_in_engine_process`, and build the engine over them."""
    w = load_weights(v, cfg.precision)
    _IN_PROCESS["weights"] = w
    return build_engine(w, cfg)


def switch_in_engine_process(v: LMVersion) -> None:
    """Run in the engine's child process while idle: :func:`adapter_switch` on the weights it holds."""
    adapter_switch(_IN_PROCESS["weights"], v)()
