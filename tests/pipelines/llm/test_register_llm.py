"""The generative model's registration on a throw-away SQLite MLflow store: its own registered model and aliases,
the gate on JSON validity and mean field score, rollback, no duplicate versions, stale evaluations refused, and the
logged pyfunc (adapter only, base by reference) loading and answering with a tiny Llama.

The base is a 2-layer, 32-wide Llama with the SmolLM2 tokenizer, saved to a folder that ``llm.base_model`` names;
each adapter is a LoRA (q_proj, v_proj) on it with random weights (a distinct file, so a distinct sha256).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from pipelines import promotion
from pipelines.config import Params, parse_params
from pipelines.errors import GateFailed
from pipelines.llm import registration
from pipelines.llm.chat_data import prompt_messages
from pipelines.llm.evaluation import file_sha256, ids_sha256
from pipelines.registry import tracking
from pipelines.registry.aliases import CHALLENGER, CHAMPION, PREVIOUS
from pipelines.registry.gate import report_markdown
from tests.helpers import llm as llm_helpers

CACHED_TOKENIZER = Path(__file__).resolve().parents[3] / "models" / "cache" / "smollm2-135m-instruct"
TICKETS = ["Invoice question\nI was charged twice.", "Parcel late\nOrder 12345 has not arrived.", "Login\nLocked out."]
GOOD = {"json_valid_rate": 0.9, "mean_field_score": 0.7, "category_accuracy": 0.8}


# --------------------------------------------------------------------------- fixtures: a tiny base and adapters
@pytest.fixture(scope="module")
def tokenizer_dir(request: pytest.FixtureRequest) -> Path:
    """The SmolLM2 tokenizer: the de-quantized cache when present (fast), else read from the packaged GGUF."""
    if (CACHED_TOKENIZER / "tokenizer.json").is_file():
        return CACHED_TOKENIZER
    return request.getfixturevalue("smol_tokenizer_dir")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return llm_helpers.tiny_base(tmp_path_factory.mktemp("tiny-base"), tokenizer_dir)


@pytest.fixture(scope="module")
def make_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path):
    """``make_adapter(seed)``: an SFT-stage-like folder (peft adapter + tokenizer + sft.json), one per seed."""
    made: dict[int, Path] = {}

    def make(seed: int) -> Path:
        if seed in made:
            return made[seed]
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_base)
        lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        out = tmp_path_factory.mktemp(f"adapter-{seed}")
        get_peft_model(base, lora).save_pretrained(out)
        AutoTokenizer.from_pretrained(tiny_base).save_pretrained(out)
        (out / "sft.json").write_text(json.dumps({"base_model": str(tiny_base), "seed": seed}))
        made[seed] = out
        return out

    return make


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def cfg(store: Path, tiny_base: Path, tmp_path: Path, monkeypatch, request, make_conversation) -> Params:
    """Params on the store (fresh model names per test), the tiny base, short answers; test rows in data/sft."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    name = request.node.name[:50]
    (tmp_path / "data" / "sft").mkdir(parents=True)
    rows = [{"id": f"t{i}", "messages": make_conversation(text)} for i, text in enumerate(TICKETS)]
    (tmp_path / "data" / "sft" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  sft_data:\n    cmd: x\n    outs:\n    - path: data/sft\n      md5: sft123.dir\n"
    )
    params = parse_params(
        {
            "mlflow": {
                "tracking_uri": f"sqlite:///{store / 'mlflow.db'}",
                "artifact_root": str(store / "art"),
                "experiment": "t",
                "registered_model": f"clf-{name}",
            },
            "llm": {"base_model": str(tiny_base), "cache_dir": "cache"},
            "llm_eval": {"max_new_tokens": 8, "batch_size": 4, "torch_threads": 1},
            "register_llm": {
                "registered_model": f"llm-{name}",
                "gate_mean_field_tolerance": 0.02,
                "gate_json_valid_tolerance": 0.0,
            },
        }
    )
    tracking.setup(params.mlflow)
    return params


def current_ids() -> str:
    return ids_sha256([f"t{i}" for i in range(len(TICKETS))])


