"""Flow parameters: typed models with defaults; bad values and unknown fields are refused naming the field.

No Prefect server is needed: ``Flow.validate_parameters`` is what Prefect runs on every call and deployment run.
"""

from __future__ import annotations

import pytest
from prefect.exceptions import ParameterTypeError, SignatureMismatchError

from flows.deploy import deploy
from flows.monitor import monitor
from flows.promote import PromoteOptions, promote
from flows.retrain import retrain
from flows.training import TrainingOptions, training


@pytest.mark.parametrize(
    "flow_, params, field",
    [
        (training, {"options": {"force": "sometimes"}}, "force"),
        (training, {"options": {"stagez": ["ingest"]}}, "stagez"),
        (promote, {"options": {"version": "three"}}, "version"),
        (promote, {"options": {"version": "3", "rollback": True}}, "rollback"),
        (deploy, {"options": {"ray_cpus": 0}}, "ray_cpus"),
        (monitor, {"options": {"windows": 3}}, "windows"),
        (retrain, {"reason": "x", "options": {"deploy_on_promotion": "maybe"}}, "deploy_on_promotion"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(flow_, params: dict, field: str) -> None:
    with pytest.raises(ParameterTypeError, match=field):
        flow_.validate_parameters(params)


def test_unknown_top_level_parameter_is_refused() -> None:
    with pytest.raises((SignatureMismatchError, ParameterTypeError, TypeError), match="bogus"):
        training.validate_parameters({"bogus": 1})


def test_defaults_and_coercion_from_strings() -> None:
    """The UI form sends JSON; templated trigger parameters arrive as strings and are coerced."""
    assert training.validate_parameters({}) == {"options": TrainingOptions()}
    assert promote.validate_parameters({"options": {"version": "3"}})["options"] == PromoteOptions(version="3")
    assert retrain.validate_parameters({"reason": "drift", "options": {"force": "true"}})["options"].force is True
    schema = training.parameters.model_dump()
    assert "options" in schema["properties"]


def test_serve_all_only_serves_the_named_deployments_and_refuses_unknown_names() -> None:
    from flows.serve_all import deployments
    from pipelines.config import Params
    from pipelines.errors import ConfigError

    assert [d.name for d in deployments(Params(), ["retrain"])] == ["retrain"]
    assert len(deployments(Params())) == 5
    with pytest.raises(ConfigError, match="retrian"):
        deployments(Params(), ["retrian"])


@pytest.mark.parametrize("action", [{"version": "3"}, {"rollback": True}, {}], ids=["version", "rollback", "gate"])
def test_the_promote_flow_and_cli_reach_the_one_library_dispatch(tmp_path, monkeypatch, action: dict) -> None:
    """Both only present what ``run_promotion`` returns: the same action reaches it from either, once."""
    import pipelines.promote as cli
    from flows import promote as promote_flow
    from pipelines import promotion

    calls: list[dict] = []

    def fake(cfg, **kwargs) -> promotion.PromotionResult:
        calls.append({k: kwargs[k] for k in ("version", "rollback")})
        return promotion.PromotionResult("gate", "m", "1", "2", "what happened")

    monkeypatch.setattr(promotion, "run_promotion", fake)
    monkeypatch.setattr(promote_flow, "get_run_logger", lambda: __import__("logging").getLogger("t"))
    artifacts: list[str] = []
    monkeypatch.setattr(promote_flow, "create_markdown_artifact", lambda **kw: artifacts.append(kw["markdown"]))
    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)

    out = promote_flow.promote.fn(PromoteOptions(**action))
    cli.main(version=action.get("version"), rollback_=action.get("rollback", False), params=tmp_path / "params.yaml")
    expected = {"version": action.get("version"), "rollback": action.get("rollback", False)}
    assert calls == [expected, expected]
    assert out == {"champion_before": "1", "champion_after": "2", "message": "what happened"}
    assert "what happened" in artifacts[0]
