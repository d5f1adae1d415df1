"""The daemon: one APScheduler job per source plus a rescore job, signals, shutdown.

Jobs run on an AsyncIOScheduler in UTC. Each source job has coalesce=True,
max_instances=1, jitter, and a misfire grace that is a fraction of its interval (the
1 s default silently drops runs when the loop is busy). A restart resumes each source
from its last poll. SIGTERM/SIGINT stop scheduling, let in-flight polls finish within
the grace time or cancel them, wait for their writes, then close the store. SIGHUP
re-reads the settings: the sources, `[score]` and the log level change at once, the rest
at a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from aggregator import malloc
from aggregator.backoff import retry_delay_s
from aggregator.checked import Section
from aggregator.collectors import collectors
from aggregator.collectors.fetch import make_fetcher
from aggregator.entry import acting_on
from aggregator.errors import ConfigError, StoreError
from aggregator.fulltext import run_fulltext
from aggregator.health import Heartbeat
from aggregator.models import PollResult, SourceState
from aggregator.pipeline import PollContext, StoryAssigner, export_top, left, poll_deadline_s, poll_source
from aggregator.settings import Settings, SourceSettings
from aggregator.store import Store
from aggregator.store.engine import shown_url, sqlite_path
from aggregator.store.lock import DaemonLock
from aggregator.store.maintenance import apply_retention, write_heartbeat
from aggregator.store.migrate import upgrade_if_needed
from aggregator.systemd import Notifier
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
# What a SIGHUP changes in a running daemon: the sources (`[newsnow]` shapes their URLs),
# the score's weights, which every rescore reads afresh, and the log level. Everything
# else is held by a part built at start (the store's engine, the HTTP client, the
# scheduler's own jobs, the log format) and changes at the next restart.
RELOADED_SECTIONS = ("sources", "newsnow", "score")
RELOADED_KEYS = ("log.level",)
# While migrations run at start, systemd is told this often to extend its start timeout.
MIGRATION_NOTIFY_S = 30.0


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
    malloc.tune()  # before the poll path's first allocations, as the switch interval below
    if store.ordered_writes:
        sys.setswitchinterval(min(sys.getswitchinterval(), WRITER_SWITCH_INTERVAL_S))
    log_moved(await store.sync_sources(settings.sources, now))
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


def log_moved(source_ids: Sequence[str]) -> None:
    """Say which sources have a new URL (their URLs may hold keys: not shown)."""
    if source_ids:
        log.info(
            "new URL for %s: ETag, Last-Modified, cookies, failures and backoff start afresh", ", ".join(source_ids)
        )


def fulltext_sources(settings: Settings) -> list[str]:
    return [s.id for s in settings.sources if s.fulltext]


def _lock_for(settings: Settings) -> DaemonLock | None:
    path = sqlite_path(settings.store.effective_url)
    return DaemonLock(path.with_name(path.name + ".lock")) if path is not None else None


async def run_once(
    settings: Settings, source_ids: Sequence[str] | None = None, stop: asyncio.Event | None = None
) -> tuple[list[PollResult], list[str]]:
    """Poll each chosen source once, then rescore: (the polls' results, the ids of the sources
    `stop` left unpolled or cut off). Once `stop` is set no poll starts, those under way get
    daemon.shutdown_grace to finish (a write under way always does), and there is no rescore."""
    chosen = select_sources(settings, source_ids)
    stop = stop or asyncio.Event()
    lock = _lock_for(settings)
    if lock is not None:
        lock.acquire()
    try:
        store = await Store.from_settings(settings.store)
        try:
            ctx = await open_context(settings, store)
            try:
                gate = asyncio.Semaphore(ONCE_CONCURRENCY)

                async def one(source: SourceSettings) -> PollResult | None:
                    async with gate:
                        return None if stop.is_set() else await poll_source(ctx, source)

                polls = {asyncio.ensure_future(one(s)): s.id for s in chosen}
                stopped = asyncio.ensure_future(stop.wait())
                try:
                    while not stopped.done() and not all(t.done() for t in polls):
                        waiting: set[asyncio.Future[Any]] = {t for t in polls if not t.done()}
                        await asyncio.wait({*waiting, stopped}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopped.cancel()
                if stop.is_set():
                    await finish_polls(set(polls), ctx, settings.daemon.shutdown_grace)
                results = [r for t in polls if not t.cancelled() and (r := t.result()) is not None]
                polled = {r.source_id for r in results}
                interrupted = [sid for sid in polls.values() if sid not in polled]
                if not stop.is_set():
                    await store.rescore(utc_now(), settings.score)
                return results, interrupted
            finally:
                await ctx.fetcher.aclose()
        finally:
            await store.close()
    finally:
        if lock is not None:
            lock.release()


async def finish_polls(polls: set[asyncio.Future[Any]], ctx: PollContext, grace_s: float) -> None:
    """At a stop: the polls under way get `grace_s` to finish, then are cancelled; the
    writes they started end either way (they are shielded)."""
    running = {t for t in polls if not t.done()}
    if running:
        log.info("waiting up to %.0fs for the polls under way (%d)", grace_s, len(running))
        _done, still = await asyncio.wait(running, timeout=grace_s)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still, timeout=5.0)
    if ctx.writes:
        await asyncio.wait(set(ctx.writes), timeout=10.0)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        reload: Callable[[], Settings] | None = None,
        early_signals: Sequence[int] = (),
    ) -> None:
        """`reload` reads the settings again (from where these came) when SIGHUP arrives;
        `early_signals` are those that came before the daemon was made (see `aggregator.entry`)."""
        self.settings = settings
        self._early_signals = early_signals
        self._load_settings = reload
        self._reload_task: asyncio.Task[bool] | None = None
        self._reload_pending = False  # a SIGHUP came while the daemon was starting
        self._source_ids: Sequence[str] | None = None
        self.chosen: list[SourceSettings] = []
        self.stop_event = asyncio.Event()
        self.inflight: set[asyncio.Task[object]] = set()
        self._backed_off: dict[str, bool] = {}
        self._index_refreshed_at = utc_now()
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.ctx: PollContext | None = None
        self.notifier = Notifier()
        self.migration_notify_s = MIGRATION_NOTIFY_S

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
            if left(self.ctx, source):
                # A reload gave the source a new URL while this poll of the old one ran: its
                # first poll, due at once, was skipped (one poll of a source at a time). It
                # runs once this job's run has ended, which the scheduler counts in a
                # callback of this task added before any of ours.
                task.add_done_callback(lambda _task: self._poll_now(source.id))
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

    def _poll_now(self, source_id: str) -> None:
        job = self.scheduler.get_job(source_id)
        if job is not None and not self.stop_event.is_set():
            job.modify(next_run_time=utc_now())

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

    async def _heartbeat_job(self) -> None:
        # Cancelled by the scheduler's shutdown: the final beat follows, nothing to report.
        with contextlib.suppress(asyncio.CancelledError):
            await self._heartbeat([s.id for s in self.chosen], running=True)

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
        self.chosen = list(sources)
        self._add_source_jobs(sources, last_polls, retry_at)
        fulltext = self.settings.fulltext
        if fulltext.enabled and fulltext.top > 0 and fulltext.every > 0:
            self._add_periodic("fulltext", self._fulltext_job, fulltext.every, min(fulltext.every, 60.0))
        export = self.settings.export
        if export.every > 0:
            self._add_periodic("export", self._export_job, export.every, min(export.every, 90.0))
        every = self.settings.daemon.rescore_every
        self._add_periodic("rescore", self._rescore_job, every, min(every, 5.0))
        beat_every = self.settings.health.heartbeat_every
        self._add_periodic("heartbeat", self._heartbeat_job, beat_every, beat_every)
        retention = self.settings.retention
        if retention.every > 0:
            self._add_periodic(
                "retention", self._retention_job, retention.every, min(retention.every, RETENTION_FIRST_DELAY_S)
            )
        if self.notifier.watchdog_s:  # systemd's WatchdogSec=: a job, so a hung scheduler is noticed too
            self._add_periodic("systemd-watchdog", self._systemd_watchdog, self.notifier.watchdog_s / 2, 0)

    def _add_source_jobs(
        self,
        sources: Sequence[SourceSettings],
        last_polls: dict[str, datetime | None],
        retry_at: dict[str, datetime | None] | None = None,
    ) -> None:
        """One poll job per source, first due one interval after its last poll."""
        firsts = self._first_runs(sources, last_polls, retry_at or {})
        for source in sources:
            self.scheduler.add_job(
                self._poll_job,
                self._trigger(source),
                args=[source],
                id=source.id,
                name=f"poll {source.id}",
                coalesce=True,
                max_instances=1,
                misfire_grace_time=self._misfire_grace_s(source.interval_s),
                next_run_time=firsts[source.id],
            )

    def _first_runs(
        self,
        sources: Sequence[SourceSettings],
        last_polls: dict[str, datetime | None],
        retry_at: dict[str, datetime | None],
    ) -> dict[str, datetime]:
        """When each source is next due: one interval after its last poll, later while it backs
        off; those due already are spread over daemon.startup_spread, not polled all at once."""
        now = utc_now()
        firsts = {}
        due_index = 0
        for source in sources:
            first = self._resume_at(source, last_polls.get(source.id), retry_at.get(source.id), now)
            if first <= now:
                spread = min(self.settings.daemon.startup_spread, source.interval_s)
                first = now + timedelta(seconds=random.uniform(0, spread) if due_index else 0)
                due_index += 1
            firsts[source.id] = first
        return firsts

    @staticmethod
    def _resume_at(
        source: SourceSettings, last: datetime | None, backoff_until: datetime | None, now: datetime
    ) -> datetime:
        first = last + timedelta(seconds=source.interval_s) if last is not None else now
        if backoff_until is not None and backoff_until > first:
            first = backoff_until  # a failing source keeps its backoff (or Retry-After) across restarts
        return first

    def _trigger(self, source: SourceSettings) -> IntervalTrigger:
        return IntervalTrigger(
            seconds=source.interval_s,
            jitter=min(self.settings.daemon.jitter, source.interval_s / 4) or None,
            timezone=UTC,
        )

    async def _resume_points(
        self,
    ) -> tuple[dict[str, datetime | None], dict[str, datetime | None], dict[str, tuple[SourceState, int]]]:
        """Per source, its last poll; while it is failing, when its backoff ends; and what the
        store holds for it (conditional GET and cookies, consecutive failures)."""
        assert self.ctx is not None
        states = await self.ctx.store.source_states()
        retry_at = {
            r["id"]: r["next_attempt_at"] for r in await self.ctx.store.sources_status() if r["consecutive_failures"]
        }
        held = {sid: (st[0], st[2]) for sid, st in states.items()}
        return {sid: st[1] for sid, st in states.items()}, retry_at, held

    def _on_reload_signal(self) -> None:
        if self.stop_event.is_set():
            return
        if self._reload_task is not None and not self._reload_task.done():
            log.info("SIGHUP received: a reload is under way already; this one is ignored")
            return
        log.info("SIGHUP received: reloading the settings")
        self.notifier.reloading()
        self._reload_task = asyncio.ensure_future(self._reload_job())

    async def _reload_job(self) -> bool:
        try:
            return await self.reload()
        except Exception:
            log.exception("reload failed; the daemon goes on with the settings it has")
            return False
        finally:
            self.notifier.ready(self._status())

    def _status(self) -> str:
        """The line `systemctl status` shows."""
        return f"polling {len(self.chosen)} sources"

    async def _systemd_watchdog(self) -> None:
        self.notifier.watchdog()

    async def reload(self) -> bool:
        """Read the settings again and apply RELOADED_SECTIONS and RELOADED_KEYS; False (nothing changed) when
        the new settings are wrong or the store cannot take them."""
        assert self.ctx is not None
        if self._load_settings is None:
            log.warning("reload: this daemon has no settings file to read again; nothing changed")
            return False
        try:
            new = self._load_settings()
            chosen = select_sources(new, self._source_ids)
        except ConfigError as exc:
            log.error("reload: settings error: %s; the daemon goes on with the settings it has", exc)
            return False
        old = self.settings
        if new.config_path != old.config_path:
            # ./settings.toml gone (deleted, or renamed away) would mean the built-in
            # defaults: no sources at all. A reload never changes where the settings live.
            log.error(
                "reload: the settings came from %s at start but would now come from %s; "
                "the daemon goes on with the settings it has",
                old.config_path or "the built-in defaults",
                new.config_path or "the built-in defaults (no settings file found)",
            )
            return False
        merged = dataclasses.replace(
            old,
            **{name: getattr(new, name) for name in RELOADED_SECTIONS},
            log=dataclasses.replace(old.log, level=new.log.level),
        )
        before = {s.id: s for s in self.chosen}
        after = {s.id: s for s in chosen}
        added = [s for s in chosen if s.id not in before]
        removed = [sid for sid in before if sid not in after]
        changed = [s for s in chosen if s.id in before and s != before[s.id]]
        retimed = [s for s in changed if s.interval_s != before[s.id].interval_s]
        try:
            moved_ids = await self.ctx.store.sync_sources(merged.sources, utc_now())
            log_moved(moved_ids)
            last_polls, retry_at, held = await self._resume_points()
            if self.settings.daemon.leases:
                for source in retimed:
                    # The lease taken at the last poll holds the source for most of the old
                    # interval; under a shorter one it would skip the polls now due.
                    last = last_polls.get(source.id) or utc_now()
                    until = last + timedelta(seconds=source.interval_s * LEASE_FRACTION)
                    await self.ctx.store.shorten_lease(source.id, until)
        except StoreError as exc:
            log.error("reload: %s; the daemon goes on with the settings it has", exc)
            return False
        if self.stop_event.is_set():
            return False  # stopping: the jobs are being shut down, not changed
        self.settings = self.ctx.settings = merged
        self.chosen = chosen
        if new.log.level != old.log.level:
            logging.getLogger().setLevel(new.log.level)
            log.warning("reload: log level %s (was %s)", new.log.level, old.log.level)
        for sid in removed:
            # A poll of it under way finishes and is stored; its job does not run again.
            with contextlib.suppress(JobLookupError):
                self.scheduler.remove_job(sid)
            self._backed_off.pop(sid, None)
            self.ctx.identities.pop(sid, None)  # its last list's identities, kept for the next poll
            self.ctx.states.pop(sid, None)
            self.ctx.failures.pop(sid, None)
        # A new URL is a new list: polled now, as a new source is (sync_sources has dropped
        # the old URL's validators, cookies, failures and lease).
        moved = [s for s in changed if s.id in moved_ids]
        for source in [*added, *moved]:
            # As the store now has it: fresh for a new URL (a poll of the old one under way
            # updates the object it holds, not this one), as last stored for one come back.
            state, failures = held.get(source.id, (SourceState(), 0))
            self.ctx.states[source.id] = state
            self.ctx.failures[source.id] = failures
        for source in moved:
            self._backed_off.pop(source.id, None)
            last_polls[source.id] = None
        # As at a restart: one new interval after the last poll, or later while backing off.
        firsts = self._first_runs([s for s in changed if s in retimed or s in moved], last_polls, retry_at)
        for source in changed:
            job = self.scheduler.get_job(source.id)
            if job is None:  # cannot happen while `before` holds it; scheduled afresh if it does
                added.append(source)
                continue
            # The same job keeps running: a poll under way is never doubled by the change.
            job.modify(args=[source], misfire_grace_time=self._misfire_grace_s(source.interval_s))
            if source in retimed:
                job.reschedule(self._trigger(source))
            if source.id in firsts:
                job.modify(next_run_time=firsts[source.id])
        self._add_source_jobs(added, last_polls, retry_at)

        def ids(sources: Sequence[str]) -> str:
            return f" ({', '.join(sources)})" if sources else ""

        log.info(
            "settings reloaded from %s: %d sources, %d added%s, %d removed%s, %d changed%s",
            new.config_path or "the built-in defaults",
            len(chosen),
            len(added),
            ids([s.id for s in added]),
            len(removed),
            ids(removed),
            len(changed),
            ids([s.id for s in changed]),
        )
        later = _changed_keys(old, new, skip=(*RELOADED_SECTIONS, *RELOADED_KEYS, "config_path"))
        if later:
            log.warning("reload: %s changed; that takes effect at the next restart", ", ".join(later))
        if not chosen:
            self._warn_no_sources()
        return True

    def _add_periodic(
        self, job_id: str, func: Callable[[], Awaitable[None]], every_s: float, first_in_s: float
    ) -> None:
        """A job of the daemon's own (not a source's): coalesced, one at a time, late by half a period at most."""
        self.scheduler.add_job(
            func,
            IntervalTrigger(seconds=every_s, timezone=UTC),
            id=job_id,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=max(1, int(every_s / 2)),
            next_run_time=utc_now() + timedelta(seconds=first_in_s),
        )

    async def run(self, source_ids: Sequence[str] | None = None) -> int:
        settings = self.settings
        self._source_ids = source_ids
        chosen = select_sources(settings, source_ids)
        # From the first moment, not only once the jobs are scheduled: starting on a large
        # store takes a while (the migration check, the story index). A SIGTERM or SIGINT
        # meanwhile ends the start after its current step, with exit status 0; a SIGHUP
        # is remembered and carried out as soon as the daemon is up.
        handlers = {signal.SIGTERM: self._on_signal, signal.SIGINT: self._on_signal, signal.SIGHUP: self._on_hup}
        with acting_on(handlers, self._early_signals):
            lock = _lock_for(settings)
            try:
                if lock is not None:
                    lock.acquire()
                await self._run(chosen)
            finally:
                if lock is not None:
                    lock.release()
        log.info("daemon stopped")
        return 0

    def _on_hup(self, _sig: signal.Signals) -> None:
        if self.scheduler.running:
            self._on_reload_signal()
        elif not self.stop_event.is_set():
            self._reload_pending = True

    async def _migrate(self) -> None:
        """upgrade_if_needed; a stop asked for meanwhile gives them the shutdown grace to end
        (a schema change is best not cut off), then cancels them: their transaction rolls back."""
        settings = self.settings
        migration = asyncio.ensure_future(
            upgrade_if_needed(settings.store.effective_url, busy_timeout_s=settings.store.busy_timeout)
        )
        stop = asyncio.ensure_future(self.stop_event.wait())
        try:
            every = self.migration_notify_s
            while not (await asyncio.wait({migration, stop}, timeout=every, return_when=asyncio.FIRST_COMPLETED))[0]:
                # systemd's TimeoutStartSec covers the whole start: a long migration asks for
                # more time, again and again, instead of being killed and started over.
                self.notifier.send(EXTEND_TIMEOUT_USEC=str(int(every * 2e6)), STATUS="migrating the store")
            if not migration.done():
                grace = settings.daemon.shutdown_grace
                log.info("waiting up to %.0fs for the migrations under way", grace)
                await asyncio.wait({migration}, timeout=grace)
                if not migration.done():
                    log.warning("migrations cancelled: nothing of them is kept; the next start runs them again")
                    migration.cancel()
                    await asyncio.wait({migration})
                    return
            migration.result()
        finally:
            stop.cancel()

    def _warn_no_sources(self) -> None:
        log.warning(
            "no enabled source in the settings (%s): nothing is polled; add [[sources]] and send SIGHUP, or restart",
            self.settings.config_path or "the built-in defaults: no settings file was found",
        )

    def _stopped_while_starting(self, step: str) -> bool:
        if self.stop_event.is_set():
            log.info("stopped while starting, after %s: no source was polled", step)
        return self.stop_event.is_set()

    async def _run(self, chosen: list[SourceSettings]) -> None:
        settings = self.settings
        if self._stopped_while_starting("reading the settings"):
            return
        # The migrations run in a child process: Alembic never loads into the long-running daemon.
        await self._migrate()
        if self._stopped_while_starting("the migration check"):
            return
        store = await Store.from_settings(settings.store, upgrade=False)
        try:
            self.ctx = await open_context(settings, store)
            last_polls, retry_at, _held = await self._resume_points()
            if self._stopped_while_starting("opening the store and loading the story index"):
                return
            self._schedule(chosen, last_polls, retry_at)
            self.scheduler.start()
            watchdog = start_watchdog(self.scheduler, utc_now)
            await self._heartbeat([s.id for s in chosen], running=True)
            log.info(
                "daemon %s started: %d sources, store %s",
                self.ctx.instance,
                len(self.chosen),
                shown_url(settings.store.effective_url),
            )
            if not self.chosen:
                self._warn_no_sources()
            self.notifier.ready(self._status())
            if self._reload_pending:
                self._reload_pending = False
                log.info("a SIGHUP came while the daemon was starting")
                self._on_reload_signal()
            await self.stop_event.wait()
            await self._shutdown()
            watchdog.stop()
            await self._heartbeat([s.id for s in self.chosen], running=False)
        finally:
            if self.ctx is not None:
                await self.ctx.fetcher.aclose()
            await store.close()

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self.stop_event.is_set():
            log.info("%s received: stopping", sig.name)
            self.notifier.stopping()
        self.stop_event.set()

    async def _shutdown(self) -> None:
        # Pause first: shutdown() would cancel the running jobs at once, and the polls in
        # flight would never get their grace time.
        self.scheduler.pause()
        if self._reload_task is not None and not self._reload_task.done():
            # A reload under way is a few small writes: let it end, not be cut off mid-way.
            await asyncio.wait({self._reload_task}, timeout=HEARTBEAT_TIMEOUT_S)
            self._reload_task.cancel()
        assert self.ctx is not None
        await finish_polls(set(self.inflight), self.ctx, self.settings.daemon.shutdown_grace)
        self.scheduler.shutdown(wait=False)


def _changed_keys(old: Settings, new: Settings, skip: Sequence[str]) -> list[str]:
    """`section.key` for every setting that differs between `old` and `new`, outside `skip`
    (sections, or `section.key`)."""
    keys = []
    for name in old.hints():
        if name in skip or getattr(old, name) == getattr(new, name):
            continue
        section, other = getattr(old, name), getattr(new, name)
        if not isinstance(section, Section):
            keys.append(name)
            continue
        fields = section.hints()
        keys.extend(
            f"{name}.{key}"
            for key in fields
            if getattr(section, key) != getattr(other, key) and f"{name}.{key}" not in skip
        )
    return keys
