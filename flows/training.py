"""training: the DVC pipeline as Prefect tasks, one per stage (``dvc repro --single-item <stage>``).

DVC stays the one implementation (caching, ``dvc.lock``, lineage); this flow only runs the stages
in the DAG order of ``dvc.yaml`` while holding the ``dvc-repo`` concurrency limit, retries transient
failures, and publishes what the register stage decided (``reports/promotion.json``).

Which failures are transient: ``dvc repro`` exits 1 whatever the stage's exit code was, so the stage
says it itself. Its CLI (:func:`pipelines.errors.fail`) writes an error record to the file named by
``TICKETOPS_ERROR_FILE``; a config error or a failed gate fails the same way again and is not retried.
A stage that died without a record (a crash, a lock, a killed process) is retried.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field

from flows import common
from flows.common import Options
from pipelines.errors import ERROR_FILE_ENV, ConfigError, GateFailed, PipelineError, read_error_record
from pipelines.io import run_command, tool

NOT_RETRIED = {ConfigError.__name__, GateFailed.__name__}  # the same run fails the same way


class StageFailed(PipelineError):
    """``dvc repro`` of a stage exited non-zero; ``retryable`` is False for config errors and failed gates."""

    def __init__(self, stage: str, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.stage, self.retryable = stage, retryable


BRANCHES = {"classifier": "register", "llm": "register_llm"}  # a branch: its last stage and every stage upstream


class TrainingOptions(Options):
    """Parameters of the training flow (the UI form)."""

    branch: Literal["both", "classifier", "llm"] = Field(
        "both",
        description="classifier: the stages up to `register`; llm: those up to `register_llm` (the generative "
        "model); both: the whole of dvc.yaml",
    )
    stages: list[str] | None = Field(
        None, description="run only these stages of the branch (in DAG order); empty: all of them"
    )
    force: bool = Field(False, description="dvc repro --force: run stages even when their inputs did not change")
    dvc_file: str = Field("dvc.yaml", description="the pipeline definition")


def _paths(items: list[Any]) -> list[str]:
    return [next(iter(i)) if isinstance(i, dict) else str(i) for i in items or []]


def _resolve(path: str, values: dict) -> str:
    """``${data.path}`` → its value in params.yaml (DVC templating), else the text unchanged."""

    def one(m: re.Match) -> str:
        v: Any = values
        for key in m.group(1).split("."):
            v = v.get(key) if isinstance(v, dict) else None
        return str(v) if v is not None else m.group(0)

    return re.sub(r"\$\{\s*([\w.]+)\s*\}", one, path)


def stage_needs(dvc_file: str | Path = "dvc.yaml") -> dict[str, set[str]]:
    """Each stage of ``dvc.yaml`` → the stages whose outs it reads, in ``dvc.yaml`` order."""
    dvc_file = Path(dvc_file)
    stages = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("stages", {})
    params_yaml = dvc_file.parent / "params.yaml"
    values = (yaml.safe_load(params_yaml.read_text(encoding="utf-8")) or {}) if params_yaml.is_file() else {}
    for s in stages.values():
        s["deps"] = [_resolve(d, values) for d in _paths(s.get("deps", []))]
    outs = {
        name: _paths(s.get("outs", [])) + _paths(s.get("metrics", [])) + _paths(s.get("plots", []))
        for name, s in stages.items()
    }

    def feeds(dep: str, out: str) -> bool:
        return dep == out or dep.startswith(out.rstrip("/") + "/") or out.startswith(dep.rstrip("/") + "/")

    return {
        name: {o for o in stages if o != name and any(feeds(d, p) for d in _paths(s.get("deps", [])) for p in outs[o])}
        for name, s in stages.items()
    }


def dag_order(dvc_file: str | Path = "dvc.yaml") -> list[str]:
    """Stage names of ``dvc.yaml`` in dependency order (a stage after every stage whose outs it reads)."""
    needs = stage_needs(dvc_file)
    order: list[str] = []
    while len(order) < len(needs):
        ready = [n for n in needs if n not in order and needs[n] <= set(order)]  # dvc.yaml order among equals
        if not ready:
            raise PipelineError(f"{dvc_file}: the stages form a cycle: {sorted(set(needs) - set(order))}")
        order.append(ready[0])
    return order


def branch_stages(branch: str, dvc_file: str | Path = "dvc.yaml") -> list[str]:
    """The stages of a branch in DAG order: its last stage (:data:`BRANCHES`) and all it depends on; ``both``: all."""
    order = dag_order(dvc_file)
    if branch == "both":
        return order
    needs = stage_needs(dvc_file)
    wanted, todo = set(), [BRANCHES[branch]]
    while todo:
        stage = todo.pop()
        if stage not in wanted:
            wanted.add(stage)
            todo.extend(needs.get(stage, ()))
    return [s for s in order if s in wanted]


def retryable(record: dict | None) -> bool:
    """A stage's failure may pass on a retry unless its error record names a config error or a failed gate."""
    return record is None or not NOT_RETRIED & set(record.get("kinds") or [record.get("error")])


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except StageFailed as err:
        return err.retryable
    except Exception:
        return True
    return False


