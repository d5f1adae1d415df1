"""The watchdog: stalls of the event loop and wall-clock jumps are noticed, logged, and cause no storm or hang."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from aggregator.watchdog import ClockCheck, DaemonWatchdog, HangMonitor, shift_after_jump, watch
from tests.conftest import async_wait_for
from tests.faults.conftest import fault_settings, good_sources_polled, run_daemon_until
from tests.faults.faultserver import FaultServer


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        ([(0.0, 100.0), (1.0, 101.0)], (None, None)),  # on time
        ([(0.0, 100.0), (1.0, 101.0), (2.01, 102.01)], (None, None)),  # a little late is not a stall
        ([(0.0, 100.0), (9.0, 109.0)], (8.0, None)),  # blocked for 8 s: both clocks moved alike
        ([(0.0, 100.0), (1.0, 3701.0)], (None, 3600.0)),  # the clock was set forward an hour
        ([(0.0, 100.0), (1.0, -3499.0)], (None, -3600.0)),  # ... and back
        ([(0.0, 100.0), (9.0, 3709.0)], (8.0, 3600.0)),  # a suspended machine: late and jumped
        ([(0.0, 100.0), (1.0, 103.0)], (None, None)),  # NTP slewing: under the threshold
    ],
)
def test_clock_check(readings: list[tuple[float, float]], expected: tuple[float | None, float | None]) -> None:
    check = ClockCheck(tick_s=1.0, stall_s=5.0, jump_s=5.0)
    result: tuple[float | None, float | None] = (None, None)
    for monotonic_s, wall_s in readings:
        result = check.observe(monotonic_s, wall_s)
    for got, want in zip(result, expected, strict=True):
        assert got is None if want is None else got == pytest.approx(want)


async def test_watch_notices_a_blocked_loop() -> None:
    stalls: list[float] = []
    task = asyncio.create_task(watch(0.05, stalls.append, lambda _s: None, stall_s=0.2))
    try:
        await asyncio.sleep(0.1)  # let it take its first readings
        time.sleep(0.5)  # the fault: a synchronous call blocks the loop
        await async_wait_for(lambda: bool(stalls), timeout_s=2)
    finally:
        task.cancel()
    assert len(stalls) == 1 and 0.3 < stalls[0] < 1.5


async def test_watch_notices_a_wall_clock_jump() -> None:
    offset = [0.0]
    jumps: list[float] = []
    task = asyncio.create_task(
        watch(0.02, lambda _s: None, jumps.append, jump_s=5.0, wall=lambda: time.time() + offset[0])
    )
    try:
        await asyncio.sleep(0.05)
        offset[0] = -3600.0  # someone sets the clock back an hour
        await async_wait_for(lambda: bool(jumps), timeout_s=2)
    finally:
        task.cancel()
    assert len(jumps) == 1 and jumps[0] == pytest.approx(-3600.0, abs=0.5)


def test_hang_monitor_reports_while_the_loop_is_stuck() -> None:
    reported = threading.Event()
    ages: list[float] = []

    def on_hang(age: float) -> None:
        ages.append(age)
        reported.set()

    monitor = HangMonitor(0.2, on_hang, check_s=0.02)
    monitor.start()
    try:
        # The loop is stuck until the monitor has told: it saw the hang while it lasted.
        assert reported.wait(5.0)
        monitor.beat()
    finally:
        monitor.stop()
    assert len(ages) == 1 and ages[0] > 0.2
    assert not monitor._thread.is_alive()


class _Job:
    def __init__(self, at: datetime | None) -> None:
        self.next_run_time = at

    def modify(self, **changes: datetime) -> None:
        self.next_run_time = changes["next_run_time"]


def test_shift_after_jump() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    # The clock went back an hour: every job's next run is an hour further away than it should be.
    soon, later, paused = _Job(now + timedelta(hours=1, seconds=30)), _Job(now + timedelta(hours=7)), _Job(None)
    assert shift_after_jump([soon, later, paused], -3600.0, now) == 2
    assert soon.next_run_time == now + timedelta(seconds=30)
    assert later.next_run_time == now + timedelta(hours=6)  # a backoff keeps what was left of it
    assert paused.next_run_time is None
    # Forward jumps are the scheduler's: coalescing and the misfire grace give one run.
    overdue = _Job(now - timedelta(hours=1))
    assert shift_after_jump([overdue], 3600.0, now) == 0 and overdue.next_run_time == now - timedelta(hours=1)
    # Never moved into the past.
    odd = _Job(now + timedelta(seconds=10))
    shift_after_jump([odd], -3600.0, now)
    assert odd.next_run_time == now


def _daemon_like_job(scheduler: AsyncIOScheduler, runs: list[datetime], next_run: datetime) -> None:
    async def job() -> None:
        runs.append(datetime.now(UTC))

    # The options the daemon gives each source's job.
    scheduler.add_job(
        job,
        IntervalTrigger(seconds=1, timezone=UTC),
        id="poll",
        coalesce=True,
        max_instances=1,
        misfire_grace_time=1,
        next_run_time=next_run,
    )


async def test_after_the_clock_went_back_jobs_run_on_time_not_an_hour_later() -> None:
    scheduler = AsyncIOScheduler(timezone=UTC)
    runs: list[datetime] = []
    now = datetime.now(UTC)
    # As the scheduler sees it right after the clock went back an hour: next run an hour away.
    _daemon_like_job(scheduler, runs, now + timedelta(hours=1, seconds=0.3))
    scheduler.start()
    try:
        dog = DaemonWatchdog(scheduler, lambda: datetime.now(UTC))
        dog.on_jump(-3600.0)
        await async_wait_for(lambda: bool(runs), timeout_s=3)  # no hang
    finally:
        scheduler.shutdown(wait=False)


async def test_after_the_clock_went_forward_jobs_do_not_storm() -> None:
    scheduler = AsyncIOScheduler(timezone=UTC)
    runs: list[datetime] = []
    # As the scheduler sees it right after the clock went forward an hour: 3600 runs missed.
    _daemon_like_job(scheduler, runs, datetime.now(UTC) - timedelta(hours=1))
    scheduler.start()
    try:
        await async_wait_for(lambda: bool(runs), timeout_s=3)  # no hang either
        first = len(runs)
    finally:
        scheduler.shutdown(wait=False)
    assert first == 1


async def test_the_daemon_runs_the_watchdog(tmp_path: Path, fault_server: FaultServer) -> None:
    settings = fault_settings(tmp_path, fault_server, [])
    names: set[str] = set()

    def condition() -> bool:
        names.update(t.get_name() for t in asyncio.all_tasks())
        names.update(t.name for t in threading.enumerate())
        return good_sources_polled(tmp_path)

    await run_daemon_until(settings, condition, trace_memory=False)
    assert {"aggregator-watchdog", "aggregator-hang-monitor"} <= names
    # Stopped with the daemon: no task or thread left behind.
    assert "aggregator-watchdog" not in {t.get_name() for t in asyncio.all_tasks()}
    assert "aggregator-hang-monitor" not in {t.name for t in threading.enumerate()}


def test_watchdog_logs_are_one_line_warnings(caplog: pytest.LogCaptureFixture) -> None:
    dog = DaemonWatchdog(_NoJobs(), lambda: datetime.now(UTC))
    with caplog.at_level(logging.WARNING, logger="aggregator.watchdog"):
        dog.on_stall(7.5)
        dog.on_jump(-3600.0)
        dog.on_hang(12.0)
    messages = [r.getMessage() for r in caplog.records]
    assert "event loop stalled" in messages[0] and "7.5s late" in messages[0]
    assert "wall clock jumped back by 3600.0s" in messages[1]
    assert "has not run for 12.0s; main thread at:" in messages[2] and "test_watchdog_logs_are" in messages[2]
    assert all(r.levelno == logging.WARNING and not r.exc_info for r in caplog.records)


class _NoJobs:
    def get_jobs(self) -> list[_Job]:
        return []
