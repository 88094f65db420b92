"""One model, one generation at a time: a FIFO of jobs run by a single worker thread.

[NOTE] Why a thread and not the event loop: a decode step is seconds of CPU work in C++/torch (they
release the GIL), so the asyncio loop must stay free to accept requests, stream tokens and notice
disconnects. Jobs are admitted up to `max_waiting` behind the running one; beyond that `submit`
raises QueueFull (HTTP 429). `cancel()` on a waiting job removes it from the queue at once; on the
running job it sets the event the decode loop polls between tokens, so the slot frees within one step.
Events flow back to the request's asyncio queue with `call_soon_threadsafe`.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import deque
from typing import Any, Callable, Optional

log = logging.getLogger("hybrid_k2.serve")


class QueueFull(Exception):
    pass


class Job:
    """Work for the model thread. `work(job)` runs there; `emit(event)` hands events to the request."""

    _ids = itertools.count(1)

    def __init__(self, work: Callable[["Job"], None], loop: asyncio.AbstractEventLoop):
        self.id = next(Job._ids)
        self.work = work
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.started = threading.Event()

    def emit(self, event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed (server shutting down): nobody is listening
            self.cancelled.set()


class Scheduler:
    def __init__(self, *, max_waiting: int):
        self.max_waiting = max_waiting
        self._waiting: deque[Job] = deque()
        self._running: Optional[Job] = None
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="hybrid-k2-model", daemon=True)
        self._thread.start()

    # --- request side (event loop thread) ---
    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stop:
                raise QueueFull("server is shutting down")
            # One slot runs, max_waiting wait; a job not yet picked up by the thread counts as waiting
            # for the running slot, so the admission does not depend on the thread's timing.
            admitted = len(self._waiting) + (self._running is not None)
            if admitted >= self.max_waiting + 1:
                raise QueueFull(f"{admitted - 1} requests already waiting (limit {self.max_waiting})")
            self._waiting.append(job)
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        with self._cv:
            job.cancelled.set()
            try:
                self._waiting.remove(job)
            except ValueError:
                return  # running (the decode loop sees the event) or already done
        job.finished.set()
        job.emit(None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return 1 if self._running is not None else 0

    def close(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stop = True
            for job in self._waiting:
                job.cancelled.set()
            self._waiting.clear()
            if self._running is not None:
                self._running.cancelled.set()
            self._cv.notify_all()
        self._thread.join(timeout)

    # --- model thread ---
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                job = self._waiting.popleft()
                self._running = job
            job.started.set()
            try:
                job.work(job)
            except BaseException as e:  # noqa: BLE001 - the worker must survive any request
                log.exception("generation failed")
                job.emit(e)
            finally:
                with self._cv:
                    self._running = None
                job.finished.set()
                job.emit(None)  # end of events
