"""FastAPI routes of the OpenAI-compatible API; the work itself is the Engine's, on the model thread.

A request is planned on the event loop (validation, template, tokens, grammar compile: every 4xx is
decided before it queues), submitted to the scheduler (429 when the queue is full), and answered
from the events the model thread sends back: token ids, then an Outcome. Streaming answers are SSE
(`data: {chunk}` ... `data: [DONE]`); when the client disconnects, the generator is closed by
Starlette and the `finally` cancels the job, which frees the model within one decode step.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

from hybrid_k2.errors import HybridK2Error
from hybrid_k2.serve.engine import Engine, Plan
from hybrid_k2.serve.errors import APIError, error_body, install_error_handlers
from hybrid_k2.serve.metrics import Metrics
from hybrid_k2.serve.middleware import ApiKeyGate, BodyLimit, CountRequests
from hybrid_k2.serve.responses import (ChatAssembler, Outcome, TextAssembler, chat_chunk, completion_chunk,
                                       new_id, now, usage)
from hybrid_k2.serve.scheduler import Job, QueueFull, Scheduler
from hybrid_k2.serve.schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("hybrid_k2.serve")
ROUTES = frozenset({"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions"})
DISCONNECT_POLL_S = 0.25


def create_app(engine: Engine, *, api_key: Optional[str] = None, max_queue: int = 16,
               max_body_bytes: int = 32 * 2**20) -> FastAPI:
    """The ASGI app: routes, error handlers, API key gate, body limit and request counting."""
    metrics = engine.metrics
    scheduler = Scheduler(max_waiting=max_queue)
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        scheduler.close()
        engine.close()

    app = FastAPI(title="hybrid-k2", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API for Kimi-K2-Thinking on one workstation.")
    app.state.engine, app.state.scheduler = engine, scheduler
    install_error_handlers(app)
    metrics.add_gauge("queue_depth", "Requests waiting for the model.", lambda: scheduler.waiting)
    metrics.add_gauge("requests_running", "Requests being generated (0 or 1).", lambda: scheduler.running)
    for name, (help_, fn) in engine.cache_gauges().items():
        metrics.add_gauge(name, help_, fn)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.served_model_name}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics_route() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [engine.model_card()]}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str) -> dict[str, Any]:
        engine.check_model(model_id)
        return engine.model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        engine.check_model(body.model)
        plan = await asyncio.to_thread(engine.plan_chat, body)
        job = _submit(scheduler, engine, plan, metrics)
        asm = ChatAssembler(reasoning_field=engine.reasoning_field)
        rid, created, model = new_id("chatcmpl"), now(), engine.served_model_name
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream:
            return _sse(_chat_stream(job, scheduler, asm, rid, created, model, include_usage))
        outcome = await _collect(job, scheduler, request, asm.push)
        _, message, finish = asm.finish(outcome)
        return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": usage(outcome)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        engine.check_model(body.model)
        plan = await asyncio.to_thread(engine.plan_completion, body)
        job = _submit(scheduler, engine, plan, metrics)
        asm = TextAssembler()
        rid, created, model = new_id("cmpl"), now(), engine.served_model_name
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream:
            return _sse(_text_stream(job, scheduler, asm, rid, created, model, include_usage))
        outcome = await _collect(job, scheduler, request, asm.push)
        asm.finish(outcome)
        return {"id": rid, "object": "text_completion", "created": created, "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "text": asm.text, "logprobs": None,
                             "finish_reason": _text_finish(outcome)}],
                "usage": usage(outcome, reasoning=False)}

    wrapped = BodyLimit(app, max_body_bytes)
    wrapped = ApiKeyGate(wrapped, api_key)         # before the body is read: strangers cost nothing
    wrapped = CountRequests(wrapped, metrics, ROUTES)  # outermost: 401s and 413s are counted too
    # uvicorn serves `wrapped`; the FastAPI object stays reachable for tests and the OpenAPI schema.
    wrapped.fastapi = app  # type: ignore[attr-defined]
    return wrapped  # type: ignore[return-value]


# --- driving a job ------------------------------------------------------------------------------

def _submit(scheduler: Scheduler, engine: Engine, plan: Plan, metrics: Metrics) -> Job:
    job = Job(lambda j: engine.run(plan, j), asyncio.get_running_loop())
    try:
        scheduler.submit(job)
    except QueueFull as e:
        metrics.count_rejected()
        raise APIError(429, f"the server is busy: {e}; retry later", code="queue_full") from None
    return job


async def _events(job: Job) -> AsyncIterator[Any]:
    """Delta lists, then one Outcome; a failure on the model thread becomes an APIError."""
    while True:
        event = await job.events.get()
        if event is None:
            return
        if isinstance(event, BaseException):
            if isinstance(event, APIError):
                raise event
            if isinstance(event, HybridK2Error):  # e.g. a constraint that allows no token
                raise APIError(400, str(event).splitlines()[0] if str(event) else type(event).__name__)
            raise APIError(500, "generation failed (the server log has the details)")
        yield event


async def _collect(job: Job, scheduler: Scheduler, request: Request, on_deltas) -> Outcome:
    """Non-streaming: gathers the whole answer, cancelling if the client hangs up meanwhile."""
    outcome: Optional[Outcome] = None
    watcher = asyncio.create_task(_watch_disconnect(request, job, scheduler))
    try:
        async for event in _events(job):
            if isinstance(event, Outcome):
                outcome = event
            else:
                on_deltas(event)
    finally:
        watcher.cancel()
        if outcome is None:
            scheduler.cancel(job)
    if outcome is None:
        raise APIError(500, "generation ended without a result")
    return outcome


async def _watch_disconnect(request: Request, job: Job, scheduler: Scheduler) -> None:
    while not job.finished.is_set():
        if await request.is_disconnected():
            scheduler.cancel(job)
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


def _text_finish(outcome: Outcome) -> str:
    return "length" if outcome.finish == "length" else "stop"


def _sse(gen: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(gen, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _data(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _chat_stream(job: Job, scheduler: Scheduler, asm: ChatAssembler, rid: str, created: int, model: str,
                       include_usage: bool) -> AsyncIterator[str]:
    outcome: Optional[Outcome] = None

    def chunk(delta, finish=None, usage_obj=None):
        return _data(chat_chunk(rid, created, model, delta, finish, usage_obj, include_usage_field=include_usage))

    try:
        yield chunk({"role": "assistant", "content": ""})
        async for event in _events(job):
            if isinstance(event, Outcome):
                outcome = event
                continue
            for delta in asm.push(event):
                yield chunk(delta)
        if outcome is None:
            raise APIError(500, "generation ended without a result")
        calls, _, finish = asm.finish(outcome)
        for delta in calls:
            yield chunk(delta)
        yield chunk({}, finish)
        if include_usage:
            yield _data(chat_chunk(rid, created, model, None, usage_obj=usage(outcome), include_usage_field=True))
        yield "data: [DONE]\n\n"
    except APIError as e:
        yield _data(error_body(e.status, e.message, code=e.code, type=e.type))
        yield "data: [DONE]\n\n"
    finally:
        if outcome is None:  # client gone (generator closed) or failure: stop the model now
            scheduler.cancel(job)


async def _text_stream(job: Job, scheduler: Scheduler, asm: TextAssembler, rid: str, created: int, model: str,
                       include_usage: bool) -> AsyncIterator[str]:
    outcome: Optional[Outcome] = None

    def chunk(text, finish=None):
        return _data(completion_chunk(rid, created, model, text, finish, include_usage_field=include_usage))

    try:
        async for event in _events(job):
            if isinstance(event, Outcome):
                outcome = event
                continue
            text = asm.push(event)
            if text:
                yield chunk(text)
        if outcome is None:
            raise APIError(500, "generation ended without a result")
        yield chunk(asm.finish(outcome), _text_finish(outcome))
        if include_usage:
            yield _data(completion_chunk(rid, created, model, None, usage_obj=usage(outcome, reasoning=False),
                                         include_usage_field=True))
        yield "data: [DONE]\n\n"
    except APIError as e:
        yield _data(error_body(e.status, e.message, code=e.code, type=e.type))
        yield "data: [DONE]\n\n"
    finally:
        if outcome is None:
            scheduler.cancel(job)
