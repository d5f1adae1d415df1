"""A poll's writes on SQLite in two statements: the poll row, then its entries.

A poll that brings new items writes four tables: `polls`, `items`, `stories` and
`observations` (five with `sources`, when the source's state changed). Core statements
are one Python-to-SQLite round trip per table. Here the poll writer's connection holds
two TEMP views with INSTEAD OF triggers, so each poll is two INSERTs and a commit:

- `poll_results`: one row, the poll and the source's new state. The trigger inserts
  the `polls` row and updates `sources` when some part of the state changed.
- `poll_entries`: a row per list entry. Per row the pipeline writes (new to it, or
  changed), one trigger upserts the item, creates the story of a new item, keeps a joined
  story's `source_count` and `last_seen_at` true, and inserts the observation; per row it
  does not write, another trigger inserts the observation alone.

What the pipeline must learn back comes through SQL functions registered on the same
connection, called from the triggers: the new poll's id, and each written item that
was not new (the store had it already) with the story the store keeps it in. For a
poll of items the pipeline knew that is no call at all.

The views and triggers are TEMP objects of the writer connection alone: the database
file's schema does not change, other connections (a user's `sqlite3`, migrations) never
see them, and they cannot drift from the migrations. PostgreSQL takes the Core
statements (`aggregator.store._record_poll`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlalchemy as sa

    from aggregator.store import PollWrite, PollWritten

# SQLite's default limit on a statement's parameters (SQLITE_MAX_VARIABLE_NUMBER).
MAX_PARAMETERS = 32766

POLL_COLUMNS = (
    "source_id",
    "started_at",
    "finished_at",
    "duration_ms",
    "status",
    "http_status",
    "item_count",
    "new_count",
    "dropped_count",
    "error_kind",
    "error",
    "instance",
)
# The source's state after the poll, in groups (as `aggregator.store._source_values` gives
# them): each group is written only when its flag is set.
SOURCE_GROUPS = {
    "set_failures": ("consecutive_failures", "next_attempt_at"),
    "set_error": ("last_error_at", "last_error_kind", "last_error"),
    "set_conditional": ("etag", "last_modified"),
    "set_cookies": ("cookies",),
}
SOURCE_COLUMNS = tuple(c for flag, columns in SOURCE_GROUPS.items() for c in (flag, *columns))
ENTRY_COLUMNS = (
    "poll_id",
    "source_id",
    "at",
    "rank",
    "heat",
    "heat_raw",
    "label",
    "item_id",
    "write",
    "key",
    "native_id",
    "title",
    "url",
    "canonical_url",
    "summary",
    "published_at",
    "story_id",
)
ENTRIES_PER_STATEMENT = MAX_PARAMETERS // len(ENTRY_COLUMNS)


def _view(name: str, columns: tuple[str, ...]) -> str:
    # A view of no rows: only its columns matter, the trigger does the writing.
    return f"CREATE TEMP VIEW {name}({', '.join(columns)}) AS SELECT {', '.join('NULL' for _ in columns)} WHERE 0"


def _keep(flag: str, column: str) -> str:
    return f"{column} = CASE WHEN NEW.{flag} THEN NEW.{column} ELSE {column} END"


_RESULT_COLUMNS = (*POLL_COLUMNS, *SOURCE_COLUMNS)
# The SQL below is built from the column names above only; every value is a parameter.
_POLL_TRIGGER = f"""
CREATE TEMP TRIGGER poll_results_insert INSTEAD OF INSERT ON poll_results
BEGIN
    INSERT INTO polls ({", ".join(POLL_COLUMNS)}) VALUES ({", ".join(f"NEW.{c}" for c in POLL_COLUMNS)});
    SELECT aggregator_poll_id(last_insert_rowid());
    UPDATE sources SET
        {", ".join(_keep(flag, c) for flag, columns in SOURCE_GROUPS.items() for c in columns)},
        updated_at = NEW.finished_at
    WHERE id = NEW.source_id AND ({" OR ".join(f"NEW.{flag}" for flag in SOURCE_GROUPS)});
