"""Decision: each metric against its threshold, and a breach confirmed only after K consecutive windows.

A window *breaches* when any check breaches (data drift share, prediction drift, label drift,
accuracy / macro-F1 / per-class F1 drop). A breach is *confirmed* when ``monitor.persistence``
consecutive, distinct windows breach; the count lives in a small JSON state file, so one noisy
window never retrains the model and re-running on an unchanged log never counts twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import MonitorConfig
from pipelines.errors import DataError
from pipelines.metrics import score

STATE_FILE = "state.json"


def check(name: str, value: float | None, threshold: float, breach: bool | None, detail: str = "") -> dict[str, Any]:
    """One line of the summary: ``breach`` is None when the check could not be judged (``detail`` says why)."""
    return {
        "metric": name,
        "value": None if value is None else round(float(value), 6),
        "threshold": threshold,
        "breach": breach,
        "detail": detail,
    }


def check_lines(checks: list[dict[str, Any]], width: int) -> list[str]:
    """One printed line per :func:`check`: metric, value, threshold, BREACH / ok / n/a, detail."""
    lines = []
    for c in checks:
        flag = {True: "BREACH", False: "ok", None: "n/a"}[c["breach"]]
        val = "-" if c["value"] is None else f"{c['value']:.4f}"
        lines.append(f"  {c['metric']:<{width}} {val:>8}  threshold {c['threshold']:<6} {flag:<6} {c['detail']}")
    return lines


def performance(true: pd.Series, pred: pd.Series, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class F1 (with support) of labelled rows, scored by
    :func:`pipelines.metrics.score` over the model's ``classes``: the function and label set that produced the
    registered test metrics these numbers are compared with (a feedback label the model never saw counts as
    an error; a class with no labelled row does not enter macro-F1)."""
    m = score(true.astype(str).tolist(), one_hot(pred, classes), classes)
    return {
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "n": m["n"],
        "per_class": {c: {"f1": v["f1"], "support": v["support"]} for c, v in m["per_class"].items()},
    }


def one_hot(pred: pd.Series, classes: Sequence[str]) -> np.ndarray:
    """Predicted labels as a probability matrix over ``classes`` (the log keeps the labels; the argmax of a
    one-hot row is exactly its label, which is all :func:`performance` reads from it)."""
    index = {str(c): i for i, c in enumerate(classes)}
    labels = pred.astype(str).tolist()
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise DataError(f"predictions {unknown} are not classes of the model {list(classes)}")
    out = np.zeros((len(labels), len(index)))
    out[np.arange(len(labels)), [index[x] for x in labels]] = 1.0
    return out


def performance_checks(perf: dict | None, registered: dict, val_perf: dict, cfg: MonitorConfig) -> list[dict]:
    """Drops of accuracy and macro-F1 vs the served version at registration, and of class F1 vs validation."""
    names = ("accuracy_drop", "macro_f1_drop", "class_f1_drop")
    if perf is None or perf["n"] < cfg.min_labelled_rows:
        n = 0 if perf is None else perf["n"]
        return [
            check(m, None, 0.0, None, f"{n} labelled rows < monitor.min_labelled_rows={cfg.min_labelled_rows}")
            for m in names
        ]
    out = []
    for metric, limit in (("accuracy", cfg.max_accuracy_drop), ("macro_f1", cfg.max_macro_f1_drop)):
        base = registered.get(metric)
        if base is None:
            out.append(check(f"{metric}_drop", None, limit, None, "the served version has no registered value"))
            continue
        drop = base - perf[metric]
        out.append(
            check(
                f"{metric}_drop",
                drop,
                limit,
                drop > limit,
                f"{perf[metric]:.4f} now vs {base:.4f} at registration ({registered.get('source', '?')})",
            )
        )
    drops = {
        c: val_perf["per_class"][c]["f1"] - v["f1"]
        for c, v in perf["per_class"].items()
        if v["support"] >= cfg.min_class_support and c in val_perf["per_class"]
    }
    worst = max(drops, key=drops.get) if drops else None
    out.append(
        check(
            "class_f1_drop",
            drops[worst] if worst else None,
            cfg.max_class_f1_drop,
            None if worst is None else drops[worst] > cfg.max_class_f1_drop,
            f"worst class {worst!r} (F1 vs the served version on validation; classes with >= "
            f"{cfg.min_class_support} labelled rows)"
            if worst
            else "no class has enough labelled rows",
        )
    )
    return out


def drift_check(name: str, result: Any | None, threshold: float, reason: str = "") -> dict[str, Any]:
    """A :class:`monitoring.evidently_adapter.DriftResult` as a check (share of drifted columns, or one column)."""
    if result is None:
        return check(name, None, threshold, None, reason)
    if len(result.columns) == 1:
        ((col, v),) = result.columns.items()
        return check(name, v["score"], v["threshold"], v["drift"], f"{col}: {v['method']}")
    return check(
        name,
        result.share,
        threshold,
        result.dataset_drift,
        f"drifted: {', '.join(result.drifted) or 'none'} of {len(result.columns)} columns",
    )


def load_state(reports_dir: Path) -> dict[str, Any]:
    path = Path(reports_dir) / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"consecutive": 0, "history": []}


def save_state(state: dict[str, Any], reports_dir: Path) -> None:
    path = Path(reports_dir) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def update(state: dict[str, Any], key: str, breached: list[str], cfg: MonitorConfig) -> tuple[dict, bool, str]:
    """Count this window; return (new state, confirmed, note). The same window (key) is never counted twice."""
    state = {**state, "history": list(state.get("history", []))[-49:]}
    if key and key == state.get("last_key"):
        return state, False, "same window as the previous pass (no new predictions or labels): not counted again"
    state["consecutive"] = state.get("consecutive", 0) + 1 if breached else 0
    state["last_key"] = key
    state["history"].append(
        {
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "key": key,
            "breached": breached,
            "consecutive": state["consecutive"],
        }
    )
    confirmed = state["consecutive"] >= cfg.persistence
    note = f"breach {state['consecutive']}/{cfg.persistence} consecutive window(s)" if breached else "no breach"
    return state, confirmed, note + (": CONFIRMED" if confirmed else "")


def reset(state: dict[str, Any], reason: str) -> dict[str, Any]:
    """After a retrain: start counting again (the next model gets fresh windows)."""
    return {
        **state,
        "consecutive": 0,
        "last_reset": {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "reason": reason},
    }


def reset_state(reports_dir: Path, reason: str) -> dict[str, Any]:
    """Acknowledge a confirmed breach that was acted on (a retrain ran, or the drift event went out): the count
    starts again, so the next model gets fresh windows. Called by whoever acted, never by the pass itself."""
    state = reset(load_state(reports_dir), reason)
    save_state(state, reports_dir)
    return state
