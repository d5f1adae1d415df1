"""The SQLite writer gate: polls in submission order on one thread, exclusive writers alone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from aggregator.store.gate import WriterGate


class Recorder:
    """A write function that logs each job and, for jobs in `hold`, blocks until released."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.lock = threading.Lock()
        self.hold: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}

    def hold_job(self, job: str) -> threading.Event:
        self.hold[job] = threading.Event()
        self.started[job] = threading.Event()
        return self.hold[job]

    def __call__(self, job: str) -> str:
        if job in self.started:
            self.started[job].set()
        if job in self.hold:
            assert self.hold[job].wait(10), f"{job} was never released"
        if job.startswith("fail"):
            raise RuntimeError(f"{job} failed")
        with self.lock:
            self.log.append(job)
        return job.upper()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


async def test_jobs_run_in_submission_order_and_return_results(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    gate = WriterGate(executor, rec)
    futures = [gate.submit(f"p{i}") for i in range(50)]
    assert gate.queued == 50
    results = await asyncio.gather(*futures)
    assert results == [f"P{i}" for i in range(50)]
    assert rec.log == [f"p{i}" for i in range(50)]
    assert gate.queued == 0


async def test_a_failing_job_fails_only_its_own_future(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    gate = WriterGate(executor, rec)
    first, bad, last = gate.submit("a"), gate.submit("fail-b"), gate.submit("c")
    assert await first == "A"
    with pytest.raises(RuntimeError, match="fail-b failed"):
        await bad
    assert await last == "C"
    assert rec.log == ["a", "c"]


async def test_exclusive_waits_for_queued_jobs_and_holds_back_new_ones(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    gate = WriterGate(executor, rec)
    release = rec.hold_job("p0")
    queued = [gate.submit("p0"), gate.submit("p1")]
    inside = asyncio.Event()
    leave = asyncio.Event()

    async def exclusive_writer() -> None:
        async with gate.exclusive():
            with rec.lock:
                rec.log.append("exclusive")
            inside.set()
            await leave.wait()

    writer = asyncio.create_task(exclusive_writer())
    await asyncio.to_thread(rec.started["p0"].wait, 10)
    later = [gate.submit("p2"), gate.submit("p3")]  # submitted while the exclusive writer waits
    await asyncio.sleep(0)
    assert not inside.is_set(), "the exclusive writer ran while polls were still queued"
    release.set()
    await asyncio.gather(*queued)
    await asyncio.wait_for(inside.wait(), 10)
    assert rec.log == ["p0", "p1", "exclusive"]
    assert not any(f.done() for f in later), "a poll ran while the gate was held exclusively"
    assert gate.queued == 2
    leave.set()
    await writer
    assert await asyncio.gather(*later) == ["P2", "P3"]
    assert rec.log == ["p0", "p1", "exclusive", "p2", "p3"]


async def test_exclusive_writers_take_turns_and_polls_between_them_keep_order(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    gate = WriterGate(executor, rec)

    async def exclusive_writer(name: str) -> None:
        async with gate.exclusive():
            with rec.lock:
                rec.log.append(name)
            await asyncio.sleep(0)

    first = asyncio.create_task(exclusive_writer("x1"))
    await asyncio.sleep(0)  # x1 holds the gate
    polls = [gate.submit(f"p{i}") for i in range(5)]
    second = asyncio.create_task(exclusive_writer("x2"))
    await asyncio.gather(first, second, *polls)
    assert rec.log.index("x1") < rec.log.index("p0")
    assert [j for j in rec.log if j.startswith("p")] == [f"p{i}" for i in range(5)]
    assert sorted(rec.log) == sorted(["x1", "x2", *(f"p{i}" for i in range(5))])


async def test_a_cancelled_waiting_poll_is_not_written(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    gate = WriterGate(executor, rec)
    leave = asyncio.Event()
    inside = asyncio.Event()

    async def exclusive_writer() -> None:
        async with gate.exclusive():
            inside.set()
            await leave.wait()

    writer = asyncio.create_task(exclusive_writer())
    await inside.wait()
    dropped, kept = gate.submit("p0"), gate.submit("p1")
    dropped.cancel()
    leave.set()
    await writer
    assert await kept == "P1"
    assert rec.log == ["p1"]
