"""WAL checkpoints on their own thread: the database file gets the polls without the writer waiting."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from aggregator.store import Store
from aggregator.store.checkpoint import BACKSTOP_AUTOCHECKPOINT_PAGES, CHECKPOINT_EVERY_COMMITS, Checkpointer
from aggregator.store.engine import SQLITE_CACHE_KIB, SQLITE_WRITER_CACHE_KIB
from tests.test_store import SOURCES, T0, poll_write


def polls_in_main_file(db: Path, tmp: Path) -> int:
    """Polls found in the database file alone, as if the WAL had been lost."""
    copy = tmp / "main-only.db"
    shutil.copyfile(db, copy)
    con = sqlite3.connect(copy)
    try:
        if con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'polls'").fetchone()[0] == 0:
            return 0  # not even the schema has been copied from the WAL yet
        return int(con.execute("SELECT count(*) FROM polls").fetchone()[0])
    finally:
        con.close()


async def test_polls_reach_the_database_file_through_the_checkpoint_thread(tmp_path: Path) -> None:
    db = tmp_path / "agg.db"
    store = await Store.open(f"sqlite+aiosqlite:///{db}")
    try:
        await store.sync_sources(SOURCES, T0)
        checkpointer = store._checkpointer
        assert checkpointer is not None
        checkpointer.wait()
        before = checkpointer.checkpoints
        assert polls_in_main_file(db, tmp_path) == 0  # so far everything is in the WAL
        for i in range(CHECKPOINT_EVERY_COMMITS):
            await store.record_poll(poll_write("weibo", [f"标题{i}-{j}" for j in range(5)], T0 + timedelta(minutes=i)))
        await asyncio.to_thread(checkpointer.wait)
        assert checkpointer.checkpoints == before + 1
        assert polls_in_main_file(db, tmp_path) == CHECKPOINT_EVERY_COMMITS
    finally:
        await store.close()


async def test_the_writer_connection_keeps_only_a_far_automatic_checkpoint(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'agg.db'}")
    try:
        assert store._poll_writer is not None
        with store._poll_writer.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()
            writer_cache = conn.exec_driver_sql("PRAGMA cache_size").scalar_one()
        assert pages == BACKSTOP_AUTOCHECKPOINT_PAGES
        # The writer keeps the larger page cache; the readers the small one.
        async with store.engine.connect() as reader:
            reader_cache = (await reader.exec_driver_sql("PRAGMA cache_size")).scalar_one()
        assert (writer_cache, reader_cache) == (-SQLITE_WRITER_CACHE_KIB, -SQLITE_CACHE_KIB)
        assert SQLITE_WRITER_CACHE_KIB > SQLITE_CACHE_KIB
    finally:
        await store.close()


def test_a_failing_checkpoint_is_logged_and_the_next_one_retries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A directory where the database should be: every connection attempt fails.
    (tmp_path / "not-a-file.db").mkdir()
    checkpointer = Checkpointer(sa.create_engine(f"sqlite:///{tmp_path / 'not-a-file.db'}"), every=2)
    try:
        with caplog.at_level(logging.WARNING, logger="aggregator.store.checkpoint"):
            for _ in range(4):
                checkpointer.committed()
                checkpointer.wait()
        failures = [r for r in caplog.records if "WAL checkpoint failed" in r.getMessage()]
        assert len(failures) == 2
        assert checkpointer.checkpoints == 0
    finally:
        checkpointer.close()


def test_every_must_be_positive() -> None:
    with pytest.raises(ValueError, match="every must be at least 1"):
        Checkpointer(sa.create_engine("sqlite://"), every=0)
