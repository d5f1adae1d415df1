"""The daemon: one APScheduler job per source plus a rescore job, signals, shutdown.

Jobs run on an AsyncIOScheduler in UTC. Each source job has coalesce=True,
max_instances=1, jitter, and a misfire grace that is a fraction of its interval (the
1 s default silently drops runs when the loop is busy). A restart resumes each source
from its last poll. SIGTERM/SIGINT stop scheduling, let in-flight polls finish within
the grace time or cancel them, wait for their writes, then close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from aggregator.backoff import retry_delay_s
from aggregator.collectors import collectors
from aggregator.collectors.fetch import make_fetcher
from aggregator.errors import ConfigError, StoreError
from aggregator.fulltext import run_fulltext
from aggregator.health import Heartbeat
from aggregator.models import PollResult
from aggregator.pipeline import PollContext, StoryAssigner, export_top, poll_deadline_s, poll_source
from aggregator.settings import Settings, SourceSettings
from aggregator.store import Store
from aggregator.store.engine import sqlite_path
from aggregator.store.lock import DaemonLock
from aggregator.store.maintenance import apply_retention, write_heartbeat
from aggregator.store.migrate import upgrade_if_needed
from aggregator.watchdog import start_watchdog

log = logging.getLogger("aggregator.daemon")

# A claimed source is not due again before this fraction of its interval (and a fleet
# job before this fraction of its period): less than 1 so the instances' jitter does
# not make a poll miss its interval, near 1 so nobody polls twice within one.
LEASE_FRACTION = 0.9
# `run --once` polls this many sources at a time.
ONCE_CONCURRENCY = 8
# The first retention run waits this long after start (at most `retention.every`): a
# daemon that restarts often should not prune on the way up, when polls are due.
RETENTION_FIRST_DELAY_S = 600.0
# A heartbeat write gives up after this long: a store that is down (PostgreSQL gone, a
# SQLite lock held) must not hold up a shutdown; the beat only goes stale.
HEARTBEAT_TIMEOUT_S = 5.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def instance_id(settings: Settings) -> str:
    return settings.daemon.instance_id or f"{socket.gethostname()}:{os.getpid()}"


def select_sources(settings: Settings, ids: Sequence[str] | None) -> list[SourceSettings]:
    if not ids:
        return list(settings.enabled_sources)
    chosen = []
    for source_id in ids:
        try:
            chosen.append(settings.source(source_id))
        except KeyError:
            known = ", ".join(s.id for s in settings.sources) or "none"
            raise ConfigError("--source", f"no source {source_id!r} in the settings (known: {known})") from None
    return chosen


# The interpreter's default 5 ms switch interval: how long a thread waiting for the GIL waits
# before the running one is asked to drop it. SQLite's poll writer thread gives the GIL up
# for every step it takes in C and needs it back about ten times per poll, while the event
# loop runs Python for milliseconds at a time: at 5 ms each poll's write waited far longer
# than it worked, and the writer, not the CPU, set the pace. bench/ingest.py, steady JSON
# lists: 4,800-4,900 observations/s at 5 ms, 5,000-6,700 at 0.2 ms, 6,600-7,500 at 0.1 ms,
# 5,700-6,100 at 0.05 ms (where the loop loses more to switching than the writer gains).
WRITER_SWITCH_INTERVAL_S = 0.0001


async def open_context(settings: Settings, store: Store) -> PollContext:
    now = utc_now()
    if store.ordered_writes:
        sys.setswitchinterval(min(sys.getswitchinterval(), WRITER_SWITCH_INTERVAL_S))
    await store.sync_sources(settings.sources, now)
    assigner = StoryAssigner(settings.dedupe.window, settings.dedupe.threshold, settings.dedupe.max_stories)
    assigner.load(await store.active_items(now - timedelta(seconds=settings.dedupe.window)))
    ctx = PollContext(
        settings=settings,
        store=store,
        fetcher=make_fetcher(settings.http),
        collectors=collectors(),
        clock=utc_now,
        stories=assigner,
        instance=instance_id(settings),
    )
    for source_id, (state, _last, failures) in (await store.source_states()).items():
        ctx.states[source_id] = state
        ctx.failures[source_id] = failures
    return ctx


def fulltext_sources(settings: Settings) -> list[str]:
    return [s.id for s in settings.sources if s.fulltext]


def _lock_for(settings: Settings) -> DaemonLock | None:
    path = sqlite_path(settings.store.effective_url)
    return DaemonLock(path.with_name(path.name + ".lock")) if path is not None else None


async def run_once(settings: Settings, source_ids: Sequence[str] | None = None) -> list[PollResult]:
    chosen = select_sources(settings, source_ids)
    lock = _lock_for(settings)
    if lock is not None:
        lock.acquire()
    try:
        store = await Store.from_settings(settings.store)
        try:
            ctx = await open_context(settings, store)
            try:
                gate = asyncio.Semaphore(ONCE_CONCURRENCY)

                async def one(source: SourceSettings) -> PollResult:
                    async with gate:
                        return await poll_source(ctx, source)

                results = list(await asyncio.gather(*(one(s) for s in chosen)))
                await store.rescore(utc_now(), settings.score)
                return results
            finally:
                await ctx.fetcher.aclose()
        finally:
            await store.close()
    finally:
        if lock is not None:
            lock.release()


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop_event = asyncio.Event()
        self.inflight: set[asyncio.Task[object]] = set()
        self._backed_off: dict[str, bool] = {}
        self._index_refreshed_at = utc_now()
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.ctx: PollContext | None = None

    def _misfire_grace_s(self, interval_s: float) -> int:
        return max(1, int(interval_s * self.settings.daemon.misfire_fraction))

    async def _poll_job(self, source: SourceSettings) -> None:
        assert self.ctx is not None
        task = asyncio.current_task()
        assert task is not None
        self.inflight.add(task)
        try:
            # A poll never outlives its interval: a hung one would block its source forever.
            deadline = poll_deadline_s(source, self.settings)
            if self.settings.daemon.leases and not await self._claim(source):
                return
            try:
                async with asyncio.timeout(deadline):
                    result = await poll_source(self.ctx, source)
            except TimeoutError:
                log.warning("poll %s: did not finish within its deadline of %.0fs; abandoned", source.id, deadline)
                return
            job = self.scheduler.get_job(source.id)
            if job is None:
                return
            if result.status == "error" and result.next_attempt_at is not None:
                job.modify(next_run_time=result.next_attempt_at)
            elif self._backed_off.pop(source.id, False):
                job.modify(next_run_time=utc_now() + timedelta(seconds=source.interval_s))
            if result.status == "error":
                self._backed_off[source.id] = True
        except asyncio.CancelledError:
            if not self.stop_event.is_set():
                raise
            # The shutdown cancelled it on purpose; a write under way still finishes.
            log.info("poll %s cancelled by the shutdown", source.id)
        finally:
            self.inflight.discard(task)

    async def _claim(self, source: SourceSettings) -> bool:
        """Take this interval's poll of `source` for this instance (see Store.claim_source)."""
        assert self.ctx is not None
        now = utc_now()
        # Not due again before most of an interval has passed: the slack absorbs the
        # instances' jitter; a crashed holder's claim lapses within one interval.
        due = now + timedelta(seconds=source.interval_s * LEASE_FRACTION)
        try:
            claimed = await self.ctx.store.claim_source(source.id, self.ctx.instance, now, due)
        except StoreError as exc:
            failures = self.ctx.failures.get(source.id, 0) + 1
            self.ctx.failures[source.id] = failures
            delay = retry_delay_s(source.interval_s, failures)
            log.warning("poll %s: %s; next try in %.0fs", source.id, exc, delay)
            job = self.scheduler.get_job(source.id)
            if job is not None:
                job.modify(next_run_time=utc_now() + timedelta(seconds=delay))
                self._backed_off[source.id] = True
            return False
        if not claimed:
            log.debug("poll %s skipped: another instance polled it this interval", source.id)
        return claimed

    async def _fleet_job(self, name: str, every_s: float) -> bool:
        """Whether this instance runs the fleet-wide job `name` this period."""
        assert self.ctx is not None
        if not self.settings.daemon.leases:
            return True
        now = utc_now()
        try:
            return await self.ctx.store.claim_job(
                name, self.ctx.instance, now, now + timedelta(seconds=every_s * LEASE_FRACTION)
            )
        except StoreError as exc:
            log.warning("%s: %s", name, exc)
            return False

    async def _rescore_job(self) -> None:
        assert self.ctx is not None
        now = utc_now()
        try:
            # Items other instances started since the last run join this one's story index.
            fresh = await self.ctx.store.items_since(self._index_refreshed_at)
            self._index_refreshed_at = now - timedelta(seconds=self.settings.daemon.rescore_every)
            self.ctx.stories.load([a for a in fresh if a.item_id not in self.ctx.stories.known])
            self.ctx.stories.expire(now)
            if await self._fleet_job("rescore", self.settings.daemon.rescore_every):
                count = await self.ctx.store.rescore(now, self.settings.score)
                log.debug("rescored %d stories", count)
        except StoreError as exc:
            log.warning("rescore: %s", exc)
        except Exception:
            log.exception("rescore failed")

    async def _fulltext_job(self) -> None:
        assert self.ctx is not None
        if not await self._fleet_job("fulltext", self.settings.fulltext.every):
            return
        try:
            await run_fulltext(
                self.ctx.store, self.ctx.fetcher, self.settings.fulltext, utc_now(), fulltext_sources(self.settings)
            )
        except Exception:
            log.exception("full-text job failed")

    async def _export_job(self) -> None:
        assert self.ctx is not None
        if not await self._fleet_job("export", self.settings.export.every):
            return
        out = Path(self.settings.export.dir)
        try:
            written = await export_top(
                self.ctx.store, self.settings, self.settings.export.top, out, self.settings.export.format
            )
            log.info("exported %d file(s) to %s", len(written), out)
        except (OSError, ValueError, StoreError) as exc:
            log.warning("export to %s failed: %s", out, exc)

    async def _heartbeat(self, source_ids: Sequence[str], running: bool) -> None:
        assert self.ctx is not None
        failing = sum(1 for sid in source_ids if self.ctx.failures.get(sid, 0) > 0)
        beat = Heartbeat(utc_now(), self.ctx.instance, os.getpid(), running, len(source_ids), failing)
        try:
            # A beat of the job that reaches the store after a stop began must not
            # overwrite the final "stopped" beat.
            async with asyncio.timeout(HEARTBEAT_TIMEOUT_S):
                await write_heartbeat(self.ctx.store, beat, skip_if=self.stop_event.is_set if running else None)
        except TimeoutError:
            log.warning("heartbeat: the store did not take it within %.0fs", HEARTBEAT_TIMEOUT_S)
        except StoreError as exc:
            log.warning("heartbeat: %s", exc)

    async def _heartbeat_job(self, source_ids: Sequence[str]) -> None:
        # Cancelled by the scheduler's shutdown: the final beat follows, nothing to report.
        with contextlib.suppress(asyncio.CancelledError):
            await self._heartbeat(source_ids, running=True)

    async def _retention_job(self) -> None:
        assert self.ctx is not None
        if not await self._fleet_job("retention", self.settings.retention.every):
            return
        try:
            report = await apply_retention(
                self.ctx.store, self.settings.retention, utc_now(), stop=self.stop_event.is_set
            )
            log.info("retention: %s", report.summary())
        except asyncio.CancelledError:
            # The scheduler's shutdown cancels running jobs: the batch in progress rolls
            # back and the rest waits for the next run.
            log.info("retention interrupted by the shutdown")
        except StoreError as exc:
            log.warning("retention failed: %s", exc)
        except Exception:
            log.exception("retention failed")

    def _schedule(
        self,
        sources: Sequence[SourceSettings],
        last_polls: dict[str, datetime | None],
        retry_at: dict[str, datetime | None] | None = None,
    ) -> None:
        now = utc_now()
        due_index = 0
        for source in sources:
            last = last_polls.get(source.id)
            first = last + timedelta(seconds=source.interval_s) if last is not None else now
            backoff_until = (retry_at or {}).get(source.id)
            if backoff_until is not None and backoff_until > first:
                first = backoff_until  # a failing source keeps its backoff (or Retry-After) across restarts
            if first <= now:
                # Due already: spread the backlog so a restart does not poll everything at once.
                spread = min(self.settings.daemon.startup_spread, source.interval_s)
                first = now + timedelta(seconds=random.uniform(0, spread) if due_index else 0)
                due_index += 1
            trigger = IntervalTrigger(
                seconds=source.interval_s,
                jitter=min(self.settings.daemon.jitter, source.interval_s / 4) or None,
                timezone=UTC,
            )
            self.scheduler.add_job(
                self._poll_job,
                trigger,
                args=[source],
                id=source.id,
                name=f"poll {source.id}",
                coalesce=True,
                max_instances=1,
                misfire_grace_time=self._misfire_grace_s(source.interval_s),
                next_run_time=first,
            )
        fulltext = self.settings.fulltext
        if fulltext.enabled and fulltext.top > 0 and fulltext.every > 0:
            self._add_periodic("fulltext", self._fulltext_job, fulltext.every, min(fulltext.every, 60.0))
        export = self.settings.export
        if export.every > 0:
            self._add_periodic("export", self._export_job, export.every, min(export.every, 90.0))
        every = self.settings.daemon.rescore_every
        self._add_periodic("rescore", self._rescore_job, every, min(every, 5.0))
        beat_every = self.settings.health.heartbeat_every
        self._add_periodic("heartbeat", self._heartbeat_job, beat_every, beat_every, tuple(s.id for s in sources))
        retention = self.settings.retention
        if retention.every > 0:
            self._add_periodic(
                "retention", self._retention_job, retention.every, min(retention.every, RETENTION_FIRST_DELAY_S)
            )

    def _add_periodic(
        self, job_id: str, func: Callable[..., Awaitable[None]], every_s: float, first_in_s: float, *args: object
    ) -> None:
        """A job of the daemon's own (not a source's): coalesced, one at a time, late by half a period at most."""
        self.scheduler.add_job(
            func,
            IntervalTrigger(seconds=every_s, timezone=UTC),
            args=list(args) or None,
            id=job_id,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=max(1, int(every_s / 2)),
            next_run_time=utc_now() + timedelta(seconds=first_in_s),
        )

    async def run(self, source_ids: Sequence[str] | None = None) -> int:
        settings = self.settings
        chosen = select_sources(settings, source_ids)
        lock = _lock_for(settings)
        if lock is not None:
            lock.acquire()
        try:
            # The migrations run in a child process: Alembic never loads into the long-running daemon.
            await upgrade_if_needed(settings.store.effective_url, busy_timeout_s=settings.store.busy_timeout)
            store = await Store.from_settings(settings.store, upgrade=False)
            try:
                self.ctx = await open_context(settings, store)
                states = await store.source_states()
                last_polls = {sid: st[1] for sid, st in states.items()}
                retry_at = {
                    r["id"]: r["next_attempt_at"] for r in await store.sources_status() if r["consecutive_failures"]
                }
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self._on_signal, sig)
                self._schedule(chosen, last_polls, retry_at)
                self.scheduler.start()
                watchdog = start_watchdog(self.scheduler, utc_now)
                await self._heartbeat([s.id for s in chosen], running=True)
                log.info(
                    "daemon %s started: %d sources, store %s",
                    self.ctx.instance,
                    len(chosen),
                    _safe_url(settings.store.effective_url),
                )
                await self.stop_event.wait()
                await self._shutdown()
                watchdog.stop()
                await self._heartbeat([s.id for s in chosen], running=False)
            finally:
                if self.ctx is not None:
                    await self.ctx.fetcher.aclose()
                await store.close()
        finally:
            if lock is not None:
                lock.release()
        log.info("daemon stopped")
        return 0

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self.stop_event.is_set():
            log.info("%s received: stopping", sig.name)
        self.stop_event.set()

    async def _shutdown(self) -> None:
        # Pause first: shutdown() would cancel the running jobs at once, and the polls in
        # flight would never get their grace time.
        self.scheduler.pause()
        pending = set(self.inflight)
        if pending:
            log.info("waiting up to %.0fs for %d poll(s) in flight", self.settings.daemon.shutdown_grace, len(pending))
            _done, still = await asyncio.wait(pending, timeout=self.settings.daemon.shutdown_grace)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=5.0)
        self.scheduler.shutdown(wait=False)
        assert self.ctx is not None
        if self.ctx.writes:
            await asyncio.wait(set(self.ctx.writes), timeout=10.0)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
