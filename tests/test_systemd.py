"""systemd's notify protocol: the real daemon tells a Unix datagram socket its state."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.daemon import Daemon
from aggregator.settings import validate
from aggregator.store import engine
from aggregator.systemd import Notifier
from tests.conftest import LoopbackServer, async_wait_for, wait_for
from tests.test_daemon import serve_defaults
from tests.test_migrate import at_revision
from tests.test_reload import Running, running, source, write_settings

__all__ = ["running"]  # the fixture, used by name


class Listener:
    """A socket where systemd would listen; `messages` are the datagrams, parsed."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def received(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def count(self, key: str) -> int:
        return sum(1 for m in self.received() if key in m)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    path = tmp_path / "notify.sock"
    ear = Listener(str(path))
    yield ear
    ear.sock.close()


def start(tmp_path: Path, http_server: LoopbackServer, running: list[Running], notify: Path) -> Running:
    """The daemon as systemd starts it: NOTIFY_SOCKET, and WatchdogSec=1s."""
    serve_defaults(http_server)
    config = write_settings(tmp_path, http_server, source("weibo", "1h"))
    env = {"NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "1000000"}
    daemon = Running(config, tmp_path / "daemon.log", env=env)
    running.append(daemon)
    return daemon


def test_the_daemon_tells_systemd_ready_reloading_stopping_and_pings_its_watchdog(
    tmp_path: Path, http_server: LoopbackServer, running: list[Running], listener: Listener
) -> None:
    daemon = start(tmp_path, http_server, running, tmp_path / "notify.sock")
    wait_for(lambda: listener.count("READY") == 1, timeout_s=30)
    [ready] = [m for m in listener.received() if "READY" in m]
    assert ready == {"READY": "1", "STATUS": "polling 1 sources"}
    assert " started: " in daemon.text()  # READY comes once the daemon is up
    # Every half of WatchdogSec (1 s here), from the scheduler.
    wait_for(lambda: listener.count("WATCHDOG") >= 3, timeout_s=30)

    write_settings(tmp_path, http_server, source("weibo", "1h") + source("baidu", "1h"))
    before = len(listener.received())
    daemon.reload_and_wait("settings reloaded")
    wait_for(lambda: listener.count("READY") == 2, timeout_s=30)
    reload = [m for m in listener.received()[before:] if "WATCHDOG" not in m]
    assert [sorted(m) for m in reload] == [["MONOTONIC_USEC", "RELOADING"], ["READY", "STATUS"]]
    # CLOCK_MONOTONIC is the machine's, the same in both processes.
    assert abs(int(reload[0]["MONOTONIC_USEC"]) / 1e6 - time.monotonic()) < 30
    assert reload[1]["STATUS"] == "polling 2 sources"

    assert daemon.stop() == 0
    assert listener.received()[-1] == {"STOPPING": "1", "STATUS": "stopping"}


def test_a_notify_socket_that_is_gone_is_one_warning_and_the_daemon_goes_on(
    tmp_path: Path, http_server: LoopbackServer, running: list[Running]
) -> None:
    daemon = start(tmp_path, http_server, running, tmp_path / "nobody-listens.sock")
    wait_for(lambda: "later failures are not logged" in daemon.text(), timeout_s=30)
    daemon.reload_and_wait("settings reloaded")
    assert daemon.stop() == 0
    assert daemon.text().count("systemd notification to") == 1


def test_an_abstract_socket_address_and_no_socket_at_all() -> None:
    name = f"aggregator-test-{os.getpid()}"
    ear = Listener("\0" + name)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).send(READY="1", STATUS="up")
        assert ear.received() == [{"READY": "1", "STATUS": "up"}]
    finally:
        ear.sock.close()
    silent = Notifier({})
    assert not silent.enabled and silent.watchdog_s is None
    assert not silent.send(READY="1")


def test_the_watchdog_interval_is_taken_only_when_meant_for_this_process(caplog: pytest.LogCaptureFixture) -> None:
    here = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert Notifier(here).watchdog_s == 30.0
    assert Notifier(here | {"WATCHDOG_PID": str(os.getpid())}).watchdog_s == 30.0
    assert Notifier(here | {"WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_s is None
    assert Notifier(here | {"WATCHDOG_USEC": "soon"}).watchdog_s is None
    assert Notifier(here | {"WATCHDOG_USEC": "0"}).watchdog_s is None
    with caplog.at_level(logging.WARNING, logger="aggregator.systemd"):
        notifier = Notifier({"NOTIFY_SOCKET": "/nonexistent/dir/notify.sock"})
        assert not notifier.send(READY="1") and not notifier.send(READY="1")
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "systemd notification to /nonexistent/dir/notify.sock failed"
    ]


async def test_a_long_migration_at_start_asks_systemd_for_more_time(tmp_path: Path, listener: Listener) -> None:
    db = at_revision(tmp_path / "data" / "aggregator.db", "0001")
    daemon = Daemon(validate({"store": {"data_dir": str(db.parent), "busy_timeout": "60s"}}))
    daemon.notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    daemon.migration_notify_s = 0.2
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the migration waits for it
    try:
        migrating = asyncio.ensure_future(daemon._migrate())
        await async_wait_for(lambda: listener.count("EXTEND_TIMEOUT_USEC") >= 2, timeout_s=30)
        assert not migrating.done()
    finally:
        other.execute("ROLLBACK")
        other.close()
    await asyncio.wait_for(migrating, 60)
    con = sqlite3.connect(db)
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(engine.head_revision(),)]
    con.close()
    asked = [m for m in listener.received() if "EXTEND_TIMEOUT_USEC" in m]
    assert asked[0] == {"EXTEND_TIMEOUT_USEC": "400000", "STATUS": "migrating the store"}
