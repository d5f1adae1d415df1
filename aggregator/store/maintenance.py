"""Keeping a store healthy for months: heartbeats, retention, backups and checks.

Heartbeats are rows of `aggregator_meta` keyed `heartbeat:<instance>` with a JSON value
(see `aggregator.health.Heartbeat`). Retention deletes old observations, polls and
score history, and drops the full text of old items, in small transactions keyed on
the primary keys so that polls keep committing in between; stories and items are never
deleted, so their summary (first and last seen, best rank, peak 热度) outlives the
rows it was computed from. Backups and checks of a SQLite store use their own sqlite3
connection: a read-only one that never changes the live file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, OperationalError

from aggregator.errors import StoreError
from aggregator.health import HEARTBEAT_KEY_PREFIX, Heartbeat
from aggregator.settings import RetentionSettings
from aggregator.store import Store, _upsert
from aggregator.store.engine import APPLICATION, check_version, head_revision, precheck_sqlite, sqlite_path
from aggregator.store.schema import items, meta, observations, polls, story_scores
from aggregator.store.threaded import DbConnection, rowcount

# A heartbeat row not updated for this long belongs to a daemon that is gone (each
# restart with the default instance id host:pid adds a row); a week keeps the last ones
# of a crashed instance around for a post-mortem.
HEARTBEAT_FORGET_S = 7 * 86400.0
# Pause between two retention batches: the writer lock is released at each commit and
# queued polls take it first; the pause also lets the WAL checkpoint catch up.
BATCH_PAUSE_S = 0.02
# `aggregator health` calls a store with less free space than this unwritable: SQLite
# needs room for the WAL to grow between checkpoints, and a full disk fails every poll.
MIN_FREE_BYTES = 16 * 1024 * 1024
# content_status of an item whose full text retention dropped (never fetched again).
CONTENT_PRUNED = "pruned"
# `aggregator health` waits this long for the write lock: the daemon's transactions take
# milliseconds (a retention batch tens of them), so a longer wait means writes are stuck;
# it stays under the Dockerfile's HEALTHCHECK timeout of 10s.
HEALTH_BUSY_TIMEOUT_S = 5.0


def _store_error(exc: BaseException, doing: str) -> StoreError:
    orig = getattr(exc, "orig", None)
    return StoreError(f"{doing}: {str(orig or exc).splitlines()[0]}")


# -- heartbeats ------------------------------------------------------------------------


async def write_heartbeat(store: Store, beat: Heartbeat, *, skip_if: Callable[[], bool] | None = None) -> bool:
    """Upsert this instance's heartbeat; False when `skip_if()` held once the writer lock was taken."""
    try:
        # The store's own writer path: SQLite writers queue in-process before BEGIN IMMEDIATE.
        async with store._begin() as conn:
            if skip_if is not None and skip_if():
                return False
            ins = _upsert(conn, meta).values(key=beat.key, value=beat.to_json(), updated_at=beat.at)
            await conn.execute(
                ins.on_conflict_do_update(
                    index_elements=[meta.c.key],
                    set_={"value": ins.excluded.value, "updated_at": ins.excluded.updated_at},
                )
            )
    except (OperationalError, DBAPIError, OSError) as exc:
        raise _store_error(exc, "cannot write the heartbeat") from exc
    return True


async def read_heartbeats(store: Store) -> list[Heartbeat]:
    """Every heartbeat in the store; rows that do not parse are skipped."""
    q = sa.select(meta.c.value).where(meta.c.key.startswith(HEARTBEAT_KEY_PREFIX, autoescape=True))
    try:
        async with store.engine.connect() as conn:
            values = [r[0] for r in await conn.execute(q)]
    except (OperationalError, DBAPIError, OSError) as exc:
        raise _store_error(exc, "cannot read heartbeats") from exc
    beats = []
    for value in values:
        try:
            beats.append(Heartbeat.from_json(value))
        except ValueError:
            continue
    return beats


async def probe_writable(store: Store, sqlite_file: Path | None) -> str | None:
    """None when the store takes a write, else why not (the probe is rolled back)."""
    if sqlite_file is not None:
        folder = sqlite_file.parent
        for path in (folder, sqlite_file):
            if not os.access(path, os.W_OK):
                return f"{path} is not writable by uid {os.getuid()}"
        free = shutil.disk_usage(folder).free
        if free < MIN_FREE_BYTES:
            return f"only {free / 2**20:.1f} MiB free on the file system of {folder}"
    try:
        # On SQLite BEGIN IMMEDIATE takes the write lock; the no-op update needs a writable
        # file and transaction; nothing is committed.
        async with store.engine.execution_options(sqlite_begin="IMMEDIATE").connect() as conn:
            tx = await conn.begin()
            try:
                await conn.execute(meta.update().where(meta.c.key == "application").values(value=meta.c.value))
            finally:
                await tx.rollback()
    except (OperationalError, DBAPIError, OSError) as exc:
        orig = getattr(exc, "orig", None)
        return str(orig or exc).splitlines()[0]
    return None


