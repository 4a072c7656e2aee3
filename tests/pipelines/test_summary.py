"""The end-of-run summary reads the stage metrics and the gate decision."""

import json

from pipelines.summary import summarise


def test_summary_lists_every_model_and_the_gate(tmp_path):
    m, r = tmp_path / "metrics", tmp_path / "reports"
    m.mkdir()
    r.mkdir()
    (m / "ingest.json").write_text(
        json.dumps({"rows_read": 100, "rows_written": 98, "empty_text_dropped": 2, "pii_rows": 5})
    )
    (m / "leakage.json").write_text(json.dumps({"findings": 3, "blockers": 0, "rows_train": 70}))
    (m / "baselines.json").write_text(
        json.dumps({"models": {"tfidf_svm": {"val": {"macro_f1": 0.9}, "test": {"macro_f1": 0.91}}}})
    )
    (m / "finetune.json").write_text(json.dumps({"val": {"macro_f1": 0.89}, "test": {"macro_f1": 0.92, "ece": 0.04}}))
    (r / "promotion.json").write_text(json.dumps({"promote": False, "challenger_version": "4"}))
    text = "\n".join(summarise(m, r))
    assert "100 rows read, 98 kept" in text and "train 70" in text
    assert "tfidf_svm" in text and "0.9100" in text and "lora_transformer" in text and "0.9200" in text
    assert "challenger v4 not promoted" in text


def test_skipped_finetune_is_not_listed(tmp_path):
    (tmp_path / "finetune.json").write_text(json.dumps({"model": "lora_transformer", "skipped": True}))
    assert "lora_transformer" not in "\n".join(summarise(tmp_path, tmp_path))


def test_a_metrics_file_missing_keys_prints_a_question_mark_not_a_crash(tmp_path):
    """An older or partial ingest.json (no rows_written) used to crash on format('?', ',')."""
    (tmp_path / "ingest.json").write_text(json.dumps({"rows_read": 1234}))
    (tmp_path / "leakage.json").write_text(json.dumps({"findings": 2}))
    text = "\n".join(summarise(tmp_path, tmp_path))
    assert "1,234 rows read, ? kept" in text
    assert "2 findings, ? blockers" in text and "train ? / val ? / test ?" in text
