"""The only module that imports Evidently (pinned ``evidently>=0.7,<0.8``; its API changed a lot in 0.7).

Two report kinds: column drift (``DataDriftPreset`` with the stat test and threshold per
column type from params) and classification quality (``ClassificationPreset``). Verdicts are
read from Evidently's own test statuses (``FAIL`` = drift), never recomputed here, because
the method behind a score depends on settings and sample size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import MonitorConfig


@dataclass
class DriftResult:
    """Per-column drift (score, method, drift flag) and the share of drifted columns."""

    name: str
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)
    share: float = 0.0
    dataset_drift: bool = False
    snapshot: Any = None

    @property
    def drifted(self) -> list[str]:
        return [c for c, v in self.columns.items() if v["drift"]]


def column_drift(
    name: str,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    cfg: MonitorConfig,
) -> DriftResult:
    """Drift of ``numeric`` + ``categorical`` columns of ``current`` against ``reference``."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    cols = [*numeric, *categorical]
    definition = DataDefinition(numerical_columns=numeric or None, categorical_columns=categorical or None)
    preset = DataDriftPreset(
        columns=cols,
        num_method=cfg.num_method,
        num_threshold=cfg.num_threshold,
        cat_method=cfg.cat_method,
        cat_threshold=cfg.cat_threshold,
        drift_share=cfg.drift_share,
    )
    snap = Report([preset], include_tests=True).run(
        current_data=Dataset.from_pandas(current[cols].reset_index(drop=True), data_definition=definition),
        reference_data=Dataset.from_pandas(reference[cols].reset_index(drop=True), data_definition=definition),
    )
    return _parse(name, json.loads(snap.json()), snap)


def _parse(name: str, doc: dict, snap: Any) -> DriftResult:
    res = DriftResult(name, snapshot=snap)
    by_id = {m["id"]: m for m in doc["metrics"]}
    for test in doc.get("tests", []):
        mid = test["metric_config"]["metric_id"]
        metric, params = by_id.get(mid, {}), test["metric_config"]["params"]
        kind = params.get("type", "")
        if kind.endswith("ValueDrift"):
            res.columns[params["column"]] = {
                "score": float(metric.get("value", float("nan"))),
                "method": params.get("method"),
                "threshold": params.get("threshold"),
                "drift": test["status"] == "FAIL",
            }
        elif kind.endswith("DriftedColumnsCount"):
            res.share = float(metric.get("value", {}).get("share", 0.0))
            res.dataset_drift = test["status"] == "FAIL"
    return res


def classification_report(reference: pd.DataFrame, current: pd.DataFrame, classes: list[str]) -> Any:
    """Evidently classification quality of ``current`` (columns target, prediction) next to ``reference``."""
    from evidently import DataDefinition, Dataset, MulticlassClassification, Report
    from evidently.presets import ClassificationPreset

    labels = {c: c for c in classes}
    definition = DataDefinition(
        categorical_columns=["target", "prediction"],
        classification=[MulticlassClassification(target="target", prediction_labels="prediction", labels=labels)],
    )

    def ds(df: pd.DataFrame) -> Any:
        return Dataset.from_pandas(
            df[["target", "prediction"]].astype(str).reset_index(drop=True), data_definition=definition
        )

    return Report([ClassificationPreset()]).run(current_data=ds(current), reference_data=ds(reference))


def save_html(snapshot: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    return path
