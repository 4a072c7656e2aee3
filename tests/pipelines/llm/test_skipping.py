"""The generative branch's off switch (``llm.enabled``): the skipped records, the refusal that names the switch,
the gate that will not run on a skipped branch, and the shipped params (on) and data-set examples (off).

The stage CLIs themselves are run in ``test_skipped_stages.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.config import LlmConfig, Params, load_params
from pipelines.errors import ConfigError, DataError
from pipelines.llm.examples import builtin_pools
from pipelines.llm.registration import challenger_scores, gate_and_report
from pipelines.llm.skipping import MARKER, REASON, is_skipped, skip_if_disabled, write_skipped
from tests.helpers import ROOT
from tests.helpers.data import make_clean, time_parts


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # atomic_outputs stages in the working directory
    return tmp_path


def test_the_switch_is_on_in_params_yaml_and_off_in_the_data_set_examples() -> None:
    assert LlmConfig().enabled is True and load_params(ROOT / "params.yaml").llm.enabled is True
    assert load_params(ROOT / "examples" / "params-llm-full.yaml").llm.enabled is True
    for name in ("clinc150.params.yaml", "sms_spam.params.yaml"):  # no triage answers in these data sets
        assert load_params(ROOT / "examples" / name).llm.enabled is False, name


def test_classification_data_is_refused_naming_the_switch_and_sft_data_path() -> None:
    parts = time_parts(make_clean(60, 0))  # id, text, label: a user's own classification data, no triage truth
    with pytest.raises(DataError, match="Built-in examples need the triage ground truth") as err:
        builtin_pools(parts, LlmConfig().system_prompt)
    assert "llm.enabled: false" in str(err.value) and "sft_data.path" in str(err.value)


def test_an_enabled_branch_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert skip_if_disabled(LlmConfig(), "sft", Path("models/llm"), Path("metrics/sft.json")) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == [] and capsys.readouterr().out == ""


def test_skipped_records_by_output_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    llm = LlmConfig(enabled=False)
    assert skip_if_disabled(llm, "sft", Path("models/llm"), Path("metrics/sft.json"), model="lora_sft") is True
    assert capsys.readouterr().out == (
        "sft: skipped (llm.enabled is false): no model loaded; skipped records in models/llm, metrics/sft.json\n"
    )
    record = {"stage": "sft", "skipped": True, "reason": REASON, "model": "lora_sft"}
    assert json.loads((tmp_path / "metrics/sft.json").read_text()) == record
    assert json.loads((tmp_path / "models/llm" / MARKER).read_text()) == record
    assert is_skipped(record) and not is_skipped({"skipped": "not in llm_eval.systems"}) and not is_skipped(None)


def test_skipped_outputs_are_published_together_or_not_at_all(tmp_path: Path) -> None:
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/promotion_llm.json").write_text('{"promote": true}')
    with pytest.raises(ValueError, match="no skipped form"):
        write_skipped("register_llm", Path("reports/promotion_llm.json"), Path("reports/promotion_llm.parquet"))
    assert (tmp_path / "reports/promotion_llm.json").read_text() == '{"promote": true}'  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]  # no staging directory left


def test_the_llm_gate_refuses_a_skipped_branch_naming_the_switch(tmp_path: Path) -> None:
    """``python -m pipelines.promote --family llm`` (and the promote flow) after a run with the branch off."""
    write_skipped("llm_eval", Path("metrics/llm_eval.json"))
    with pytest.raises(ConfigError, match=r"'skipped' record \(llm\.enabled is false\).*set llm\.enabled: true"):
        gate_and_report(None, Params(), Path("data/sft/test.jsonl"), Path("metrics/llm_eval.json"),
                        Path("reports/promotion_llm.md"), Path("reports/promotion_llm.json"))  # fmt: skip
    with pytest.raises(ConfigError, match="llm.enabled"):
        challenger_scores(Path("metrics/llm_eval.json"), "a" * 64, "b" * 64)
    assert not (tmp_path / "reports").exists()