def write_eval(adapter: Path, scores: dict, *, ids: str | None = None, path: str = "metrics/llm_eval.json") -> Path:
    """What llm_eval writes: the adapter's and the test ids' sha256 next to each system's scores."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sha = file_sha256(adapter / registration.ADAPTER_FILE)
    doc = {"rows": len(TICKETS), "adapter_sha256": sha, "test_ids_sha256": ids or current_ids(), "finetuned": scores}
    out.write_text(json.dumps(doc))
    return out


def register(cfg: Params, adapter: Path, scores: dict) -> dict:
    """The register_llm stage's CLI, in process; returns its decision."""
    from pipelines import register_llm

    write_eval(adapter, scores)
    register_llm.main(
        params=Path("unused.yaml"),
        adapter=adapter,
        data_dir=Path("data/sft"),
        eval_metrics=Path("metrics/llm_eval.json"),
        report=Path("reports/promotion_llm.md"),
        decision=Path("reports/promotion_llm.json"),
    )
    return json.loads(Path("reports/promotion_llm.json").read_text())


@pytest.fixture
def cli(cfg: Params, monkeypatch):
    """The CLI reads ``cfg`` (no params.yaml on disk)."""
    from pipelines import register_llm

    monkeypatch.setattr(register_llm, "load_params", lambda _: cfg)
    return cfg


def champion_scores(monkeypatch, scores: dict) -> None:
    """The champion, scored now, gets ``scores`` (a tiny random model would answer no valid JSON)."""
    monkeypatch.setattr(registration, "score_registered", lambda *a, **k: dict(scores))


# --------------------------------------------------------------------------- the rule, as a pure function
def test_the_llm_gate_rule() -> None:
    from pipelines.config import RegisterLlmConfig

    rule = RegisterLlmConfig(gate_mean_field_tolerance=0.02, gate_json_valid_tolerance=0.0)
    assert registration.gate_decision(GOOD, None, rule)["promote"]  # the first model
    assert registration.gate_decision({**GOOD, "mean_field_score": 0.681}, GOOD, rule)["promote"]
    d = registration.gate_decision({**GOOD, "mean_field_score": 0.8, "json_valid_rate": 0.89}, GOOD, rule)
    assert not d["promote"] and d["deltas"] == {"mean_field_score": 0.1, "json_valid_rate": -0.01}
    ungraded = {"json_valid_rate": None, "mean_field_score": None, "reason": "not triage JSON"}
    d = registration.gate_decision(ungraded, ungraded, rule)  # your own chat data: fields cannot be graded
    assert not d["promote"] and d["reasons"][0].startswith("mean field score cannot be compared (not triage JSON)")


def test_the_model_input_is_a_ticket_or_messages() -> None:
    from pipelines.errors import DataError
    from pipelines.llm.pyfunc import conversations_from_input

    msgs = [{"role": "user", "content": "hi", "name": "x"}]
    got = conversations_from_input(pd.DataFrame({"text": ["a ticket"], "messages": [msgs]}), "SYS")
    assert got == [[{"role": "user", "content": "hi"}]]  # messages win, extra keys dropped
    assert conversations_from_input(pd.DataFrame({"text": ["a ticket"]}), "SYS") == [prompt_messages("a ticket", "SYS")]
    with pytest.raises(DataError, match="reads a 'text' or a 'messages' column"):
        conversations_from_input(pd.DataFrame({"body": ["x"]}), "SYS")


# --------------------------------------------------------------------------- the gate, registration, rollback
def test_first_model_is_champion_of_its_own_registered_model(cli: Params, make_adapter) -> None:
    d = register(cli, make_adapter(1), GOOD)
    llm = tracking.Registry(cli.mlflow, cli.register_llm.registered_model)
    assert d["promoted"] and d["family"] == "llm" and llm.alias(CHAMPION) == llm.alias(CHALLENGER) == "1"
    assert not tracking.Registry(cli.mlflow).exists()  # the classifier's registered model is another one
    tags = llm.version("1").tags
    assert tags["adapter_sha256"] == file_sha256(make_adapter(1) / registration.ADAPTER_FILE)
    assert tags["base_model"] == cli.llm.base_model and tags["stage"] == "register_llm"
    assert tags["dvc.md5.data/sft"] == "sft123.dir" and "git.commit" in tags
    assert tags["gate.decision"] == "promote" and float(tags["gate.test_mean_field_score"]) == 0.7
    md = Path("reports/promotion_llm.md").read_text()
    assert "PROMOTED" in md and "| mean_field_score | 0.7000 |" in md


