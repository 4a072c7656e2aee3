"""Hyperparameter search on Ray Tune: a tiny search end to end (best configuration, MLflow child runs, --apply),
search-space errors that name the key, and the params edit that keeps the file's comments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipelines.classifier.tuning import check, current_point, max_epochs, trial_finetune
from pipelines.config import parse_params
from pipelines.errors import ConfigError
from pipelines.tune import params_snippet, set_finetune_values
from tests.helpers import ROOT
from tests.helpers.data import write_ticket_splits

SPACE = {"learning_rate": {"loguniform": [0.002, 0.01]}, "head_learning_rate": {"loguniform": [0.005, 0.02]}}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_ticket_splits(tmp_path_factory.mktemp("data"))


@pytest.mark.integration
@pytest.mark.slow  # about 90 s: an embedded Ray, two trial processes each importing torch and DeepSpeed
def test_a_tiny_search_writes_its_best_configuration_and_one_child_run_per_trial(tmp_path, tiny_data):
    """Two trials (the current params, one sampled) of two short epochs each, side by side on one core each."""
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "finetune": {
                    "max_length": 32,
                    "micro_batch_size": 16,
                    "epochs": 2,
                    "learning_rate": 0.003,
                    "head_learning_rate": None,  # the current point's head rate: the adapters'
                },
                "tune": {
                    "search_space": SPACE,
                    "num_samples": 2,
                    "max_concurrent_trials": 2,
                    "cpus_per_trial": 1,
                    "max_train_samples": 48,
                    "max_eval_samples": 40,
                    "time_budget_s": 240,
                },
                "mlflow": {
                    "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                    "artifact_root": str(tmp_path / "art"),
                },
            },
            sort_keys=False,
        )
    )
    out, report = tmp_path / "tune", tmp_path / "tune.md"
    cmd = [sys.executable, "-m", "pipelines.tune", "--params", str(params), "--data-dir", str(tiny_data)]
    cmd += ["--out-dir", str(out), "--report", str(report), "--apply"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    proc = subprocess.run(
        cmd, cwd=tmp_path, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    best = json.loads((out / "best.json").read_text())
    assert best["trials"] == 2 and set(best["finetune"]) == set(SPACE)
    assert best["ran_on"].startswith("an embedded Ray on 127.0.0.1")  # loopback only
    assert 0.0 <= best["best_val_macro_f1"] <= 1.0 and best["best_epoch"] in (1, 2)
    assert 0.002 <= best["finetune"]["learning_rate"] <= 0.01
    assert best["current"] == {
        **best["current"],
        "trial": 1,
        "config": {"learning_rate": 0.003, "head_learning_rate": 0.003},
    }
    assert best["params_snippet"].startswith("finetune:\n  learning_rate: ") and best["params_snippet"] in proc.stdout
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2 and set(trials["status"]) <= {"done", "stopped early"}
    assert (out / "trials.png").stat().st_size > 0 and "| trial |" in report.read_text()
    # --apply: the best values are now the finetune section's (unless the current ones won), the rest as it was
    applied = yaml.safe_load(params.read_text())
    expected = {"learning_rate": 0.003, "head_learning_rate": None} if best["best_trial"] == 1 else best["finetune"]
    assert {k: applied["finetune"].get(k) for k in SPACE} == expected and applied["finetune"]["max_length"] == 32

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ticket-routing").experiment_id])
    parent = next(r for r in runs if r.info.run_name == "tune-finetune")
    assert parent.info.run_id == best["mlflow_parent_run_id"] and parent.data.tags["stage"] == "tune"
    assert parent.data.metrics["best_val_macro_f1"] == pytest.approx(best["best_val_macro_f1"])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and best["mlflow_best_run_id"] in {c.info.run_id for c in children}
    for child in children:
        assert child.info.status == "FINISHED" and "learning_rate" in child.data.params
        curve = client.get_metric_history(child.info.run_id, "val_macro_f1")
        assert [m.step for m in curve] == list(range(1, int(child.data.metrics["epochs_run"]) + 1))
        assert child.data.metrics["best_val_macro_f1"] == pytest.approx(max(m.value for m in curve))


@pytest.mark.parametrize(
    "space, words",
    [
        ({"lerning_rate": {"loguniform": [0.001, 0.01]}}, "'lerning_rate' is not a finetune hyperparameter"),
        ({"world_size": {"choice": [1, 2]}}, "'world_size' is not a finetune hyperparameter"),
        ({"lora_r": {"choice": [0, 8]}}, "lora_r: 0 is not a valid finetune.lora_r"),
        ({"lora_r": {"uniform": [4, 16]}}, "lora_r: finetune.lora_r is an integer"),
        ({"learning_rate": {"loguniform": [0.01, 0.001]}}, "low must be below high"),
        ({"learning_rate": {"loguniform": [0.001, 0.01], "choice": [0.1]}}, "give exactly one of"),
        ({}, "empty"),
    ],
    ids=["typo", "not-searchable", "bad-choice", "int-range", "reversed", "two-kinds", "empty"],
)
def test_a_bad_search_space_is_refused_naming_the_key(space, words):
    with pytest.raises(ConfigError) as exc:
        parse_params({"tune": {"search_space": space}})
    assert "tune.search_space" in str(exc.value) and words in str(exc.value)


def test_a_ray_client_address_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"tune.ray_address: 'ray://head:10001': Ray Client runs Tune's driver"):
        parse_params({"tune": {"ray_address": "ray://head:10001"}})
    assert parse_params({"tune": {"ray_address": "auto"}}).tune.ray_address == "auto"


def test_a_grace_period_beyond_every_trials_epochs_is_refused():
    p = parse_params({"finetune": {"epochs": 2}, "tune": {"grace_period": 4, "search_space": SPACE}})
    assert max_epochs(p) == 2
    with pytest.raises(ConfigError, match=r"tune.grace_period is 4 but a trial runs at most 2 epoch"):
        check(p)
    p = parse_params(
        {"finetune": {"epochs": 2}, "tune": {"grace_period": 4, "search_space": {"epochs": {"choice": [2, 5]}}}}
    )
    assert max_epochs(p) == 5
    check(p)


def test_a_trial_is_the_finetune_section_with_the_sampled_values_on_one_rank():
    p = parse_params(
        {"finetune": {"lora_r": 8, "world_size": 2, "learning_rate": 0.002, "head_learning_rate": None, "epochs": 2}}
    )
    # the first trial is the current configuration; a null head rate is the adapters' rate, as a number
    assert current_point(p) == {"learning_rate": 0.002, "head_learning_rate": 0.002, "lora_r": 8, "epochs": 2}
    p = parse_params({"finetune": {"learning_rate": 0.002, "head_learning_rate": 0.02}})
    assert current_point(p)["head_learning_rate"] == 0.02
    cfg = trial_finetune(p.finetune, {"lora_r": 16, "learning_rate": 0.004})
    assert (cfg.lora_r, cfg.learning_rate, cfg.world_size) == (16, 0.004, 1)
    assert cfg.target_modules == p.finetune.target_modules and cfg.seed == p.finetune.seed


def test_applying_the_best_values_keeps_the_params_files_comments_and_layout():
    text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    values = {"learning_rate": 0.00234, "head_learning_rate": 0.0125, "lora_r": 16, "epochs": 3, "weight_decay": 1e-05}
    new = set_finetune_values(text, values)
    raw = yaml.safe_load(new)
    assert {k: raw["finetune"][k] for k in values} == values
    old_raw = yaml.safe_load(text)
    assert {k: v for k, v in raw.items() if k != "finetune"} == {k: v for k, v in old_raw.items() if k != "finetune"}
    changed = [(a, b) for a, b in zip(text.splitlines(), new.splitlines()) if a != b]
    assert len(changed) == len(values) and len(new.splitlines()) == len(text.splitlines())
    lr_line = next(b for _, b in changed if b.lstrip().startswith("learning_rate:"))
    old_lr = next(a for a, _ in changed if a.lstrip().startswith("learning_rate:"))
    assert lr_line.index("#") == old_lr.index("#")  # the comment stays in its column
    # a key the section does not list is added to it
    added = yaml.safe_load(set_finetune_values("finetune:\n  epochs: 2\nserve:\n  port: 1\n", {"lora_r": 4}))
    assert added == {"finetune": {"epochs": 2, "lora_r": 4}, "serve": {"port": 1}}
    assert yaml.safe_load(params_snippet(values)) == {"finetune": values}
