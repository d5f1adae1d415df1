"""The tables as SQLAlchemy Core metadata: what migrations create and the store writes.

Migrations are the only source of the schema in a database; a test compares this
metadata with a freshly migrated database so the two cannot drift.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

# SQLite keeps timestamps as text in its own datetime() format, always UTC: then
# `collected_at > datetime('now', '-1 day')` compares correctly as text.
SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes: ISO-8601 text on SQLite, timestamptz on PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(19))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware UTC datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.strftime(SQLITE_TIME_FORMAT)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value)
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# On SQLite an INTEGER PRIMARY KEY is the rowid itself (no second index); BIGINT would not be.
ID_TYPE = sa.BigInteger().with_variant(sa.Integer, "sqlite")

metadata = sa.MetaData()

sources = sa.Table(
    "sources",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("interval_s", sa.Float, nullable=False),
    sa.Column("weight", sa.Float, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("category", sa.Text, nullable=False),
    sa.Column("etag", sa.Text),
    sa.Column("last_modified", sa.Text),
    sa.Column("cookies", sa.Text),  # JSON object kept from Set-Cookie; never logged
    sa.Column("last_error_at", UtcDateTime),
    sa.Column("last_error_kind", sa.String(32)),
    sa.Column("last_error", sa.Text),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UtcDateTime),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_until", UtcDateTime),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

polls = sa.Table(
    "polls",
    metadata,
    sa.Column("id", ID_TYPE, primary_key=True, autoincrement=True),
    sa.Column("source_id", sa.String(64), sa.ForeignKey("sources.id"), nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime, nullable=False),
    sa.Column("duration_ms", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # ok | not_modified | error
    sa.Column("http_status", sa.Integer),
    sa.Column("item_count", sa.Integer, nullable=False),
    sa.Column("new_count", sa.Integer, nullable=False),
    sa.Column("dropped_count", sa.Integer, nullable=False),
    sa.Column("error_kind", sa.String(32)),
    sa.Column("error", sa.Text),
    sa.Column("instance", sa.Text),
    sa.Index("ix_polls_source_status", "source_id", "status", "id"),
)

stories = sa.Table(
    "stories",
    metadata,
    sa.Column("id", ID_TYPE, primary_key=True, autoincrement=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("item_id", sa.BigInteger, nullable=False),  # the representative item
    sa.Column("first_seen_at", UtcDateTime, nullable=False),
    sa.Column("last_seen_at", UtcDateTime, nullable=False),
    sa.Column("source_count", sa.Integer, nullable=False),
    sa.Column("heat", sa.Float, nullable=False, server_default="0"),
    sa.Column("base_heat", sa.Float, nullable=False, server_default="0"),  # heat when last on a list
    sa.Column("score", sa.Float, nullable=False, server_default="0"),
    sa.Column("peak_score", sa.Float, nullable=False, server_default="0"),
    sa.Column("scored_at", UtcDateTime),
    sa.Index("ix_stories_score", "score"),
    sa.Index("ix_stories_last_seen", "last_seen_at"),
)

items = sa.Table(
    "items",
    metadata,
    sa.Column("id", ID_TYPE, primary_key=True, autoincrement=False),
    sa.Column("key", sa.String(16), nullable=False, unique=True),
    sa.Column("source_id", sa.String(64), sa.ForeignKey("sources.id"), nullable=False),
    sa.Column("native_id", sa.Text),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("url", sa.Text),
    sa.Column("canonical_url", sa.Text),
    sa.Column("summary", sa.Text),
    sa.Column("published_at", UtcDateTime),
    # Deferred: a poll inserts its new items, learns which are new, then starts their stories.
    sa.Column(
        "story_id", sa.BigInteger, sa.ForeignKey("stories.id", deferrable=True, initially="DEFERRED"), nullable=False
    ),
    sa.Column("first_seen_at", UtcDateTime, nullable=False),
    sa.Column("last_seen_at", UtcDateTime, nullable=False),
    sa.Column("best_rank", sa.Integer),
    sa.Column("last_rank", sa.Integer),
    # Full text of the linked page (migration 0002): Markdown, and when it was fetched.
    sa.Column("content", sa.Text),
    sa.Column("content_status", sa.String(16)),  # ok | error | empty
    sa.Column("content_fetched_at", UtcDateTime),
    sa.Column("content_error", sa.Text),
    sa.Column("content_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("content_next_at", UtcDateTime),
    sa.Index("ix_items_story", "story_id"),
)

# One row per item per poll: the bulk of the database. No rowid and a primary key that
# is also the per-poll lookup keep a row near 60 bytes on disk.
observations = sa.Table(
    "observations",
    metadata,
    sa.Column("poll_id", sa.BigInteger, sa.ForeignKey("polls.id"), primary_key=True),
    sa.Column("item_id", sa.BigInteger, sa.ForeignKey("items.id"), primary_key=True),
    sa.Column("source_id", sa.String(64), nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("heat", sa.Float),
    sa.Column("heat_raw", sa.Text),
    sa.Column("label", sa.Text),
    sa.Column("collected_at", UtcDateTime, nullable=False),
    sa.Index("ix_observations_item", "item_id"),
    sqlite_with_rowid=False,
)

story_scores = sa.Table(
    "story_scores",
    metadata,
    sa.Column("story_id", sa.BigInteger, sa.ForeignKey("stories.id"), primary_key=True),
    sa.Column("scored_at", UtcDateTime, primary_key=True),
    sa.Column("heat", sa.Float, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sqlite_with_rowid=False,
)

meta = sa.Table(
    "aggregator_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)