def test_worse_challengers_are_refused_better_promoted_and_rollback(cli: Params, make_adapter, monkeypatch) -> None:
    llm = tracking.Registry(cli.mlflow, cli.register_llm.registered_model)
    register(cli, make_adapter(1), GOOD)
    champion_scores(monkeypatch, GOOD)

    fields = register(cli, make_adapter(2), {**GOOD, "mean_field_score": 0.67})  # 0.03 below, tolerance 0.02
    assert not fields["promote"] and llm.alias(CHAMPION) == "1" and llm.alias(CHALLENGER) == "2"
    assert "mean field score 0.6700 is 0.0300 below the champion's 0.7000" in fields["reasons"][0]
    assert llm.version("2").tags["gate.decision"] == "refuse"
    assert "REFUSED" in report_markdown(fields) and "| mean_field_score | 0.7000 | 0.6700 | -0.0300 |" in (
        report_markdown(fields)
    )

    json_worse = register(cli, make_adapter(3), {**GOOD, "json_valid_rate": 0.85, "mean_field_score": 0.75})
    assert not json_worse["promote"] and llm.alias(CHAMPION) == "1"
    assert any("valid-JSON rate 0.8500 is 0.0500 below" in r for r in json_worse["reasons"])

    within = register(cli, make_adapter(4), {**GOOD, "mean_field_score": 0.69})  # within the tolerance
    assert within["promoted"] and (llm.alias(CHAMPION), llm.alias(PREVIOUS)) == ("4", "1")

    back = promotion.run_promotion(cli, family="llm", rollback=True)
    assert (back.champion_before, back.champion_after, back.family) == ("4", "1", "llm")
    assert llm.alias(CHAMPION) == "1"
    assert not tracking.Registry(cli.mlflow).exists()  # nothing happened to the classifier's model


def test_a_rolled_back_adapter_registered_again_is_not_repromoted(cli: Params, make_adapter, monkeypatch) -> None:
    """register_llm on the same adapter after a rollback reuses its version as challenger; the gate refuses it
    (before: challenger stayed on it and the next gate promoted it again)."""
    llm = tracking.Registry(cli.mlflow, cli.register_llm.registered_model)
    register(cli, make_adapter(1), GOOD)
    champion_scores(monkeypatch, GOOD)
    assert register(cli, make_adapter(2), GOOD)["promoted"] and llm.alias(CHAMPION) == "2"
    promotion.run_promotion(cli, family="llm", rollback=True, reason="bad summaries")
    assert llm.alias(CHAMPION) == "1" and llm.alias(CHALLENGER) is None
    assert llm.version("2").tags["rolled_back"] == "true"

    again = register(cli, make_adapter(2), GOOD)
    assert again["challenger_version"] == "2" and not again["promoted"] and again["rolled_back"]
    assert llm.alias(CHAMPION) == "1" and "REFUSED" in Path("reports/promotion_llm.md").read_text()


def test_a_refusal_fails_the_stage_only_when_register_llm_says_so(cli: Params, make_adapter, monkeypatch) -> None:
    register(cli, make_adapter(1), GOOD)
    champion_scores(monkeypatch, GOOD)
    strict = cli.model_copy(update={"register_llm": cli.register_llm.model_copy(update={"fail_on_refusal": True})})
    from pipelines import register_llm

    monkeypatch.setattr(register_llm, "load_params", lambda _: strict)
    with pytest.raises(GateFailed, match="challenger v2 refused: .*valid-JSON rate 0.5000 is 0.4000 below"):
        register(strict, make_adapter(2), {**GOOD, "json_valid_rate": 0.5})
    assert json.loads(Path("reports/promotion_llm.json").read_text())["promote"] is False  # written before failing
    assert tracking.Registry(cli.mlflow, cli.register_llm.registered_model).alias(CHAMPION) == "1"


