"""Monitoring passes end to end on a temp registry: no false alarms, drift is flagged, retrain only when confirmed."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from monitoring.run import monitor_once
from tests.helpers.monitoring import T0, hash_encoder, tickets, write_window


def _passes(repo, windows, **kw):
    """Log each (seed, drift) window, run one pass after each; return summaries and retrain calls."""
    calls, ctx, out = [], None, []
    for i, (seed, drift) in enumerate(windows):
        write_window(
            repo["params"].monitor.log_dir,
            repo["model"],
            tickets(300, seed, drift),
            repo["version"],
            T0 + timedelta(hours=i),
            tag=f"w{i}",
        )
        s, ctx = monitor_once(
            repo["params"], ctx=ctx, encode=hash_encoder, retrain=lambda r: calls.append(r) or {}, **kw
        )
        out.append(s)
    return out, calls


def test_same_distribution_windows_do_not_breach(repo):
    """The false-positive check: six fresh-seed windows of period A."""
    summaries, calls = _passes(repo, [(s, False) for s in range(100, 106)], log_mlflow=False)
    breaches = [s["breached"] for s in summaries]
    assert sum(map(bool, breaches)) <= 1, breaches  # at most one noisy window in six...
    assert not any(s["confirmed"] for s in summaries) and calls == []  # ...and never a retrain


def test_drift_breaches_and_a_persistent_breach_retrains_once(repo):
    summaries, calls = _passes(repo, [(7, True), (8, True)])
    first, second = summaries
    got = {c["metric"]: c for c in first["checks"]}
    for metric in ("data_drift", "prediction_drift", "accuracy_drop", "macro_f1_drop"):
        assert got[metric]["breach"] is True, got[metric]
        assert {"value", "threshold", "detail"} <= set(got[metric])
    assert not first["confirmed"] and second["confirmed"] and len(calls) == 1
    assert "over 2 windows" in calls[0]
    on_disk = json.loads((repo["path"] / first["reports_dir"] / "summary.json").read_text())
    assert on_disk["checks"] == json.loads(json.dumps(first["checks"]))
    for name in ("data_drift", "prediction_drift", "label_drift", "performance"):
        html = (repo["path"] / first["reports"][name]).read_text()
        assert "<html" in html.lower() and len(html) > 10_000
    assert "length_chars" in (repo["path"] / first["reports"]["data_drift"]).read_text()
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'monitor'")
    assert len(runs) == 2 and (runs["metrics.data_drift"] >= 0.5).all()


def test_single_noisy_window_does_not_retrain(repo):
    summaries, calls = _passes(repo, [(7, True), (101, False), (8, True)], log_mlflow=False)
    assert summaries[0]["breached"] and summaries[2]["breached"]
    assert not any(s["confirmed"] for s in summaries) and calls == []


def test_an_unchanged_log_is_not_counted_twice(repo):
    summaries, calls = _passes(repo, [(7, True)], log_mlflow=False)
    again, _ = monitor_once(repo["params"], encode=hash_encoder, retrain=calls.append, log_mlflow=False)
    assert "not counted again" in again["persistence"] and not again["confirmed"] and calls == []


@pytest.mark.parametrize("rows", [0, 40])
def test_small_windows_are_skipped_and_state_is_untouched(repo, rows):
    if rows:
        write_window(repo["params"].monitor.log_dir, repo["model"], tickets(rows, 5), repo["version"], T0)
    s, _ = monitor_once(repo["params"], encode=hash_encoder, retrain=pytest.fail, log_mlflow=False)
    assert s["skipped"] and s["checks"] == [] and not s["confirmed"]


def test_minilm_embeddings_flag_the_drift(repo):
    """The real encoder once (slower): embedding components drift on period B."""
    repo["params"].monitor.reference_size = 300
    write_window(repo["params"].monitor.log_dir, repo["model"], tickets(200, 9, True), repo["version"], T0)
    s, _ = monitor_once(repo["params"], log_mlflow=False)
    drifted = next(c for c in s["checks"] if c["metric"] == "data_drift")["detail"]
    assert "emb_pc1" in drifted and s["breached"]


@pytest.mark.integration
def test_cli_help():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "monitoring.run", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--no-retrain" in r.stdout
