"""Opening the database: engines with SQLite pragmas, migrations, ownership checks.

Alembic (with Mako, ~12 MB of a process's memory) is imported only by `upgrade`: the
revision checks read the migration files and the alembic_version table themselves, so
a daemon whose migrations ran in a child process (aggregator.store.migrate) never loads it.
"""

from __future__ import annotations

import ast
import functools
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from aggregator.errors import StoreError
from aggregator.resources import migrations_dir
from aggregator.store import poll_sqlite
from aggregator.store.checkpoint import BACKSTOP_AUTOCHECKPOINT_PAGES
from aggregator.store.threaded import DbEngine, ThreadedEngine

if TYPE_CHECKING:
    from alembic.config import Config

# Written into aggregator_meta by migration runs: a database with our tables but another
# application id is not ours.
APPLICATION = "aggregator"
# Page cache per connection (SQLite's default is 2 MiB). The poll writer's keeps the indexes
# it inserts into warm; the others mostly read what the OS page cache holds anyway. In
# bench/ingest.py (a 39 MB database) 2 MiB / 512 KiB gave the same speed as 4 MiB / 1 MiB
# (steady lists 11,530 / 11,186 against 10,196 / 10,305 observations/s, alternating runs)
# and a peak RSS 3 MB lower (107 against 110 MB); a page missing from the cache is a read
# from the OS page cache, not the disk, while the database is hot.
SQLITE_CACHE_KIB = 512
SQLITE_WRITER_CACHE_KIB = 2048
WAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def shown_url(url: str) -> str:
    """The URL as logs show it: the password masked."""
    return make_url(url).render_as_string(hide_password=True)


# The database URL schemes the store runs on, and the driver it uses for each (`[store] url`
# accepts these and nothing else). SQLite runs on pysqlite in worker threads
# (`threaded.ThreadedEngine`), also for the `+aiosqlite` URLs of older settings.
ASYNC_DRIVERS = {
    "sqlite": "sqlite+pysqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
    "sqlite+aiosqlite": "sqlite+pysqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
}


# SQLite connections: one writer at a time (the store queues writers) plus a reader or two;
# each connection keeps its own page cache.
SQLITE_POOL_SIZE = 3
SQLITE_MAX_OVERFLOW = 2


def make_engine(url: str, *, busy_timeout_s: float, pool_size: int = 5, max_overflow: int = 5) -> DbEngine:
    """The store's engine: SQLite on pysqlite in worker threads, PostgreSQL on asyncpg.

    SQLAlchemy's asyncio extension (its package imports the ORM and greenlet, about 7.8 MB)
    is imported only here, for PostgreSQL.
    """
    parsed = make_url(url)
    driver = ASYNC_DRIVERS.get(parsed.drivername)
    if driver is not None and driver != parsed.drivername:
        parsed = parsed.set(drivername=driver)
    if parsed.drivername.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None:
            precheck_sqlite(path)
            make_data_dir(path.parent)
        memory = parsed.database in (None, "", ":memory:")
        sync = sa.create_engine(
            parsed,
            # The connections move between the engine's threads, one thread at a time.
            connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
            # An in-memory database is one connection's: every thread gets that one.
            **(
                {"poolclass": sa.pool.StaticPool}
                if memory
                else {
                    "poolclass": sa.pool.QueuePool,
                    "pool_size": SQLITE_POOL_SIZE,
                    "max_overflow": SQLITE_MAX_OVERFLOW,
                }
            ),
        )
        _sqlite_events(sync, busy_timeout_s)
        return ThreadedEngine(sync, threads=1 if memory else SQLITE_POOL_SIZE + SQLITE_MAX_OVERFLOW)
    from sqlalchemy.ext.asyncio import create_async_engine

    return create_async_engine(parsed, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True)


def make_sqlite_sync(engine: DbEngine, *, busy_timeout_s: float) -> sa.Engine:
    """A synchronous engine of one connection on the same SQLite database, for one thread."""
    url = engine.url.set(drivername="sqlite+pysqlite")
    sync = sa.create_engine(
        url,
        connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
        poolclass=sa.pool.QueuePool,
        pool_size=1,
        max_overflow=0,
    )
    _sqlite_events(sync, busy_timeout_s)
    return sync


def make_sqlite_writer(engine: DbEngine, *, busy_timeout_s: float) -> sa.Engine:
    """The engine of the one thread that writes polls.

    A poll's transaction then costs one hand-off to that thread instead of one per
    statement through the store's engine. One connection: SQLite has one writer at a time anyway.
    Its WAL checkpoints are `checkpoint.Checkpointer`'s, on another thread.
    """
    writer = make_sqlite_sync(engine, busy_timeout_s=busy_timeout_s)

    @event.listens_for(writer, "connect")
    def _writer_pragmas(dbapi_connection: Any, record: Any) -> None:
        # A multi-row INSERT keeps a statement journal of the pages it changes (to undo
        # just that statement); past 64 KiB SQLite spills it to a new temporary file,
        # which was one file created and deleted per poll. Writes only: it stays small.
        dbapi_connection.execute("PRAGMA temp_store=MEMORY")
        dbapi_connection.execute(f"PRAGMA cache_size=-{SQLITE_WRITER_CACHE_KIB}")
        dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_AUTOCHECKPOINT_PAGES}")
        poll_sqlite.install(dbapi_connection, record.info)

    return writer


