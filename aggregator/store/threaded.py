"""SQLite through the synchronous pysqlite driver, behind the async API the store uses.

SQLAlchemy's asyncio extension is a package whose __init__ imports the ORM and greenlet:
about 7.8 MB of a daemon's memory for an API the store uses a sliver of. On SQLite the
store's engine is therefore a `ThreadedEngine`: a synchronous pysqlite `Engine` whose
every call runs off the event loop, in a worker thread. PostgreSQL keeps SQLAlchemy's
AsyncEngine (asyncpg, no threads); the `DbEngine` protocols below are what the store
asks of either.

Each connection is pinned to one worker thread from checkout to release: every call on
it runs there, one after another, so a SQLite connection is never used by two threads at
once, also when the task awaiting a call is cancelled (the call finishes in its thread,
then the connection is released there). There are at most as many threads as the pool
has connections, so a checkout never waits inside a thread; a connection waits for a
thread on the event loop instead. Results are buffered in the thread (`execute`), or
fetched there a batch at a time (`stream`): rows are never fetched on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Protocol, TypeAlias, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, CursorResult, Dialect, Result
from sqlalchemy.sql.expression import Executable

P = ParamSpec("P")
T = TypeVar("T")
# Results and rows of any columns (SQLAlchemy 2.1 types a row's columns as a TypeVarTuple).
AnyResult: TypeAlias = Result[*tuple[Any, ...]]
AnyCursorResult: TypeAlias = CursorResult[*tuple[Any, ...]]

# SQLAlchemy's own default for QueuePool's `pool_timeout`: how long a connection waits for
# one of the pool's (here: for a thread, which comes with one) before TimeoutError.
POOL_TIMEOUT_S = 30.0
# Rows fetched per hand-off to the thread by `partitions()` when no size is given.
STREAM_ROWS = 1000


class DbTransaction(Protocol):
    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...


class DbStream(Protocol):
    """A result read a batch of rows at a time (AsyncResult's `partitions`)."""

    def partitions(self, size: int | None = None) -> AsyncIterator[Sequence[Any]]: ...


class DbConnection(Protocol):
    """What the store asks of a connection: AsyncConnection's API, the part it uses."""

    @property
    def dialect(self) -> Dialect: ...

    async def execute(self, statement: Executable, parameters: Any = None) -> AnyResult: ...

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> AnyResult: ...

    def stream(self, statement: Executable, parameters: Any = None) -> Awaitable[DbStream]: ...

    async def run_sync(self, fn: Callable[Concatenate[sa.Connection, P], T], *arg: P.args, **kw: P.kwargs) -> T: ...

    def begin(self) -> Awaitable[DbTransaction]: ...

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...


class DbEngine(Protocol):
    """What the store asks of an engine: AsyncEngine's API, the part it uses."""

    @property
    def dialect(self) -> Dialect: ...

    @property
    def url(self) -> URL: ...

    @property
    def sync_engine(self) -> sa.Engine: ...

    def connect(self) -> AbstractAsyncContextManager[DbConnection]: ...

    def begin(self) -> AbstractAsyncContextManager[DbConnection]: ...

    def execution_options(self, **opt: Any) -> DbEngine: ...

    async def dispose(self) -> None: ...


def rowcount(result: AnyResult) -> int:
    """The rows a DML statement without RETURNING matched.

    Such a statement's result is the driver's CursorResult on both engines (there are no
    rows to buffer), whose rowcount SQLAlchemy read before it closed the cursor.
    """
    assert isinstance(result, CursorResult), type(result)
    return result.rowcount


class _Threads:
    """Up to `limit` one-thread executors, each lent to one connection at a time."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._started = 0
        self._idle: list[ThreadPoolExecutor] = []
        self._waiting: deque[asyncio.Future[ThreadPoolExecutor]] = deque()
        self._lock = threading.Lock()  # `release` runs on the thread that finished

    async def acquire(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if self._started < self._limit:
                self._started += 1
                return ThreadPoolExecutor(max_workers=1, thread_name_prefix="aggregator-sqlite")
            waiter: asyncio.Future[ThreadPoolExecutor] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
        try:
            async with asyncio.timeout(POOL_TIMEOUT_S):
                return await waiter
        except BaseException as exc:
            # Handed a thread just as the wait ended: it goes to the next one.
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise sa.exc.TimeoutError(
                    f"all {self._limit} SQLite connections stayed in use for {POOL_TIMEOUT_S:.0f}s"
                ) from None
            raise

    def release(self, thread: ThreadPoolExecutor) -> None:
        """Lend `thread` to the connection waiting longest, or keep it idle (any thread may call)."""
        with self._lock:
            while self._waiting:
                waiter = self._waiting.popleft()
                if not waiter.done():
                    with contextlib.suppress(RuntimeError):  # its loop is closed: not waiting anymore
                        waiter.get_loop().call_soon_threadsafe(self._hand, waiter, thread)
                        return
            self._idle.append(thread)

    def _hand(self, waiter: asyncio.Future[ThreadPoolExecutor], thread: ThreadPoolExecutor) -> None:
        if waiter.done():  # cancelled meanwhile
            self.release(thread)
        else:
            waiter.set_result(thread)

    def stop_idle(self) -> None:
        """End the idle threads (the ones lent out return and are kept; `acquire` starts new ones)."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._started -= len(idle)
        for thread in idle:
            thread.shutdown(wait=True)


class ThreadedEngine:
    """A synchronous SQLAlchemy engine with AsyncEngine's API (the part `DbEngine` names)."""

    def __init__(self, sync_engine: sa.Engine, *, threads: int, _shared: _Threads | None = None) -> None:
        self.sync_engine = sync_engine
        self._threads = _shared if _shared is not None else _Threads(threads)
        self._limit = threads

    @property
    def dialect(self) -> Dialect:
        return self.sync_engine.dialect

    @property
    def url(self) -> URL:
        return self.sync_engine.url

    def execution_options(self, **opt: Any) -> ThreadedEngine:
        """The same pool and threads, with these options on every connection (as AsyncEngine's)."""
        return ThreadedEngine(self.sync_engine.execution_options(**opt), threads=self._limit, _shared=self._threads)

    def connect(self) -> ThreadedConnection:
        return ThreadedConnection(self)

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[ThreadedConnection]:
        """A connection in a transaction, committed when the block ends, else rolled back."""
        async with self.connect() as conn:
            tx = await conn.begin()
            try:
                yield conn
            except BaseException:
                await tx.rollback()
                raise
            await tx.commit()

    async def dispose(self, close: bool = True) -> None:
        """Close the pool's connections and end the idle threads; the engine stays usable."""

        def dispose() -> None:
            self.sync_engine.dispose(close=close)
            self._threads.stop_idle()

        # Off the loop: closing the last connection to a file checkpoints its WAL.
        await asyncio.to_thread(dispose)


class ThreadedConnection:
    """A connection of a `ThreadedEngine`, run by the thread it holds until it is closed."""

    def __init__(self, engine: ThreadedEngine) -> None:
        self._engine = engine
        self._thread: ThreadPoolExecutor | None = None
        self._conn: sa.Connection | None = None
        self._streams: list[AnyCursorResult] = []

    async def __aenter__(self) -> ThreadedConnection:
        self._thread = await self._engine._threads.acquire()
        try:
            await self._call(self._open)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _open(self) -> None:
        # Set in the thread: a connect whose awaiting task was cancelled still gets closed.
        self._conn = self._engine.sync_engine.connect()

    def _close(self) -> None:
        streams, self._streams = self._streams, []
        for result in streams:
            result.close()  # finalizes a half-read statement, which would hold its read snapshot
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # back to the pool, its transaction (if any) rolled back

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        # Queued behind whatever the thread still runs (a call whose awaiting task was
        # cancelled): the thread is lent out again only once the connection is back.
        done = thread.submit(self._close)
        done.add_done_callback(lambda _: self._engine._threads.release(thread))
        await asyncio.shield(asyncio.wrap_future(done))

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._thread is None:
            raise sa.exc.ResourceClosedError("This connection is closed")
        job: Future[T] = self._thread.submit(functools.partial(fn, *args, **kwargs))
        return await asyncio.wrap_future(job)

    @property
    def _sync(self) -> sa.Connection:
        if self._conn is None:
            raise sa.exc.ResourceClosedError("This connection is closed")
        return self._conn

    @property
    def dialect(self) -> Dialect:
        return self._engine.dialect

    def get_execution_options(self) -> Any:
        return self._sync.get_execution_options()

    async def execute(
        self, statement: Executable, parameters: Any = None, *, execution_options: Any = None
    ) -> AnyResult:
        return await self._call(_buffered, self._sync.execute, statement, parameters, execution_options)

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> AnyResult:
        return await self._call(_buffered, self._sync.exec_driver_sql, statement, parameters, None)

    async def stream(self, statement: Executable, parameters: Any = None) -> ThreadedStream:
        """The result unbuffered: `partitions()` fetches it in the thread, a batch per hand-off."""
        result = await self._call(self._sync.execute, statement, parameters)
        self._streams.append(result)
        return ThreadedStream(self, result)

    async def run_sync(self, fn: Callable[Concatenate[sa.Connection, P], T], *arg: P.args, **kw: P.kwargs) -> T:
        return await self._call(fn, self._sync, *arg, **kw)

    async def begin(self) -> ThreadedTransaction:
        return ThreadedTransaction(self, await self._call(self._sync.begin))

    async def commit(self) -> None:
        await self._call(self._sync.commit)

    async def rollback(self) -> None:
        await self._call(self._sync.rollback)


def _buffered(execute: Callable[..., AnyCursorResult], statement: Any, parameters: Any, options: Any) -> AnyResult:
    """`execute` with every row fetched (in the calling thread): a result the loop can read.

    A statement without rows keeps its CursorResult, closed already, for `rowcount`.
    """
    result = execute(statement, parameters, execution_options=options or {})
    if not result.returns_rows:
        return result
    return result.freeze()()


class ThreadedTransaction:
    def __init__(self, conn: ThreadedConnection, tx: sa.RootTransaction) -> None:
        self._conn = conn
        self._tx = tx

    async def commit(self) -> None:
        await self._conn._call(self._tx.commit)

    async def rollback(self) -> None:
        await self._conn._call(self._tx.rollback)


class ThreadedStream:
    def __init__(self, conn: ThreadedConnection, result: AnyCursorResult) -> None:
        self._conn = conn
        self._result = result

    async def partitions(self, size: int | None = None) -> AsyncIterator[Sequence[Any]]:
        while rows := await self._conn._call(self._result.fetchmany, size or STREAM_ROWS):
            yield rows
