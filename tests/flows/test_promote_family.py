"""The promote flow and the training flow's gate artifacts for both model families, without a Prefect server.

The flows' bodies run in process (``promote.fn``) with the artifact functions captured; the registry is real:
a temp SQLite MLflow store holding the classifier's registered model and the generative model's, each with
tiny fake versions (a run with one text file; nothing here loads a model, the LLM champion's scoring is
replaced as in ``tests/pipelines/llm/test_register_llm.py``). Acting on one family never moves the other's
aliases.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines.llm.evaluation import ids_sha256
from pipelines.registry.aliases import CHALLENGER, CHAMPION, PREVIOUS

CLASSIFIER, LLM = "router", "triage"
GOOD = {"n": 2, "json_valid_rate": 0.9, "mean_field_score": 0.7, "summary_rouge_l": 0.4, "tokens_per_s": 55.0}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """params.yaml on a temp registry naming both registered models; cwd in tmp_path (no data/processed)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "mlflow": {
                    "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                    "artifact_root": str(tmp_path / "art"),
                    "experiment": "t",
                    "registered_model": CLASSIFIER,
                },
                "register_llm": {"registered_model": LLM},
                "flows": {"mlflow_ui_url": "http://mlflow.test"},
            }
        )
    )
    return tmp_path


