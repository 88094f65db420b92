"""Routes of the Anthropic Messages API: POST /v1/messages and /v1/messages/count_tokens.

Planning, queueing and generation are the OpenAI route's (anthropic.py translates the request); only
the shape of the answer differs. A stream is Anthropic's event sequence: message_start, ping, per
block content_block_start / content_block_delta... / content_block_stop, message_delta (stop_reason,
final usage), message_stop; a `ping` also goes out whenever the model is silent for PING_S (a long
prefill), so that proxies and clients do not time the connection out. A failure after the stream
began is an `error` event.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request

from hybrid_k2.serve import anthropic as an
from hybrid_k2.serve.anthropic_schemas import CountTokensRequest, MessagesRequest
from hybrid_k2.serve.answer import Answer
from hybrid_k2.serve.engine import Engine
from hybrid_k2.serve.errors import APIError, anthropic_error_body
from hybrid_k2.serve.jobs import collect, events, sse, submit
from hybrid_k2.serve.responses import Outcome, Started
from hybrid_k2.serve.scheduler import Job, Scheduler

PING_S = 10.0
_PING = object()


def add_messages_routes(app: FastAPI, engine: Engine, scheduler: Scheduler) -> None:
    @app.post("/v1/messages")
    async def messages(body: MessagesRequest, request: Request):
        engine.check_model(body.model)
        plan = await asyncio.to_thread(engine.plan_chat, an.to_chat_request(body))
        try:
            job = submit(scheduler, engine, plan, engine.metrics)
        except APIError as e:  # a full queue is Anthropic's "overloaded" (529), which its SDK retries
            raise APIError(529, e.message) if e.code == "queue_full" else e from None
        answer, mid, model = Answer(), an.new_message_id(), engine.served_model_name
        if body.stream:
            return sse(_stream(job, scheduler, answer, mid, model, len(plan.prompt_ids)))
        outcome = await collect(job, scheduler, request, answer.push)
        answer.finish()
        return an.message(mid, model, answer, outcome)

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(body: CountTokensRequest) -> dict[str, Any]:
        engine.check_model(body.model)
        return {"input_tokens": await asyncio.to_thread(engine.count_chat_tokens, an.to_chat_request(body))}


async def _with_pings(job: Job) -> AsyncIterator[Any]:
    """The job's events, with _PING whenever none came for PING_S seconds."""
    it = events(job, started=True).__aiter__()
    nxt: Optional[asyncio.Future] = None
    try:
        while True:
            nxt = nxt or asyncio.ensure_future(it.__anext__())
            done, _ = await asyncio.wait({nxt}, timeout=PING_S)
            if not done:
                yield _PING
                continue
            fut, nxt = nxt, None
            try:
                yield fut.result()
            except StopAsyncIteration:
                return
    finally:
        if nxt is not None:
            nxt.cancel()


async def _stream(job: Job, scheduler: Scheduler, answer: Answer, mid: str, model: str,
                  prompt_tokens: int) -> AsyncIterator[str]:
    """message_start once the prefix cache was looked up, with the usage split as Anthropic sends it (or
    after PING_S in the queue without the split, to keep the connection alive: message_delta has it)."""
    outcome: Optional[Outcome] = None
    blocks = an.BlockEvents(answer)
    ping = an.sse_event("ping", {"type": "ping"})
    started = False
    try:
        async for event in _with_pings(job):
            if not started:
                cached = event.cached_tokens if isinstance(event, Started) else 0
                yield an.sse_event("message_start", {"type": "message_start", "message": an.message(
                    mid, model, answer, None, prompt_tokens, cached)})
                started = True
            if event is _PING:
                yield ping
            elif isinstance(event, Started):
                pass
            elif isinstance(event, Outcome):
                outcome = event
            else:
                for text in blocks.pieces(answer.push(event)):
                    yield text
        if outcome is None:
            raise APIError(500, "generation ended without a result")
        for text in blocks.pieces(answer.finish()) + blocks.close():
            yield text
        reason, seq = an.stop_reason(answer, outcome)
        yield an.sse_event("message_delta", {"type": "message_delta",
                                             "delta": {"stop_reason": reason, "stop_sequence": seq},
                                             "usage": an.usage(outcome)})
        yield an.sse_event("message_stop", {"type": "message_stop"})
    except APIError as e:
        yield an.sse_event("error", anthropic_error_body(e.status, e.message))
    finally:
        if outcome is None:  # client gone (generator closed) or failure: stop the model now
            scheduler.cancel(job)
