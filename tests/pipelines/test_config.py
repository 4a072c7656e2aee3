"""params.yaml → typed models: bad keys, types and ranges are refused naming the dotted key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from pipelines.config import Params, load_params, parse_params
from pipelines.errors import ConfigError
from tests.helpers.data import ROOT, SHARED_DATASETS

REQUIRED = "<required>"
# Fields whose own default is not the file's value, on purpose. ``data.columns`` as a whole defaults to the
# shipped mapping (compared like every other field); inside a mapping the user writes, text and label are
# required and the optional roles stay unmapped unless named.
NOT_FROM_THE_FILE: dict[str, Any] = {
    "data.columns.text": REQUIRED,
    "data.columns.label": REQUIRED,
    "data.columns.timestamp": None,
    "data.columns.group": None,
    "data.columns.id": None,
}


def default_drift(model: type[BaseModel], parsed: BaseModel, raw: dict, given: Any = None, path: str = "") -> list[str]:
    """Every key whose typed default differs from the file's value (or that the file leaves out), recursively.

    A key has two defaults: its field's own (the user's section leaves the key out) and the one inside
    its parent's default (the user leaves the whole section out: ``given``). Both must be the file's.
    """
    problems = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        dotted = f"{path}{key}"
        if key not in raw:
            problems.append(f"{dotted}: not in params.yaml (the shipped file shows every key)")
            continue
        own = REQUIRED if field.is_required() else field.get_default(call_default_factory=True)
        value = getattr(parsed, name)
        if dotted in NOT_FROM_THE_FILE and own != NOT_FROM_THE_FILE[dotted]:
            problems.append(f"{dotted}: default {own!r}, by design {NOT_FROM_THE_FILE[dotted]!r}")
        if isinstance(value, BaseModel):
            problems += default_drift(type(value), value, raw[key], None if own is REQUIRED else own, f"{dotted}.")
            continue
        defaults = ([] if dotted in NOT_FROM_THE_FILE else [own]) + ([getattr(given, name)] if given else [])
        wrong = next((d for d in defaults if d != value), None)
        if any(d != value for d in defaults):
            problems.append(f"{dotted}: pipelines/config.py default {wrong!r} but params.yaml has {value!r}")
    return problems


def shipped() -> tuple[Params, dict]:
    path = ROOT / "params.yaml"
    return load_params(path), yaml.safe_load(path.read_text(encoding="utf-8"))


def test_repo_params_yaml_loads_and_matches_what_it_says():
    p = load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert isinstance(p, Params)
    assert p.data.columns.text == raw["data"]["columns"]["text"]
    assert p.validate_.expected_labels == raw["validate"]["expected_labels"]
    assert p.split.test_fraction == raw["split"]["test_fraction"]
    assert p.leakage.leaky_column_action == raw["leakage"]["leaky_column_action"]


def test_every_typed_default_is_the_shipped_params_yaml_value():
    """params.yaml is the one source of defaults: config.py's defaults repeat it, key by key."""
    params, raw = shipped()
    assert default_drift(Params, params, raw) == []


def test_default_drift_names_the_key():
    params, raw = shipped()
    raw["finetune"]["epochs"] += 1
    del raw["baselines"]["seed"]
    drift = default_drift(Params, parse_params(raw), raw)
    assert drift == [
        "baselines.seed: not in params.yaml (the shipped file shows every key)",
        f"finetune.epochs: pipelines/config.py default {params.finetune.epochs} but params.yaml has "
        f"{params.finetune.epochs + 1}",
    ]


@pytest.mark.parametrize("section", list(yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))))
def test_a_params_file_without_a_section_runs_as_the_shipped_one(section):
    params, raw = shipped()
    del raw[section]
    assert parse_params(raw) == params
    assert parse_params({}) == params


