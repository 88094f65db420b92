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
import importlib.resources
import json
import logging
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from hybrid_k2.serve.anthropic_routes import add_messages_routes
from hybrid_k2.serve.engine import Engine
from hybrid_k2.serve.errors import APIError, error_body, install_error_handlers
from hybrid_k2.serve.jobs import collect, events, sse, submit
from hybrid_k2.serve.middleware import ApiKeyGate, BodyLimit, CountRequests
from hybrid_k2.serve.responses import (ChatAssembler, Outcome, TextAssembler, chat_chunk, completion_chunk,
                                       new_id, now, usage)
from hybrid_k2.serve.scheduler import Job, Scheduler
from hybrid_k2.serve.schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("hybrid_k2.serve")
WEB_PAGE = importlib.resources.files("hybrid_k2.serve") / "web" / "index.html"  # the chat page at /
ROUTES = frozenset({"/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/messages",
                    "/v1/messages/count_tokens"})


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
                  description="OpenAI- and Anthropic-compatible API for Kimi-K2-Thinking on one workstation.")
    app.state.engine, app.state.scheduler = engine, scheduler
    install_error_handlers(app)
    metrics.add_gauge("queue_depth", "Requests waiting for the model.", lambda: scheduler.waiting)
    metrics.add_gauge("requests_running", "Requests being generated (0 or 1).", lambda: scheduler.running)
    for name, (help_, fn) in engine.cache_gauges().items():
        metrics.add_gauge(name, help_, fn)

    # HEAD too: clients check that the server is up with it (Claude Code sends HEAD / before its first request)
    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
    def web_chat() -> HTMLResponse:
        return HTMLResponse(WEB_PAGE.read_text(encoding="utf-8"))

    @app.api_route("/health", methods=["GET", "HEAD"])
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
        job = submit(scheduler, engine, plan, metrics)
        asm = ChatAssembler(reasoning_field=engine.reasoning_field)
        rid, created, model = new_id("chatcmpl"), now(), engine.served_model_name
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream:
            return sse(_chat_stream(job, scheduler, asm, rid, created, model, include_usage))
        outcome = await collect(job, scheduler, request, asm.push)
        _, message, finish = asm.finish(outcome)
        return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": usage(outcome)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        engine.check_model(body.model)
        plan = await asyncio.to_thread(engine.plan_completion, body)
        job = submit(scheduler, engine, plan, metrics)
        asm = TextAssembler()
        rid, created, model = new_id("cmpl"), now(), engine.served_model_name
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream:
            return sse(_text_stream(job, scheduler, asm, rid, created, model, include_usage))
        outcome = await collect(job, scheduler, request, asm.push)
        asm.finish(outcome)
        return {"id": rid, "object": "text_completion", "created": created, "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "text": asm.text, "logprobs": None,
                             "finish_reason": _text_finish(outcome)}],
                "usage": usage(outcome, reasoning=False)}

    add_messages_routes(app, engine, scheduler)

    wrapped = BodyLimit(app, max_body_bytes)
    wrapped = ApiKeyGate(wrapped, api_key)         # before the body is read: strangers cost nothing
    wrapped = CountRequests(wrapped, metrics, ROUTES)  # outermost: 401s and 413s are counted too
    # uvicorn serves `wrapped`; the FastAPI object stays reachable for tests and the OpenAPI schema.
    wrapped.fastapi = app  # type: ignore[attr-defined]
    return wrapped  # type: ignore[return-value]


def _text_finish(outcome: Outcome) -> str:
    return "length" if outcome.finish == "length" else "stop"


def _data(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _chat_stream(job: Job, scheduler: Scheduler, asm: ChatAssembler, rid: str, created: int, model: str,
                       include_usage: bool) -> AsyncIterator[str]:
    outcome: Optional[Outcome] = None

    def chunk(delta, finish=None, usage_obj=None):
        return _data(chat_chunk(rid, created, model, delta, finish, usage_obj, include_usage_field=include_usage))

    try:
        yield chunk({"role": "assistant", "content": ""})
        async for event in events(job):
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
        async for event in events(job):
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