async def inspect_health(
    url: str, *, busy_timeout_s: float = HEALTH_BUSY_TIMEOUT_S
) -> tuple[list[Heartbeat], str | None]:
    """(heartbeats, why the store cannot be written or None), for `aggregator health`.

    Opens the store without migrating it and never creates a SQLite file; StoreError
    when the store cannot be opened or read at all.
    """
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise StoreError(f"no database at {path}: the daemon has not started here")
    try:
        store = await Store.open(url, busy_timeout_s=busy_timeout_s, pool_size=1, max_overflow=0, upgrade=False)
    except (OperationalError, DBAPIError, OSError, sqlite3.Error) as exc:
        raise _store_error(exc, "cannot open the store") from exc
    try:
        try:
            revision = await check_version(store.engine)
        except (OperationalError, DBAPIError, OSError) as exc:
            raise _store_error(exc, "cannot read the store") from exc
        if revision is None:
            raise StoreError("the database has no aggregator schema yet: the daemon has not started here")
        problem = await probe_writable(store, path)
        return await read_heartbeats(store), problem
    finally:
        await store.close()


# -- retention -------------------------------------------------------------------------


@dataclass(slots=True)
class RetentionReport:
    observations: int = 0
    polls: int = 0
    contents: int = 0
    scores: int = 0
    heartbeats: int = 0
    batches: int = 0
    seconds: float = 0.0
    cutoffs: dict[str, datetime] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"removed {self.observations} observations, {self.polls} polls, {self.scores} score rows, "
            f"{self.heartbeats} old heartbeats; dropped the full text of {self.contents} items "
            f"({self.batches} batches, {self.seconds:.1f}s)"
        )


async def _first_id_from(
    conn: DbConnection, column: sa.Column[Any], time_col: sa.Column[Any], cutoff: datetime
) -> int | None:
    """The smallest id from which rows are no older than `cutoff` (None: the table is empty).

    Ids grow with time (a poll's id is given at its commit, just after finished_at), so a
    binary search over the primary key finds the boundary in ~30 indexed lookups instead
    of scanning a table that has no index on time. Rows out of order by a few seconds
    are filtered by time when deleted, or caught by the next run.
    """
    table = column.table
    lo = (await conn.execute(sa.select(sa.func.min(column)))).scalar()
    hi = (await conn.execute(sa.select(sa.func.max(column)))).scalar()
    if lo is None or hi is None:
        return None

    async def young_from(x: int) -> bool:
        q = sa.select(time_col).select_from(table).where(column >= x).order_by(column).limit(1)
        at = (await conn.execute(q)).scalar()
        return at is None or at >= cutoff

    if await young_from(lo):
        return int(lo)
    if not await young_from(hi):
        return int(hi) + 1
    lo, hi = int(lo), int(hi)  # young_from(lo) is False, young_from(hi) is True
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if await young_from(mid):
            hi = mid
        else:
            lo = mid
    return hi


async def _batch_end(
    conn: DbConnection, column: sa.Column[Any], after: int | None, batch: int, *where: Any
) -> int | None:
    """The key value that closes the next batch of `batch` rows after `after` (None: no rows left)."""
    q = sa.select(column.label("k")).select_from(column.table).where(*where)
    if after is not None:
        q = q.where(column > after)
    sub = q.order_by(column).limit(batch).subquery()
    value = (await conn.execute(sa.select(sa.func.max(sub.c.k)))).scalar()
    return None if value is None else int(value)


def _in_range(column: sa.Column[Any], after: int | None, end: int) -> Any:
    return column <= end if after is None else sa.and_(column > after, column <= end)