@task(name="dvc-stage", task_run_name="dvc repro {stage}", retry_condition_fn=_retry_transient)
def run_stage(stage: str, force: bool = False) -> str:
    """``dvc repro --single-item <stage>``; raises :class:`StageFailed` with DVC's output and the stage's error."""
    cmd = [tool("dvc"), "repro", "--single-item", stage] + (["--force"] if force else [])
    with tempfile.TemporaryDirectory(prefix="ticketops-stage-") as tmp:
        record_file = Path(tmp) / "error.json"
        r = run_command(cmd, env={**os.environ, ERROR_FILE_ENV: str(record_file)})
        record = read_error_record(record_file)
    out = f"{r.stdout or ''}{r.stderr or ''}"
    if r.returncode != 0:
        cause = f" ({record.get('error')}, exit {record.get('exit_code')} in the stage)" if record else ""
        message = f"`{' '.join(cmd)}` failed (exit {r.returncode}){cause}:\n{out[-3000:]}"
        raise StageFailed(stage, message, retryable(record))
    get_run_logger().info("%s: %s", stage, out.strip()[-1500:] or "done")
    return out


def gate_report(decision_json: str | Path = "reports/promotion.json") -> dict | None:
    path = Path(decision_json)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def publish_gate(decision: dict, links: dict[str, str]) -> None:
    """Gate decision (markdown) and the challenger-vs-champion metrics (table) as Prefect artifacts."""
    from pipelines.registry.gate import report_markdown

    create_markdown_artifact(
        key="gate-decision",
        markdown=report_markdown(decision) + "\n## Links\n\n" + common.links_markdown(links),
        description="promotion gate: register stage",
    )
    rows = []
    for who in ("challenger", "champion"):
        m = decision.get(who)
        if m:
            version = decision["challenger_version"] if who == "challenger" else decision["champion_version_before"]
            rows.append(
                {
                    "model": f"{who} v{version}",
                    "macro_f1": round(m["macro_f1"], 4),
                    "accuracy": round(m["accuracy"], 4),
                    "ece": round(m["ece"], 4),
                }
            )
    if rows:
        create_table_artifact(
            key="test-metrics", table=rows, description="test split, both models loaded from the registry"
        )


@flow(name="training", log_prints=True)
def training(options: TrainingOptions = TrainingOptions()) -> dict:
    """Run the DVC stages in DAG order under the DVC lock; report the register stage's gate decision."""
    params = common.params_of(options)
    logger = get_run_logger()
    order = branch_stages(options.branch, options.dvc_file)
    unknown = sorted(set(options.stages or []) - set(order))
    if unknown:
        raise PipelineError(f"options.stages: stage(s) {unknown} are not in branch {options.branch!r}: {order}")
    stages = [s for s in order if not options.stages or s in options.stages]
    failed: StageFailed | None = None
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with common.dvc_lock(params):
        for stage in stages:
            try:
                run_stage.with_options(
                    retries=params.flows.stage_retries, retry_delay_seconds=params.flows.stage_retry_delay_s
                )(stage, options.force)
            except StageFailed as err:
                failed = err
                break
    result: dict[str, Any] = {"stages": stages, "failed_stage": failed.stage if failed else None}
    decision = gate_report() if "register" in stages else None
    if decision is not None and str(decision.get("decided_at", "")) < started:
        logger.warning(
            "reports/promotion.json is older than this run (the register stage did not decide): not reported"
        )
        decision = None
    if decision is not None:
        publish_gate(decision, common.mlflow_links(params, decision.get("challenger_version")))
        result.update(
            {
                k: decision.get(k)
                for k in (
                    "challenger_version",
                    "champion_version_before",
                    "champion_version_after",
                    "promoted",
                    "reasons",
                )
            }
        )
        if not decision.get("promoted"):
            logger.warning(
                "gate: challenger v%s not promoted; champion stays v%s. Why: %s",
                decision.get("challenger_version"),
                decision.get("champion_version_after"),
                "; ".join(decision.get("reasons", [])),
            )
    if failed is not None:
        raise failed
    return result