@pytest.mark.parametrize(
    "raw, key, words",
    [
        ({"validate": {"min_clas_count": 5}}, "validate.min_clas_count", "unknown key"),
        ({"leakage": {"seed": 1, "bogus": True}}, "leakage.bogus", "unknown key"),
        ({"nonsense": {}}, "nonsense", "unknown key"),
        ({"data": {"columns": {"text": "t", "label": "l", "extra": "x"}}}, "data.columns.extra", "unknown key"),
    ],
    ids=["section-key", "second-key", "section", "nested"],
)
def test_unknown_key_is_refused_naming_it(raw, key, words):
    with pytest.raises(ConfigError) as exc:
        parse_params(raw)
    assert f"{key}: " in str(exc.value)
    assert words in str(exc.value)


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"split": {"test_fraction": "a lot"}}, "split.test_fraction"),
        ({"generate": {"n_rows": "many"}}, "generate.n_rows"),
        ({"ingest": {"scrub_pii": "perhaps"}}, "ingest.scrub_pii"),
        ({"validate": {"expected_labels": "ham"}}, "validate.expected_labels"),
        ({"split": {"strategy": "random"}}, "split.strategy"),
        ({"split": 5}, "split"),
    ],
)
def test_wrong_type_is_refused_naming_the_key(raw, key):
    with pytest.raises(ConfigError) as exc:
        parse_params(raw)
    assert f"\n  {key}: " in str(exc.value)


@pytest.mark.parametrize(
    "raw, key, got",
    [
        ({"split": {"test_fraction": 0.9}}, "split.test_fraction", "0.9"),
        ({"split": {"val_fraction": 0.0}}, "split.val_fraction", "0.0"),
        ({"validate": {"min_class_count": 0}}, "validate.min_class_count", "0"),
        ({"generate": {"n_rows": 10}}, "generate.n_rows", "10"),
        ({"leakage": {"near_duplicate_threshold": 1.5}}, "leakage.near_duplicate_threshold", "1.5"),
        ({"data": {"columns": {"text": [], "label": "y"}}}, "data.columns.text", "[]"),
    ],
)
def test_out_of_range_value_is_refused_naming_key_and_value(raw, key, got):
    with pytest.raises(ConfigError) as exc:
        parse_params(raw)
    msg = str(exc.value)
    assert f"{key}: " in msg and f"(got {got})" in msg


def test_every_bad_value_is_reported_at_once():
    with pytest.raises(ConfigError) as exc:
        parse_params({"split": {"test_fraction": 0.9, "val_fraction": -1}, "validate": {"typo": 1}})
    msg = str(exc.value)
    assert msg.startswith("params: 3 invalid value(s)")
    for key in ("split.test_fraction", "split.val_fraction", "validate.typo"):
        assert key in msg


def test_cross_field_rule_names_the_section():
    with pytest.raises(ConfigError, match=r"validate: .*min_text_chars \(10\) is above max_text_chars \(5\)"):
        parse_params({"validate": {"min_text_chars": 10, "max_text_chars": 5}})


def test_single_text_column_becomes_a_list():
    p = parse_params({"data": {"columns": {"text": "SMS", "label": "Label"}}})
    assert p.data.columns.text == ["SMS"]
    assert p.data.columns.timestamp is None


