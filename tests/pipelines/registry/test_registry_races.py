"""The registry's guarantees on a throw-away SQLite store (the classifier family; the LLM family's are in
tests/flows/test_promote_family.py and tests/pipelines/llm/test_register_llm.py):

- the gate loads versions by number and promotes by compare-and-swap: two gates racing, exactly one wins;
  an alias moved between resolve and promote, refused, nothing moved;
- a rollback marks the version it leaves and takes ``challenger`` off it; the gate never re-promotes it;
- a version that cannot be loaded fails the gate (or a manual promotion) naming it; nothing moves;
- ``selected.json`` cannot point the register stage at a file outside its folder.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from pipelines import promotion
from pipelines.classifier import pyfunc
from pipelines.classifier.gate import run_classifier_gate
from pipelines.config import Params
from pipelines.errors import DataError, GateFailed
from pipelines.registry import tracking
from pipelines.registry.aliases import CHALLENGER, CHAMPION, PREVIOUS
from pipelines.registry.gate import ModelLoadFailed, promote_version, rollback
from pipelines.registry.tracking import RegistryConflict
from tests.helpers.flows import register, split

TEST = split(80, 1)


@pytest.fixture
def reg(registry_cfg: Params) -> tracking.Registry:
    tracking.setup(registry_cfg.mlflow)
    return tracking.Registry(registry_cfg.mlflow)


def worse(cfg: Params, name: str = "majority") -> str:
    train = split(200, 0)
    return register(
        cfg, DummyClassifier(strategy="most_frequent").fit(np.zeros((len(train), 1)), train.label), name, TEST
    )


def good(cfg: Params, name: str = "good", c: float = 10.0) -> str:
    train = split(200, 0)
    return register(
        cfg, make_pipeline(TfidfVectorizer(), LogisticRegression(C=c)).fit(train.text, train.label), name, TEST
    )


def gate(reg, cfg: Params) -> dict:
    return run_classifier_gate(reg, TEST, cfg.register_)


def state(reg) -> dict:
    return {a: reg.alias(a) for a in (CHAMPION, CHALLENGER, PREVIOUS)}


def on_load(monkeypatch, hook) -> list[str]:
    """Call ``hook(ref)`` whenever the gate loads a model; returns the refs it loaded, in order."""
    real, loaded = pyfunc.load_registered, []

    def load(reg, ref, precision=None):
        loaded.append(str(ref))
        hook(str(ref))
        return real(reg, ref, precision=precision)

    monkeypatch.setattr(pyfunc, "load_registered", load)
    return loaded


def fake_version(reg) -> str:
    """A version whose artifacts hold no model (a broken upload, a deleted artifact store): it cannot be loaded."""
    import mlflow

    with mlflow.start_run() as run:
        mlflow.log_text("not a model", "model/README.txt")
    if not reg.exists():
        reg.client.create_registered_model(reg.name)
    return str(
        reg.client.create_model_version(reg.name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id).version
    )


# --------------------------------------------------------------------------- versions by number, compare-and-swap
def test_the_gate_loads_the_versions_it_resolved_by_number(reg, registry_cfg, monkeypatch) -> None:
    v1 = worse(registry_cfg)
    gate(reg, registry_cfg)
    v2 = good(registry_cfg)
    loaded = on_load(monkeypatch, lambda ref: None)
    d = gate(reg, registry_cfg)
    assert loaded == [v2, v1]  # never "@challenger" / "@champion", which could move while the gate runs
    assert d["promoted"] and state(reg) == {CHAMPION: v2, CHALLENGER: v2, PREVIOUS: v1}


@pytest.mark.parametrize("moved", [CHALLENGER, CHAMPION])
def test_an_alias_moved_between_resolve_and_promote_is_refused(reg, registry_cfg, monkeypatch, moved: str) -> None:
    """While the gate scores v2 against v1, another process registers v3 (challenger moves) or promotes it by
    hand (champion moves): the gate's promotion of v2 is refused and what the other one did stays."""
    v1 = worse(registry_cfg)
    gate(reg, registry_cfg)
    v3 = good(registry_cfg, "other", c=1.0)
    v2 = good(registry_cfg)
    assert state(reg)[CHALLENGER] == v2

    def meanwhile(ref: str) -> None:
        if ref == v2:  # the challenger is being loaded: the aliases were resolved already
            if moved == CHALLENGER:
                reg.set_alias(CHALLENGER, v3)
            else:
                promote_version(reg, v3, "manual: someone else")

    on_load(monkeypatch, meanwhile)
    with pytest.raises(RegistryConflict, match=f"'{moved}' moved from v{v2 if moved == CHALLENGER else v1} to v{v3}"):
        gate(reg, registry_cfg)
    expected = {CHAMPION: v1, CHALLENGER: v3} if moved == CHALLENGER else {CHAMPION: v3, CHALLENGER: v2}
    assert {a: reg.alias(a) for a in expected} == expected
    assert reg.model_tag("champion_history").split(",")[-1] == expected[CHAMPION]


