"""Library of the ``validate`` stage (its CLI is :mod:`pipelines.validate`).

validate: a Great Expectations suite, built in code from ``params.yaml``, gates the interim data.

This is the only module that imports great_expectations. The suite checks the
canonical columns and their types, non-null and non-empty text within length
bounds, labels in the expected set, a minimum count per class, a ceiling on the
duplicate-text rate, and the timestamp range. The result JSON and Data Docs
HTML land in ``reports/validation/``; a failed expectation fails the stage with
a readable summary, so nothing downstream runs.

Every expectation is judged on every row, none on a sample: a gate that passes a null text or an unknown label
because it was not drawn is no gate, and the duplicate-text rate and the per-class counts are properties of the
whole column. What bounds the stage's memory is the columns it reads: only :data:`SUITE_COLUMNS` (the source's
other columns, which ingest keeps for the leakage stage, are not loaded).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.config import ValidateConfig

logging.getLogger("great_expectations").setLevel(logging.ERROR)

SUITE_COLUMNS = ("id", "text", "label", "timestamp")  # every column an expectation below reads


@dataclass
class ValidationOutcome:
    success: bool
    results: list[dict] = field(default_factory=list)  # one row per expectation: what, column, ok, observed
    raw: dict = field(default_factory=dict)  # GE's own result JSON, per batch

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.results if not r["success"]]

    def summary(self) -> str:
        lines = [f"{len(self.failures)} of {len(self.results)} expectations failed:"]
        for r in self.failures:
            lines.append(f"  - {r['expectation']} on {r['column'] or 'table'}: {r['observed']}")
        return "\n".join(lines)


def _suites(cfg: ValidateConfig, df: pd.DataFrame) -> dict[str, list]:
    import great_expectations.expectations as gxe

    rows: list = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        *(gxe.ExpectColumnToExist(column=c) for c in ("id", "text", "label")),
        gxe.ExpectColumnValuesToNotBeNull(column="text"),
        gxe.ExpectColumnValuesToNotBeNull(column="label"),
        gxe.ExpectColumnValuesToBeInTypeList(column="text", type_list=["str", "string", "StringDtype"]),
        gxe.ExpectColumnValuesToBeInTypeList(column="label", type_list=["str", "string", "StringDtype"]),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="text",
            min_value=max(cfg.min_text_chars, 1),
            max_value=cfg.max_text_chars,
            mostly=cfg.text_length_mostly,
        ),
        gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"^\s*$"),
        gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(column="text", min_value=1.0 - cfg.max_duplicate_rate),
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="label", min_value=2),
    ]
    if cfg.expected_labels:
        rows.append(gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(cfg.expected_labels)))
    if "timestamp" in df:
        rows.append(gxe.ExpectColumnValuesToNotBeNull(column="timestamp"))
        if cfg.timestamp_min or cfg.timestamp_max:
            rows.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column="timestamp",
                    min_value=pd.Timestamp(cfg.timestamp_min).to_pydatetime() if cfg.timestamp_min else None,
                    max_value=pd.Timestamp(cfg.timestamp_max).to_pydatetime() if cfg.timestamp_max else None,
                )
            )
    per_class = [gxe.ExpectColumnValuesToBeBetween(column="count", min_value=cfg.min_class_count)]
    if cfg.expected_labels:  # every expected class is present
        per_class.append(
            gxe.ExpectColumnDistinctValuesToContainSet(column="label", value_set=list(cfg.expected_labels))
        )
    return {"rows": rows, "class_counts": per_class}


def describe(res: dict) -> tuple[str, str | None, str]:
    cfg = res["expectation_config"]
    kwargs = cfg.get("kwargs", {})
    r = res.get("result", {}) or {}
    observed = r.get("observed_value")
    if "unexpected_count" in r and r.get("element_count"):
        examples = r.get("partial_unexpected_list", [])[:3]
        observed = (
            f"{r['unexpected_count']:,} of {r['element_count']:,} rows unexpected "
            f"({r.get('unexpected_percent', 0):.2f}%), e.g. {examples}"
        )
    elif observed is not None:
        bounds = {k: kwargs[k] for k in ("min_value", "max_value", "value_set") if kwargs.get(k) is not None}
        observed = f"observed {observed!r}, expected {bounds}"
    return cfg["type"], kwargs.get("column"), str(observed)


def expectation_types():
    """Great Expectations' expectation classes (``gxe.ExpectColumn...``), for a suite built by another module."""
    import great_expectations.expectations as gxe

    return gxe


def run_suite(frame: pd.DataFrame, expectations: list, name: str, index_columns: list[str]) -> dict:
    """Run one suite on ``frame`` in an ephemeral context; GE's result JSON with every unexpected row's
    ``index_columns`` (``result_format`` COMPLETE). :func:`describe` words each result."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = context.data_sources.add_pandas(name).add_dataframe_asset(name)
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch.add_batch_definition_whole_dataframe(name), suite=suite)
    )
    return definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index_columns},
    ).to_json_dict()


def run_validation(df: pd.DataFrame, cfg: ValidateConfig, docs_dir: Path | None = None) -> ValidationOutcome:
    """Validate ``df`` (canonical schema); optionally build Data Docs into ``docs_dir``."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    if docs_dir is not None:
        context.add_data_docs_site(
            "pipeline_docs",
            {
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    counts = df["label"].astype(str).value_counts().rename_axis("label").reset_index(name="count")
    frames = {"rows": df, "class_counts": counts}
    source = context.data_sources.add_pandas("pipeline")
    outcome = ValidationOutcome(success=True)
    for name, expectations in _suites(cfg, df).items():
        batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite", expectations=expectations))
        vd = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}_validation", data=batch_def, suite=suite)
        )
        actions = [gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["pipeline_docs"])] if docs_dir else []
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"{name}_checkpoint", validation_definitions=[vd], actions=actions, result_format="SUMMARY"
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frames[name]})
        for vr in result.run_results.values():
            vr_json = vr.to_json_dict()
            outcome.raw[name] = vr_json
            outcome.success &= bool(vr_json["success"])
            for res in vr_json["results"]:
                what, column, observed = describe(res)
                outcome.results.append(
                    {
                        "batch": name,
                        "expectation": what,
                        "column": column,
                        "success": bool(res["success"]),
                        "observed": observed,
                    }
                )
    return outcome
