"""The serving front shared by the generation backends of `tasktune chat` and `tasktune api`: named models
(a base model and its LoRA adapters), chat-template prompts, a bounded queue of jobs, cancellation, the
synchronous chat front end, and the request errors the API maps to HTTP codes.

A backend subclasses `EngineFront` (serve/engine.py: torch, our own decoder; serve/vllm_engine.py: vLLM on
a GPU): it fills `tokenizers`, `stop_ids` and `context_length`, then runs a worker thread that takes jobs
from `_pending` (`_take_pending`) and reports through rows.py's `Row` (stop strings, streamed deltas, the
final Result).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasktune.config.schema import ConfigError
from tasktune.serve.rows import Event, Result

DEFAULT_PREFIX_CACHE_MB = 256
"""Memory for finished requests' caches that later prompts may start from (SmolLM2-135M: 23 KB a token, so
~11,000 tokens of conversations)."""

if TYPE_CHECKING:
    from tasktune.evaluate.constrain import SuffixConstraint

BASE_ALIAS = "base"
"""`model` value that always means the base model (its full name works too)."""


class EngineError(Exception):
    """A request the engine refuses; `status` and `code` map it to an HTTP error."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None
    param: str | None = None


class UnknownModelError(EngineError):
    status, code, param = 404, "model_not_found", "model"


class PromptTooLongError(EngineError):
    code, param = "context_length_exceeded", "messages"


class QueueFullError(EngineError):
    status, type, code = 429, "rate_limit_error", "queue_full"


class EngineClosedError(EngineError):
    status, type, code = 503, "server_error", "shutting_down"


@dataclass
class SamplingParams:
    """How to generate one answer. temperature 0 is greedy; `max_new_tokens=None` fills up to the default."""

    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    """OpenAI `response_format` ({"type": "json_object"}, {"type": "json_schema", "json_schema": {"schema": ...}})."""


@dataclass(eq=False)
class Job:
    """One queued generation; `emit` is called from the worker thread."""

    model: str
    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    stream: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)
    result: Result | None = None
    constraint: SuffixConstraint | None = None
    """The torch backend's logits processor for `params.response_format` (vLLM builds its own)."""
    on_end: Callable[[Job], None] | None = None

    def end(self, outcome: Result | BaseException) -> None:
        """Send the final Result (or the error) once; later calls do nothing."""
        if self.result is None:
            self.result = outcome if isinstance(outcome, Result) else Result("", len(self.prompt_ids), 0, "error")
            if self.on_end:
                self.on_end(self)
            self.emit(outcome)


def parse_adapter_specs(specs: list[str] | None) -> dict[str, str]:
    """["NAME=DIR" or "DIR", ...] -> {name: dir}. A bare DIR is named after its folder (its parent's when the
    folder is `adapter`, as `tasktune train` writes RUN/adapter)."""
    adapters: dict[str, str] = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep:
            folder = Path(spec.rstrip("/"))
            name, path = (folder.parent.name if folder.name == "adapter" else folder.name), spec
        if not name or not path:
            raise ConfigError(f"--adapter {spec!r}: expected NAME=DIR or DIR")
        if name in adapters:
            raise ConfigError(f"--adapter: the name {name!r} is given twice; name them NAME=DIR")
        adapters[name] = path
    return adapters


def constraint_spec(response_format: dict | None) -> dict | None:
    """OpenAI `response_format` -> an evaluate/constrain.py spec; None for free text.

    json_object -> any JSON object; json_schema -> its `json_schema.schema`; choice (a tasktune extension,
    `{"type": "choice", "choices": [...]}`) -> exactly one of the labels.
    """
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_schema", "schema": {"type": "object"}}
    if kind == "json_schema":
        return {"type": "json_schema", "schema": response_format["json_schema"]["schema"]}
    if kind == "choice":
        return {"type": "choice", "choices": list(response_format.get("choices") or [])}
    raise EngineError(f"response_format.type {kind!r}: expected text, json_object, json_schema or choice")


