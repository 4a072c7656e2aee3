"""Monitoring passes end to end on a temp registry: no false alarms, drift is flagged, retrain only when confirmed;
the served alias is what is judged, and performance is pipelines.metrics' number."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from monitoring.run import monitor_once
from tests.helpers.monitoring import T0, hash_encoder, tickets, write_window


def _passes(repo, windows, **kw):
    """Log each (seed, drift) window, run one pass after each; return summaries and the retrain reasons."""
    ctx, out = None, []
    for i, (seed, drift) in enumerate(windows):
        write_window(
            repo["params"].monitor.log_dir,
            repo["model"],
            tickets(300, seed, drift),
            repo["version"],
            T0 + timedelta(hours=i),
            tag=f"w{i}",
        )
        s, ctx = monitor_once(repo["params"], ctx=ctx, encode=hash_encoder, **kw)
        out.append(s)
    return out, [s["retrain_reason"] for s in out if "retrain_reason" in s]


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
    again, _ = monitor_once(repo["params"], encode=hash_encoder, log_mlflow=False)
    assert "not counted again" in again["persistence"] and not again["confirmed"] and calls == []
    assert "retrain_reason" not in again


@pytest.mark.parametrize("rows", [0, 40])
def test_small_windows_are_skipped_and_state_is_untouched(repo, rows):
    if rows:
        write_window(repo["params"].monitor.log_dir, repo["model"], tickets(rows, 5), repo["version"], T0)
    s, _ = monitor_once(repo["params"], encode=hash_encoder, log_mlflow=False)
    assert s["skipped"] and s["checks"] == [] and not s["confirmed"] and "retrain_reason" not in s


def test_retrain_on_breach_false_reports_the_confirmed_breach_without_a_reason(repo):
    repo["params"].monitor.retrain_on_breach = False
    summaries, calls = _passes(repo, [(7, True), (8, True)], log_mlflow=False)
    assert summaries[1]["confirmed"] and calls == []


def test_the_served_alias_is_judged_not_the_champion(repo, period_a):
    """serve.model_alias points at another version than @champion: monitoring judges what serving serves."""
    from pipelines.registry.aliases import CHAMPION
    from tests.helpers.monitoring import register_champion, train_model

    params = repo["params"]
    other = register_champion(params, train_model(period_a.iloc[:800]), period_a.iloc[2000:], alias="blue")
    assert other != repo["version"]
    params.serve.model_alias = "blue"
    champion_rows = tickets(300, 11)
    write_window(params.monitor.log_dir, repo["model"], champion_rows, repo["version"], T0, tag="champ")
    write_window(params.monitor.log_dir, repo["model"], tickets(300, 12), other, T0 + timedelta(hours=1), tag="blue")
    s, ctx = monitor_once(params, encode=hash_encoder, log_mlflow=False)
    assert (s["model_alias"], s["model_version"]) == ("blue", other) and ctx.reference.version == other
    assert s["window"]["other_version_rows"] == len(champion_rows) and not s.get("skipped")
    from pipelines.registry import tracking

    assert tracking.Registry(params.mlflow).alias(CHAMPION) == repo["version"]  # still the champion's


def test_performance_is_the_number_pipelines_metrics_gives_on_the_same_rows(repo):
    """Including a feedback label the model never saw and a class missing from the window."""
    from pipelines.metrics import evaluate

    model, rows = repo["model"], tickets(400, 13)
    missing = rows["label"].value_counts().index[-1]
    rows = rows[rows["label"] != missing].head(300).reset_index(drop=True)
    rows.loc[:19, "label"] = "new_topic"
    write_window(repo["params"].monitor.log_dir, model, rows, repo["version"], T0)
    s, _ = monitor_once(repo["params"], encode=hash_encoder, log_mlflow=False)
    want, _ = evaluate(model, rows["text"].tolist(), rows["label"].tolist(), allow_unseen=True)
    assert s["performance"]["macro_f1"] == want["macro_f1"] and s["performance"]["accuracy"] == want["accuracy"]
    assert s["performance"]["per_class"]["new_topic"] == {"f1": 0.0, "support": 20}
    assert any("feedback labels ['new_topic'] are not classes of the model" in n for n in s["notes"])
    assert any("performance.html leaves out 20 row(s) labelled ['new_topic']" in n for n in s["notes"])
    assert "performance" in s["reports"]


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
