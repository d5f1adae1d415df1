"""SQLite's single writer, shared by the poll writer thread and the other writers.

Poll writes go straight onto the writer thread's queue, in the order they are submitted,
without a trip through the event loop between two of them: the thread takes the next poll
as soon as it has committed one, while the loop goes on parsing and clustering. Any other
writer (rescore, retention, the source table) takes the gate exclusively: polls submitted
meanwhile wait in order, the ones already queued finish first, and the waiting ones are
queued when the exclusive writer is done. So SQLite never sees two writers, and nobody
waits in its busy handler.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class WriterGate(Generic[T, R]):
    """Runs `write(job)` on a one-thread `executor` in submission order; `exclusive()` for the rest."""

    def __init__(self, executor: Executor, write: Callable[[T], R]) -> None:
        self._executor = executor
        self._write = write
        self._lock = asyncio.Lock()  # exclusive writers, among themselves
        self._exclusive = False  # an exclusive writer holds the gate or waits for queued polls
        self._queued = 0  # jobs on the executor, not yet finished
        self._drained: asyncio.Future[None] | None = None
        self._waiting: deque[tuple[T, asyncio.Future[R]]] = deque()

    @property
    def queued(self) -> int:
        """Jobs on the writer thread or waiting for an exclusive writer."""
        return self._queued + len(self._waiting)

    def submit(self, job: T) -> asyncio.Future[R]:
        """Queue `job` now (call order is write order); the future has its result."""
        result: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        if self._exclusive or self._waiting:
            self._waiting.append((job, result))
        else:
            self._start(job, result)
        return result

    def _start(self, job: T, result: asyncio.Future[R]) -> None:
        self._queued += 1
        done = asyncio.wrap_future(self._executor.submit(self._write, job))
        done.add_done_callback(lambda f: self._finished(f, result))

    def _finished(self, done: asyncio.Future[R], result: asyncio.Future[R]) -> None:
        self._queued -= 1
        if not result.cancelled():
            exc = done.exception()
            if exc is not None:
                result.set_exception(exc)
            else:
                result.set_result(done.result())
        if self._queued == 0 and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the gate alone: queued jobs finish first, new ones wait until the block ends."""
        async with self._lock:
            self._exclusive = True
            try:
                while self._queued:
                    self._drained = asyncio.get_running_loop().create_future()
                    await self._drained
                yield
            finally:
                self._exclusive = False
                self._drained = None
                waiting, self._waiting = self._waiting, deque()
                for job, result in waiting:
                    if not result.cancelled():
                        self._start(job, result)