def test_two_gates_racing_exactly_one_promotes(reg, registry_cfg, monkeypatch) -> None:
    """Both resolve champion v1 / challenger v2 and score before either commits: one moves the champion, the other
    fails with a conflict (before: both reported 'promoted')."""
    v1 = worse(registry_cfg)
    gate(reg, registry_cfg)
    v2 = good(registry_cfg)
    both_resolved = threading.Barrier(2, timeout=60)
    on_load(monkeypatch, lambda ref: both_resolved.wait() if ref == v2 else None)
    outcomes: list[object] = []

    def run() -> None:
        try:
            outcomes.append(gate(tracking.Registry(registry_cfg.mlflow), registry_cfg))
        except Exception as err:  # noqa: BLE001 - the outcome is what is asserted
            outcomes.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    won = [o for o in outcomes if isinstance(o, dict)]
    lost = [o for o in outcomes if not isinstance(o, dict)]
    assert len(won) == 1 and won[0]["promoted"] and won[0]["champion_version_after"] == v2, outcomes
    assert len(lost) == 1 and isinstance(lost[0], RegistryConflict), outcomes
    assert f"'champion' moved from v{v1} to v{v2}" in str(lost[0])
    assert state(reg) == {CHAMPION: v2, CHALLENGER: v2, PREVIOUS: v1}
    assert reg.model_tag("champion_history") == f"{v1},{v2}"  # promoted once, not twice


def test_a_manual_promotion_or_rollback_is_refused_when_the_champion_moved_since_it_was_read(reg, registry_cfg) -> None:
    v1 = worse(registry_cfg)
    gate(reg, registry_cfg)
    v2 = good(registry_cfg)
    with pytest.raises(RegistryConflict, match=f"'champion' moved from v99 to v{v1} while promoting v{v2}"):
        promote_version(reg, v2, "manual", expected_champion="99")
    with pytest.raises(RegistryConflict, match="while rolling back"):
        rollback(reg, "r", expected_champion=v2)
    assert state(reg)[CHAMPION] == v1


