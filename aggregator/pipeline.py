"""One poll of one source, end to end: collect, normalize, attach to stories, store.

This is the only orchestrator of a poll; the daemon schedules it and `run --once`
calls it directly. It decides nothing itself beyond wiring: the collectors fetch and
parse, `normalize` builds identities, the story assigner clusters, the store writes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aggregator.collectors import Collector
from aggregator.collectors.fetch import Fetcher
from aggregator.errors import CollectError, StoreError
from aggregator.models import Item, PollResult, SourceState
from aggregator.normalize import normalize_items
from aggregator.settings import Settings, SourceSettings
from aggregator.store import ActiveItem, PollWrite, Store

log = logging.getLogger("aggregator.poll")

Clock = Callable[[], datetime]


@dataclass
class StoryAssigner:
    """Which story each item belongs to: known items keep theirs; a new item starts one.

    `known` holds the items seen within the dedupe window, so the poll path never has
    to read the database to tell a new item from an old one.
    """

    window_s: float
    known: dict[int, int] = field(default_factory=dict)
    seen_at: dict[int, datetime] = field(default_factory=dict)

    def load(self, active: Sequence[ActiveItem]) -> None:
        for a in active:
            self.known[a.item_id] = a.story_id
            self.seen_at[a.item_id] = a.last_seen_at

    def assign(self, items: Sequence[Item], now: datetime) -> tuple[list[int], list[bool]]:
        story_ids, unknown = [], []
        for it in items:
            story = self.known.get(it.item_id)
            unknown.append(story is None)
            story_ids.append(it.item_id if story is None else story)
        return story_ids, unknown

    def commit(self, items: Sequence[Item], story_ids: Sequence[int], now: datetime) -> None:
        for it, sid in zip(items, story_ids, strict=True):
            self.known[it.item_id] = sid
            self.seen_at[it.item_id] = now

    def expire(self, now: datetime) -> int:
        cutoff = now - timedelta(seconds=self.window_s)
        old = [iid for iid, at in self.seen_at.items() if at < cutoff]
        for iid in old:
            del self.seen_at[iid]
            self.known.pop(iid, None)
        return len(old)


@dataclass
class PollContext:
    settings: Settings
    store: Store
    fetcher: Fetcher
    collectors: Mapping[str, Collector]
    clock: Clock
    stories: StoryAssigner
    states: dict[str, SourceState] = field(default_factory=dict)
    instance: str = ""
    writes: set[asyncio.Task[tuple[int, int]]] = field(default_factory=set)


async def _write(ctx: PollContext, w: PollWrite) -> tuple[int, int]:
    # The write is shielded: a shutdown that cancels the poll waits for it to commit or
    # roll back instead of leaving a transaction half-way through the driver.
    task = asyncio.ensure_future(ctx.store.record_poll(w))
    ctx.writes.add(task)
    task.add_done_callback(ctx.writes.discard)
    return await asyncio.shield(task)


async def _write_error(ctx: PollContext, w: PollWrite) -> int | None:
    try:
        poll_id, _ = await _write(ctx, w)
        return poll_id
    except StoreError as exc:
        log.warning("poll %s: the failed poll could not be recorded either: %s", w.source_id, exc)
        return None


def _error_result(
    source: SourceSettings,
    started: datetime,
    finished: datetime,
    kind: str,
    message: str,
    http_status: int | None,
    retry_after_s: float | None = None,
    poll_id: int | None = None,
) -> PollResult:
    return PollResult(
        source.id, poll_id, "error", started, finished, http_status, 0, 0, 0, kind, message, retry_after_s
    )


async def poll_source(
    ctx: PollContext, source: SourceSettings, *, next_attempt_at: datetime | None = None
) -> PollResult:
    """Poll one source once and record the outcome; never raises for the source's faults."""
    state = ctx.states.setdefault(source.id, SourceState())
    collect = ctx.collectors[source.kind]
    started = ctx.clock()
    try:
        collected = await collect(ctx.fetcher, source, state)
    except CollectError as exc:
        finished = ctx.clock()
        message = str(exc)
        w = PollWrite(
            source.id,
            started,
            finished,
            "error",
            exc.http_status,
            (),
            (),
            (),
            0,
            exc.kind,
            message,
            next_attempt_at=next_attempt_at,
            instance=ctx.instance,
        )
        poll_id = await _write_error(ctx, w)
        log.warning("poll %s failed: %s: %s", source.id, exc.kind, message)
        return _error_result(source, started, finished, exc.kind, message, exc.http_status, exc.retry_after_s, poll_id)
    except Exception as exc:  # a bug in one collector must not stop the others
        finished = ctx.clock()
        log.exception("poll %s: collector bug", source.id)
        message = f"internal error: {type(exc).__name__}: {exc}"
        w = PollWrite(
            source.id,
            started,
            finished,
            "error",
            None,
            (),
            (),
            (),
            0,
            "internal",
            message[:500],
            next_attempt_at=next_attempt_at,
            instance=ctx.instance,
        )
        poll_id = await _write_error(ctx, w)
        return _error_result(source, started, finished, "internal", message, None, None, poll_id)

    finished = ctx.clock()
    if collected.not_modified:
        w = PollWrite(
            source.id,
            started,
            finished,
            "not_modified",
            collected.http_status,
            (),
            (),
            (),
            0,
            etag=collected.etag,
            last_modified=collected.last_modified,
            cookies=_cookies(state, collected.cookies),
            next_attempt_at=next_attempt_at,
            instance=ctx.instance,
        )
        poll_id = await _write_error(ctx, w)
        log.info("poll %s not modified (%.2fs)", source.id, (finished - started).total_seconds())
        return PollResult(source.id, poll_id, "not_modified", started, finished, collected.http_status, 0, 0, 0)

    items, dropped = normalize_items(source.id, collected.items)
    dropped += collected.dropped_count
    if collected.items and not items:
        message = f"none of the {len(collected.items)} entries has a usable title"
        w = PollWrite(
            source.id,
            started,
            finished,
            "error",
            collected.http_status,
            (),
            (),
            (),
            dropped,
            "schema",
            message,
            next_attempt_at=next_attempt_at,
            instance=ctx.instance,
        )
        poll_id = await _write_error(ctx, w)
        log.warning("poll %s failed: schema: %s", source.id, message)
        return _error_result(source, started, finished, "schema", message, collected.http_status, None, poll_id)

    story_ids, unknown = ctx.stories.assign(items, finished)
    w = PollWrite(
        source.id,
        started,
        finished,
        "ok",
        collected.http_status,
        items,
        story_ids,
        unknown,
        dropped,
        etag=collected.etag,
        last_modified=collected.last_modified,
        cookies=_cookies(state, collected.cookies),
        next_attempt_at=next_attempt_at,
        instance=ctx.instance,
    )
    try:
        poll_id, new_count = await _write(ctx, w)
    except StoreError as exc:
        log.warning("poll %s: %s", source.id, exc)
        return _error_result(source, started, finished, "store", str(exc), collected.http_status)
    ctx.stories.commit(items, story_ids, finished)
    state.etag, state.last_modified = collected.etag, collected.last_modified
    if collected.cookies:
        state.cookies.update(collected.cookies)
    log.info(
        "poll %s ok: %d items (%d new, %d dropped) in %.2fs",
        source.id,
        len(items),
        new_count,
        dropped,
        (finished - started).total_seconds(),
    )
    return PollResult(
        source.id, poll_id, "ok", started, finished, collected.http_status, len(items), new_count, dropped
    )


def _cookies(state: SourceState, fresh: dict[str, str] | None) -> dict[str, str] | None:
    """The cookie jar to persist when the platform set new cookies, else None (unchanged)."""
    if not fresh:
        return None
    merged = {**state.cookies, **fresh}
    return merged if merged != state.cookies else None
