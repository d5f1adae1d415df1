"""One poll of one source, end to end: collect, normalize, attach to stories, store.

This is the only orchestrator of a poll; the daemon schedules it and `run --once`
calls it directly. The collectors fetch and parse, `normalize` builds identities, the
story assigner clusters, `backoff` times the retry, the store writes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from heapq import nsmallest
from pathlib import Path

from aggregator.backoff import retry_delay_s
from aggregator.collectors import Collector
from aggregator.collectors.fetch import Fetcher
from aggregator.dedupe import DEFAULT_THRESHOLD, StoryIndex
from aggregator.errors import CollectError, StoreError
from aggregator.export import ExportDoc, write_export
from aggregator.models import Collected, Item, PollResult, SourceState
from aggregator.normalize import IdentityMemo, normalize_items, normalize_title
from aggregator.settings import Settings, SourceSettings
from aggregator.slotmap import SlotMap, put_row
from aggregator.store import ActiveItem, PollWrite, PollWritten, SourceUpdate, Store

log = logging.getLogger("aggregator.poll")

# The daemon abandons a poll at `interval × daemon.poll_deadline_fraction` (at least 1 s).
# The collect step ends this much earlier (a tenth of the deadline, at least a second or
# half of it), so a slow source ends as a recorded timeout that backs off, with time left
# to write it, instead of vanishing unrecorded.
COLLECT_MARGIN_SHARE = 0.1
COLLECT_MARGIN_MIN_S = 1.0

Clock = Callable[[], datetime]
# With a cap on the story index, `known` keeps at most this many items per story of the cap.
KNOWN_PER_STORY = 4


def _signature(title: str, url: str | None, summary: str | None) -> int:
    return hash((title, url, summary))


class KnownItems:
    """The items seen within the dedupe window: item id → its story, a signature of what the
    store has, and when it was last seen.

    In arrays, as the story index (`aggregator.slotmap`): about 40 bytes an item where a dict
    entry, its tuple and int objects took 150. With a cap (0: none), remembering one item past
    it forgets those seen least recently (1/64 of the cap at once, at least one, so that one
    scan pays for many): if one comes back, that poll writes it again.
    """

    def __init__(self, cap: int = 0) -> None:
        self.cap = cap
        self._count = 0
        self._by_id = SlotMap(8)
        self._ids = array("q")
        self._stories = array("q")
        self._signatures = array("q")
        self._seen = array("d")  # POSIX seconds; NaN for a free slot
        self._free: list[int] = []

    def __len__(self) -> int:
        return self._count

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, int) and self._slot(item_id) >= 0

    def _slot(self, item_id: int) -> int:
        return self._by_id.find(item_id, self._ids)

    def get(self, item_id: int) -> tuple[int, int] | None:
        """(story id, signature) of a known item, or None."""
        slot = self._slot(item_id)
        return None if slot < 0 else (self._stories[slot], self._signatures[slot])

    def remember(self, item_id: int, story_id: int, signature: int, seen_at: datetime) -> bool:
        """Record the item's story and signature as seen at `seen_at`; whether it was known."""
        seen = seen_at.timestamp()
        slot = self._slot(item_id)
        if slot >= 0:
            self._stories[slot] = story_id
            self._signatures[slot] = signature
            self._seen[slot] = max(self._seen[slot], seen)
            return True
        columns = (self._ids, self._stories, self._signatures, self._seen)
        slot = put_row(columns, (item_id, story_id, signature, seen), self._free)
        self._by_id.add(item_id, slot)
        self._count += 1
        if self.cap and self._count > self.cap:
            seen_at_of = self._seen.__getitem__
            live = [s for s in range(len(self._ids)) if s != slot and seen_at_of(s) == seen_at_of(s)]  # not NaN
            for old in nsmallest(max(1, self.cap >> 6), live, key=seen_at_of):
                self._drop(old)
        return False

    def forget(self, item_id: int) -> None:
        slot = self._slot(item_id)
        if slot >= 0:
            self._drop(slot)

    def expire(self, cutoff: datetime) -> int:
        """Forget the items last seen before `cutoff`; returns how many."""
        before = cutoff.timestamp()
        old = [slot for slot, seen in enumerate(self._seen) if seen < before]
        for slot in old:
            self._drop(slot)
        return len(old)

    def _drop(self, slot: int) -> None:
        self._by_id.remove(self._ids[slot], slot)
        self._seen[slot] = math.nan
        self._free.append(slot)
        self._count -= 1


