"""training: the DVC pipeline as Prefect tasks, one per stage (``dvc repro --single-item <stage>``).

DVC stays the one implementation (caching, ``dvc.lock``, lineage); this flow only runs the stages
in the DAG order of ``dvc.yaml`` while holding the ``dvc-repo`` concurrency limit, retries transient
failures, and publishes what each gate stage that ran decided: ``register`` (the classifier,
``reports/promotion.json``) and ``register_llm`` (the generative model, ``reports/promotion_llm.json``). With
``llm.enabled: false`` the generative stages write 'skipped' records (:mod:`pipelines.llm.skipping`): the
flow reports ``{"skipped": <reason>}`` under ``llm`` and publishes no registry links for that family.

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
from pipelines.llm.skipping import is_skipped
from pipelines.promotion import DEFAULT_PATHS

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


ARTIFACT_KEYS = {  # family → (decision markdown, metrics table): one artifact history per registered model
    "classifier": ("gate-decision", "test-metrics"),
    "llm": ("gate-decision-llm", "test-metrics-llm"),
}
OUTCOME = ("challenger_version", "champion_version_before", "champion_version_after", "promoted", "reasons")


def gate_report(decision_json: str | Path = "reports/promotion.json") -> dict | None:
    """The decision a gate stage wrote (:func:`pipelines.registry.gate.write_decision`), None when there is none."""
    path = Path(decision_json)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def metrics_table(decision: dict) -> list[dict[str, Any]]:
    """One row per model in the decision (challenger, champion): every number its brief holds, rounded.

    The columns are whatever the family's gate kept (the classifier: macro_f1, accuracy, ece; the generative
    model: json_valid_rate, mean_field_score, ...); nested values (per-class F1) stay in the markdown report."""
    models = [
        (who, decision.get(who), decision.get(v))
        for who, v in (("challenger", "challenger_version"), ("champion", "champion_version_before"))
    ]
    models = [(who, m, version) for who, m, version in models if m]
    columns = list(dict.fromkeys(k for _, m, _ in models for k, v in m.items() if _is_number(v) or v is None))
    return [
        {"model": f"{who} v{version}", **{k: round(m[k], 4) if _is_number(m.get(k)) else None for k in columns}}
        for who, m, version in models
    ]


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def publish_gate(decision: dict, links: dict[str, str]) -> None:
    """Gate decision (markdown) and the challenger-vs-champion metrics (table) as Prefect artifacts, under the
    decision's family's keys (:data:`ARTIFACT_KEYS`); a skipped record (the branch is switched off) is one
    markdown note, with no links and no table."""
    from pipelines.registry.gate import report_markdown

    family = decision.get("family", "classifier")
    decision_key, table_key = ARTIFACT_KEYS[family]
    if is_skipped(decision):
        create_markdown_artifact(
            key=decision_key,
            markdown=f"# Promotion gate: skipped\n\n`{BRANCHES[family]}` registered and gated nothing: "
            f"{decision.get('reason', 'skipped')}.\n",
            description=f"promotion gate: {BRANCHES[family]} stage skipped",
        )
        return
    create_markdown_artifact(
        key=decision_key,
        markdown=report_markdown(decision) + "\n## Links\n\n" + common.links_markdown(links),
        description=f"promotion gate: {BRANCHES[family]} stage ({decision.get('model', family)})",
    )
    rows = metrics_table(decision)
    if rows:
        create_table_artifact(
            key=table_key, table=rows, description=decision.get("basis") or "test rows, both models compared"
        )


@flow(name="training", log_prints=True)
def training(options: TrainingOptions = TrainingOptions()) -> dict:
    """Run the DVC stages in DAG order under the DVC lock; report the gate decisions made in this run.

    The classifier's outcome (``register``) is at the top level of the result, the generative model's
    (``register_llm``) under ``llm`` (``{"skipped": <reason>}`` when ``llm.enabled`` is false)."""
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
    for family, stage in BRANCHES.items():  # each gate stage that ran: its decision, if it decided in this run
        decision_json = DEFAULT_PATHS[family]["decision_json"]
        decision = gate_report(decision_json) if stage in stages else None
        if is_skipped(decision):
            if params.llm.enabled:  # left by a run with the branch off: this run did not decide
                logger.warning("%s is a skipped record but llm.enabled is true: not reported", decision_json)
                continue
            publish_gate(decision, {})  # no registry links: nothing was registered
            result[family] = {"skipped": decision.get("reason", "skipped")}
            logger.info("%s: skipped (%s)", stage, result[family]["skipped"])
            continue
        if decision is not None and str(decision.get("decided_at", "")) < started:
            logger.warning("%s is older than this run (%s did not decide): not reported", decision_json, stage)
            decision = None
        if decision is None:
            continue
        publish_gate(decision, common.mlflow_links(params, decision.get("challenger_version"), family))
        outcome = {k: decision.get(k) for k in OUTCOME}
        if family == "llm":
            result["llm"] = outcome
        else:
            result.update(outcome)  # the classifier's outcome at the top level (what retrain reads)
        if not decision.get("promoted"):
            logger.warning(
                "gate (%s): challenger v%s not promoted; champion stays v%s. Why: %s",
                decision.get("model", family),
                decision.get("challenger_version"),
                decision.get("champion_version_after"),
                "; ".join(decision.get("reasons", [])),
            )
    if failed is not None:
        raise failed
    return result
