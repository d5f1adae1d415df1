"""Migrations in a child process, and a daemon process that never imports Alembic."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from aggregator.errors import StoreError
from aggregator.store import Store, engine
from aggregator.store.migrate import ERROR_PREFIX, EXIT_STORE_ERROR, MODULE, upgrade_if_needed, upgrade_in_child
from tests.conftest import LoopbackServer, wait_for
from tests.test_daemon import query, serve_defaults, settings_file


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def tables(path: Path) -> set[str]:
    return {str(r[0]) for r in rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}


def item_columns(path: Path) -> set[str]:
    return {str(r[1]) for r in rows(path, "PRAGMA table_info(items)")}


def scalar(path: Path, sql: str) -> object:
    return rows(path, sql)[0][0]


def test_head_revision_is_alembics_without_importing_it() -> None:
    script = ScriptDirectory.from_config(engine._alembic_config())
    assert script.get_heads() == [engine.head_revision()]
    downs = {rev.revision: rev.down_revision for rev in script.walk_revisions()}
    assert {rev: (down,) if isinstance(down, str) else tuple(down or ()) for rev, down in downs.items()} == (
        engine._revisions()
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from aggregator.store import engine; "
            "print(engine.head_revision(), engine._known('0001'), engine._known('9999'), 'alembic' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == [engine.head_revision(), "True", "False", "False"]


async def test_child_migration_creates_the_schema(tmp_path: Path) -> None:
    db = tmp_path / "data" / "aggregator.db"
    await upgrade_in_child(sqlite_url(db))
    assert {"sources", "polls", "items", "observations", "stories", "story_scores", "aggregator_meta"} <= tables(db)
    assert scalar(db, "SELECT version_num FROM alembic_version") == engine.head_revision()
    assert scalar(db, "SELECT value FROM aggregator_meta WHERE key = 'application'") == engine.APPLICATION
    await upgrade_in_child(sqlite_url(db))  # a no-op on an up-to-date database
    store = await Store.open(sqlite_url(db), upgrade=False)
    try:
        assert await engine.check_version(store.engine) == engine.head_revision()
    finally:
        await store.close()


def imports_alembic_to_open(path: Path) -> bool:
    """Open the store with upgrade=True in a fresh interpreter; True if that imported Alembic."""
    code = (
        "import asyncio, sys; from aggregator.store import Store\n"
        "async def main():\n"
        f"    store = await Store.open({sqlite_url(path)!r}, upgrade=True)\n"
        "    await store.close()\n"
        "asyncio.run(main()); print('alembic' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {"True": True, "False": False}[done.stdout.strip()]


def test_an_upgrade_imports_alembic_only_when_a_migration_is_pending(tmp_path: Path) -> None:
    db = tmp_path / "aggregator.db"
    assert imports_alembic_to_open(db)  # a new file: every migration runs
    assert scalar(db, "SELECT version_num FROM alembic_version") == engine.head_revision()
    assert not imports_alembic_to_open(db)  # current: a read of alembic_version, no Alembic


def at_revision(db: Path, revision: str) -> Path:
    """A new SQLite store at `revision`, in WAL mode as the daemon leaves it."""
    from alembic import command
    from sqlalchemy import create_engine

    db.parent.mkdir(parents=True, exist_ok=True)
    sync = create_engine(f"sqlite:///{db}")
    with sync.begin() as conn:
        command.upgrade(engine._alembic_config(conn), revision)
    sync.dispose()
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.close()
    return db


def test_a_database_at_an_older_revision_is_migrated_to_head(tmp_path: Path) -> None:
    db = at_revision(tmp_path / "aggregator.db", "0001")
    assert scalar(db, "SELECT version_num FROM alembic_version") == "0001"
    assert "content_status" not in item_columns(db)
    assert imports_alembic_to_open(db)
    assert scalar(db, "SELECT version_num FROM alembic_version") == engine.head_revision()
    assert "content_status" in item_columns(db)


@pytest.mark.postgres
async def test_child_migration_on_postgresql(pg_url: str) -> None:
    await upgrade_in_child(pg_url)
    store = await Store.open(pg_url, upgrade=False)
    try:
        assert await engine.check_version(store.engine) == engine.head_revision()
    finally:
        await store.close()


def make_newer(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("UPDATE alembic_version SET version_num = '9999'")
    db.commit()
    db.close()


def make_foreign(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    db.commit()
    db.close()


async def prepare(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A database the upgrade must refuse, and the message it must refuse it with."""
    path = tmp_path / "data" / "aggregator.db"
    path.parent.mkdir()
    if kind == "newer":
        await upgrade_in_child(sqlite_url(path))
        make_newer(path)
        return path, "which this version of aggregator does not know (it was written by a newer"
    if kind == "foreign":
        make_foreign(path)
        return path, "not an aggregator database; refusing to touch it"
    assert kind == "not-sqlite"
    path.write_bytes(b"not a database, only text that is long enough for a header " * 4)
    return path, "is not a SQLite database"