@dataclass
class StoryAssigner:
    """Which story each item belongs to: known items keep theirs, new ones are clustered.

    `known` holds the items seen within the dedupe window (`KnownItems`), so a poll of a list
    it knows writes no item rows.
    A new item joins the active story whose URL or title it matches (`dedupe`), else it
    starts one with its own id.
    """

    window_s: float
    threshold: float = DEFAULT_THRESHOLD
    max_stories: int = 0  # the index's cap (0: none); `known` keeps at most KNOWN_PER_STORY times it
    known: KnownItems = field(init=False)
    index: StoryIndex = field(init=False)
    _warned_full: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.index = StoryIndex(self.threshold, self.window_s, self.max_stories)
        self.known = KnownItems(KNOWN_PER_STORY * self.max_stories)

    def _remember(self, item_id: int, story_id: int, signature: int, seen_at: datetime) -> None:
        self.known.remember(item_id, story_id, signature, seen_at)
        self._warn_if_full()

    def _warn_if_full(self) -> None:
        if self.index.evicted and not self._warned_full:
            self._warned_full = True
            log.warning(
                "the story index is full (dedupe.max_stories = %d): the stories seen least recently are "
                "dropped before dedupe.window ends, so a new item can no longer join them; raise "
                "dedupe.max_stories (about 500 bytes of memory a story) or shorten dedupe.window",
                self.max_stories,
            )

    def load(self, active: Sequence[ActiveItem]) -> None:
        for a in active:
            self.index.add_item(a.story_id, normalize_title(a.title), a.canonical_url, a.source_id, a.last_seen_at)
            self._remember(a.item_id, a.story_id, _signature(a.title, a.url, a.summary), a.last_seen_at)

    def assign(self, items: Sequence[Item], now: datetime) -> tuple[list[int], list[bool]]:
        """(proposed story per item, whether the item must be written)."""
        story_ids, write = [], []
        for it in items:
            entry = self.known.get(it.item_id)
            if entry is None:
                match = self.index.match(it.norm_title, it.canonical_url, it.source_id, now)
                story_ids.append(it.item_id if match is None else match)
                write.append(True)
            else:
                story_ids.append(entry[0])
                write.append(entry[1] != _signature(it.title, it.url, it.summary))
        return story_ids, write

    def commit(
        self,
        items: Sequence[Item],
        story_ids: Sequence[int],
        upserted: Sequence[bool],
        stories: Mapping[int, int],
        now: datetime,
    ) -> None:
        """Record a poll's items under their stories: `stories` holds what the store says an
        upserted item belongs to (empty before the write: the proposals stand)."""
        for it, proposed, wrote in zip(items, story_ids, upserted, strict=True):
            story = stories.get(it.item_id, proposed)
            # One lookup of the item: remembering it says whether it was known already.
            known = self.known.remember(it.item_id, story, _signature(it.title, it.url, it.summary), now)
            if wrote or not known:
                self.index.add_item(story, it.norm_title, it.canonical_url, it.source_id, now)
            else:
                self.index.touch(story, now)
        self._warn_if_full()

    def correct(
        self, items: Sequence[Item], story_ids: Sequence[int], stories: Mapping[int, int], now: datetime
    ) -> None:
        """After a write that was committed ahead of its result: where the store kept an item
        in another story than proposed (it had the item already), follow the store."""
        for it, proposed in zip(items, story_ids, strict=True):
            real = stories.get(it.item_id, proposed)
            if real != proposed:
                self.index.add_item(real, it.norm_title, it.canonical_url, it.source_id, now)
                self._remember(it.item_id, real, _signature(it.title, it.url, it.summary), now)

    def forget(self, items: Sequence[Item], upserted: Sequence[bool]) -> None:
        """A write committed ahead of its result failed: the items it was to write are
        unknown again, so the next poll writes them (the index keeps their titles)."""
        for it, wrote in zip(items, upserted, strict=True):
            if wrote:
                self.known.forget(it.item_id)

    def expire(self, now: datetime) -> int:
        forgotten = self.known.expire(now - timedelta(seconds=self.window_s))
        self.index.expire(now)
        return forgotten


@dataclass
class PollContext:
    settings: Settings
    store: Store
    fetcher: Fetcher
    collectors: Mapping[str, Collector]
    clock: Clock
    stories: StoryAssigner
    states: dict[str, SourceState] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    identities: dict[str, IdentityMemo] = field(default_factory=dict)  # per source, its last poll's
    instance: str = ""
    writes: set[asyncio.Task[PollWritten]] = field(default_factory=set)
    # Clustering and writing one poll is one step: a poll must see the stories that the
    # poll before it started, so the next assign waits for the previous write.
    assign_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _start_write(ctx: PollContext, w: PollWrite) -> asyncio.Task[PollWritten]:
    task = asyncio.ensure_future(ctx.store.record_poll(w))
    ctx.writes.add(task)
    task.add_done_callback(ctx.writes.discard)
    return task