# --------------------------------------------------------------------------- rollback marks the version
def test_a_rolled_back_version_is_never_repromoted_by_the_gate(reg, registry_cfg) -> None:
    v1 = worse(registry_cfg)
    gate(reg, registry_cfg)
    v2 = good(registry_cfg)
    assert gate(reg, registry_cfg)["promoted"]

    result = promotion.run_promotion(
        registry_cfg, rollback=True, reason="wrong routes in production", test=Path("unused.parquet")
    )
    assert (result.champion_before, result.champion_after) == (v2, v1)
    tags = reg.version(v2).tags
    assert tags["rolled_back"] == "true" and tags["rolled_back_to"] == v1
    assert tags["rolled_back_reason"] == "manual: python -m pipelines.promote: wrong routes in production"
    assert reg.alias(CHALLENGER) is None  # taken off the rolled-back version (before: still v2)

    assert good(registry_cfg) == v2  # the same model registered again: the same version is challenger again
    d = gate(reg, registry_cfg)
    assert not d["promote"] and not d["promoted"] and d["rolled_back"]
    assert (
        d["reasons"][0].startswith(f"v{v2} was rolled back (")
        and "never promotes a rolled-back version" in d["reasons"][0]
    )
    assert (d["champion_version_after"], d["challenger"]) == (v1, None)  # not even loaded
    assert state(reg)[CHAMPION] == v1 and reg.version(v2).tags["gate.decision"] == "refuse"

    promote_version(reg, v2, "manual: fixed upstream")  # a person may; that clears the mark
    assert state(reg)[CHAMPION] == v2 and "rolled_back" not in reg.version(v2).tags
    assert reg.version(v2).tags["rollback_cleared_by"] == "manual: fixed upstream"


# --------------------------------------------------------------------------- a version that cannot be loaded
def test_an_unloadable_challenger_fails_the_gate_loudly_and_moves_nothing(reg, registry_cfg) -> None:
    v1 = worse(registry_cfg)
    gate(reg, registry_cfg)
    broken = fake_version(reg)
    reg.set_alias(CHALLENGER, broken)
    before = state(reg)
    with pytest.raises(
        ModelLoadFailed, match=rf"'{reg.name}' v{broken} \(challenger\) cannot be loaded: .*no alias was moved"
    ):
        run_classifier_gate(reg, TEST, registry_cfg.register_)
    assert state(reg) == before and before[CHAMPION] == v1
    assert issubclass(ModelLoadFailed, GateFailed) and ModelLoadFailed.exit_code == 3  # non-zero, not retried

    with pytest.raises(ModelLoadFailed, match=rf"v{broken} \(to be promoted\) cannot be loaded"):
        promotion.run_promotion(registry_cfg, version=broken)
    assert state(reg) == before


def test_an_unloadable_champion_fails_the_gate_naming_it(reg, registry_cfg) -> None:
    broken = fake_version(reg)
    promote_version(reg, broken, "test: a champion whose artifacts are gone")
    v2 = good(registry_cfg)
    with pytest.raises(ModelLoadFailed, match=rf"v{broken} \(champion\) cannot be loaded"):
        gate(reg, registry_cfg)
    assert state(reg)[CHAMPION] == broken and state(reg)[CHALLENGER] == v2


# --------------------------------------------------------------------------- selected.json stays in its folder
@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_selected_json_cannot_name_a_file_outside_the_candidate_folder(tmp_path: Path, monkeypatch, where) -> None:
    import joblib

    from pipelines.classifier import registration

    folder, outside = tmp_path / "models" / "baselines", tmp_path / "elsewhere.joblib"
    folder.mkdir(parents=True)
    joblib.dump({"not": "a model"}, outside)
    name = {"parent": "../../elsewhere.joblib", "absolute": str(outside), "symlink": "link.joblib"}[where]
    if where == "symlink":
        (folder / "link.joblib").symlink_to(outside)
    (folder / "selected.json").write_text(json.dumps({"name": "x", "file": name}))
    monkeypatch.setattr(registration.joblib, "load", lambda p: pytest.fail(f"{p} was unpickled"))
    with pytest.raises(DataError, match="which is not inside"):
        registration.load_candidate(folder)


def test_a_broken_selected_json_is_a_clear_error(tmp_path: Path) -> None:
    from pipelines.classifier.registration import load_candidate

    (tmp_path / "selected.json").write_text('{"name": "x"}')
    with pytest.raises(DataError, match="has no 'file' text"):
        load_candidate(tmp_path)
    (tmp_path / "selected.json").write_text("{oops")
    with pytest.raises(DataError, match="is not valid JSON"):
        load_candidate(tmp_path)