def test_the_same_adapter_is_not_registered_twice(cli: Params, make_adapter) -> None:
    llm = tracking.Registry(cli.mlflow, cli.register_llm.registered_model)
    register(cli, make_adapter(1), GOOD)
    again = register(cli, make_adapter(1), GOOD)
    assert again["challenger_version"] == "1" and again["reasons"] == ["challenger is already the champion"]
    assert [str(v.version) for v in llm.client.search_model_versions(f"name = '{llm.name}'")] == ["1"]


@pytest.mark.parametrize("stale", ["adapter", "ids", "missing"])
def test_a_stale_evaluation_is_refused_before_anything_is_registered(cli: Params, make_adapter, stale: str) -> None:
    from pipelines import register_llm

    adapter = make_adapter(1)
    if stale == "adapter":
        write_eval(make_adapter(2), GOOD)  # scores of another adapter
        match = "scores adapter sha256 .* not the adapter being gated"
    elif stale == "ids":
        write_eval(adapter, GOOD, ids=ids_sha256(["t0", "t1"]))  # scored on other rows
        match = "scored on other test rows .* than the current data/sft/test.jsonl"
    else:
        match = "llm_eval.json does not exist"
    with pytest.raises(registration.StaleEvaluation, match=match) as err:
        register_llm.main(params=Path("x"), adapter=adapter, eval_metrics=Path("metrics/llm_eval.json"))
    assert "re-run the evaluation: `dvc repro llm_eval`" in str(err.value)
    assert not tracking.Registry(cli.mlflow, cli.register_llm.registered_model).exists()


def test_the_promote_cli_regates_the_llm_challenger_against_its_adapter_tag(cli: Params, make_adapter) -> None:
    register(cli, make_adapter(1), GOOD)
    write_eval(make_adapter(2), GOOD)  # llm_eval has moved on to an adapter that was never registered
    with pytest.raises(registration.StaleEvaluation, match="not the adapter being gated"):
        promotion.run_promotion(cli, family="llm")
    write_eval(make_adapter(1), GOOD)
    result = promotion.run_promotion(cli, family="llm")
    assert result.decision["reasons"] == ["challenger is already the champion"]
    assert Path("reports/promotion_llm.json").is_file() and not Path("reports/promotion.json").exists()


# --------------------------------------------------------------------------- the logged model
def test_the_version_holds_the_adapter_not_the_base_and_answers(cli: Params, make_adapter, tiny_base: Path) -> None:
    """Registered for real (no monkeypatch): the second version's gate scores the champion by generating."""
    from pipelines.llm.generation import generate, load_generator

    adapter = make_adapter(1)
    register(cli, adapter, GOOD)
    d = register(cli, make_adapter(2), {"json_valid_rate": 0.0, "mean_field_score": 0.0})
    assert d["champion"]["json_valid_rate"] == 0.0 and d["promoted"]  # a random tiny LM answers no JSON: equal

    llm = tracking.Registry(cli.mlflow, cli.register_llm.registered_model)
    files = Path(mlflow.artifacts.download_artifacts(llm.model_uri("1"), dst_path=str(Path("dl").resolve())))
    (folder,) = (files / "artifacts").iterdir()  # the one artifact: the adapter folder (MLflow keeps its name)
    stored = {p.name for p in folder.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "sft.json"} <= stored
    base_size = (tiny_base / "model.safetensors").stat().st_size
    assert not [p for p in files.rglob("*") if p.name in ("model.safetensors", "pytorch_model.bin")]
    assert max(p.stat().st_size for p in files.rglob("*") if p.is_file()) < base_size

    model = llm.load_pyfunc("1")
    config = model.unwrap_python_model().config  # a reference to the base, the prompt, the answer cap
    assert (config["base_model"], config["cache_dir"], config["max_new_tokens"]) == (str(tiny_base), "cache", 8)
    system = config["system_prompt"]
    assert system.startswith("You triage customer support tickets") and "{categories}" not in system
    by_text = model.predict(pd.DataFrame({"text": TICKETS[:2]}))
    gen = load_generator(str(tiny_base), adapter=adapter)
    direct = generate(gen, [prompt_messages(t, system) for t in TICKETS[:2]], cli.llm_eval.max_new_tokens).texts
    assert list(by_text) == direct  # same greedy answers as the adapter loaded by hand
    messages = [prompt_messages(TICKETS[0], system)]
    assert list(model.predict(pd.DataFrame({"messages": messages}))) == direct[:1]