def _sqlite_events(sync_engine: sa.Engine, busy_timeout_s: float) -> None:
    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event emit BEGIN itself (pysqlite's implicit BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            # The WAL is truncated back to this size after a checkpoint instead of keeping
            # its high-water mark on disk.
            f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}",
            f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}",
            "PRAGMA foreign_keys=ON",
            "PRAGMA synchronous=NORMAL",  # WAL + NORMAL: durable at checkpoints, never corrupt
            f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front: a deferred BEGIN that reads then writes
        # fails at once with SQLITE_BUSY_SNAPSHOT instead of waiting for busy_timeout.
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def _revisions() -> dict[str, tuple[str, ...]]:
    """Every migration's revision id and the ids it revises, read from the files without Alembic."""
    out: dict[str, tuple[str, ...]] = {}
    for path in sorted((migrations_dir() / "versions").glob("*.py")):
        values: dict[str, Any] = {}
        for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                if node.targets[0].id in ("revision", "down_revision"):
                    values[node.targets[0].id] = ast.literal_eval(node.value)
        revision = values.get("revision")
        if not isinstance(revision, str):
            continue  # not a migration (Alembic skips such files too)
        down = values.get("down_revision")
        out[revision] = (down,) if isinstance(down, str) else tuple(down or ())
    return out


def head_revision() -> str:
    revisions = _revisions()
    revised = {down for downs in revisions.values() for down in downs}
    heads = [rev for rev in revisions if rev not in revised]
    assert len(heads) == 1, f"the migrations in {migrations_dir()} have {len(heads)} heads: {heads}"
    return heads[0]


def _current_revision(connection: Connection, tables: set[str]) -> str | None:
    """The revision in alembic_version (None when the table is absent or empty), as Alembic reads it."""
    if "alembic_version" not in tables:
        return None
    rows = [r[0] for r in connection.execute(sa.text("SELECT version_num FROM alembic_version"))]
    if len(rows) > 1:
        raise StoreError(f"database has several schema revisions ({', '.join(sorted(rows))}); refusing to touch it")
    return rows[0] if rows else None


def _check_ours(connection: Connection) -> str | None:
    """Refuse a database that is newer than this code or belongs to something else; its revision."""
    inspector = sa.inspect(connection)
    tables = set(inspector.get_table_names())
    current = _current_revision(connection, tables)
    if current is not None and not _known(current):
        raise StoreError(
            f"database is at schema revision {current!r}, which this version of aggregator does not know "
            "(it was written by a newer version); upgrade aggregator, or use a backup"
        )
    if current is None and tables - {"alembic_version"}:
        raise StoreError(
            f"database has tables ({', '.join(sorted(tables)[:5])}...) but no aggregator schema version: "
            "it is not an aggregator database; refusing to touch it"
        )
    if current is not None and "aggregator_meta" in tables:
        row = connection.execute(sa.text("SELECT value FROM aggregator_meta WHERE key = 'application'")).first()
        if row is not None and row[0] != APPLICATION:
            raise StoreError(f"database belongs to {row[0]!r}, not aggregator; refusing to touch it")
    return current


def make_data_dir(directory: Path) -> None:
    """Create the directory a SQLite file and its lock live in, or say clearly why it cannot be."""
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"the data directory {directory} ([store] data_dir or url) exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the data directory {directory} ([store] data_dir or url): {exc.strerror or exc}"
        ) from None


def precheck_sqlite(path: Path) -> None:
    """Check an existing SQLite file read-only, before any pragma can change its header."""
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a SQLite database file")
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        current = None
        if "alembic_version" in tables:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
            current = row[0] if row else None
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a SQLite database ({exc}); refusing to touch it") from exc
    finally:
        db.close()
    if current is not None and not _known(current):
        raise StoreError(
            f"database is at schema revision {current!r}, which this version of aggregator does not know "
            "(it was written by a newer version); upgrade aggregator, or use a backup"
        )
    if current is None and tables - {"alembic_version"}:
        raise StoreError(
            f"database {path} has tables ({', '.join(sorted(tables)[:5])}) but no aggregator schema version: "
            "it is not an aggregator database; refusing to touch it"
        )


def _known(revision: str) -> bool:
    return revision in _revisions()


# Key of the PostgreSQL advisory lock that serializes migrations: several daemons
# starting at once against an empty database would otherwise race to create the tables.
MIGRATION_LOCK_KEY = 7_262_026_001


def _upgrade(connection: Connection) -> None:
    # Alembic (0.6 s to import) only when a migration is pending: `run --once` from cron
    # and `db upgrade` on a current database then cost a read of alembic_version.
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    if _check_ours(connection) != head_revision():
        from alembic import command

        command.upgrade(_alembic_config(connection), "head")
    connection.execute(
        sa.text(
            "INSERT INTO aggregator_meta (key, value, updated_at) VALUES ('application', :app, :now) "
            "ON CONFLICT (key) DO NOTHING"
        ),
        {"app": APPLICATION, "now": _now_text(connection)},
    )


def _now_text(connection: Connection) -> Any:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%d %H:%M:%S") if connection.dialect.name == "sqlite" else now


async def upgrade(engine: DbEngine) -> None:
    """Apply every pending migration (a no-op on an up-to-date database).

    On SQLite the transaction takes the write lock at its BEGIN: Alembic reads the revision
    before it writes, and a deferred transaction doing that while another connection writes
    fails at once with "database is locked" instead of waiting for busy_timeout.
    """
    try:
        async with engine.execution_options(sqlite_begin="IMMEDIATE").connect() as conn:
            await conn.run_sync(_upgrade)
            await conn.commit()
    except StoreError:
        raise
    except (TimeoutError, OperationalError, DBAPIError, sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open the database: {_reason(exc)}") from exc


async def check_version(engine: DbEngine) -> str | None:
    """The schema revision of the database, after checking it is ours and not newer."""
    async with engine.connect() as conn:
        return await conn.run_sync(_check_ours)


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).splitlines()[0]