class EngineFront:
    """Named models behind one bounded queue: `chat` / `stream_chat` here, `submit` for the API.

    Subclasses set `tokenizers` ({name: tokenizer}, the base model first), `stop_ids` and `context_length`,
    start their worker, and implement `_wake_worker_and_join` (for `close`); `_prepare` may attach what a
    job needs before it is queued (a decoding constraint).
    """

    def __init__(self, model: str, adapters: Mapping[str, str], max_queue: int, max_batch: int,
                 default_max_tokens: int):
        if max_queue < 1 or max_batch < 1:
            raise ConfigError(f"max_queue ({max_queue}) and max_batch ({max_batch}) must be at least 1")
        for name in adapters:
            if name in (model, BASE_ALIAS):
                raise ConfigError(f"adapter name {name!r} clashes with the base model's name; pick another")
        self.base_model = model
        self.max_queue, self.max_batch, self.default_max_tokens = max_queue, max_batch, default_max_tokens
        self.tokenizers: dict[str, Any] = {}
        self.stop_ids: set[int] = set()
        self.context_length: int | None = None
        self._tokenizer_lock = threading.Lock()
        self._cond = threading.Condition()
        self._pending: list[Job] = []
        self._running: list[Job] = []
        self._closed = False
        self.stats = {"requests": 0, "completed": 0, "cancelled": 0, "failed": 0, "batches": 0,
                      "largest_batch": 0, "completion_tokens": 0}
        """batches: admissions of waiting jobs into the running batch; largest_batch: most rows at once."""

    @property
    def models(self) -> list[str]:
        """Names a request may ask for: the base model first, then the adapters."""
        return list(self.tokenizers)

    def resolve(self, model: str | None) -> str:
        """The engine's name for `model` (None or "base" -> the base model); UnknownModelError otherwise."""
        if model in (None, BASE_ALIAS):
            return self.base_model
        if model not in self.tokenizers:
            raise UnknownModelError(f"the model {model!r} does not exist; this server has: {', '.join(self.models)}")
        return model

    # ---- prompts --------------------------------------------------------------------------------------
    def render_chat(self, messages: list[dict], model: str | None = None) -> list[int]:
        """Token ids of `messages` through `model`'s chat template, with the assistant turn opened."""
        tokenizer = self.tokenizers[self.resolve(model)]
        try:
            with self._tokenizer_lock:
                encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                        return_dict=True)
        except Exception as err:  # jinja raises on role orders a template does not accept
            raise EngineError(f"the chat template rejected these messages: {err}") from err
        return list(encoded["input_ids"])

    def encode(self, text: str, model: str | None = None) -> list[int]:
        """Token ids of a raw prompt (no chat template)."""
        with self._tokenizer_lock:
            return list(self.tokenizers[self.resolve(model)](text)["input_ids"])

    def _decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizers[self.base_model].decode(ids, skip_special_tokens=True)

    def _token_limit(self, prompt_tokens: int, requested: int | None) -> int:
        context = self.context_length
        if requested is not None and requested < 1:
            raise EngineError(f"max_tokens must be at least 1, got {requested}")
        if context is None:
            return requested or self.default_max_tokens
        if prompt_tokens >= context:
            raise PromptTooLongError(f"the prompt is {prompt_tokens} tokens; this model's context is {context}")
        if requested is None:
            return min(self.default_max_tokens, context - prompt_tokens)
        if prompt_tokens + requested > context:
            raise PromptTooLongError(
                f"the prompt ({prompt_tokens} tokens) plus max_tokens ({requested}) exceeds this model's context "
                f"of {context} tokens; lower max_tokens or shorten the prompt")
        return requested

    # ---- queue ----------------------------------------------------------------------------------------
    def submit(self, model: str | None, prompt_ids: list[int], params: SamplingParams,
               emit: Callable[[Event], None], stream: bool = False) -> Job:
        """Queue a generation; `emit` gets text deltas (if `stream`) then a Result or an exception.

        Raises UnknownModelError, PromptTooLongError, QueueFullError, EngineClosedError, EngineError.
        """
        name = self.resolve(model)
        limit = self._token_limit(len(prompt_ids), params.max_new_tokens)
        limited = SamplingParams(limit, params.temperature, params.top_p, list(params.stop), params.seed,
                                 params.response_format)
        job = Job(name, list(prompt_ids), limited, emit, stream, on_end=self._count)
        if params.response_format:
            self._check_room()
            self._prepare(job)  # a bad schema fails here
        with self._cond:
            self._check_room()
            self._pending.append(job)
            self.stats["requests"] += 1
            self._cond.notify()
        return job

    def _prepare(self, job: Job) -> None:
        """Check and attach what `job.params.response_format` needs (EngineError when it cannot be served)."""

    def _check_room(self) -> None:
        with self._cond:
            if self._closed:
                raise EngineClosedError("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(f"the queue is full ({self.max_queue} waiting requests); retry later")

    def _take_pending(self, room: int) -> list[Job]:
        """Move up to `room` waiting jobs to the running ones (called by the worker, holding `_cond`)."""
        admitted, self._pending = self._pending[: max(0, room)], self._pending[max(0, room) :]
        self._running.extend(admitted)
        return admitted

    def _job_done(self, job: Job) -> None:
        with self._cond:
            if job in self._running:
                self._running.remove(job)

    def cancel(self, job: Job) -> None:
        """Stop `job`: drop it from the queue, or end its rows at the next generated token."""
        job.cancel.set()
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                job.end(Result("", len(job.prompt_ids), 0, "cancelled"))

    def queue_depth(self) -> tuple[int, int]:
        """(waiting, running) jobs."""
        with self._cond:
            return len(self._pending), len(self._running)

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new jobs, fail the waiting ones, cancel the running ones, stop the worker."""
        with self._cond:
            self._closed = True
            pending, self._pending = self._pending, []
            for job in self._running:
                job.cancel.set()
            self._cond.notify_all()
        for job in pending:
            job.end(EngineClosedError("the server is shutting down"))
        self._join_worker(timeout)

    def _join_worker(self, timeout: float) -> None:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        return self._closed

    def _count(self, job: Job) -> None:
        """Add a finished job to the stats."""
        with self._cond:
            reason = job.result.finish_reason
            self.stats[{"cancelled": "cancelled", "error": "failed"}.get(reason, "completed")] += 1
            self.stats["completion_tokens"] += job.result.completion_tokens

    # ---- synchronous front end (CLI chat) ---------------------------------------------------------------
    def generate_stream(self, model: str | None, prompt_ids: list[int],
                        params: SamplingParams) -> Iterator[str]:
        """Yield text deltas; the generator's return value is the Result. Closing it cancels the job."""
        import queue

        events: queue.Queue[Event] = queue.Queue()
        job = self.submit(model, prompt_ids, params, events.put, stream=True)
        try:
            while True:
                event = events.get()
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, Result):
                    return event
                yield event
        finally:
            self.cancel(job)

    def stream_chat(self, messages: list[dict], model: str | None = None, **params: Any) -> Iterator[str]:
        """Yield the reply to `messages` piece by piece; `params` are SamplingParams fields."""
        yield from self.generate_stream(model, self.render_chat(messages, model), SamplingParams(**params))

    def chat(self, messages: list[dict], model: str | None = None, **params: Any) -> Result:
        """The whole reply to `messages` with its token counts."""
        stream = self.generate_stream(model, self.render_chat(messages, model), SamplingParams(**params))
        while True:
            try:
                next(stream)
            except StopIteration as end:
                return end.value
