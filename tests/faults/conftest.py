"""Fixtures of the fault tests: the fault server, settings with good sources beside a faulty one, a daemon run."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aggregator.daemon import Daemon
from aggregator.settings import Settings, validate
from tests.faults.faultserver import FaultServer, newsnow_payload, respond, rss_payload

GOOD_LIST = ["好消息一", "好消息二", "好消息三"]
GOOD_FEED = ["Good feed one", "Good feed two"]
GOOD_SOURCES = ("good-list", "good-feed")
# Small caps keep every fault fast: a 2 GB body is refused after 256 KiB.
MAX_BYTES = 256 * 1024
MIB = 2**20


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    server = FaultServer().start()
    try:
        yield server
    finally:
        server.stop()


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "aggregator.db"


def query(tmp_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    path = db_path(tmp_path)
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # the daemon is still migrating
            return []
        raise
    finally:
        db.close()


def poll_count(tmp_path: Path, source_id: str, status: str | None = None) -> int:
    sql = "SELECT count(*) FROM polls WHERE source_id = ?" + (" AND status = ?" if status else "")
    rows = query(tmp_path, sql, (source_id, status) if status else (source_id,))
    return int(rows[0][0]) if rows else 0


def fault_settings(
    tmp_path: Path,
    server: FaultServer,
    faulty: list[dict[str, Any]],
    *,
    timeout: str = "2s",
    max_bytes: int = MAX_BYTES,
    http: dict[str, Any] | None = None,
    good_interval: str = "5s",
) -> Settings:
    """Two good sources (a NewsNow list and an RSS feed) on the fault server beside `faulty`."""
    server.route("/good/list", respond(newsnow_payload(GOOD_LIST)))
    server.route("/good/feed", respond(rss_payload(GOOD_FEED), content_type="application/rss+xml; charset=utf-8"))
    raw: dict[str, Any] = {
        "store": {"data_dir": str(tmp_path / "data")},
        "http": {"timeout": timeout, "connect_timeout": "1s", "max_bytes": max_bytes, **(http or {})},
        "daemon": {"startup_spread": "0s", "jitter": "0s", "rescore_every": "1m", "shutdown_grace": "5s"},
        "fulltext": {"enabled": False},
        "sources": [
            {"id": "good-list", "kind": "newsnow", "url": server.url("/good/list"), "interval": good_interval},
            {"id": "good-feed", "kind": "feed", "url": server.url("/good/feed"), "interval": good_interval},
            *faulty,
        ],
    }
    return validate(raw)


@dataclass
class DaemonRun:
    elapsed_s: float
    peak_bytes: int
    records: list[logging.LogRecord] = field(default_factory=list)
    # Records from here on were logged after the stop was asked for. The daemon's shutdown
    # cancels polls in flight at once (scheduler.shutdown cancels its job tasks), which
    # logs a CancelledError traceback: a shutdown defect of its own, not a fault's effect.
    stop_index: int = 0

    def warnings_about(self, source_id: str) -> list[str]:
        return [
            r.getMessage()
            for r in self.records
            if r.levelno == logging.WARNING and f"poll {source_id} " in r.getMessage() + " "
        ]

    def tracebacks(self) -> list[str]:
        """Tracebacks and errors logged while the daemon ran (before the stop)."""
        return [r.getMessage() for r in self.records[: self.stop_index] if r.exc_info or r.levelno >= logging.ERROR]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def run_daemon_until(
    settings: Settings, condition: Callable[[], bool], timeout_s: float = 20.0, *, trace_memory: bool = True
) -> DaemonRun:
    """Run the real daemon in this process until `condition` holds, then stop it as SIGTERM would.

    Fails if the daemon ends by itself before that (it must keep running whatever a source
    does) or does not stop cleanly with status 0.
    """
    handler = _Collect()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if trace_memory:
        tracemalloc.start()
    daemon = Daemon(settings)
    started = time.monotonic()
    task = asyncio.create_task(daemon.run())
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not (task.done() or condition()):
            if loop.time() > deadline:
                raise AssertionError(f"condition not met within {timeout_s}s")
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
        assert not task.done(), (
            f"the daemon stopped by itself: {task.exception() if not task.cancelled() else 'cancelled'}"
        )
    finally:
        stop_index = len(handler.records)
        daemon.stop_event.set()
        try:
            status = await asyncio.wait_for(task, 15)
        finally:
            peak = tracemalloc.get_traced_memory()[1] if trace_memory else 0
            if trace_memory:
                tracemalloc.stop()
            root.removeHandler(handler)
            root.setLevel(old_level)
    assert status == 0
    return DaemonRun(elapsed, peak, handler.records, stop_index)


def assert_good_sources_stored(tmp_path: Path) -> None:
    """The sources next to the faulty one stored their lists in the same run."""
    lists = dict(query(tmp_path, "SELECT source_id, count(*) FROM latest_lists GROUP BY source_id"))
    assert lists.get("good-list") == len(GOOD_LIST), lists
    assert lists.get("good-feed") == len(GOOD_FEED), lists


def good_sources_polled(tmp_path: Path) -> bool:
    return all(poll_count(tmp_path, s, "ok") >= 1 for s in GOOD_SOURCES)


def assert_recorded(tmp_path: Path, run: DaemonRun, source_id: str, kind: str, message: str) -> None:
    """The source's first poll failed with `kind`, stored on the poll and the source, told in one warning."""
    poll = query(
        tmp_path, "SELECT status, error_kind, error FROM polls WHERE source_id = ? ORDER BY id LIMIT 1", (source_id,)
    )
    assert poll and poll[0][:2] == ("error", kind), poll
    assert message in poll[0][2], poll[0][2]
    row = query(
        tmp_path,
        "SELECT consecutive_failures, last_error_kind, last_error, last_error_at, next_attempt_at "
        "FROM sources WHERE id = ?",
        (source_id,),
    )[0]
    assert row[0] >= 1 and row[1] == kind and message in row[2]
    assert row[4] is not None and row[4] >= row[3]  # a next attempt is set, never in the past
    assert query(tmp_path, "SELECT count(*) FROM latest_lists WHERE source_id = ?", (source_id,)) == [(0,)]
    warnings = run.warnings_about(source_id)
    assert any(f"{kind}:" in w for w in warnings), warnings
    assert not run.tracebacks(), run.tracebacks()
