"""`tasktune api`: an OpenAI-compatible HTTP server (FastAPI) over the shared Engine.

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions (both streaming as
server-sent events ending with `data: [DONE]`). Errors always use OpenAI's `{"error": {...}}` body.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tasktune.serve.engine import Engine, EngineError, Job, SamplingParams
from tasktune.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ErrorDetail,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
    new_id,
)
from tasktune.serve.rows import Event, Result

log = logging.getLogger("tasktune.api")
MAX_BODY_BYTES = 4 * 1024 * 1024
DISCONNECT_POLL_S = 0.25
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}


class ApiError(Exception):
    """An error answered in OpenAI's format with `status`."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_response(status: int, message: str, code: str | None = None, param: str | None = None,
                   kind: str | None = None) -> JSONResponse:
    detail = ErrorDetail(message=message, type=kind or ERROR_TYPES.get(status, "server_error"), param=param,
                         code=code)
    return JSONResponse(ErrorResponse(error=detail).model_dump(), status_code=status)


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    """One readable line for pydantic's errors, and the first offending field."""
    parts, param = [], None
    for problem in err.errors():
        loc = [str(p) for p in problem.get("loc", ()) if p != "body"]
        if problem.get("type") == "json_invalid":
            return f"the request body is not valid JSON: {problem.get('ctx', {}).get('error', '')}".strip(), None
        msg = str(problem.get("msg", "invalid")).removeprefix("Value error, ")
        if not loc and problem.get("type") == "value_error":  # a check of the whole body
            parts.append(msg)
            continue
        if not loc:
            return "the request body must be a JSON object (Content-Type: application/json)", None
        param = param or (".".join(loc) or None)
        parts.append(f"{'.'.join(loc) or 'body'}: {msg}")
    return "; ".join(parts) or "invalid request", param


class _AsyncEvents:
    """Engine events (sent from the worker thread) delivered into this event loop's queue."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def put(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


class _BodyLimit:
    """ASGI middleware: a body over `limit` bytes is answered 413, by its Content-Length when it has one and
    while it streams in otherwise (chunked): at most `limit` bytes are ever held. The body read is then
    handed to the app as one message."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = error_response(413, f"the request body is over {self.limit} bytes", "body_too_large")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_large(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending the whole body
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await too_large(scope, receive, send)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _sse(payload: Any) -> str:
    return f"data: {payload.model_dump_json()}\n\n"


