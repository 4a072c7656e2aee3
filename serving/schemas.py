"""Request and response bodies of the HTTP API (pydantic; the limits come from ``params.yaml: serve``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, create_model, field_validator

REQUEST_ID_PATTERN = r"^[0-9a-f]{32}$"
MAX_LABEL_CHARS = 200  # a class name; the prediction log refuses longer ones too (prediction_log.MAX_LABEL_CHARS)
MAX_ITEM = 2**31 - 1  # the log's int32 item column; feedback_request_model bounds it by max_texts_per_request


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequestBase(_Strict):
    texts: list[StrictStr]
    top_k: StrictInt | None = Field(None, ge=1, description="return only the k most probable classes")

    @field_validator("texts")
    @classmethod
    def _not_blank(cls, texts: list[str]) -> list[str]:
        blank = [i for i, t in enumerate(texts) if not t.strip()]
        if blank:
            raise ValueError(f"text(s) at position {blank[:10]} are empty or only whitespace")
        return texts


def predict_request_model(max_texts: int, max_chars: int) -> type[PredictRequestBase]:
    """``PredictRequest`` with the configured limits (shown in the OpenAPI schema)."""
    text = Annotated[StrictStr, Field(min_length=1, max_length=max_chars)]
    return create_model(  # type: ignore[call-overload]
        "PredictRequest",
        __base__=PredictRequestBase,
        texts=(
            list[text],
            Field(
                min_length=1,
                max_length=max_texts,
                description=f"1 to {max_texts} texts of at most {max_chars} characters",
                examples=[["I was charged twice for my subscription"]],
            ),
        ),
    )


class Prediction(BaseModel):
    label: str = Field(description="the most probable class: the label the model gives, or would give if it abstains")
    confidence: float
    abstained: bool = Field(
        False,
        description="true: none of the above (the model's confidence, the top probability or, for a model with an "
        "out-of-scope class, 1 - its probability, below the threshold tuned on validation, or the out-of-scope "
        "class predicted); route it by hand",
    )
    probabilities: dict[str, float]


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model_name: str
    model_version: str
    request_id: str


class FeedbackRequest(_Strict):
    """The true label of text ``item`` of an answered request. Every field is bounded here, so a body that could
    not be written to the prediction log is refused with 422 before it reaches the log."""

    request_id: Annotated[StrictStr, Field(pattern=REQUEST_ID_PATTERN, description="from a /predict answer")]
    item: StrictInt = Field(0, ge=0, le=MAX_ITEM, description="index of the text within that request")
    label: StrictStr = Field(min_length=1, max_length=MAX_LABEL_CHARS, description="the true label")

    @field_validator("label")
    @classmethod
    def _printable(cls, label: str) -> str:
        if not label.isprintable() or not label.strip():
            raise ValueError("must be printable text (no control characters, not only whitespace)")
        return label


def feedback_request_model(max_texts: int) -> type[FeedbackRequest]:
    """``FeedbackRequest`` with ``item`` in ``[0, max_texts)`` (``serve.max_texts_per_request``: no request
    the server answers has a text beyond it)."""
    return create_model(  # type: ignore[call-overload]
        "FeedbackRequest",
        __base__=FeedbackRequest,
        item=(
            StrictInt,
            Field(0, ge=0, lt=min(max_texts, MAX_ITEM + 1), description=f"index of the text (0 to {max_texts - 1})"),
        ),
    )


class FeedbackResponse(BaseModel):
    status: str
    matched: bool


class Health(BaseModel):
    status: str
    pid: int | None = Field(None, description="process id of the replica that answered /healthz")
    model_name: str | None = None
    model_version: str | None = None
    detail: str | None = None


def readable_errors(err: ValidationError | list[dict]) -> str:
    """``texts.2: String should have at most 5000 characters; top_k: ...`` from pydantic/FastAPI errors."""
    errors = err.errors() if isinstance(err, ValidationError) else err
    parts = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "json_invalid":
            where, msg = "body", f"not valid JSON ({e.get('ctx', {}).get('error', msg)})"
        elif e.get("type") == "missing" and where == "body":
            msg = "a JSON body is required"
        elif e.get("type") == "model_attributes_type":
            msg = "must be a JSON object"
        elif e.get("type") == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)
