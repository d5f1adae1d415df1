"""Shared fixtures: a loopback HTTP server serving recorded payloads, stores on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).parent / "data"
PG_URL = os.environ.get("AGGREGATOR_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _not_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """A suite run by a systemd service (a CI runner) must not make the daemons it starts
    notify that service's manager: tests/test_systemd.py sets these itself."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Called with the request handler instead of serving `body` (for slow or odd servers).
    handler: Callable[[BaseHTTPRequestHandler], None] | None = None


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer (a poll cancelled at shutdown) is expected, not news.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LoopbackServer:
    """A real HTTP server on 127.0.0.1 whose routes tests set; counts requests per path."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.times: dict[str, list[float]] = {}  # monotonic time of every request, per path
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = self.path
                with server.lock:
                    server.hits[path] += 1
                    server.times.setdefault(path, []).append(time.monotonic())
                    server.requests.append((path, {k.lower(): v for k, v in self.headers.items()}))
                    route = server.routes.get(path) or server.routes.get(path.split("?")[0])
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route.handler is not None:
                    route.handler(self)
                    return
                self.send_response(route.status)
                headers = {"Content-Type": "application/json; charset=utf-8", **route.headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def route(
        self,
        path: str,
        body: bytes | str = b"",
        status: int = 200,
        headers: dict[str, str] | None = None,
        handler: Callable[[BaseHTTPRequestHandler], None] | None = None,
    ) -> str:
        data = body.encode() if isinstance(body, str) else body
        with self.lock:
            self.routes[path] = Route(status, data, headers or {}, handler)
        return self.url(path)

    def serve_file(self, path: str, name: str, content_type: str = "application/json; charset=utf-8") -> str:
        return self.route(path, (DATA / name).read_bytes(), headers={"Content-Type": content_type})


@pytest.fixture
def http_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store at the head revision, migrated once per session for tests to copy.

    A daemon that starts on a fresh file migrates it in a child process (about a second);
    one that starts on a copy of this file finds the schema current, as on every restart.
    """
    from aggregator.store import Store

    path = tmp_path_factory.mktemp("migrated") / "aggregator.db"

    async def migrate() -> None:
        store = await Store.open(f"sqlite+aiosqlite:///{path}", upgrade=True)
        await store.close()

    asyncio.run(migrate())
    assert not path.with_name(path.name + "-wal").exists()  # the last close checkpointed it
    return path


@pytest.fixture
def premigrated(tmp_path: Path, migrated_sqlite: Path) -> Path:
    """`tmp_path`/data/aggregator.db at the head revision: the test's commands skip the migration.

    For tests about sources, polls and reports rather than migrations (tests/test_migrate.py
    covers those); it saves each daemon start the second a fresh file's migration takes.
    """
    target = tmp_path / "data" / "aggregator.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated_sqlite, target)
    return target


def _pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database on the local server, dropped afterwards."""
    if not _pg_reachable():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (start it to run the PostgreSQL tests)")
    import asyncpg

    base = PG_URL.replace("postgresql+asyncpg://", "postgresql://")
    name = f"agg_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(base, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL at {base} refused the connection: {exc}")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    head, _, _ = PG_URL.rpartition("/")
    try:
        yield f"{head}/{name}"
    finally:
        admin = await asyncpg.connect(base, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL on a fresh database: a SQLite file in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'aggregator.db'}"
    return str(request.getfixturevalue("pg_url"))


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0, interval_s: float = 0.02) -> None:
    """Poll a condition until it holds (tests wait for events, they never sleep blindly)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


async def async_wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout_s}s")