async def apply_retention(
    store: Store,
    settings: RetentionSettings,
    now: datetime,
    *,
    pause_s: float = BATCH_PAUSE_S,
    stop: Callable[[], bool] | None = None,
) -> RetentionReport:
    """Delete what is older than the retention windows, `settings.batch` rows per transaction.

    Order matters: observations first, then the polls they leave empty (a poll with
    observations is kept whatever its age, because they refer to it). `stop()` is asked
    between batches (a daemon shutting down); what is left waits for the next run.
    """
    report = RetentionReport()
    started = time.perf_counter()
    batch = settings.batch

    async def run_batches(step: Any) -> int:
        """Call `step(conn, after) -> (rows, end)` in one transaction each until end is None."""
        total, after = 0, None
        while not (stop is not None and stop()):
            try:
                async with store._begin() as conn:
                    rows, end = await step(conn, after)
            except (OperationalError, DBAPIError, OSError) as exc:
                raise _store_error(exc, "retention") from exc
            if end is None:
                return total
            total += rows
            report.batches += 1
            after = end
            await asyncio.sleep(pause_s)
        return total

    if settings.observations > 0:
        cutoff = now - timedelta(seconds=settings.observations)
        report.cutoffs["observations"] = cutoff
        async with store.engine.connect() as conn:
            bound = await _first_id_from(conn, polls.c.id, polls.c.finished_at, cutoff)

        async def observations_step(conn: DbConnection, after: int | None) -> tuple[int, int | None]:
            if bound is None:
                return 0, None
            end = await _batch_end(conn, observations.c.poll_id, after, batch, observations.c.poll_id < bound)
            if end is None:
                return 0, None
            done = await conn.execute(
                observations.delete().where(
                    _in_range(observations.c.poll_id, after, end), observations.c.collected_at < cutoff
                )
            )
            return rowcount(done), end

        report.observations = await run_batches(observations_step)

    if settings.polls > 0:
        cutoff = now - timedelta(seconds=settings.polls)
        report.cutoffs["polls"] = cutoff
        async with store.engine.connect() as conn:
            bound = await _first_id_from(conn, polls.c.id, polls.c.finished_at, cutoff)

        async def polls_step(conn: DbConnection, after: int | None) -> tuple[int, int | None]:
            if bound is None:
                return 0, None
            end = await _batch_end(conn, polls.c.id, after, batch, polls.c.id < bound)
            if end is None:
                return 0, None
            listed = sa.select(observations.c.poll_id).where(observations.c.poll_id == polls.c.id).exists()
            done = await conn.execute(
                polls.delete().where(_in_range(polls.c.id, after, end), polls.c.started_at < cutoff, ~listed)
            )
            return rowcount(done), end

        report.polls = await run_batches(polls_step)

    if settings.content > 0:
        cutoff = now - timedelta(seconds=settings.content)
        report.cutoffs["content"] = cutoff
        old_content = (items.c.content.is_not(None), items.c.last_seen_at < cutoff)

        async def content_step(conn: DbConnection, after: int | None) -> tuple[int, int | None]:
            end = await _batch_end(conn, items.c.id, after, batch, *old_content)
            if end is None:
                return 0, None
            done = await conn.execute(
                items.update()
                .where(_in_range(items.c.id, after, end), *old_content)
                .values(content=None, content_status=CONTENT_PRUNED)
            )
            return rowcount(done), end

        report.contents = await run_batches(content_step)

    if settings.scores > 0:
        cutoff = now - timedelta(seconds=settings.scores)
        report.cutoffs["scores"] = cutoff

        async def scores_step(conn: DbConnection, after: int | None) -> tuple[int, int | None]:
            old = story_scores.c.scored_at < cutoff
            end = await _batch_end(conn, story_scores.c.story_id, after, batch, old)
            if end is None:
                return 0, None
            done = await conn.execute(story_scores.delete().where(_in_range(story_scores.c.story_id, after, end), old))
            return rowcount(done), end

        report.scores = await run_batches(scores_step)

    forget = now - timedelta(seconds=HEARTBEAT_FORGET_S)
    try:
        async with store._begin() as conn:
            done = await conn.execute(
                meta.delete().where(
                    meta.c.key.startswith(HEARTBEAT_KEY_PREFIX, autoescape=True), meta.c.updated_at < forget
                )
            )
            report.heartbeats = rowcount(done)
    except (OperationalError, DBAPIError, OSError) as exc:
        raise _store_error(exc, "retention") from exc
    report.seconds = time.perf_counter() - started
    return report


# -- backups and checks (SQLite) -------------------------------------------------------


def _ro_uri(path: Path) -> str:
    return f"{path.resolve().as_uri()}?mode=ro"


@dataclass(frozen=True, slots=True)
class BackupReport:
    path: Path
    size_bytes: int  # 0 when the copy failed its check and was removed
    revision: str | None
    poll_count: int
    last_poll_id: int | None
    seconds: float
    problems: tuple[str, ...] = ()  # what quick_check said of a copy that was then removed

    @property
    def ok(self) -> bool:
        return not self.problems


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_target(dest: Path, now: datetime) -> Path:
    """Where `db backup DEST` writes: DEST, or a dated file inside DEST when it is a folder."""
    if dest.is_dir():
        return dest / f"aggregator-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}.db"
    return dest


