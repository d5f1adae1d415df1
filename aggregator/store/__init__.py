"""The store: the only code that reads and writes the database.

One transaction per poll: the poll row, the stories new items start, the items
(upserted by key) and their observations, and the source's state. SQLite writers begin
with BEGIN IMMEDIATE. Database errors leave as StoreError at this boundary.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from aggregator.errors import StoreError
from aggregator.models import Item, PollResult, SourceState
from aggregator.score import ListEntry, StoryHeat, listed_heats, score_all, unlisted_heat
from aggregator.settings import ScoreSettings, SourceSettings, display_name
from aggregator.store import engine as engine_mod
from aggregator.store.schema import items, observations, polls, sources, stories, story_scores

# A source whose last good list is older than this no longer counts as "on the list":
# a source failing for a day should not keep its stale list at the top.
STALE_LIST_S = 24 * 3600.0
# Scores under this (rounded to one decimal it is 0.0) and off every list leave ranked_items.
SCORE_FLOOR = 0.05


@dataclass(frozen=True, slots=True)
class NewStory:
    story_id: int
    item_id: int
    title: str


@dataclass(frozen=True, slots=True)
class PollWrite:
    """Everything one poll writes, decided by the pipeline before the transaction."""

    source_id: str
    started_at: datetime
    finished_at: datetime
    status: str
    http_status: int | None
    items: Sequence[Item]
    story_ids: Sequence[int]  # story of each item (its own id when it starts one)
    unknown: Sequence[bool]  # items the pipeline has not seen before (may be new to the store)
    dropped_count: int
    error_kind: str | None = None
    error: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    cookies: dict[str, str] | None = None
    next_attempt_at: datetime | None = None
    instance: str | None = None


@dataclass(frozen=True, slots=True)
class ActiveItem:
    item_id: int
    key: str
    story_id: int
    source_id: str
    title: str
    canonical_url: str | None
    last_seen_at: datetime


def _store_error(exc: BaseException, doing: str) -> StoreError:
    orig = getattr(exc, "orig", None)
    return StoreError(f"{doing}: {str(orig or exc).splitlines()[0]}")


class Store:
    """Async access to one database (SQLite file or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        # Writers on SQLite take the lock at BEGIN (see engine._on_begin).
        self._writer = engine.execution_options(sqlite_begin="IMMEDIATE") if self.is_sqlite else engine

    @classmethod
    async def open(
        cls, url: str, *, busy_timeout_s: float = 10.0, pool_size: int = 5, max_overflow: int = 5, upgrade: bool = True
    ) -> Store:
        engine = engine_mod.make_engine(
            url, busy_timeout_s=busy_timeout_s, pool_size=pool_size, max_overflow=max_overflow
        )
        try:
            if upgrade:
                await engine_mod.upgrade(engine)
            else:
                await engine_mod.check_version(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    # -- sources -------------------------------------------------------------------------

    async def sync_sources(self, configured: Sequence[SourceSettings], now: datetime) -> None:
        """Make the sources table match the settings (rows are never deleted: polls refer to them)."""
        try:
            async with self._writer.begin() as conn:
                existing = {r[0] for r in await conn.execute(sa.select(sources.c.id))}
                for s in configured:
                    values = dict(
                        name=s.name,
                        display_name=display_name(s),
                        kind=s.kind,
                        enabled=s.enabled,
                        interval_s=s.interval_s,
                        weight=s.weight,
                        url=s.url,
                        category=s.category,
                        updated_at=now,
                    )
                    if s.id in existing:
                        await conn.execute(sources.update().where(sources.c.id == s.id).values(**values))
                    else:
                        await conn.execute(sources.insert().values(id=s.id, consecutive_failures=0, **values))
                configured_ids = [s.id for s in configured]
                await conn.execute(
                    sources.update().where(sources.c.id.not_in(configured_ids)).values(enabled=False, updated_at=now)
                )
        except (OperationalError, DBAPIError) as exc:
            raise _store_error(exc, "cannot record the configured sources") from exc

    async def source_states(self) -> dict[str, tuple[SourceState, datetime | None, int]]:
        """Per source: (conditional-GET and cookie state, last poll time, consecutive failures)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(
                    sources.c.id,
                    sources.c.etag,
                    sources.c.last_modified,
                    sources.c.cookies,
                    sources.c.last_poll_at,
                    sources.c.consecutive_failures,
                )
            )
            out = {}
            for r in rows:
                cookies = json.loads(r.cookies) if r.cookies else {}
                out[r.id] = (SourceState(r.etag, r.last_modified, cookies), r.last_poll_at, r.consecutive_failures)
            return out

    # -- polls ---------------------------------------------------------------------------

    async def record_poll(self, w: PollWrite) -> tuple[int, int]:
        """Write one poll in one transaction; returns (poll id, count of items new to the store)."""
        try:
            async with self._writer.begin() as conn:
                return await self._record(conn, w)
        except IntegrityError:
            raise  # a bug: the pipeline gave inconsistent rows
        except (OperationalError, DBAPIError, OSError) as exc:
            raise _store_error(exc, f"cannot record poll of {w.source_id}") from exc

    async def _record(self, conn: AsyncConnection, w: PollWrite) -> tuple[int, int]:
        duration_ms = int((w.finished_at - w.started_at).total_seconds() * 1000)
        rows = list(zip(w.story_ids, w.items, w.unknown, strict=True))
        new_stories = [(sid, it) for sid, it, unknown in rows if unknown and sid == it.item_id]
        joined = {sid for sid, it, unknown in rows if unknown and sid != it.item_id}
        at = w.finished_at
        existing: set[int] = set()
        unknown_ids = [it.item_id for _sid, it, unknown in rows if unknown]
        if unknown_ids:
            # The pipeline's memory covers the dedupe window; an item older than that
            # may still be in the store, and must not start a second story.
            existing = set((await conn.execute(sa.select(items.c.id).where(items.c.id.in_(unknown_ids)))).scalars())
        new_count = len(unknown_ids) - len(existing)
        poll_id: int = (
            await conn.execute(
                polls.insert().returning(polls.c.id),
                dict(
                    source_id=w.source_id,
                    started_at=w.started_at,
                    finished_at=w.finished_at,
                    duration_ms=duration_ms,
                    status=w.status,
                    http_status=w.http_status,
                    item_count=len(w.items),
                    new_count=new_count,
                    dropped_count=w.dropped_count,
                    error_kind=w.error_kind,
                    error=w.error,
                    instance=w.instance,
                ),
            )
        ).scalar_one()
        if w.items:
            if new_stories:
                fresh = [
                    dict(id=sid, title=it.title, item_id=it.item_id, first_seen_at=at, last_seen_at=at, source_count=1)
                    for sid, it in new_stories
                    if it.item_id not in existing
                ]
                if fresh:
                    await conn.execute(stories.insert(), fresh)
            ins = _upsert(conn, items)
            stmt = ins.on_conflict_do_update(
                index_elements=[items.c.key],
                set_=dict(
                    title=ins.excluded.title,
                    url=ins.excluded.url,
                    canonical_url=ins.excluded.canonical_url,
                    last_seen_at=ins.excluded.last_seen_at,
                    last_rank=ins.excluded.last_rank,
                    summary=sa.func.coalesce(ins.excluded.summary, items.c.summary),
                    best_rank=sa.case(
                        (ins.excluded.best_rank < items.c.best_rank, ins.excluded.best_rank), else_=items.c.best_rank
                    ),
                ),
            )
            await conn.execute(
                stmt,
                [
                    dict(
                        id=it.item_id,
                        key=it.key,
                        source_id=w.source_id,
                        native_id=it.native_id,
                        title=it.title,
                        url=it.url,
                        canonical_url=it.canonical_url,
                        summary=it.summary,
                        published_at=it.published_at,
                        story_id=sid,
                        first_seen_at=at,
                        last_seen_at=at,
                        best_rank=it.rank,
                        last_rank=it.rank,
                    )
                    for sid, it in zip(w.story_ids, w.items, strict=True)
                ],
            )
            await conn.execute(
                observations.insert(),
                [
                    dict(
                        poll_id=poll_id,
                        item_id=it.item_id,
                        source_id=w.source_id,
                        rank=it.rank,
                        heat=it.heat,
                        heat_raw=it.heat_raw,
                        label=it.label,
                        collected_at=at,
                    )
                    for it in w.items
                ],
            )
            if joined:
                # Items joined existing stories: keep source_count true in the same transaction.
                i2 = items.alias("i2")
                count = (
                    sa.select(sa.func.count(sa.distinct(i2.c.source_id)))
                    .where(i2.c.story_id == stories.c.id)
                    .scalar_subquery()
                )
                await conn.execute(
                    stories.update().where(stories.c.id.in_(joined)).values(source_count=count, last_seen_at=at)
                )
        await conn.execute(
            sources.update().where(sources.c.id == w.source_id).values(**self._source_values(w, poll_id))
        )
        return poll_id, new_count

    @staticmethod
    def _source_values(w: PollWrite, poll_id: int) -> dict[str, Any]:
        values: dict[str, Any] = dict(
            last_poll_at=w.finished_at, next_attempt_at=w.next_attempt_at, updated_at=w.finished_at
        )
        if w.status == "error":
            values.update(
                last_error_at=w.finished_at,
                last_error_kind=w.error_kind,
                last_error=w.error,
                consecutive_failures=sources.c.consecutive_failures + 1,
            )
        else:
            values.update(last_success_at=w.finished_at, consecutive_failures=0)
            if w.status == "ok":
                values["last_ok_poll_id"] = poll_id
            if w.etag is not None or w.last_modified is not None or w.status == "ok":
                values.update(etag=w.etag, last_modified=w.last_modified)
        if w.cookies is not None:
            values["cookies"] = json.dumps(w.cookies, ensure_ascii=False, sort_keys=True)
        return values

    # -- stories for the clustering index --------------------------------------------------

    async def active_items(self, since: datetime) -> list[ActiveItem]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(
                    items.c.id,
                    items.c.key,
                    items.c.story_id,
                    items.c.source_id,
                    items.c.title,
                    items.c.canonical_url,
                    items.c.last_seen_at,
                )
                .where(items.c.last_seen_at >= since)
                .order_by(items.c.last_seen_at)
            )
            return [ActiveItem(*r) for r in rows]

    # -- scoring -------------------------------------------------------------------------

    async def current_entries(self, now: datetime) -> list[ListEntry]:
        """Observations of each enabled source's latest good list (what is on the lists now)."""
        fresh = now - timedelta(seconds=STALE_LIST_S)
        q = (
            sa.select(
                observations.c.source_id,
                observations.c.rank,
                observations.c.heat,
                items.c.story_id,
                observations.c.poll_id,
                observations.c.collected_at,
                sources.c.weight,
            )
            .select_from(
                observations.join(items, items.c.id == observations.c.item_id).join(
                    sources, sources.c.last_ok_poll_id == observations.c.poll_id
                )
            )
            .where(sources.c.enabled.is_(True), observations.c.collected_at >= fresh)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        length: dict[int, int] = {}
        top_heat: dict[int, float] = {}
        for r in rows:
            length[r.poll_id] = max(length.get(r.poll_id, 0), r.rank)
            if r.heat is not None:
                top_heat[r.poll_id] = max(top_heat.get(r.poll_id, 0.0), r.heat)
        return [
            ListEntry(
                r.story_id,
                r.source_id,
                r.rank,
                length[r.poll_id],
                r.heat,
                top_heat.get(r.poll_id),
                r.weight,
                r.collected_at,
            )
            for r in rows
        ]

    async def story_heats(self, now: datetime, settings: ScoreSettings) -> dict[int, StoryHeat]:
        """Heat of every active story now: listed ones from the lists, the others decayed."""
        entries = await self.current_entries(now)
        since = now - timedelta(seconds=settings.active_window)
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(stories.c.id, stories.c.first_seen_at, stories.c.last_seen_at, stories.c.base_heat).where(
                        sa.or_(stories.c.last_seen_at >= since, stories.c.score > 0)
                    )
                )
            ).all()
        first_seen = {r.id: r.first_seen_at for r in rows}
        listed = {e.story_id for e in entries}
        missing = listed - first_seen.keys()
        if missing:
            async with self.engine.connect() as conn:
                extra = await conn.execute(
                    sa.select(stories.c.id, stories.c.first_seen_at).where(stories.c.id.in_(missing))
                )
                first_seen.update({r.id: r.first_seen_at for r in extra})
        heats = listed_heats(entries, first_seen, now, settings)
        for r in rows:
            if r.id not in heats:
                heats[r.id] = unlisted_heat(r.id, r.base_heat, r.last_seen_at, now, settings)
        return heats

    async def rescore(self, now: datetime, settings: ScoreSettings, *, record_history: bool = True) -> int:
        """Recompute heat and 热度 of every active story; returns how many were scored."""
        heats = await self.story_heats(now, settings)
        scored = score_all(heats)
        rows = []
        history = []
        for sid, h in heats.items():
            score = scored.scores[sid]
            if not h.on_list and score < SCORE_FLOOR:
                score = 0.0
            row = dict(
                b_id=sid,
                b_heat=h.heat,
                b_score=score,
                b_at=now,
                b_base=h.heat if h.on_list else h.base_heat,
                b_last=h.last_seen_at or now,
            )
            rows.append(row)
            if record_history and score > 0:
                history.append(dict(story_id=sid, scored_at=now, heat=h.heat, score=score))
        if not rows:
            return 0
        stmt = (
            stories.update()
            .where(stories.c.id == sa.bindparam("b_id"))
            .values(
                heat=sa.bindparam("b_heat"),
                score=sa.bindparam("b_score"),
                scored_at=sa.bindparam("b_at"),
                base_heat=sa.bindparam("b_base"),
                last_seen_at=sa.bindparam("b_last"),
                peak_score=sa.case(
                    (stories.c.peak_score < sa.bindparam("b_score"), sa.bindparam("b_score")),
                    else_=stories.c.peak_score,
                ),
            )
        )
        try:
            async with self._writer.begin() as conn:
                await conn.execute(stmt, rows)
                if history:
                    ins = _upsert(conn, story_scores)
                    await conn.execute(ins.on_conflict_do_nothing(), history)
        except (OperationalError, DBAPIError) as exc:
            raise _store_error(exc, "cannot store scores") from exc
        return len(rows)

    # -- reading -------------------------------------------------------------------------

    async def top(self, limit: int, source_id: str | None = None) -> list[dict[str, Any]]:
        where = ""
        params: dict[str, Any] = {"limit": limit}
        if source_id:
            where = "WHERE story_id IN (SELECT story_id FROM items WHERE source_id = :source_id)"
            params["source_id"] = source_id
        q = sa.text(f"SELECT * FROM ranked_items {where} ORDER BY position LIMIT :limit")  # noqa: S608
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(q, params)]

    async def sources_status(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(sources).order_by(sources.c.enabled.desc(), sources.c.id))
            return [dict(r._mapping) for r in rows]

    async def poll_count(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(polls))).scalar_one())


def _upsert(conn: AsyncConnection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


__all__ = ["ActiveItem", "NewStory", "PollResult", "PollWrite", "Store"]