def test_load_params_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("split: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("split:\n  test_fraction: 0.9\n")
    with pytest.raises(ConfigError, match=rf"^{typo}: 1 invalid value\(s\)\n  split.test_fraction"):
        load_params(typo)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(listy)


@pytest.mark.integration
def test_bad_params_stop_a_stage_cli_with_exit_2_and_no_traceback(tmp_path):
    from tests.helpers.data import run_stage, write_params

    params = write_params(tmp_path / "params.yaml", split={"test_fraction": 0.9})
    r = run_stage("split", "--params", str(params), cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {params}: 1 invalid value(s)")
    assert "split.test_fraction" in r.stderr


def test_the_full_data_llm_example_is_params_yaml_with_only_the_llm_training_scaled_up():
    """examples/params-llm-full.yaml is copied over params.yaml by users: it loads and differs only where it says."""
    example = ROOT / "examples" / "params-llm-full.yaml"
    full, raw_full = load_params(example), yaml.safe_load(example.read_text(encoding="utf-8"))
    _, raw = shipped()
    changed = {section for section in raw if raw_full.get(section) != raw[section]}
    assert changed == {"sft_data", "sft"} and set(raw_full) == set(raw)
    assert full.sft_data.max_train_samples is None and full.sft.epochs >= 2


# The data-set examples: params.yaml with only the keys their data needs changed (section -> keys; "*": any key).
# (examples/sync.py copies every other section from params.yaml: `make examples` after changing params.yaml.)
DATA_EXAMPLES: dict[str, dict[str, set[str] | str]] = {
    "clinc150.params.yaml": {
        "data": "*",
        "validate": {"expected_labels"},
        "split": {"strategy"},
        "leakage": {"duplicate_action", "target_columns"},
        "abstention": {"oos_label", "max_in_scope_rate"},
        # all 15,100 rows, up to 5 epochs, full fine-tuning (LoRA stops short of the 96%)
        "finetune": {"max_train_samples", "max_eval_samples", "epochs", "method", "learning_rate", "micro_batch_size"},
        "llm": {"enabled"},  # no triage answers in the data: the generative branch is off
    },
    "sms_spam.params.yaml": {
        "data": "*",
        "validate": {"expected_labels"},
        "split": {"strategy"},
        "leakage": {"target_columns"},
        "finetune": {"max_train_samples", "epochs", "group_by_length"},
        "llm": {"enabled"},
    },
}


@pytest.mark.parametrize("name", sorted(DATA_EXAMPLES))
def test_a_data_set_example_is_params_yaml_changed_only_where_its_data_needs(name):
    """examples/<data>.params.yaml is copied over params.yaml by users: it loads and differs only where it must."""
    example = ROOT / "examples" / name
    load_params(example)
    raw_ex = yaml.safe_load(example.read_text(encoding="utf-8"))
    _, raw = shipped()
    assert set(raw_ex) == set(raw), "every section of params.yaml, no other"
    allowed = DATA_EXAMPLES[name]
    for section in raw:
        if raw_ex[section] == raw[section] or allowed.get(section) == "*":
            continue
        changed = {k for k in raw[section] | raw_ex[section] if raw[section].get(k) != raw_ex[section].get(k)}
        assert changed <= allowed.get(section, set()), f"{name}: {section}.{sorted(changed)} differ from params.yaml"


def _from_repo(path: str) -> Path:
    """A params path as the stages resolve it: relative to the repository they run in."""
    return Path(os.path.normpath(ROOT / path))


def test_the_clinc150_example_keeps_the_authors_splits_and_scores_on_the_official_test_file():
    p = load_params(ROOT / "examples" / "clinc150.params.yaml")
    assert _from_repo(p.data.path) == SHARED_DATASETS / "clinc150"
    assert p.data.split_paths is not None and p.data.split_paths.test == "test.csv" and p.data.split_paths.val
    assert p.split.strategy == "given" and p.leakage.duplicate_action == "report" and p.leakage.target_columns == []
    assert (p.data.columns.text, p.data.columns.label) == (["text"], "intent")


def test_the_sms_example_reads_the_tsv_without_quoting_and_splits_stratified():
    p = load_params(ROOT / "examples" / "sms_spam.params.yaml")
    assert _from_repo(p.data.path) == SHARED_DATASETS / "sms_spam" / "SMSSpamCollection.tsv"
    assert p.data.csv_quoting is False and p.data.split_paths is None and p.data.columns.split is None
    assert p.split.strategy == "stratified" and p.validate_.expected_labels == ["ham", "spam"]
    assert p.leakage.target_columns == []


def test_the_examples_are_in_sync_with_params_yaml():
    """`make examples` (examples/sync.py) leaves nothing to change: every section not the example's own is
    params.yaml's text, comments included."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sync", ROOT / "examples" / "sync.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    params_text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    for name, own in sync.OWN_SECTIONS.items():
        text = (ROOT / "examples" / name).read_text(encoding="utf-8")
        assert sync.synced(params_text, text, own) == text, f"examples/{name} is out of date: run make examples"
