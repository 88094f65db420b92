"""Driving one job from a route: submit it, read its events, cancel it when the client goes away.

Shared by the OpenAI and the Anthropic routes. The model thread sends lists of parser Deltas, then
one Outcome (or an exception); a client that hangs up cancels the job, which frees the model within
one decode step.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Optional

from fastapi import Request
from fastapi.responses import StreamingResponse

from hybrid_k2.errors import HybridK2Error
from hybrid_k2.serve.engine import Engine, Plan
from hybrid_k2.serve.errors import APIError
from hybrid_k2.serve.metrics import Metrics
from hybrid_k2.serve.responses import Outcome, Started
from hybrid_k2.serve.scheduler import Job, QueueFull, Scheduler

DISCONNECT_POLL_S = 0.25


def submit(scheduler: Scheduler, engine: Engine, plan: Plan, metrics: Metrics) -> Job:
    job = Job(lambda j: engine.run(plan, j), asyncio.get_running_loop())
    try:
        scheduler.submit(job)
    except QueueFull as e:
        metrics.count_rejected()
        raise APIError(429, f"the server is busy: {e}; retry later", code="queue_full") from None
    return job


async def events(job: Job, *, started: bool = False) -> AsyncIterator[Any]:
    """Delta lists, then one Outcome (`started`: a Started first, once the prefix cache was looked up);
    a failure on the model thread becomes an APIError."""
    while True:
        event = await job.events.get()
        if event is None:
            return
        if isinstance(event, Started) and not started:
            continue
        if isinstance(event, BaseException):
            if isinstance(event, APIError):
                raise event
            if isinstance(event, HybridK2Error):  # e.g. a constraint that allows no token
                raise APIError(400, str(event).splitlines()[0] if str(event) else type(event).__name__)
            raise APIError(500, "generation failed (the server log has the details)")
        yield event


async def collect(job: Job, scheduler: Scheduler, request: Request, on_deltas) -> Outcome:
    """Non-streaming: gathers the whole answer, cancelling if the client hangs up meanwhile."""
    outcome: Optional[Outcome] = None
    watcher = asyncio.create_task(watch_disconnect(request, job, scheduler))
    try:
        async for event in events(job):
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


async def watch_disconnect(request: Request, job: Job, scheduler: Scheduler) -> None:
    while not job.finished.is_set():
        if await request.is_disconnected():
            scheduler.cancel(job)
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


def sse(gen: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(gen, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
