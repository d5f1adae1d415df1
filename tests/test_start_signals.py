"""SIGTERM, SIGINT and SIGHUP while `aggregator run` starts (the real CLI in a subprocess).

From the entry point's first line the three are held (their default actions would kill
the process): a stop ends the start cleanly with status 0, a SIGHUP is a reload once the
daemon is up, and any other command gets the default actions back.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import LoopbackServer, wait_for
from tests.test_daemon import query, serve_defaults
from tests.test_migrate import at_revision
from tests.test_reload import Running, running, source, write_settings

__all__ = ["running"]  # the fixture, used by name


def _in_mask(pid: int, field: str, sig: signal.Signals) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith(field)), 16)
    return bool(mask >> (sig - 1) & 1)


def catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process `pid` has a handler for `sig` (the SigCgt mask of /proc/PID/status)."""
    return _in_mask(pid, "SigCgt:", sig)


def ignores(pid: int, sig: signal.Signals) -> bool:
    return _in_mask(pid, "SigIgn:", sig)


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(c) for c in (task / "children").read_text().split())
    return found


@contextmanager
def write_locked(db: Path) -> Iterator[None]:
    """The store's write lock held by this test: the daemon's start waits at its first write."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        con.execute("ROLLBACK")
        con.close()


def started(daemon: Running) -> None:
    """Until the process holds SIGTERM and SIGHUP: the entry point's first act."""
    pid = daemon.proc.pid
    wait_for(lambda: catches(pid, signal.SIGTERM) and catches(pid, signal.SIGHUP), timeout_s=20)


def test_a_sigterm_at_the_first_moment_ends_the_start_with_status_0(
    tmp_path: Path, http_server: LoopbackServer, running: list[Running], premigrated: Path
) -> None:
    serve_defaults(http_server)
    config = write_settings(tmp_path, http_server, source("weibo", "2s"))
    with write_locked(premigrated):  # however slow this test is, the daemon cannot get to a poll
        daemon = Running(config, tmp_path / "daemon.log")
        running.append(daemon)
        started(daemon)
        daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=20) == 0
    text = daemon.text()
    assert "SIGTERM received: stopping" in text
    assert "stopped while starting" in text and "no source was polled" in text
    assert " started: " not in text and "daemon stopped" in text
    assert query(tmp_path, "SELECT count(*) FROM polls") == [(0,)]
    assert query(tmp_path, "PRAGMA integrity_check") == [("ok",)]


def test_a_sigint_while_the_store_opens_ends_the_start_with_status_0(
    tmp_path: Path, http_server: LoopbackServer, running: list[Running], premigrated: Path
) -> None:
    serve_defaults(http_server)
    config = write_settings(tmp_path, http_server, source("weibo", "2s"))
    lock = tmp_path / "data" / "aggregator.db.lock"
    with write_locked(premigrated):
        daemon = Running(config, tmp_path / "daemon.log")
        running.append(daemon)
        # The daemon lock is taken once the settings are read: it now waits for the store.
        wait_for(lambda: lock.exists() and lock.read_text().strip() != "", timeout_s=30)
        daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(timeout=20) == 0
    text = daemon.text()
    assert "SIGINT received: stopping" in text and "Traceback" not in text
    assert "stopped while starting" in text and " started: " not in text
    assert query(tmp_path, "SELECT count(*) FROM polls") == [(0,)]


def test_a_sighup_at_the_first_moment_is_a_reload_once_started(
    tmp_path: Path, http_server: LoopbackServer, running: list[Running], premigrated: Path
) -> None:
    serve_defaults(http_server)
    config = write_settings(tmp_path, http_server, source("weibo", "1h"))
    with write_locked(premigrated):
        daemon = Running(config, tmp_path / "daemon.log")
        running.append(daemon)
        started(daemon)
        daemon.proc.send_signal(signal.SIGHUP)  # before it has even read its settings
    wait_for(lambda: "settings reloaded" in daemon.text(), timeout_s=30)
    text = daemon.text()
    assert text.index(" started: ") < text.index("a SIGHUP came while the daemon was starting")
    assert "1 sources, 0 added, 0 removed, 0 changed" in text
    wait_for(lambda: query(tmp_path, "SELECT count(*) FROM polls WHERE status = 'ok'") == [(1,)], timeout_s=30)
    assert daemon.stop() == 0


def test_other_commands_keep_the_default_action_of_sigterm(tmp_path: Path, premigrated: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(f'[store]\ndata_dir = "{premigrated.parent}"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")}
    with write_locked(premigrated):
        proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "--config", str(config), "top"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            wait_for(lambda: catches(proc.pid, signal.SIGTERM), timeout_s=20)
            proc.send_signal(signal.SIGTERM)
            # Held only until its command line is read; then the signal has its default effect.
            assert proc.wait(timeout=20) == -signal.SIGTERM
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.parametrize("to", ["daemon", "group"])
def test_a_stop_during_the_migrations_waits_the_grace_then_cancels_them(
    tmp_path: Path, http_server: LoopbackServer, to: str
) -> None:
    """`group`: SIGTERM to every process, as systemd stops a unit (KillMode=control-group)."""
    serve_defaults(http_server)
    db = at_revision(tmp_path / "data" / "aggregator.db", "0001")
    config = tmp_path / "settings.toml"
    config.write_text(
        f'[store]\ndata_dir = "{db.parent}"\nbusy_timeout = "60s"\n\n[daemon]\nshutdown_grace = "1s"\n\n'
        + source("weibo", "2s").format(url=http_server.url("")),
        encoding="utf-8",
    )
    with write_locked(db):  # the migration waits for the lock, up to the 60 s busy timeout
        daemon = Running(config, tmp_path / "daemon.log", group=True)
        try:
            wait_for(lambda: bool(children(daemon.proc.pid)), timeout_s=30)
            [child] = children(daemon.proc.pid)
            wait_for(lambda: ignores(child, signal.SIGTERM), timeout_s=30)  # the child is past its imports
            if to == "group":
                os.killpg(daemon.proc.pid, signal.SIGTERM)
            else:
                daemon.proc.send_signal(signal.SIGTERM)
            assert daemon.proc.wait(timeout=20) == 0
        finally:
            if daemon.proc.poll() is None:
                daemon.proc.kill()
    text = daemon.text()
    assert "waiting up to 1s for the migrations under way" in text
    assert "migrations cancelled" in text and "stopped while starting" in text
    assert not Path(f"/proc/{child}").exists()
    assert query(tmp_path, "SELECT version_num FROM alembic_version") == [("0001",)]


def test_serve_holds_them_from_its_first_moment_too(tmp_path: Path, premigrated: Path) -> None:
    from tests.test_serve import start_serve

    config = tmp_path / "settings.toml"
    config.write_text(f'[store]\ndata_dir = "{premigrated.parent}"\n', encoding="utf-8")
    out = tmp_path / "serve.out"
    proc = start_serve(config, out, "--port", "0")
    try:
        wait_for(lambda: catches(proc.pid, signal.SIGHUP), timeout_s=20)
        # The daemon's reload signal, sent to a whole compose project as serve starts.
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "serving on http://" in out.read_text(errors="replace") or proc.poll() is not None, 30)
        assert proc.poll() is None
        assert "SIGHUP received: serve reads its settings when it starts" in out.read_text(errors="replace")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    again = start_serve(config, tmp_path / "again.out", "--port", "0")
    try:
        wait_for(lambda: catches(again.pid, signal.SIGTERM), timeout_s=20)
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=20) == 0
    finally:
        if again.poll() is None:
            again.kill()
    assert "serve stopped" in (tmp_path / "again.out").read_text(errors="replace")
