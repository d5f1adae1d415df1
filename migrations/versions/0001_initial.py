"""Initial schema: sources, polls, items, observations, stories, story_scores, views.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def ts() -> sa.types.TypeEngine:
    # UTC: ISO-8601 text in SQLite's datetime() format there, timestamptz on PostgreSQL.
    return sa.DateTime(timezone=True).with_variant(sa.String(19), "sqlite")


def big_id() -> sa.types.TypeEngine:
    return sa.BigInteger()


def pk_id() -> sa.types.TypeEngine:
    # On SQLite an INTEGER PRIMARY KEY is the rowid itself (no second index); BIGINT would not be.
    return sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "aggregator_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", ts(), nullable=False),
    )
    op.create_table(
        "sources",
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
        sa.Column("cookies", sa.Text),
        sa.Column("last_error_at", ts()),
        sa.Column("last_error_kind", sa.String(32)),
        sa.Column("last_error", sa.Text),
        sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", ts()),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_until", ts()),
        sa.Column("updated_at", ts(), nullable=False),
    )
    op.create_table(
        "polls",
        sa.Column("id", pk_id(), primary_key=True, autoincrement=True),
        sa.Column("source_id", sa.String(64), sa.ForeignKey("sources.id"), nullable=False),
        sa.Column("started_at", ts(), nullable=False),
        sa.Column("finished_at", ts(), nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("http_status", sa.Integer),
        sa.Column("item_count", sa.Integer, nullable=False),
        sa.Column("new_count", sa.Integer, nullable=False),
        sa.Column("dropped_count", sa.Integer, nullable=False),
        sa.Column("error_kind", sa.String(32)),
        sa.Column("error", sa.Text),
        sa.Column("instance", sa.Text),
    )
    op.create_index("ix_polls_source_status", "polls", ["source_id", "status", "id"])
    op.create_table(
        "stories",
        sa.Column("id", pk_id(), primary_key=True, autoincrement=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("item_id", big_id(), nullable=False),
        sa.Column("first_seen_at", ts(), nullable=False),
        sa.Column("last_seen_at", ts(), nullable=False),
        sa.Column("source_count", sa.Integer, nullable=False),
        sa.Column("heat", sa.Float, nullable=False, server_default="0"),
        sa.Column("base_heat", sa.Float, nullable=False, server_default="0"),
        sa.Column("score", sa.Float, nullable=False, server_default="0"),
        sa.Column("peak_score", sa.Float, nullable=False, server_default="0"),
        sa.Column("scored_at", ts()),
    )
    op.create_index("ix_stories_score", "stories", ["score"])
    op.create_index("ix_stories_last_seen", "stories", ["last_seen_at"])
    op.create_table(
        "items",
        sa.Column("id", pk_id(), primary_key=True, autoincrement=False),
        sa.Column("key", sa.String(16), nullable=False, unique=True),
        sa.Column("source_id", sa.String(64), sa.ForeignKey("sources.id"), nullable=False),
        sa.Column("native_id", sa.Text),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("url", sa.Text),
        sa.Column("canonical_url", sa.Text),
        sa.Column("summary", sa.Text),
        sa.Column("published_at", ts()),
        sa.Column(
            "story_id", big_id(), sa.ForeignKey("stories.id", deferrable=True, initially="DEFERRED"), nullable=False
        ),
        sa.Column("first_seen_at", ts(), nullable=False),
        sa.Column("last_seen_at", ts(), nullable=False),
        sa.Column("best_rank", sa.Integer),
        sa.Column("last_rank", sa.Integer),
    )
    op.create_index("ix_items_story", "items", ["story_id"])
    op.create_table(
        "observations",
        sa.Column("poll_id", big_id(), sa.ForeignKey("polls.id"), primary_key=True),
        sa.Column("item_id", big_id(), sa.ForeignKey("items.id"), primary_key=True),
        sa.Column("source_id", sa.String(64), nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("heat", sa.Float),
        sa.Column("heat_raw", sa.Text),
        sa.Column("label", sa.Text),
        sa.Column("collected_at", ts(), nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_observations_item", "observations", ["item_id"])
    op.create_table(
        "story_scores",
        sa.Column("story_id", big_id(), sa.ForeignKey("stories.id"), primary_key=True),
        sa.Column("scored_at", ts(), primary_key=True),
        sa.Column("heat", sa.Float, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sqlite_with_rowid=False,
    )
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        sources_list = (
            "(SELECT string_agg(DISTINCT src2.display_name, ', ' ORDER BY src2.display_name) "
            "FROM items i2 JOIN sources src2 ON src2.id = i2.source_id WHERE i2.story_id = s.id)"
        )
    else:
        sources_list = (
            "(SELECT group_concat(name, ', ') FROM (SELECT DISTINCT src2.display_name AS name "
            "FROM items i2 JOIN sources src2 ON src2.id = i2.source_id WHERE i2.story_id = s.id ORDER BY name))"
        )
    op.execute(
        f"""
        CREATE VIEW ranked_items AS
        SELECT ROW_NUMBER() OVER (ORDER BY s.score DESC, s.heat DESC, s.id) AS position,
               s.score AS score,
               s.title AS title,
               i.url AS url,
               src.display_name AS source,
               {sources_list} AS sources,
               s.source_count AS source_count,
               s.id AS story_id,
               i.key AS item_key,
               s.heat AS heat,
               s.first_seen_at AS first_seen_at,
               s.last_seen_at AS last_seen_at,
               i.last_seen_at AS collected_at
        FROM stories s
        JOIN items i ON i.id = s.item_id
        JOIN sources src ON src.id = i.source_id
        WHERE s.score > 0
        """
    )
    op.execute(
        """
        CREATE VIEW latest_lists AS
        SELECT o.source_id AS source_id,
               o.rank AS rank,
               i.title AS title,
               i.url AS url,
               o.heat AS heat,
               o.heat_raw AS heat_raw,
               o.label AS label,
               o.collected_at AS collected_at,
               o.poll_id AS poll_id,
               i.key AS item_key,
               i.story_id AS story_id
        FROM sources src
        JOIN observations o ON o.poll_id = (
            SELECT max(p.id) FROM polls p WHERE p.source_id = src.id AND p.status = 'ok'
        )
        JOIN items i ON i.id = o.item_id
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS latest_lists")
    op.execute("DROP VIEW IF EXISTS ranked_items")
    for table in ("story_scores", "observations", "items", "stories", "polls", "sources", "aggregator_meta"):
        op.drop_table(table)
