"""OpenAI-compatible wire types (pydantic): requests are validated here, responses are built from these."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP_STRINGS = 4
SEED_RANGE = (-(2**63), 2**63 - 1)
"""Seeds are 64-bit signed integers (what torch.manual_seed and OpenAI accept)."""
MAX_TOKENS_FIELD = 1 << 20
MAX_SCHEMA_DEPTH = 32


def _check_text(value: Any, where: str = "body", depth: int = 0) -> None:
    """Refuse strings that are not valid Unicode text (a lone UTF-16 surrogate such as "\\ud800"): no
    tokenizer can encode them. Walks lists and objects."""
    if depth > 64:
        raise ValueError(f"{where}: nested too deeply")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"{where}: contains a lone UTF-16 surrogate ({value[err.start]!r} at character "
                             f"{err.start}); send valid Unicode text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where, depth + 1)
            _check_text(item, f"{where}.{key}" if isinstance(key, str) else where, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_text(item, f"{where}[{i}]", depth + 1)


def _pointer(root: Any, ref: str) -> bool:
    """Whether the local JSON pointer `ref` ("#", "#/$defs/x") names a value inside `root`."""
    if ref == "#":
        return True
    if not ref.startswith("#/"):
        return False
    node = root
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return isinstance(node, (dict, bool))


def check_schema(schema: Any, root: Any = None, depth: int = 0) -> None:
    """Refuse what the constraint builder cannot use: a `$ref` that does not resolve inside the schema
    (remote references are never fetched), or nesting deeper than MAX_SCHEMA_DEPTH."""
    root = schema if root is None else root
    if depth > MAX_SCHEMA_DEPTH:
        raise ValueError(f"the JSON schema is nested deeper than {MAX_SCHEMA_DEPTH} levels")
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if ref is not None and (not isinstance(ref, str) or not _pointer(root, ref)):
            raise ValueError(f"$ref {ref!r} does not resolve inside the schema (only local references such as "
                             "'#/$defs/name' are supported)")
        for value in schema.values():
            check_schema(value, root, depth + 1)
    elif isinstance(schema, list):
        for value in schema:
            check_schema(value, root, depth + 1)


def new_id(prefix: str) -> str:
    """A response id like OpenAI's: `chatcmpl-<hex>`, `cmpl-<hex>`."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class _Request(BaseModel):
    """Unknown fields are ignored (clients send many); fields we cannot honour are rejected by name."""

    model_config = ConfigDict(extra="ignore")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""

    def as_template_message(self) -> dict[str, str]:
        """{"role", "content"} for the chat template; `developer` is the newer name of `system`."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class JsonSchemaSpec(_Request):
    name: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _resolvable(cls, schema: dict[str, Any]) -> dict[str, Any]:
        check_schema(schema)
        return schema


class ResponseFormat(_Request):
    """OpenAI's text | json_object | json_schema, plus `choice` (tasktune): one of `choices`, verbatim."""

    type: Literal["text", "json_object", "json_schema", "choice"]
    json_schema: JsonSchemaSpec | None = None
    choices: list[str] | None = None

    @model_validator(mode="after")
    def _details_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format.type=json_schema needs response_format.json_schema.schema")
        if self.type == "choice" and not self.choices:
            raise ValueError("response_format.type=choice needs a non-empty response_format.choices")
        return self


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model: str = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Any = None

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        _check_text(data)
        return data

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"only n=1 is supported, got n={n}")
        return n

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        if value not in (None, False, 0):
            raise ValueError("logprobs are not supported")
        return value

    def stop_strings(self) -> list[str]:
        return list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_FIELD)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_FIELD)
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, tools: list[Any] | None) -> None:
        if tools:
            raise ValueError("tools / function calling are not supported")
        return None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1, le=MAX_TOKENS_FIELD)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str:
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ValueError(f"exactly one prompt is supported, got a list of {len(prompt)}")
            prompt = prompt[0]
        return prompt

    @model_validator(mode="after")
    def _unsupported(self) -> CompletionRequest:
        if self.echo or self.suffix or (self.best_of or 1) != 1:
            raise ValueError("echo, suffix and best_of are not supported")
        return self

    def token_limit(self) -> int | None:
        return self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


FinishReason = Literal["stop", "length"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: None = None


class Completion(BaseModel):
    """A /v1/completions response, and (with object=text_completion too) each of its stream chunks."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "tasktune"
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
