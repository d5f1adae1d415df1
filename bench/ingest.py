"""Ingest benchmark: the daemon's own poll path against 200 NewsNow lists and 200 feeds.

    python bench/ingest.py [--lists 200] [--feeds 200] [--size 50] [--rounds 5]

A payload server in its own process on 127.0.0.1 serves the lists; this process runs
the real poll path (fetch, parse, normalize, store, score) on a fresh SQLite file:
a first round where everything is new, `--rounds` rounds where 20% of the entries
change rank and 10% are new, then a round where every feed answers 304. It prints
observations/s, polls/s, SQL statements per poll, peak RSS and on-disk bytes per
observation, and the same rows written by plain sqlite3 executemany as a baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from payloads import start_server
from sqlalchemy import event

from aggregator.daemon import open_context, utc_now
from aggregator.models import PollResult
from aggregator.pipeline import poll_source
from aggregator.settings import validate
from aggregator.store import Store
from aggregator.store.migrate import upgrade_if_needed

CONCURRENCY = 16
CPU = {"last": 0.0}  # this process's CPU seconds (all threads) in the last poll_all


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_parts() -> str:
    """This process's RSS now, split as the kernel counts it: anonymous memory (Python's
    objects, malloc's heap, SQLite's caches), mapped files (shared libraries) and shared memory
    (the WAL index)."""
    parts = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile", "RssShmem"):
                parts[name[3:].lower()] = int(value.split()[0]) / 1024
    return ", ".join(f"{name} {mb:.0f} MB" for name, mb in parts.items())


async def poll_all(ctx: Any, sources: list[Any]) -> tuple[list[PollResult], float]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(s: Any) -> PollResult:
        async with gate:
            return await poll_source(ctx, s)

    t0, cpu0 = time.perf_counter(), time.process_time()
    results = list(await asyncio.gather(*(one(s) for s in sources)))
    CPU["last"] = time.process_time() - cpu0
    return results, time.perf_counter() - t0


async def main_async(args: argparse.Namespace) -> None:
    proc, port = start_server(args.size)
    base = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="agg-bench-"))
    raw = {
        "store": {"data_dir": str(tmp)},
        "http": {"per_host_limit": CONCURRENCY},
        "sources": [
            {"id": f"nn-{i}", "kind": "newsnow", "url": f"{base}/nn/{i}", "interval": "10m"} for i in range(args.lists)
        ]
        + [
            {"id": f"feed-{i}", "kind": "feed", "url": f"{base}/feed/{i}", "interval": "10m"} for i in range(args.feeds)
        ],
    }
    settings = validate(raw)
    # As the daemon does: migrations in a child process, so Alembic is not in this one's RSS.
    await upgrade_if_needed(settings.store.effective_url)
    store = await Store.open(settings.store.effective_url, upgrade=False)
    statements = {"n": 0}

    def _count(_conn: Any, _cursor: Any, sql: str, *_a: Any) -> None:
        # BEGIN IMMEDIATE and COMMIT are the transaction, not its statements.
        if not sql.startswith("BEGIN"):
            statements["n"] += 1

    for sync_engine in store.sync_engines:
        event.listen(sync_engine, "before_cursor_execute", _count)

    ctx = await open_context(settings, store)
    if os.environ.get("BENCH_SWITCH"):  # the GIL switch interval open_context chose, overridden
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH"]))
    lists = [s for s in settings.sources if s.kind == "newsnow"]
    feeds = [s for s in settings.sources if s.kind == "feed"]
    import httpx

    async with httpx.AsyncClient() as c:
        await c.get(f"{base}/round/0/{max(args.lists, args.feeds)}")
    print(f"{args.lists} NewsNow lists and {args.feeds} feeds of {args.size} entries, SQLite at {tmp}")
    # The floor every later figure stands on: imported code and the open store, no story yet.
    print(f"  RSS after start (imports, store open, nothing polled): {current_rss_mb():.0f} MB ({rss_parts()})")

    def report(name: str, results: list[PollResult], seconds: float, stmts: int) -> int:
        if not results:
            return 0
        obs = sum(r.item_count for r in results)
        errors = [r for r in results if r.status == "error"]
        traced = ""
        if tracemalloc.is_tracing():
            traced = f", traced peak {tracemalloc.get_traced_memory()[1] / 2**20:.0f} MB"
            tracemalloc.reset_peak()
        print(
            f"  {name:<38} {len(results):>4} polls {obs:>6} obs in {seconds:5.2f}s: "
            f"{obs / seconds:>6.0f} obs/s {len(results) / seconds:>4.0f} polls/s "
            f"{stmts / len(results):.1f} statements+commit/poll, {CPU['last'] * 1000 / len(results):.1f} ms CPU/poll, "
            f"RSS {current_rss_mb():.0f} MB{traced}" + (f"  ERRORS {len(errors)}: {errors[0].error}" if errors else "")
        )
        return obs

    total_obs = 0
    statements["n"] = 0
    res, sec = await poll_all(ctx, lists)
    total_obs += report("lists, first round (all new)", res, sec, statements["n"])
    statements["n"] = 0
    res, sec = await poll_all(ctx, feeds)
    total_obs += report("feeds, first ingest", res, sec, statements["n"])
    t0 = time.perf_counter()
    await store.rescore(utc_now(), settings.score)
    print(f"  rescore of all stories: {time.perf_counter() - t0:.2f}s, RSS {current_rss_mb():.0f} MB")
    steady: list[tuple[int, float]] = []
    for r in range(1, args.rounds + 1):
        async with httpx.AsyncClient() as c:
            await c.get(f"{base}/round/{r}/{max(args.lists, args.feeds)}")
        statements["n"] = 0
        res, sec = await poll_all(ctx, lists)
        total_obs += report(f"lists, round {r} (20% moved, 10% new)", res, sec, statements["n"])
        steady.append((sum(x.item_count for x in res), sec))
        statements["n"] = 0
        res, sec = await poll_all(ctx, feeds)
        total_obs += report(f"feeds, round {r}", res, sec, statements["n"])
        t0 = time.perf_counter()
        await store.rescore(utc_now(), settings.score)
        print(f"  rescore: {time.perf_counter() - t0:.2f}s, RSS {current_rss_mb():.0f} MB")
    statements["n"] = 0
    res, sec = await poll_all(ctx, feeds)
    report("feeds, 304 round", res, sec, statements["n"])
    await ctx.fetcher.aclose()
    await store.close()
    db_path = tmp / "aggregator.db"
    con = sqlite3.connect(db_path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    observations = con.execute("SELECT count(*) FROM observations").fetchone()[0]
    con.close()
    size = db_path.stat().st_size
    con = sqlite3.connect(db_path)
    obs_bytes = con.execute(
        "SELECT sum(pgsize) FROM dbstat WHERE name IN ('observations', 'ix_observations_item')"
    ).fetchone()[0]
    con.close()
    print(f"observation rows and their index: {obs_bytes / observations:.1f} bytes/observation on disk")
    obs_rate = sum(o for o, _ in steady) / max(sum(s for _, s in steady), 1e-9)
    print(f"steady-state lists: {obs_rate:.0f} observations/s")
    print(
        f"database: {size / 1e6:.1f} MB for {observations} observations = {size / observations:.1f} bytes/observation"
        " (all tables and indexes)"
    )
    print(f"peak RSS: {peak_rss_mb():.0f} MB (RSS now: {rss_parts()})")
    baseline(db_path, tmp)
    proc.terminate()


def baseline(db_path: Path, tmp: Path) -> None:
    """The same observation and item rows written by plain sqlite3 executemany."""
    src = sqlite3.connect(db_path)
    items = src.execute("SELECT * FROM items").fetchall()
    obs = src.execute("SELECT * FROM observations").fetchall()
    schema = [
        r[0]
        for r in src.execute(
            "SELECT sql FROM sqlite_master WHERE type IN ('table','index') "
            "AND name IN ('items','observations','ix_observations_item') AND sql IS NOT NULL"
        )
    ]
    src.close()
    out = sqlite3.connect(tmp / "baseline.db", isolation_level=None)
    out.execute("PRAGMA journal_mode=WAL")
    out.execute("PRAGMA synchronous=NORMAL")
    for ddl in schema:
        out.execute(ddl.replace("REFERENCES", "-- ").split("--")[0] if False else ddl)
    out.execute("PRAGMA foreign_keys=OFF")
    per_poll = 50
    t0 = time.perf_counter()
    by_poll: dict[int, list[tuple[Any, ...]]] = {}
    for row in obs:
        by_poll.setdefault(row[0], []).append(row)
    item_by_id = {r[0]: r for r in items}
    inserted: set[int] = set()
    for rows in by_poll.values():
        out.execute("BEGIN IMMEDIATE")
        new = [item_by_id[r[1]] for r in rows if r[1] not in inserted]
        inserted.update(r[1] for r in rows)
        out.executemany(f"INSERT OR REPLACE INTO items VALUES ({','.join('?' * len(items[0]))})", new)
        out.executemany("INSERT INTO observations VALUES (?,?,?,?,?,?,?,?)", rows)
        out.execute("COMMIT")
    seconds = time.perf_counter() - t0
    print(
        f"baseline sqlite3 executemany, one transaction per poll of ~{per_poll}: "
        f"{len(obs) / seconds:.0f} observations/s ({len(by_poll)} transactions)"
    )


def main() -> None:
    if os.environ.get("BENCH_TRACEMALLOC"):
        tracemalloc.start()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lists", type=int, default=200)
    parser.add_argument("--feeds", type=int, default=200)
    parser.add_argument("--size", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
