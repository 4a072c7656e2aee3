"""The generative triage model as an MLflow pyfunc: the LoRA adapter as the one artifact, the base by reference.

One of the modules importing mlflow (with :mod:`pipelines.registry.tracking` and
:mod:`pipelines.classifier.pyfunc`).

A registered version holds only the SFT stage's adapter folder (``models/llm/``: the peft adapter, the
tokenizer, ``sft.json``: a few MB) and, in its ``model_config``, a *reference* to the base weights
(``base_model``, ``cache_dir``: what :func:`pipelines.llm.base_model.resolve_base_model` takes), the filled
system prompt and the answer length cap. The base (hundreds of MB) is never copied into a version: every
version of the same base shares the one de-quantized cache. Loading resolves the base, puts the adapter on
it (:func:`pipelines.llm.generation.load_generator`) and answers greedily.

Input: a DataFrame with a ``text`` column (a ticket: the system prompt and the ticket become the prompt,
:func:`pipelines.llm.chat_data.prompt_messages`) or a ``messages`` column (each a list of
``{role, content}`` ending before the assistant's turn). Output: the answers, in input order. Inference
params: ``max_new_tokens``, ``batch_size``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from pipelines.errors import DataError

PIPELINES_DIR = Path(__file__).resolve().parents[1]  # the whole ``pipelines`` package (load_context imports it)
ADAPTER_ARTIFACT = "adapter"
CONFIG_KEYS = ("base_model", "cache_dir", "system_prompt", "max_new_tokens")
REQUIREMENTS = ("torch", "transformers", "tokenizers", "peft", "safetensors", "pandas", "pyyaml", "pydantic", "gguf")


def model_config(
    base_model: str, cache_dir: str, system_prompt: str, max_new_tokens: int, batch_size: int = 16
) -> dict[str, Any]:
    """What a version records about its base and prompt (``params.llm``, ``params.llm_eval``): no weights."""
    return {
        "base_model": base_model,
        "cache_dir": cache_dir,
        "system_prompt": system_prompt,
        "max_new_tokens": int(max_new_tokens),
        "batch_size": int(batch_size),
    }


def conversations_from_input(model_input: pd.DataFrame, system_prompt: str) -> list[list[dict[str, str]]]:
    """The prompts of a ``text`` or ``messages`` DataFrame (``messages`` wins where a row has both)."""
    from pipelines.llm.chat_data import prompt_messages

    if not isinstance(model_input, pd.DataFrame):
        model_input = pd.DataFrame(model_input)
    has_text, has_messages = "text" in model_input.columns, "messages" in model_input.columns
    if not (has_text or has_messages):
        raise DataError(f"the triage model reads a 'text' or a 'messages' column; got {list(model_input.columns)}")
    out = []
    for i in range(len(model_input)):
        messages = model_input["messages"].iat[i] if has_messages else None
        if messages is not None and not (isinstance(messages, float) and pd.isna(messages)):
            out.append([{"role": str(m["role"]), "content": str(m["content"])} for m in messages])
        elif has_text and isinstance(model_input["text"].iat[i], str):
            out.append(prompt_messages(model_input["text"].iat[i], system_prompt))
        else:
            raise DataError(f"row {i} has neither a ticket 'text' nor 'messages'")
    return out


class TriageLMPyfunc(mlflow.pyfunc.PythonModel):
    """Base causal LM (by reference) + the LoRA adapter artifact: prompts in, greedy answers out."""

    # predict() takes a DataFrame and the signature is logged explicitly (see log_triage_model)
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from pipelines.llm.base_model import resolve_base_model
        from pipelines.llm.generation import load_generator

        cfg = context.model_config or {}
        missing = [k for k in CONFIG_KEYS if k not in cfg]
        if missing:
            raise DataError(f"the triage model's model_config lacks {missing}; log it with log_triage_model")
        self.config = dict(cfg)
        base = resolve_base_model(cfg["base_model"], cfg["cache_dir"])
        self.generator = load_generator(base, adapter=context.artifacts[ADAPTER_ARTIFACT])

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:  # noqa: ANN001
        from pipelines.llm.generation import generate

        params = params or {}
        conversations = conversations_from_input(model_input, self.config["system_prompt"])
        if not conversations:
            return []
        max_new = int(params.get("max_new_tokens") or self.config["max_new_tokens"])
        batch = int(params.get("batch_size") or self.config.get("batch_size", 16))
        return generate(self.generator, conversations, max_new, batch).texts


def pip_requirements() -> list[str]:
    """Pinned requirements (explicit: MLflow's inference is slow); packages not installed here are left out."""
    out = []
    for pkg in (*REQUIREMENTS, "mlflow"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return out


def signature(max_new_tokens: int, batch_size: int) -> Any:
    """``text`` or ``messages`` in (each optional), one answer string per row out; the two inference params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

    message = Object([Property("role", "string"), Property("content", "string")])
    return ModelSignature(
        inputs=Schema([ColSpec("string", "text", required=False), ColSpec(Array(message), "messages", required=False)]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema(
            [ParamSpec("max_new_tokens", "long", int(max_new_tokens)), ParamSpec("batch_size", "long", int(batch_size))]
        ),
    )


def log_triage_model(
    adapter_dir: Path, config: dict[str, Any], *, name: str = "model", metadata: dict[str, Any] | None = None
) -> mlflow.models.model.ModelInfo:
    """Log the adapter folder as a :class:`TriageLMPyfunc` in the active run; ``config`` from :func:`model_config`.

    The signature documents the input; no input example is saved: MLflow validates one by loading the model
    and generating an answer inside ``log_model`` (100 s for SmolLM2-135M on this 2-core machine under load).
    The ``pipelines`` package is logged as code."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise DataError(f"{adapter_dir} is not a peft adapter folder (no adapter_config.json): run the sft stage")
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=TriageLMPyfunc(),
        artifacts={ADAPTER_ARTIFACT: str(adapter_dir)},
        model_config=config,
        signature=signature(config["max_new_tokens"], config.get("batch_size", 16)),
        pip_requirements=pip_requirements(),
        code_paths=[str(PIPELINES_DIR)],
        metadata={"family": "llm", "base_model": config["base_model"], **(metadata or {})},
    )