async def _write(ctx: PollContext, w: PollWrite) -> PollWritten:
    # The write is shielded: a shutdown that cancels the poll waits for it to commit or
    # roll back instead of leaving a transaction half-way through the driver.
    return await asyncio.shield(_start_write(ctx, w))


def _settle(
    stories: StoryAssigner,
    items: Sequence[Item],
    story_ids: Sequence[int],
    write: Sequence[bool],
    now: datetime,
    task: asyncio.Task[PollWritten],
) -> None:
    if task.cancelled() or task.exception() is not None:
        stories.forget(items, write)
    else:
        stories.correct(items, story_ids, task.result().stories, now)


def _state_update(
    ctx: PollContext, source: SourceSettings, state: SourceState, collected: Collected, recovered: bool
) -> SourceUpdate | None:
    conditional = (collected.etag, collected.last_modified)
    changed = conditional != (state.etag, state.last_modified)
    cookies = {**state.cookies, **collected.cookies} if collected.cookies else None
    if cookies == state.cookies:
        cookies = None
    # What a poll of an address the source has left learnt is not the source's state (asked
    # only when there is something to write: a look through the sources, not one per poll).
    if not (changed or cookies or recovered) or left(ctx, source):
        return None
    return SourceUpdate(
        consecutive_failures=0 if recovered else None, conditional=conditional if changed else None, cookies=cookies
    )


async def _fail(
    ctx: PollContext,
    source: SourceSettings,
    started: datetime,
    kind: str,
    message: str,
    http_status: int | None,
    retry_after_s: float | None,
    dropped: int = 0,
) -> PollResult:
    finished = ctx.clock()
    failures = ctx.failures.get(source.id, 0) + 1
    delay = retry_delay_s(source.interval_s, failures, retry_after_s)
    next_at: datetime | None = finished + timedelta(seconds=delay)
    update: SourceUpdate | None = SourceUpdate(
        consecutive_failures=failures, error_kind=kind, error=message, failed_at=finished, next_attempt_at=next_at
    )
    if left(ctx, source):
        # An address the source has left failed: the poll row says so, but the source (at
        # its new URL, or added back later) owes it no failure count and no backoff.
        update, next_at, failures = None, None, ctx.failures.get(source.id, 0)
    w = PollWrite(
        source.id,
        started,
        finished,
        "error",
        http_status,
        dropped_count=dropped,
        error_kind=kind,
        error=message,
        source_update=update,
        instance=ctx.instance,
    )
    poll_id = None
    try:
        poll_id = (await _write(ctx, w)).poll_id
    except StoreError as exc:
        log.warning("poll %s: the failed poll could not be recorded either: %s", source.id, exc)
    ctx.failures[source.id] = failures
    if next_at is None:
        log.warning(
            "poll %s failed at a URL the settings no longer have (not counted): %s: %s", source.id, kind, message
        )
    else:
        log.warning(
            "poll %s failed (%d in a row, next try %s): %s: %s",
            source.id,
            failures,
            next_at.strftime("%H:%M:%SZ"),
            kind,
            message,
        )
    return PollResult(
        source.id,
        poll_id,
        "error",
        started,
        finished,
        http_status,
        0,
        0,
        dropped,
        kind,
        message,
        retry_after_s,
        failures,
        next_at,
    )


def left(ctx: PollContext, source: SourceSettings) -> bool:
    """Whether the settings have dropped this poll's source, or given it another URL, since
    the poll began (a reload): what the poll learns is then not the source's state."""
    return not any(s.id == source.id and s.url == source.url for s in ctx.settings.sources)


def poll_deadline_s(source: SourceSettings, settings: Settings) -> float:
    """How long one poll of `source` may take: a fraction of its interval, at least a second."""
    return max(source.interval_s * settings.daemon.poll_deadline_fraction, 1.0)


def collect_deadline_s(source: SourceSettings, settings: Settings) -> float:
    poll_deadline_s_ = poll_deadline_s(source, settings)
    margin_s = max(poll_deadline_s_ * COLLECT_MARGIN_SHARE, min(COLLECT_MARGIN_MIN_S, poll_deadline_s_ / 2))
    return poll_deadline_s_ - margin_s


