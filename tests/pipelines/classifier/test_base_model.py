"""resolve_base_model: 'minilm' is the packaged folder; ids pass through; a missing local path is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.classifier.base_model import resolve_base_model
from pipelines.errors import ConfigError


def test_minilm_is_the_packaged_folder() -> None:
    path = Path(resolve_base_model("minilm"))
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    assert resolve_base_model("MiniLM") == str(path)


def test_hf_id_and_existing_path_pass_through(tmp_path: Path) -> None:
    assert resolve_base_model("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve_base_model(str(tmp_path)) == str(tmp_path.resolve())


@pytest.mark.parametrize("value", ["./no/such/model", "/no/such/model", ""])
def test_missing_local_path_is_an_error_naming_it(value: str) -> None:
    with pytest.raises(ConfigError, match="no/such/model" if value else "empty"):
        resolve_base_model(value)