def _params(body: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
    response_format = getattr(body, "response_format", None)
    return SamplingParams(
        max_new_tokens=body.token_limit(),
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_strings(),
        seed=body.seed,
        response_format=response_format.model_dump(by_alias=True) if response_format else None,
    )


async def _submit(engine: Engine, model: str, prompt_ids: list[int], params: SamplingParams, events: _AsyncEvents,
                  stream: bool) -> Job:
    """engine.submit; in a thread when a response_format constraint is built (its first build takes seconds).
    A constraint that cannot be built from the request's schema is the request's fault: a 400."""
    submit = functools.partial(engine.submit, model, prompt_ids, params, events.put, stream=stream)
    if not params.response_format:
        return submit()
    try:
        return await asyncio.to_thread(submit)
    except EngineError:
        raise
    except (ValueError, TypeError, KeyError, LookupError, RecursionError, NotImplementedError) as err:
        log.info("response_format refused: %r", err)
        raise ApiError(400, f"response_format cannot be used: {err}", "invalid_response_format",
                       "response_format") from err


async def _tokenize(function: Any, *args: Any) -> list[int]:
    """Tokenise off the event loop: a long prompt must not stall /health and the other requests."""
    return await asyncio.to_thread(function, *args)


async def _final(engine: Engine, job: Job, events: _AsyncEvents, request: Request) -> Result | None:
    """Wait for a non-streaming `job`'s one event; None (and the job cancelled) when the client left first."""
    getter = asyncio.ensure_future(events.queue.get())  # never cancelled while waiting: no event can be lost
    try:
        while not (await asyncio.wait({getter}, timeout=DISCONNECT_POLL_S))[0]:
            if await request.is_disconnected():
                return None
        event = getter.result()
    finally:
        getter.cancel()
        engine.cancel(job)  # nothing once it finished; stops it when the client left or this task was cancelled
    if isinstance(event, BaseException):
        raise event
    return event


async def _stream(engine: Engine, job: Job, events: _AsyncEvents, chunk: Any, include_usage: bool,
                  first: Any = None) -> AsyncIterator[str]:
    """SSE lines: `first`, one chunk per text delta, a closing chunk with finish_reason, usage, [DONE].

    chunk(text, finish_reason, usage) builds one chunk. Cancelled (client gone) -> the job is cancelled.
    """
    try:
        if first is not None:
            yield _sse(first)
        while True:
            event = await events.queue.get()
            if isinstance(event, str):
                yield _sse(chunk(event, None, None))
            elif isinstance(event, Result):
                yield _sse(chunk(None, _reason(event), None))
                if include_usage:
                    yield _sse(chunk(None, None, Usage.of(event.prompt_tokens, event.completion_tokens)))
                break
            else:
                status = event.status if isinstance(event, EngineError) else 500
                message = str(event) if isinstance(event, EngineError) else "generation failed"
                log.error("generation failed: %r", event)
                yield f"data: {error_response(status, message).body.decode()}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        engine.cancel(job)


def _reason(result: Result) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def create_app(engine: Engine, api_key: str | None = None) -> FastAPI:
    """The FastAPI app over `engine`; with `api_key`, /v1 routes need `Authorization: Bearer <api_key>`."""
    app = FastAPI(title="tasktune", version="0.1.0", docs_url=None, redoc_url=None)
    app.add_middleware(_BodyLimit)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.message, err.code, err.param)

    @app.exception_handler(EngineError)
    async def _engine_error(_: Request, err: EngineError) -> JSONResponse:
        return error_response(err.status, str(err), err.code, err.param, err.type)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(err)
        return error_response(400, message, "invalid_request", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=err)
        return error_response(500, "internal server error", "internal_error")

    async def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           "invalid_api_key")

    def accepting() -> None:
        if engine.closed:
            raise ApiError(503, "the server is shutting down", "shutting_down")

    v1 = [Depends(authorize), Depends(accepting)]

    @app.get("/health")
    async def health() -> JSONResponse:
        waiting, running = engine.queue_depth()
        body = {"status": "closing" if engine.closed else "ok", "waiting": waiting, "running": running,
                "stats": dict(engine.stats)}
        return JSONResponse(body, status_code=503 if engine.closed else 200)

    @app.get("/v1/models", dependencies=v1)
    async def list_models() -> ModelList:
        return ModelList(data=[_card(engine, name) for name in engine.models])

    @app.get("/v1/models/{name:path}", dependencies=v1)
    async def get_model(name: str) -> ModelCard:
        return _card(engine, engine.resolve(name))

    @app.post("/v1/chat/completions", dependencies=v1)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        model = engine.resolve(body.model)
        prompt_ids = await _tokenize(engine.render_chat, [m.as_template_message() for m in body.messages], model)
        events = _AsyncEvents()
        job = await _submit(engine, model, prompt_ids, _params(body), events, body.stream)
        rid = new_id("chatcmpl")
        if body.stream:
            def chunk(text: str | None, reason: str | None, usage: Usage | None) -> ChatCompletionChunk:
                choices = [] if usage else [ChatChunkChoice(delta=ChatDelta(content=text), finish_reason=reason)]
                return ChatCompletionChunk(id=rid, model=body.model, choices=choices, usage=usage)

            first = ChatCompletionChunk(id=rid, model=body.model,
                                        choices=[ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))])
            lines = _stream(engine, job, events, chunk, body.include_usage(), first)
            return StreamingResponse(lines, media_type="text/event-stream", headers=_SSE_HEADERS)
        result = await _final(engine, job, events, request)
        if result is None:
            return Response(status_code=499)
        return JSONResponse(ChatCompletion(
            id=rid, model=body.model, usage=Usage.of(result.prompt_tokens, result.completion_tokens),
            choices=[ChatChoice(message=AssistantMessage(content=result.text), finish_reason=_reason(result))],
        ).model_dump())

    @app.post("/v1/completions", dependencies=v1)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        model = engine.resolve(body.model)
        prompt_ids = await _tokenize(engine.encode, body.prompt, model)
        events = _AsyncEvents()
        job = await _submit(engine, model, prompt_ids, _params(body), events, body.stream)
        rid = new_id("cmpl")
        if body.stream:
            def chunk(text: str | None, reason: str | None, usage: Usage | None) -> Completion:
                choices = [] if usage else [CompletionChoice(text=text or "", finish_reason=reason)]
                return Completion(id=rid, model=body.model, choices=choices, usage=usage)

            lines = _stream(engine, job, events, chunk, body.include_usage())
            return StreamingResponse(lines, media_type="text/event-stream", headers=_SSE_HEADERS)
        result = await _final(engine, job, events, request)
        if result is None:
            return Response(status_code=499)
        return JSONResponse(Completion(
            id=rid, model=body.model, usage=Usage.of(result.prompt_tokens, result.completion_tokens),
            choices=[CompletionChoice(text=result.text, finish_reason=_reason(result))],
        ).model_dump())

    return app


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _card(engine: Engine, name: str) -> ModelCard:
    return ModelCard(id=name, parent=None if name == engine.base_model else engine.base_model)


class BackgroundServer:
    """Serve `app` with uvicorn in a daemon thread on a free loopback port (tests, benchmarks)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
