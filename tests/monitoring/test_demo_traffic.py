"""The drift demo's in-process traffic logs what serving would: the served alias's version, rows of the schema."""

from __future__ import annotations

import pytest

from monitoring import demo_traffic as traffic
from pipelines.errors import DataError
from serving import prediction_log
from serving.prediction_log import FEEDBACK, PREDICTIONS
from tests.helpers.monitoring import check_log_rows, register_champion, tickets, train_model


def test_in_process_traffic_logs_schema_rows_of_the_served_alias(repo, period_a, monkeypatch):
    params = repo["params"]
    other = register_champion(params, train_model(period_a.iloc[:800]), period_a.iloc[2000:], alias="blue")
    params.serve.model_alias = "blue"
    written: dict[str, list[dict]] = {PREDICTIONS: [], FEEDBACK: []}
    monkeypatch.setattr(prediction_log, "write_part", lambda root, kind, rows, now=None: written[kind].extend(rows))
    df = tickets(30, 5)
    traffic.Sender(params, in_process=True).send(df)
    check_log_rows(PREDICTIONS, written[PREDICTIONS])
    check_log_rows(FEEDBACK, written[FEEDBACK])
    assert {r["model_version"] for r in written[PREDICTIONS]} == {other} != {repo["version"]}
    assert [r["true_label"] for r in written[FEEDBACK]] == df["label"].tolist()
    params.serve.model_alias = "nobody"
    with pytest.raises(DataError, match="no 'nobody' alias"):
        traffic.Sender(params, in_process=True).send(df)