def backup_sqlite(db_path: Path, dest: Path, *, overwrite: bool = False, busy_timeout_s: float = 10.0) -> BackupReport:
    """A consistent copy of a live SQLite store at `dest`, checked before it gets its name.

    SQLite's online backup API copies every page in one step, inside one read
    transaction: the copy is the database as of one commit, while the daemon keeps
    writing (WAL readers do not block writers). The copy is switched to a rollback
    journal so it is one self-contained file, passes `PRAGMA quick_check`, is fsynced,
    and only then renamed into place; a failed backup leaves nothing at `dest`.
    """
    if not db_path.is_file():
        raise StoreError(f"no database at {db_path}")
    precheck_sqlite(db_path)
    if dest.exists() and not overwrite:
        raise StoreError(f"{dest} exists; choose another name, or pass --force to replace it")
    if dest.exists() and dest.resolve() == db_path.resolve():
        raise StoreError(f"{dest} is the live database itself")
    if not dest.parent.is_dir():
        raise StoreError(f"no such directory: {dest.parent}")
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    started = time.perf_counter()
    try:
        src = sqlite3.connect(_ro_uri(db_path), uri=True, timeout=busy_timeout_s)
        try:
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)  # pages=-1: all pages in one step, one snapshot
                dst.execute("PRAGMA journal_mode=DELETE")
                check = [r[0] for r in dst.execute("PRAGMA quick_check")]
                row = dst.execute("SELECT version_num FROM alembic_version").fetchone()
                count, last = dst.execute("SELECT count(*), max(id) FROM polls").fetchone()
            finally:
                dst.close()
        finally:
            src.close()
        revision = row[0] if row else None
        if check != ["ok"]:
            return BackupReport(dest, 0, revision, int(count), last, time.perf_counter() - started, tuple(check))
        _fsync(partial)
        os.replace(partial, dest)
        _fsync(dest.parent)
    except sqlite3.Error as exc:
        raise StoreError(f"backup of {db_path} failed: {exc}") from exc
    except OSError as exc:
        raise StoreError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return BackupReport(dest, dest.stat().st_size, revision, int(count), last, time.perf_counter() - started)


@dataclass(frozen=True, slots=True)
class CheckReport:
    path: Path | None  # None: not a SQLite file
    revision: str | None
    head: str
    problems: tuple[str, ...]  # empty: the check said ok
    check: str  # integrity_check or quick_check; "" when the database has none (PostgreSQL)
    size_bytes: int
    wal_bytes: int
    foreign_key_violations: int

    @property
    def ok(self) -> bool:
        return not self.problems and self.foreign_key_violations == 0


async def check_database(url: str, *, quick: bool = False, busy_timeout_s: float = 10.0) -> CheckReport:
    """`check_sqlite` for a SQLite store; on PostgreSQL the schema revision and ownership only."""
    path = sqlite_path(url)
    if path is not None:
        return await asyncio.to_thread(check_sqlite, path, quick=quick, busy_timeout_s=busy_timeout_s)
    try:
        store = await Store.open(url, busy_timeout_s=busy_timeout_s, pool_size=1, max_overflow=0, upgrade=False)
    except (OperationalError, DBAPIError, OSError) as exc:
        raise _store_error(exc, "cannot open the store") from exc
    try:
        revision = await check_version(store.engine)
    finally:
        await store.close()
    return CheckReport(None, revision, head_revision(), (), "", 0, 0, 0)


def check_sqlite(db_path: Path, *, quick: bool = False, busy_timeout_s: float = 10.0) -> CheckReport:
    """Integrity of a SQLite store, read-only: the daemon may keep running."""
    if not db_path.is_file():
        raise StoreError(f"no database at {db_path}")
    precheck_sqlite(db_path)  # refuses a file that is not ours or is newer than this code
    pragma = "quick_check" if quick else "integrity_check"
    try:
        db = sqlite3.connect(_ro_uri(db_path), uri=True, timeout=busy_timeout_s)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            revision = None
            if "alembic_version" in tables:
                row = db.execute("SELECT version_num FROM alembic_version").fetchone()
                revision = row[0] if row else None
            if "aggregator_meta" in tables:
                row = db.execute("SELECT value FROM aggregator_meta WHERE key = 'application'").fetchone()
                if row is not None and row[0] != APPLICATION:
                    raise StoreError(f"database belongs to {row[0]!r}, not aggregator")
            violations = 0
            try:
                result = [str(r[0]) for r in db.execute(f"PRAGMA {pragma}")]
                if not quick and result == ["ok"]:
                    violations = len(db.execute("PRAGMA foreign_key_check").fetchall())
            except sqlite3.DatabaseError as exc:  # damage bad enough to stop the check itself
                result = [str(exc)]
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot check {db_path}: {exc}") from exc
    wal = db_path.with_name(db_path.name + "-wal")
    return CheckReport(
        db_path,
        revision,
        head_revision(),
        () if result == ["ok"] else tuple(result),
        pragma,
        db_path.stat().st_size,
        wal.stat().st_size if wal.exists() else 0,
        violations,
    )