@pytest.fixture
def artifacts(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """What the flows publish (markdown and table artifacts), captured; a plain logger instead of Prefect's."""
    import logging

    from flows import promote as promote_flow
    from flows import training as training_flow

    published: list[dict] = []
    for module in (promote_flow, training_flow):
        monkeypatch.setattr(module, "get_run_logger", lambda: logging.getLogger("test"))
        monkeypatch.setattr(module, "create_markdown_artifact", lambda **kw: published.append(kw))
    monkeypatch.setattr(training_flow, "create_table_artifact", lambda **kw: published.append(kw))
    return published


def registries():
    from pipelines.config import load_params
    from pipelines.registry import tracking

    params = load_params()
    tracking.setup(params.mlflow)
    return tracking.Registry(params.mlflow, CLASSIFIER), tracking.Registry(params.mlflow, LLM)


def fake_version(reg, **tags: str) -> str:
    """A new version of ``reg`` from a run holding one text file: enough for aliases, tags and run links."""
    import mlflow

    with mlflow.start_run() as run:
        mlflow.log_text("not a model", "model/README.txt")
    if not reg.exists():
        reg.client.create_registered_model(reg.name)
    mv = reg.client.create_model_version(reg.name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, tags=tags)
    return str(mv.version)


@pytest.fixture
def loadable(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every version loads (the fake versions here hold no model; the gate and a manual promotion load the LLM
    version they would make champion); returns the ``(registered model, ref)`` pairs loaded."""
    from pipelines.registry import tracking

    loaded: list[tuple[str, str]] = []
    monkeypatch.setattr(tracking.Registry, "load_pyfunc", lambda self, ref: loaded.append((self.name, str(ref))))
    return loaded


def aliases(reg) -> dict:
    return {a: reg.alias(a) for a in (CHAMPION, CHALLENGER, PREVIOUS)} | {"history": reg.model_tag("champion_history")}


@pytest.fixture
def both(project: Path):
    """The classifier: v1 champion, v2 challenger. The generative model: v1 champion, v2 challenger (adapter
    ``sha-2``)."""
    from pipelines.registry.gate import promote_version

    clf, llm = registries()
    for reg, tags in ((clf, ({}, {})), (llm, ({"adapter_sha256": "sha-1"}, {"adapter_sha256": "sha-2"}))):
        v1, v2 = fake_version(reg, **tags[0]), fake_version(reg, **tags[1])
        promote_version(reg, v1, "test: first champion")
        reg.set_alias(CHALLENGER, v2)
    return clf, llm


def write_llm_gate_inputs(adapter_sha: str = "sha-2") -> None:
    """data/sft/test.jsonl (the LLM family's default gate rows) and llm_eval's scores of ``adapter_sha`` on them."""
    answer = json.dumps({"category": "billing", "priority": "high", "summary": "charged twice"})
    rows = [
        {"id": f"t{i}", "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]}
        for i, text in enumerate(["I was charged twice.", "Refund my double charge."])
    ]
    Path("data/sft").mkdir(parents=True)
    Path("data/sft/test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    Path("metrics").mkdir()
    scores = {"rows": 2, "adapter_sha256": adapter_sha, "test_ids_sha256": ids_sha256(["t0", "t1"]), "finetuned": GOOD}
    Path("metrics/llm_eval.json").write_text(json.dumps(scores))


# --------------------------------------------------------------------------- promote: family="llm"
def test_promote_by_hand_and_rollback_move_only_the_llm_aliases(both, artifacts, loadable) -> None:
    from flows.promote import PromoteOptions, promote

    clf, llm = both
    classifier_before = aliases(clf)

    moved = promote.fn(PromoteOptions(family="llm", version="2"))
    assert (moved["champion_before"], moved["champion_after"]) == ("1", "2")
    assert (llm.alias(CHAMPION), llm.alias(PREVIOUS)) == ("2", "1")
    assert aliases(clf) == classifier_before  # the classifier's champion, challenger and history are untouched

    (artifact,) = artifacts
    assert artifact["key"] == "promotion-llm" and artifact["description"].startswith(f"{LLM}: champion v1 -> v2")
    run_id = llm.version("2").run_id
    assert f"http://mlflow.test/#/models/{LLM}/versions/2" in artifact["markdown"]
    assert f"/runs/{run_id}" in artifact["markdown"] and f"#/models/{CLASSIFIER}" not in artifact["markdown"]

    back = promote.fn(PromoteOptions(family="llm", rollback=True))
    assert (back["champion_before"], back["champion_after"]) == ("2", "1") and llm.alias(CHAMPION) == "1"
    assert aliases(clf) == classifier_before


def test_the_llm_gate_reads_its_own_test_rows_and_writes_its_own_decision(
    both, artifacts, monkeypatch, loadable
) -> None:
    """No test_split given: the gate compares on data/sft/test.jsonl (there is no data/processed here at all)."""
    from flows.promote import PromoteOptions, promote
    from pipelines.llm import registration

    clf, llm = both
    classifier_before = aliases(clf)
    write_llm_gate_inputs()
    worse = {**GOOD, "mean_field_score": 0.6}
    monkeypatch.setattr(registration, "score_registered", lambda *a, **k: dict(worse))  # the champion, scored now

    out = promote.fn(PromoteOptions(family="llm"))
    assert (out["champion_before"], out["champion_after"]) == ("1", "2") and llm.alias(CHAMPION) == "2"
    decision = json.loads(Path("reports/promotion_llm.json").read_text())
    assert decision["family"] == "llm" and decision["model"] == LLM and decision["promoted"]
    assert decision["test_rows"] == 2 and decision["champion"]["mean_field_score"] == 0.6
    assert not Path("reports/promotion.json").exists() and not Path("data/processed").exists()
    assert aliases(clf) == classifier_before
    assert artifacts[0]["key"] == "promotion-llm" and "PROMOTED" in artifacts[0]["markdown"]
    assert loadable == [(LLM, "2")]  # the challenger was loaded once, by its number, before being promoted


def test_a_refused_llm_challenger_fails_the_flow_only_when_register_llm_says_so(
    both, artifacts, monkeypatch, loadable
) -> None:
    from flows.promote import PromoteOptions, promote
    from pipelines.errors import GateFailed
    from pipelines.llm import registration

    clf, llm = both
    write_llm_gate_inputs()
    better = {**GOOD, "json_valid_rate": 1.0}
    monkeypatch.setattr(registration, "score_registered", lambda *a, **k: dict(better))
    settings = yaml.safe_load(Path("params.yaml").read_text())
    settings["register"] = {"fail_on_refusal": False}
    settings["register_llm"]["fail_on_refusal"] = True
    Path("params.yaml").write_text(yaml.safe_dump(settings))

    with pytest.raises(GateFailed, match="challenger v2 refused: .*valid-JSON rate 0.9000 is 0.1000 below"):
        promote.fn(PromoteOptions(family="llm"))
    assert llm.alias(CHAMPION) == "1" and clf.alias(CHAMPION) == "1"
    assert "REFUSED" in artifacts[0]["markdown"]  # published before failing


def test_an_unloadable_llm_version_fails_the_gate_and_a_manual_promotion_moving_nothing(
    both, artifacts, monkeypatch
) -> None:
    """The generative challenger's scores come from llm_eval, but it is loaded before it can become champion: v2
    here holds no model, so the gate fails naming it (before: promoted), and so does promoting it by hand."""
    from flows.promote import PromoteOptions, promote
    from pipelines.llm import registration
    from pipelines.registry.gate import ModelLoadFailed

    clf, llm = both
    before = (aliases(clf), aliases(llm))
    write_llm_gate_inputs()
    monkeypatch.setattr(registration, "score_registered", lambda *a, **k: {**GOOD, "mean_field_score": 0.1})
    with pytest.raises(ModelLoadFailed, match=rf"registered model '{LLM}' v2 \(challenger\) cannot be loaded"):
        promote.fn(PromoteOptions(family="llm"))
    with pytest.raises(ModelLoadFailed, match=rf"'{LLM}' v2 \(to be promoted\) cannot be loaded"):
        promote.fn(PromoteOptions(family="llm", version="2"))
    assert (aliases(clf), aliases(llm)) == before and not artifacts
    assert not Path("reports/promotion_llm.json").exists()


def test_after_an_llm_rollback_the_gate_never_repromotes_it(both, artifacts, monkeypatch, loadable) -> None:
    from flows.promote import PromoteOptions, promote
    from pipelines.llm import registration

    clf, llm = both
    promote.fn(PromoteOptions(family="llm", version="2"))
    back = promote.fn(PromoteOptions(family="llm", rollback=True, reason="invented order ids"))
    assert back["champion_after"] == "1"
    tags = llm.version("2").tags
    assert (tags["rolled_back"], tags["rolled_back_to"]) == ("true", "1")
    assert tags["rolled_back_reason"] == "manual: Prefect flow promote: invented order ids"
    assert llm.alias(CHALLENGER) is None  # taken off the rolled-back version (before: still v2, re-promoted)

    llm.set_alias(CHALLENGER, "2")  # as register_llm does when the same adapter is registered again
    write_llm_gate_inputs()
    monkeypatch.setattr(registration, "score_registered", lambda *a, **k: {**GOOD, "mean_field_score": 0.1})
    out = promote.fn(PromoteOptions(family="llm"))
    assert out["champion_after"] == "1" and llm.alias(CHAMPION) == "1"
    decision = json.loads(Path("reports/promotion_llm.json").read_text())
    assert decision["rolled_back"] and "never promotes a rolled-back version" in decision["reasons"][0]
    assert clf.alias(CHAMPION) == "1" and clf.version("1").tags.get("rolled_back") is None


def test_promote_options_default_to_the_classifier_and_refuse_an_unknown_family() -> None:
    from prefect.exceptions import ParameterTypeError

    from flows.promote import PromoteOptions, promote

    assert (PromoteOptions().family, PromoteOptions().test_split) == ("classifier", None)
    assert promote.validate_parameters({"options": {"family": "llm"}})["options"].family == "llm"
    with pytest.raises(ParameterTypeError, match="family"):
        promote.validate_parameters({"options": {"family": "gpt"}})


def test_mlflow_links_name_the_familys_registered_model(both) -> None:
    from flows.common import mlflow_links
    from pipelines.config import load_params

    clf, llm = both
    params = load_params()
    links = mlflow_links(params, "2", "llm")
    assert links["registered model"] == f"http://mlflow.test/#/models/{LLM}"
    assert links["run"].endswith(f"/runs/{llm.version('2').run_id}") and "note" not in links
    assert mlflow_links(params, "2")["run"].endswith(f"/runs/{clf.version('2').run_id}")


# --------------------------------------------------------------------------- the training flow's gate artifacts
def llm_decision() -> dict:
    """What register_llm writes (run_gate with registration.brief): graded scores, no macro_f1."""
    from pipelines.llm.registration import brief

    return {
        "promote": True,
        "promoted": True,
        "reasons": ["mean field score 0.7000 vs champion 0.6000 (delta +0.1000, tolerance 0.0)"],
        "deltas": {"mean_field_score": 0.1, "json_valid_rate": 0.0},
        "model": LLM,
        "family": "llm",
        "challenger_version": "2",
        "champion_version_before": "1",
        "champion_version_after": "2",
        "test_rows": 2,
        "basis": "compared on the current test rows (2, ids sha256 abc)",
        "challenger": brief(GOOD),
        "champion": brief({**GOOD, "mean_field_score": 0.6, "summary_rouge_l": None}),
        "decided_at": "2030-01-01T00:00:00+00:00",
    }


def test_publish_gate_tabulates_the_llm_decisions_own_metrics(artifacts) -> None:
    from flows.training import publish_gate

    publish_gate(llm_decision(), {"registered model": f"http://mlflow.test/#/models/{LLM}"})
    markdown, table = artifacts
    assert markdown["key"] == "gate-decision-llm" and "register_llm" in markdown["description"]
    assert "PROMOTED" in markdown["markdown"] and f"#/models/{LLM}" in markdown["markdown"]
    assert table["key"] == "test-metrics-llm"
    assert table["table"] == [
        {"model": "challenger v2", "json_valid_rate": 0.9, "mean_field_score": 0.7, "summary_rouge_l": 0.4},
        {"model": "champion v1", "json_valid_rate": 0.9, "mean_field_score": 0.6, "summary_rouge_l": None},
    ]


def test_publish_gate_keeps_the_classifier_table_and_keys(artifacts) -> None:
    from flows.training import publish_gate

    per_class = {"billing": 0.9, "shipping": 0.8}
    decision = {
        **llm_decision(),
        "family": "classifier",
        "model": CLASSIFIER,
        "champion_version_before": None,
        "challenger": {"macro_f1": 0.91234, "accuracy": 0.9, "ece": 0.05, "per_class_f1": per_class},
        "champion": None,
    }
    publish_gate(decision, {})
    markdown, table = artifacts
    assert (markdown["key"], table["key"]) == ("gate-decision", "test-metrics")
    assert table["table"] == [{"model": "challenger v2", "macro_f1": 0.9123, "accuracy": 0.9, "ece": 0.05}]