END
"""
_OBSERVATION = """INSERT INTO observations (poll_id, item_id, source_id, rank, heat, heat_raw, label, collected_at)
    VALUES (NEW.poll_id, NEW.item_id, NEW.source_id, NEW.rank, NEW.heat, NEW.heat_raw, NEW.label, NEW.at);"""
# Per written entry. "New" is what the store says, as in the Core path: the item's stored
# first_seen_at is this poll's time.
_ENTRY_TRIGGER = f"""
CREATE TEMP TRIGGER poll_entries_insert INSTEAD OF INSERT ON poll_entries WHEN NEW.write
BEGIN
    INSERT INTO items (id, key, source_id, native_id, title, url, canonical_url, summary, published_at,
                       story_id, first_seen_at, last_seen_at, best_rank, last_rank)
    SELECT NEW.item_id, NEW.key, NEW.source_id, NEW.native_id, NEW.title, NEW.url, NEW.canonical_url,
           NEW.summary, NEW.published_at, NEW.story_id, NEW.at, NEW.at, NEW.rank, NEW.rank
    WHERE true  -- an upsert's SELECT needs a WHERE (SQLite's parsing)
    ON CONFLICT (key) DO UPDATE SET
        title = excluded.title,
        url = excluded.url,
        canonical_url = excluded.canonical_url,
        summary = coalesce(excluded.summary, items.summary),
        last_seen_at = excluded.last_seen_at,
        last_rank = excluded.last_rank,
        best_rank = CASE WHEN excluded.best_rank < items.best_rank THEN excluded.best_rank ELSE items.best_rank END;
    -- An item the store had already: the poll did not bring it, and it keeps its story.
    SELECT aggregator_item_kept(id, story_id, first_seen_at = NEW.at) FROM items
    WHERE id = NEW.item_id AND (first_seen_at != NEW.at OR story_id != NEW.story_id);
    UPDATE polls SET new_count = new_count - 1
    WHERE id = NEW.poll_id AND (SELECT first_seen_at FROM items WHERE id = NEW.item_id) != NEW.at;
    -- A new item starts its story, or makes sure the story it joins exists (the poll
    -- that starts it may still be queued, or have failed): whichever comes first makes it.
    INSERT INTO stories (id, title, item_id, first_seen_at, last_seen_at, source_count)
    SELECT NEW.story_id, NEW.title, NEW.item_id, NEW.at, NEW.at, 1 FROM items
    WHERE id = NEW.item_id AND first_seen_at = NEW.at
    ON CONFLICT (id) DO NOTHING;
    -- A new item joined an existing story: source_count stays true in the same transaction.
    UPDATE stories SET
        source_count = (SELECT count(DISTINCT i2.source_id) FROM items AS i2 WHERE i2.story_id = NEW.story_id),
        last_seen_at = NEW.at
    WHERE NEW.story_id != NEW.item_id AND id = NEW.story_id
      AND (SELECT first_seen_at FROM items WHERE id = NEW.item_id) = NEW.at;
    {_OBSERVATION}
END
"""
# An entry the pipeline does not write (most of a known list) is its observation alone: a
# trigger of one statement, not six whose WHERE fails. bench/ingest.py's steady lists: the
# writer thread's CPU 0.39 -> 0.36 s a round, 13,400-13,900 -> 14,000-14,300 observations/s.
_OBSERVED_TRIGGER = f"""
CREATE TEMP TRIGGER poll_entries_observe INSTEAD OF INSERT ON poll_entries WHEN NOT NEW.write
BEGIN
    {_OBSERVATION}