async def poll_source(ctx: PollContext, source: SourceSettings) -> PollResult:
    """Poll one source once and record the outcome; never raises for the source's faults."""
    state = ctx.states.setdefault(source.id, SourceState())
    collect = ctx.collectors[source.kind]
    started = ctx.clock()
    deadline_s = collect_deadline_s(source, ctx.settings)
    try:
        async with asyncio.timeout(deadline_s):
            collected = await collect(ctx.fetcher, source, state)
    except TimeoutError:
        message = f"no list within the poll's deadline of {deadline_s:g}s"
        return await _fail(ctx, source, started, "timeout", message, None, None)
    except CollectError as exc:
        return await _fail(ctx, source, started, exc.kind, str(exc), exc.http_status, exc.retry_after_s)
    except Exception as exc:  # a bug in one collector must not stop the others
        log.exception("poll %s: collector bug", source.id)
        return await _fail(
            ctx, source, started, "internal", f"internal error: {type(exc).__name__}: {exc}"[:500], None, None
        )

    recovered = ctx.failures.get(source.id, 0) > 0
    items: list[Item] = []
    dropped = collected.dropped_count
    story_ids: list[int] = []
    write: list[bool] = []
    if not collected.not_modified:
        memo = ctx.identities.get(source.id)
        if memo is None:
            memo = ctx.identities[source.id] = IdentityMemo()
        items, bad = normalize_items(source.id, collected.items, memo)
        dropped += bad
        if collected.items and not items:
            return await _fail(
                ctx,
                source,
                started,
                "schema",
                f"none of the {len(collected.items)} entries has a usable title",
                collected.http_status,
                None,
                dropped,
            )
    status = "not_modified" if collected.not_modified else "ok"
    refused: StoreError | None = None
    async with ctx.assign_lock:
        finished = ctx.clock()
        if items:
            story_ids, write = ctx.stories.assign(items, finished)
        w = PollWrite(
            source.id,
            started,
            finished,
            status,
            collected.http_status,
            items,
            story_ids,
            write,
            dropped,
            source_update=_state_update(ctx, source, state, collected, recovered),
            instance=ctx.instance,
        )
        task = _start_write(ctx, w)
        if ctx.store.ordered_writes:
            # The store applies writes in the order they are started: the next poll may
            # cluster against this one's proposals before this write has committed. What
            # the store then says (or a failure) is applied when the write ends, even if
            # this poll is cancelled meanwhile.
            ctx.stories.commit(items, story_ids, write, {}, finished)
            task.add_done_callback(functools.partial(_settle, ctx.stories, items, story_ids, write, finished))
        else:
            try:
                written = await asyncio.shield(task)
            except StoreError as exc:
                refused = exc
            else:
                ctx.stories.commit(items, story_ids, write, written.stories, finished)
    if ctx.store.ordered_writes:
        try:
            written = await asyncio.shield(task)
        except StoreError as exc:
            refused = exc
    if refused is not None:
        # A full disk or a locked database: the source backs off like any failure, and
        # the list it had stays the current one.
        return await _fail(ctx, source, started, "store", str(refused), collected.http_status, None, dropped)
    state.etag, state.last_modified = collected.etag, collected.last_modified
    if collected.cookies:
        state.cookies.update(collected.cookies)
    if recovered:
        log.info("source %s recovered after %d failure(s)", source.id, ctx.failures[source.id])
    ctx.failures[source.id] = 0
    seconds = (finished - started).total_seconds()
    if collected.not_modified:
        log.info("poll %s not modified (%.2fs) [poll %d]", source.id, seconds, written.poll_id)
    else:
        # Logged once committed; the poll id lets a crash test check each of these is in the store.
        log.info(
            "poll %s ok: %d items (%d new, %d dropped) in %.2fs [poll %d]",
            source.id,
            len(items),
            written.new_count,
            dropped,
            seconds,
            written.poll_id,
        )
    return PollResult(
        source.id,
        written.poll_id,
        status,
        started,
        finished,
        collected.http_status,
        len(items),
        written.new_count,
        dropped,
    )


async def export_top(store: Store, settings: Settings, top: int, out_dir: Path, fmt: str) -> list[Path]:
    """Write the current top stories to `out_dir` in `fmt` (seed, json, csv or atom)."""
    rows = await store.export_rows(top)
    docs = [ExportDoc.from_row(i, r) for i, r in enumerate(rows)]
    zone = settings.display.zone
    return await asyncio.to_thread(write_export, docs, out_dir, fmt, zone=zone, zone_label=settings.display.zone_label)
