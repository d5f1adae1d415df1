"""Watchdog of the daemon's event loop: stalls (the loop stopped running) and wall-clock jumps.

A task wakes every `tick_s` and compares two clocks with the previous wake:
- monotonic time much later than one tick: something blocked the loop (a stall);
- wall-clock time moving differently from monotonic time: the clock was set (a jump).
A thread beside it notices a loop that does not come back at all, while it is stuck,
and logs where the main thread is.

The scheduler keeps its jobs in wall-clock time. After a forward jump every job is
overdue; coalescing and the misfire grace make that one run, not a storm. After a
backward jump every job would wait as long as the clock went back (a hang), so each
job's next run is brought forward by as much.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

log = logging.getLogger("aggregator.watchdog")

# Once a second is cheap and reports a stall within a second of its end.
TICK_S = 1.0
# The loop runs callbacks in microseconds and every await of ours is bounded; a wake this
# late means it was blocked (a synchronous call, a swapped-out process, a paused container).
STALL_S = 5.0
# NTP slews small errors without a jump; this much difference over one tick is a step.
JUMP_S = 5.0


@dataclass
class ClockCheck:
    """The decider: given the clocks at each wake, was there a stall, a jump, both or neither."""

    tick_s: float
    stall_s: float = STALL_S
    jump_s: float = JUMP_S
    _last: tuple[float, float] | None = None

    def observe(self, monotonic_s: float, wall_s: float) -> tuple[float | None, float | None]:
        """(seconds the wake was late when over stall_s, seconds the wall clock jumped when over jump_s)."""
        last, self._last = self._last, (monotonic_s, wall_s)
        if last is None:
            return None, None
        elapsed = monotonic_s - last[0]
        late = elapsed - self.tick_s
        skew = (wall_s - last[1]) - elapsed
        return (late if late > self.stall_s else None), (skew if abs(skew) > self.jump_s else None)


async def watch(
    tick_s: float,
    on_stall: Callable[[float], None],
    on_jump: Callable[[float], None],
    *,
    stall_s: float = STALL_S,
    jump_s: float = JUMP_S,
    monotonic: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    on_tick: Callable[[], None] | None = None,
) -> None:
    """Run until cancelled, calling on_stall(late_s) and on_jump(skew_s) as they happen."""
    check = ClockCheck(tick_s, stall_s, jump_s)
    check.observe(monotonic(), wall())
    while True:
        await asyncio.sleep(tick_s)
        if on_tick is not None:
            on_tick()
        late, skew = check.observe(monotonic(), wall())
        if late is not None:
            on_stall(late)
        if skew is not None:
            on_jump(skew)


class HangMonitor:
    """A thread that reports, while it lasts, a loop that has not ticked for `hang_s`."""

    def __init__(
        self,
        hang_s: float,
        on_hang: Callable[[float], None],
        *,
        check_s: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hang_s = hang_s
        self.on_hang = on_hang
        self.check_s = check_s if check_s is not None else max(hang_s / 4, 0.01)
        self.monotonic = monotonic
        self._beat = monotonic()
        self._reported = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aggregator-hang-monitor", daemon=True)

    def beat(self) -> None:
        """Called from the loop on each tick."""
        self._beat = self.monotonic()
        self._reported = False

    def start(self) -> None:
        self._beat = self.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.wait(self.check_s):
            age = self.monotonic() - self._beat
            if age > self.hang_s and not self._reported:
                self._reported = True  # once per stall; the loop's next beat re-arms it
                self.on_hang(age)


class Job(Protocol):
    """What shift_after_jump needs of a scheduler's job (APScheduler's Job has it)."""

    @property
    def next_run_time(self) -> datetime | None: ...

    def modify(self, **changes: Any) -> Any: ...


class Scheduler(Protocol):
    def get_jobs(self) -> list[Any]: ...


def shift_after_jump(jobs: Iterable[Job], skew_s: float, now: datetime) -> int:
    """After the wall clock went back by -skew_s, bring each job's next run that much earlier.

    Forward jumps (skew_s > 0) are left alone: the jobs are overdue, and coalescing with a
    misfire grace makes that at most one run each. Returns how many jobs were moved.
    """
    if skew_s >= 0:
        return 0
    moved = 0
    for job in jobs:
        at = job.next_run_time
        if at is None:  # paused
            continue
        job.modify(next_run_time=max(at + timedelta(seconds=skew_s), now))
        moved += 1
    return moved


def _main_thread_stack() -> str:
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    if frame is None:
        return "unknown"
    return " <- ".join(
        f"{f.name} ({f.filename.rsplit('/', 1)[-1]}:{f.lineno})" for f in reversed(traceback.extract_stack(frame))
    )


@dataclass
class DaemonWatchdog:
    """The watch task and the hang thread of a running daemon, logging what they see."""

    scheduler: Scheduler
    clock: Callable[[], datetime]
    tick_s: float = TICK_S
    stall_s: float = STALL_S
    jump_s: float = JUMP_S
    _task: asyncio.Task[None] | None = None
    _hang: HangMonitor | None = field(default=None, repr=False)

    def on_stall(self, late_s: float) -> None:
        log.warning(
            "event loop stalled: a %.1fs tick came %.1fs late (scheduled runs may be late)", self.tick_s, late_s
        )

    def on_hang(self, age_s: float) -> None:
        log.warning("event loop has not run for %.1fs; main thread at: %s", age_s, _main_thread_stack())

    def on_jump(self, skew_s: float) -> None:
        direction = "forward" if skew_s > 0 else "back"
        moved = shift_after_jump(self.scheduler.get_jobs(), skew_s, self.clock())
        note = f"; {moved} job(s) moved earlier to keep their cadence" if moved else ""
        log.warning("wall clock jumped %s by %.1fs%s", direction, abs(skew_s), note)

    def start(self) -> None:
        self._hang = HangMonitor(self.stall_s, self.on_hang)
        self._hang.start()
        self._task = asyncio.create_task(
            watch(
                self.tick_s,
                self.on_stall,
                self.on_jump,
                stall_s=self.stall_s,
                jump_s=self.jump_s,
                on_tick=self._hang.beat,
            ),
            name="aggregator-watchdog",
        )

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._hang is not None:
            self._hang.stop()
            self._hang = None


def start_watchdog(scheduler: Scheduler, clock: Callable[[], datetime]) -> DaemonWatchdog:
    """Start watching the running loop; call .stop() on the result at shutdown."""
    dog = DaemonWatchdog(scheduler, clock)
    dog.start()
    return dog
