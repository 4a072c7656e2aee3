"""The end-of-run summary reads the stage metrics and the gate decisions (classifier, and generative when it ran)."""

import json

from pipelines.summary import LLM_SYSTEMS, summarise


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


def llm_eval(graded: dict, skipped: str = "no classifier champion") -> dict:
    """What pipelines.llm_eval writes: every system's scores on the same rows, or why it was skipped."""
    return {
        "rows": 1200,
        "graded": "triage",
        "finetuned": graded,
        "zero_shot": {"json_valid_rate": 0.25, "mean_field_score": 0.31, "summary_rouge_l": 0.12, "n": 1200},
        "few_shot": {"json_valid_rate": 0.5, "mean_field_score": None, "n": 1200},
        "classical": {"skipped": skipped},
    }


def test_summary_shows_the_generative_systems_side_by_side_and_its_gate(tmp_path):
    (tmp_path / "llm_eval.json").write_text(
        json.dumps(llm_eval({"json_valid_rate": 0.985, "mean_field_score": 0.7215, "summary_rouge_l": 0.4433}))
    )
    (tmp_path / "promotion_llm.json").write_text(
        json.dumps(
            {
                "family": "llm",
                "promote": False,
                "promoted": False,
                "challenger_version": "3",
                "champion_version_before": "2",
                "champion_version_after": "2",
            }
        )
    )
    lines = summarise(tmp_path, tmp_path)
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.split() and line.split()[0] in LLM_SYSTEMS}
    assert rows == {
        "finetuned": ["0.9850", "0.7215", "0.4433"],
        "zero_shot": ["0.2500", "0.3100", "0.1200"],
        "few_shot": ["0.5000", "n/a", "n/a"],  # a score that is missing reads n/a, not a crash
        "classical": ["skipped:", "no", "classifier", "champion"],
    }
    text = "\n".join(lines)
    assert "1,200 test rows" in text and "valid JSON" in text and "summary ROUGE-L" in text
    assert "registry (generative): challenger v3 not promoted; champion v2" in text
    assert str(tmp_path / "promotion_llm.md") in text


def test_summary_without_the_generative_branch_has_no_generative_lines(tmp_path):
    (tmp_path / "promotion.json").write_text(json.dumps({"promote": True, "promoted": True, "challenger_version": "1"}))
    text = "\n".join(summarise(tmp_path, tmp_path))
    assert "registry: challenger v1 promoted to champion" in text
    assert "generative" not in text and "finetuned" not in text


def test_summary_shows_the_generative_gate_without_its_metrics_and_the_other_way_round(tmp_path):
    decision = {"promote": False, "challenger_version": "2", "champion_version_before": "2"}
    (tmp_path / "promotion_llm.json").write_text(json.dumps({**decision, "champion_version_after": "2"}))
    text = "\n".join(summarise(tmp_path, tmp_path))
    assert "registry (generative): challenger v2 unchanged (already the champion); champion v2" in text
    assert "valid JSON" not in text

    (tmp_path / "promotion_llm.json").unlink()
    (tmp_path / "llm_eval.json").write_text(json.dumps(llm_eval({"json_valid_rate": 1.0, "mean_field_score": 0.9})))
    text = "\n".join(summarise(tmp_path, tmp_path))
    assert "valid JSON" in text and "registry (generative)" not in text


def test_a_skipped_generative_branch_is_one_line_not_a_table(tmp_path, monkeypatch):
    """llm.enabled false: llm_eval and register_llm wrote skipped records (pipelines.llm.skipping)."""
    from pipelines.llm.skipping import write_skipped

    monkeypatch.chdir(tmp_path)  # atomic_outputs stages in the working directory
    (tmp_path / "promotion.json").write_text(json.dumps({"promote": True, "promoted": True, "challenger_version": "1"}))
    write_skipped("llm_eval", tmp_path / "llm_eval.json")
    write_skipped("register_llm", tmp_path / "promotion_llm.json", family="llm")
    lines = summarise(tmp_path, tmp_path)
    assert lines[-1] == "generative model: skipped (llm.enabled is false; set llm.enabled: true to train it)"
    assert not any(line.startswith(("generative", "registry (generative)")) for line in lines[:-1])
    assert any(line.startswith("registry: challenger v1 promoted to champion") for line in lines)
    assert not any(line.split() and line.split()[0] in (*LLM_SYSTEMS, "system") for line in lines)