@pytest.mark.parametrize("kind", ["newer", "foreign", "not-sqlite"])
async def test_a_failing_child_raises_the_in_process_error(tmp_path: Path, kind: str) -> None:
    path, message = await prepare(tmp_path, kind)
    before = path.read_bytes()
    with pytest.raises(StoreError, match=re.escape(message)) as in_child:
        await upgrade_in_child(sqlite_url(path))
    with pytest.raises(StoreError) as in_process:
        await Store.open(sqlite_url(path))
    assert str(in_child.value) == str(in_process.value)
    assert path.read_bytes() == before


async def test_upgrade_if_needed_starts_a_child_only_when_the_schema_is_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "data" / "aggregator.db"
    head = engine.head_revision()
    with caplog.at_level(logging.INFO, logger="aggregator.store.migrate"):
        assert await upgrade_if_needed(sqlite_url(db)) is True
        assert scalar(db, "SELECT version_num FROM alembic_version") == head
        assert await upgrade_if_needed(sqlite_url(db)) is False  # up to date: no child process
        old = at_revision(tmp_path / "old.db", "0001")
        assert await upgrade_if_needed(sqlite_url(old)) is True
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == f"migrating the store from nothing to revision {head}"
    assert said[2] == f"migrating the store from revision 0001 to revision {head}"
    assert len(said) == 4 and all(
        re.fullmatch(rf"store migrated to revision {head} in \d+\.\ds", m) for m in said[1::2]
    )


@pytest.mark.parametrize("kind", ["newer", "foreign", "not-sqlite"])
async def test_upgrade_if_needed_refuses_what_the_child_refuses(tmp_path: Path, kind: str) -> None:
    path, message = await prepare(tmp_path, kind)
    before = path.read_bytes()
    with pytest.raises(StoreError, match=re.escape(message)):
        await upgrade_if_needed(sqlite_url(path))
    assert path.read_bytes() == before


async def test_a_read_only_database_is_a_clear_error(tmp_path: Path) -> None:
    # SQLite's own read-only mode holds even for root. (Run in the child, which is where a
    # daemon migrates; the aiosqlite driver's thread used to report the failed connect to a
    # closed loop after an in-process test, and the child's output survived that noise.)
    url = f"sqlite+aiosqlite:///file:{tmp_path / 'aggregator.db'}?mode=ro&uri=true"
    with pytest.raises(StoreError) as failed:
        await upgrade_in_child(url)
    assert str(failed.value) == "cannot open the database: unable to open database file"
    assert not (tmp_path / "aggregator.db").exists()


async def test_a_migration_waits_for_another_writer_up_to_the_busy_timeout(tmp_path: Path) -> None:
    # Alembic reads the revision before it writes: in a deferred transaction that failed at
    # once with "database is locked" while a sqlite3 shell (say) held a write transaction.
    db = at_revision(tmp_path / "aggregator.db", "0001")
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="database is locked"):
            await upgrade_in_child(sqlite_url(db), busy_timeout_s=1.0)
        assert time.monotonic() - started >= 1.0
    finally:
        other.execute("ROLLBACK")
        other.close()
    await upgrade_in_child(sqlite_url(db), busy_timeout_s=1.0)
    assert scalar(db, "SELECT version_num FROM alembic_version") == engine.head_revision()


def run_module(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", MODULE], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


async def test_the_module_reads_the_url_from_stdin(tmp_path: Path) -> None:
    db = tmp_path / "aggregator.db"
    done = run_module(sqlite_url(db) + "\n")
    assert done.returncode == 0, done.stderr
    assert scalar(db, "SELECT version_num FROM alembic_version") == engine.head_revision()
    make_newer(db)
    done = run_module(sqlite_url(db))
    assert done.returncode == EXIT_STORE_ERROR
    assert done.stderr.strip().splitlines() == [
        f"{ERROR_PREFIX}database is at schema revision '9999', which this version of aggregator does not know "
        "(it was written by a newer version); upgrade aggregator, or use a backup"
    ]
    done = run_module("")
    assert done.returncode == EXIT_STORE_ERROR and done.stderr.strip() == f"{ERROR_PREFIX}no database URL on stdin"


async def test_a_crashing_child_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"the migration process exited with status 1: .*NoSuchModuleError"):
        await upgrade_in_child("nosuchdb://user@localhost/db")


# The daemon's own process: the real `aggregator run` on loopback sources until it has
# polled them, then SIGTERM; at exit it reports which of these packages it had imported.
PROBE = textwrap.dedent(
    """
    import atexit, json, sys
    WATCH = ("alembic", "mako")
    atexit.register(lambda: print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in WATCH))))
    from aggregator.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_the_daemon_process_never_imports_alembic(tmp_path: Path, http_server: LoopbackServer) -> None:
    serve_defaults(http_server)
    config = settings_file(tmp_path, http_server)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE, "--config", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    db = tmp_path / "data" / "aggregator.db"

    def polled() -> bool:
        if not db.exists():
            return False
        try:
            return query(tmp_path, "SELECT count(DISTINCT source_id) FROM polls WHERE status = 'ok'")[0][0] == 3
        except sqlite3.OperationalError:
            return False  # the schema is not there yet

    try:
        wait_for(polled, timeout_s=30)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == []
    assert scalar(db, "SELECT version_num FROM alembic_version") == engine.head_revision()
