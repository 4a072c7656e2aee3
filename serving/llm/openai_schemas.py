"""Request and response bodies of the OpenAI-compatible ``/v1`` API (pydantic), in the OpenAI wire format.

Requests accept what the official ``openai`` client sends for the parameters we implement; a parameter we do
not implement is refused by name (``n`` above 1, penalties, logprobs, ...) rather than silently ignored.
:func:`openai_error` is the one error body (``{"error": {"message", "type", "param", "code"}}``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator, model_validator

ROLES = ("system", "developer", "user", "assistant")  # developer: the newer name of system


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Request):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Request):
    role: StrictStr
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
        return role

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class JsonSchemaFormat(_Request):
    name: StrictStr = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: StrictStr | None = None
    strict: StrictBool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object: {name, schema}")
        return self


class StreamOptions(_Request):
    include_usage: StrictBool = False
    # vLLM's extension: every content chunk carries the usage so far (a chunk may hold several tokens when the
    # server streams what piled up while it was busy; the completion_tokens delta says how many)
    continuous_usage_stats: StrictBool = False


class _Sampling(_Request):
    model: StrictStr = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: StrictStr | list[StrictStr] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: StrictBool | int | None = None

    @field_validator("n")
    @classmethod
    def _one(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"only n=1 is supported (got {n}): send n separate requests")
        return n

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float) -> float:
        if v != 0.0:
            raise ValueError("penalties are not supported (only 0)")
        return v

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: bool | int | None) -> bool | int | None:
        if v:
            raise ValueError("logprobs are not supported")
        return v

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="the newer name of max_tokens")
    response_format: ResponseFormat | None = None

    @field_validator("messages", mode="before")
    @classmethod
    def _not_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("messages is empty: give at least one message")
        return v

    @model_validator(mode="after")
    def _one_cap(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise ValueError("max_tokens and max_completion_tokens differ: give one")
            self.max_tokens = self.max_completion_tokens
        if all(not m.text().strip() for m in self.messages):
            raise ValueError("every message is empty")
        return self


class CompletionRequest(_Sampling):
    prompt: StrictStr | list[StrictStr]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: StrictBool = False
    response_format: ResponseFormat | None = None  # an extension (OpenAI's completions have none)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError(f"exactly one prompt per request (got {len(v)})")
        text = v if isinstance(v, str) else v[0]
        if not text.strip():
            raise ValueError("the prompt is empty")
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported")
        return v

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class GenerativeFeedback(_Request):
    """Corrected triage fields for one generative answer (``POST /feedback`` with a ``chatcmpl-``/``cmpl-`` id)."""

    request_id: StrictStr = Field(pattern=r"^(chatcmpl|cmpl)-[0-9a-f]{32}$")
    category: StrictStr | None = Field(None, min_length=1, max_length=200)
    priority: StrictStr | None = Field(None, min_length=1, max_length=200)
    product: StrictStr | None = Field(None, max_length=200)
    order_id: StrictStr | None = Field(None, max_length=200)
    summary: StrictStr | None = Field(None, max_length=2000)  # bounded: every field is stored in the log

    @model_validator(mode="after")
    def _some_field(self) -> GenerativeFeedback:
        if not (self.model_fields_set - {"request_id"}):
            raise ValueError("give at least one corrected triage field: category, priority, product, order_id, summary")
        return self

    def fields(self) -> dict[str, str | None]:
        """Only the fields the client sent (a field sent as null means 'none', one left out means 'not judged')."""
        return {k: getattr(self, k) for k in sorted(self.model_fields_set - {"request_id"})}


def openai_error(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
