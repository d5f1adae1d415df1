"""SQLite on pysqlite in worker threads: no SQLAlchemy asyncio extension, no ORM, and a
connection is only ever used by one thread at a time."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from aggregator.store import engine as engine_mod
from aggregator.store.threaded import ThreadedEngine
from tests.conftest import async_wait_for

# A query SQLite needs a good fraction of a second for, all of it inside the first step
# (the cursor's execute): the rows of a recursive CTE, counted.
SLOW_SQL = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000000) SELECT count(*) FROM n"


def test_a_daemon_on_sqlite_never_imports_the_orm_the_asyncio_extension_or_pydantic(premigrated: Path) -> None:
    code = textwrap.dedent(
        f"""
        import asyncio, sys
        from datetime import UTC, datetime

        import aggregator.daemon
        from aggregator.settings import SourceSettings
        from aggregator.store import Store

        async def main():
            store = await Store.open("sqlite+aiosqlite:///{premigrated}")
            try:
                source = SourceSettings(id="weibo", kind="newsnow", name="微博", interval="2m", url="http://x/weibo")
                await store.sync_sources([source], datetime.now(UTC))
                assert [r["id"] for r in await store.sources_status()] == ["weibo"]
            finally:
                await store.close()

        asyncio.run(main())
        unwanted = ("sqlalchemy.orm", "sqlalchemy.ext.asyncio", "greenlet", "pydantic")  # memory the daemon never uses
        loaded = sorted(m for m in unwanted if m in sys.modules)
        print("loaded:", loaded)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout


def test_sqlite_urls_get_the_threaded_engine_and_postgresql_the_async_one(tmp_path: Path) -> None:
    for scheme in ("sqlite", "sqlite+pysqlite", "sqlite+aiosqlite"):
        engine = engine_mod.make_engine(f"{scheme}:///{tmp_path / 'a.db'}", busy_timeout_s=1)
        assert isinstance(engine, ThreadedEngine)
        assert engine.url.drivername == "sqlite+pysqlite"
        engine.sync_engine.dispose()
    from sqlalchemy.ext.asyncio import AsyncEngine

    engine = engine_mod.make_engine("postgresql://u:secret@127.0.0.1/test", busy_timeout_s=1)
    assert isinstance(engine, AsyncEngine)
    # The password survives the switch of driver (a URL's str() masks it).
    assert engine.url.drivername == "postgresql+asyncpg" and engine.url.password == "secret"


@pytest.fixture
async def engine(tmp_path: Path) -> Any:
    engine = engine_mod.make_engine(f"sqlite:///{tmp_path / 'a.db'}", busy_timeout_s=5)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_rows_are_fetched_in_the_worker_threads(engine: ThreadedEngine) -> None:
    fetched_on: Counter[int] = Counter()

    @event.listens_for(engine.sync_engine, "connect")
    def _where(dbapi_connection: Any, _record: Any) -> None:
        # Called by SQLite for each row as it is stepped to: on the thread that fetches it.
        def where(i: int) -> int:
            fetched_on[threading.get_ident()] += 1
            return i

        dbapi_connection.create_function("where_fetched", 1, where)

    rows = sa.text(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500) "
        "SELECT where_fetched(i) AS i FROM n"
    )
    async with engine.connect() as conn:
        assert [r.i for r in (await conn.execute(rows)).all()] == list(range(1, 2501))
        streamed = [r.i for part in [p async for p in (await conn.stream(rows)).partitions(1000)] for r in part]
        assert streamed == list(range(1, 2501))
    assert fetched_on.total() == 5000
    assert threading.get_ident() not in fetched_on


async def test_a_cancelled_query_keeps_its_connection_until_it_ends(engine: ThreadedEngine) -> None:
    started = threading.Event()
    in_use: Counter[int] = Counter()
    overlaps: list[int] = []
    slow_done = threading.Event()

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _before(conn: sa.Connection, cursor: Any, statement: str, *args: Any) -> None:
        key = id(conn.connection.dbapi_connection)
        in_use[key] += 1
        if in_use[key] > 1:
            overlaps.append(key)
        if statement == SLOW_SQL:
            started.set()

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _after(conn: sa.Connection, cursor: Any, statement: str, *args: Any) -> None:
        in_use[id(conn.connection.dbapi_connection)] -= 1
        if statement == SLOW_SQL:
            slow_done.set()

    slow_connection: list[int] = []
    checked_in_after_it_ended: list[bool] = []

    @event.listens_for(engine.sync_engine, "checkin")
    def _checkin(dbapi_connection: Any, _record: Any) -> None:
        # Its first checkin (a reader may take it afterwards and check it in again).
        if slow_connection and id(dbapi_connection) == slow_connection[0] and not checked_in_after_it_ended:
            checked_in_after_it_ended.append(slow_done.is_set())

    async def slow() -> None:
        async with engine.connect() as conn:
            slow_connection.append(id(await conn.run_sync(lambda c: c.connection.dbapi_connection)))
            await conn.execute(sa.text(SLOW_SQL))

    async def read(i: int) -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(sa.text("SELECT :i"), {"i": i})).scalar_one())

    task = asyncio.create_task(slow())
    await async_wait_for(started.is_set)
    task.cancel()
    # More readers than the pool has connections, while the cancelled query still runs:
    # its connection would be lent out to one of them if it could be.
    assert await asyncio.gather(*(read(i) for i in range(12))) == list(range(12))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert checked_in_after_it_ended == [True]
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert overlaps == []


async def test_immediate_writers_take_the_write_lock_at_begin(engine: ThreadedEngine, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "a.db", timeout=0, isolation_level=None)
    try:
        async with engine.execution_options(sqlite_begin="IMMEDIATE").begin() as conn:
            assert conn.get_execution_options()["sqlite_begin"] == "IMMEDIATE"
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # committed and released
        other.execute("ROLLBACK")
        async with engine.begin() as conn:  # deferred: no lock before the first write
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar_one() == 5000
    finally:
        other.close()


async def test_a_failed_block_rolls_back(engine: ThreadedEngine) -> None:
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    with pytest.raises(RuntimeError):
        async with engine.begin() as conn:
            await conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            raise RuntimeError("abandoned")
    async with engine.connect() as conn:
        tx = await conn.begin()
        done = await conn.execute(sa.text("INSERT INTO t VALUES (2), (3)"))
        assert done.rowcount == 2  # type: ignore[attr-defined]
        await tx.commit()
        assert (await conn.execute(sa.text("SELECT x FROM t ORDER BY x"))).scalars().all() == [2, 3]