END
"""
_DDL = (
    _view("poll_results", _RESULT_COLUMNS),
    _POLL_TRIGGER,
    _view("poll_entries", ENTRY_COLUMNS),
    _ENTRY_TRIGGER,
    _OBSERVED_TRIGGER,
)
_INSERT_RESULT = (
    f"INSERT INTO poll_results ({', '.join(_RESULT_COLUMNS)}) VALUES ({', '.join('?' * len(_RESULT_COLUMNS))})"
)


# Distinct entry counts are few (lists have their sizes); the bound is for a feed that varies.
@functools.lru_cache(maxsize=64)
def _entries_sql(rows: int) -> str:
    row = f"({', '.join('?' * len(ENTRY_COLUMNS))})"
    return f"INSERT INTO poll_entries ({', '.join(ENTRY_COLUMNS)}) VALUES {', '.join([row] * rows)}"


@dataclass(slots=True)
class Reports:
    """What the triggers tell the writer during one poll's statements."""

    poll_id: int | None = None
    stories: dict[int, int] = field(default_factory=dict)  # item → the story the store keeps it in
    not_new: int = 0  # written items the store had already

    def reset(self) -> None:
        self.poll_id = None
        self.stories = {}
        self.not_new = 0


INFO_KEY = "aggregator_poll_writes"


def install(dbapi_connection: Any, info: dict[str, Any]) -> None:
    """Create the views, triggers and functions on a new writer connection (outside any transaction)."""
    reports = Reports()

    def poll_id(value: int) -> None:
        reports.poll_id = value

    def item_kept(item_id: int, story_id: int, new: int) -> None:
        reports.stories[item_id] = story_id
        reports.not_new += not new

    dbapi_connection.create_function("aggregator_poll_id", 1, poll_id)
    dbapi_connection.create_function("aggregator_item_kept", 3, item_kept)
    cursor = dbapi_connection.cursor()
    for ddl in _DDL:
        cursor.execute(ddl)
    cursor.close()
    info[INFO_KEY] = reports


def _source_row(values: dict[str, Any], text: Callable[[Any], Any]) -> list[Any]:
    row: list[Any] = []
    for columns in SOURCE_GROUPS.values():
        row.append(columns[0] in values)
        row += (text(v) if isinstance(v, datetime) else v for v in (values.get(c) for c in columns))
    return row


def record(conn: sa.Connection, w: PollWrite, source_values: dict[str, Any], text: Callable[[Any], Any]) -> PollWritten:
    """Write poll `w` inside the caller's transaction.

    `source_values`: the source row's changed columns (`aggregator.store._source_values`);
    `text`: a time as SQLite stores it.
    """
    from aggregator.store import PollWritten

    reports: Reports = conn.connection.info[INFO_KEY]
    reports.reset()
    at = text(w.finished_at)
    written = sum(w.upsert)
    poll = (
        w.source_id,
        text(w.started_at),
        at,
        int((w.finished_at - w.started_at).total_seconds() * 1000),
        w.status,
        w.http_status,
        len(w.items),
        written,  # less each written item the store had already (the entries' trigger)
        w.dropped_count,
        w.error_kind,
        w.error,
        w.instance,
    )
    conn.exec_driver_sql(_INSERT_RESULT, (*poll, *_source_row(source_values, text)))
    poll_id = reports.poll_id
    assert poll_id is not None, "the poll_results trigger did not report the poll's id"
    values: list[Any] = []
    for it, story_id, write in zip(w.items, w.story_ids, w.upsert, strict=True):
        values += (poll_id, w.source_id, at, it.rank, it.heat, it.heat_raw, it.label, it.item_id, write)
        if write:
            published = None if it.published_at is None else text(it.published_at)
            values += (it.key, it.native_id, it.title, it.url, it.canonical_url, it.summary, published, story_id)
        else:
            values += (None, None, None, None, None, None, None, story_id)
    width = len(ENTRY_COLUMNS)
    for start in range(0, len(w.items), ENTRIES_PER_STATEMENT):
        rows = min(ENTRIES_PER_STATEMENT, len(w.items) - start)
        conn.exec_driver_sql(_entries_sql(rows), tuple(values[start * width : (start + rows) * width]))
    # Each written item's story: the one proposed, unless the store keeps it in another.
    stories = {
        it.item_id: story_id for it, story_id, write in zip(w.items, w.story_ids, w.upsert, strict=True) if write
    }
    stories.update(reports.stories)
    return PollWritten(poll_id, written - reports.not_new, stories)
