"""monitor: one monitoring pass over both models: the classifier (:func:`monitoring.run.monitor_once`) and the
generative model (:func:`monitoring.generative.monitor_generative`, skipped with a reason when the LM is not
served). On a confirmed breach of either it emits the Prefect event ``model.drift.detected`` with that model's
own resource (``model.<mlflow.registered_model>`` or ``model.<register_llm.registered_model>``, the summary
as payload, its ``family`` classifier | generative).

Retraining is not run here: the ``retrain`` deployment has a trigger on that event (``flows/serve_all.py``).
Once the event is out, the breach is acknowledged (:func:`monitoring.decision.reset_state`), as the CLI
does after an inline retrain, so the persistence count starts again (each model has its own count).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from flows import common
from flows.common import Options

DRIFT_EVENT = "model.drift.detected"


class MonitorOptions(Options):
    """Parameters of the monitor flow."""


def resource_id(registered_model: str) -> str:
    return f"model.{registered_model}"


def event_payload(summary: dict, reason: str) -> dict[str, Any]:
    """The summary without the bulky parts, plus the reason (the retrain trigger templates it)."""
    keep = (
        "at",
        "model",
        "model_alias",
        "model_version",
        "window",
        "breached",
        "confirmed",
        "persistence",
        "reports_dir",
        "checks",
    )
    return common.json_safe({"reason": reason, **{k: summary.get(k) for k in keep}})


def publish(summary: dict, links: dict[str, str]) -> None:
    rows = [
        {
            "metric": c["metric"],
            "value": c["value"],
            "threshold": c["threshold"],
            "breach": {True: "BREACH", False: "ok", None: "n/a"}[c["breach"]],
            "detail": c["detail"],
        }
        for c in summary.get("checks", [])
    ]
    if rows:
        create_table_artifact(
            key="monitoring-checks",
            table=rows,
            description=f"{summary.get('model_alias')} v{summary.get('model_version')}",
        )
    reports = "\n".join(f"- {k}: `{Path(v).resolve()}`" for k, v in (summary.get("reports") or {}).items())
    verdict = (
        ("SKIPPED: " + summary["skipped"])
        if summary.get("skipped")
        else ("CONFIRMED BREACH: event " + DRIFT_EVENT + " emitted")
        if summary.get("event_id")
        else (
            f"breached {summary['breached']} ({summary.get('persistence')})" if summary.get("breached") else "no breach"
        )
    )
    create_markdown_artifact(
        key="monitoring-summary",
        description="one monitoring pass",
        markdown=(
            f"# Monitoring: {verdict}\n\n- model `{summary.get('model')}@{summary.get('model_alias')}` "
            f"v{summary.get('model_version')}, "
            f"window {summary.get('window')}\n"
            f"- summary: `{Path(summary.get('reports_dir', '.')).resolve()}/summary.json`\n"
            + (reports + "\n" if reports else "")
            + "\n## Links\n\n"
            + common.links_markdown(links)
        ),
    )


@flow(name="monitor", log_prints=True)
def monitor(options: MonitorOptions = MonitorOptions()) -> dict[str, Any]:
    """One pass over the prediction log, both models; a confirmed breach emits ``model.drift.detected``."""
    from monitoring.generative import STATE_DIR, format_generative, monitor_generative
    from monitoring.run import format_summary, monitor_once

    params = common.params_of(options)
    now = datetime.now(timezone.utc)  # both models' results land in the same reports/monitoring/<utc>/
    summary, _ = monitor_once(params, now=now)
    logger = get_run_logger()
    logger.info(format_summary(summary))
    reports = Path(params.monitor.reports_dir)
    _act(summary, params.mlflow.registered_model, "classifier", reports, logger)
    gen = monitor_generative(params, now=now, log_mlflow=True)
    logger.info(format_generative(gen))
    _act(gen, params.register_llm.registered_model, "generative", reports / STATE_DIR, logger)
    publish(summary, common.mlflow_links(params, summary.get("model_version")))
    publish_generative(gen)
    return common.json_safe({**summary, "generative": gen})


def _act(summary: dict, registered_model: str, family: str, state_dir: Path, logger: Any) -> None:
    """Emit the drift event for one model's confirmed breach (with a retrain reason) and acknowledge it."""
    from monitoring.decision import reset_state

    reason = summary.get("retrain_reason")
    if summary.get("confirmed") and not reason:
        logger.warning(
            "%s: breach confirmed but monitor.retrain_on_breach is false: no event emitted", summary["model"]
        )
    if reason:
        resource = {"prefect.resource.id": resource_id(registered_model)}
        event = emit_event(
            event=DRIFT_EVENT, resource=resource, payload={**event_payload(summary, reason), "family": family}
        )
        summary["event_id"] = str(event.id) if event is not None else None
        reset_state(state_dir, f"event {DRIFT_EVENT} emitted: the retrain deployment acts")
        logger.warning("confirmed breach: emitted %s for %s (%s)", DRIFT_EVENT, resource["prefect.resource.id"], reason)


def publish_generative(summary: dict) -> None:
    """The generative pass's checks and verdict as Prefect artifacts (beside the classifier's)."""
    rows = [{**c, "breach": {True: "BREACH", False: "ok", None: "n/a"}[c["breach"]]} for c in summary.get("checks", [])]
    if rows:
        create_table_artifact(
            key="monitoring-generative-checks",
            table=rows,
            description=f"{summary['model']} v{summary['model_version']}",
        )
    verdict = (
        ("SKIPPED: " + summary["skipped"])
        if summary.get("skipped")
        else ("CONFIRMED BREACH: event " + DRIFT_EVENT + " emitted")
        if summary.get("event_id")
        else (f"breached {summary['breached']} ({summary.get('persistence')})" if summary["breached"] else "no breach")
    )
    create_markdown_artifact(
        key="monitoring-generative-summary",
        description="one monitoring pass, generative model",
        markdown=(
            f"# Monitoring (generative): {verdict}\n\n- model `{summary['model']}` v{summary['model_version']}, "
            f"window {summary.get('window')}\n"
            f"- summary: `{Path(summary['reports_dir']).resolve()}/generative.json`\n"
        ),
    )
