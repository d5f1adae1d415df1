"""Fleet benchmark: 1, 2 and 3 daemons sharing 1,000 sources on one PostgreSQL database.

    python bench/fleet.py [--sources 1000] [--interval 10] [--seconds 40] [--pg URL]

Each run creates a fresh database on the PostgreSQL server (default
postgresql+asyncpg://postgres@127.0.0.1:5432/test for the admin connection), starts N
`aggregator run` processes against a payload server in its own process, lets them run
for --seconds after the first poll, and prints polls/s and observations/s from the
polls table, so the scaling from one to three instances is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg
from payloads import start_server


async def measure(admin_url: str, db: str, seconds: float) -> tuple[float, float, int]:
    conn = await asyncpg.connect(admin_url.rsplit("/", 1)[0] + f"/{db}")
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS polls, coalesce(sum(item_count), 0) AS obs, count(DISTINCT instance) AS instances "
            "FROM polls WHERE finished_at > now() - make_interval(secs => $1)",
            seconds,
        )
        kinds = await conn.fetch(
            "SELECT status, error_kind, count(*) AS n FROM polls WHERE finished_at > now() - make_interval(secs => $1) "
            "GROUP BY 1, 2 ORDER BY 3 DESC",
            seconds,
        )
        print("   ", ", ".join(f"{k['status']}/{k['error_kind'] or '-'}: {k['n']}" for k in kinds))
        return row["polls"] / seconds, row["obs"] / seconds, row["instances"]
    finally:
        await conn.close()


async def run(instances: int, args: argparse.Namespace, base: str) -> None:
    admin = args.pg.replace("postgresql+asyncpg://", "postgresql://")
    db = f"agg_fleet_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{db}"')
    await conn.close()
    tmp = Path(tempfile.mkdtemp(prefix="agg-fleet-"))
    store_url = args.pg.rsplit("/", 1)[0] + f"/{db}"
    sources = "".join(
        f'[[sources]]\nid = "s{i}"\nkind = "newsnow"\nurl = "{base}/nn/{i}"\ninterval = "{args.interval}s"\n'
        for i in range(args.sources)
    )
    config = tmp / "settings.toml"
    config.write_text(
        f'[store]\nurl = "{store_url}"\npool_size = 5\n[daemon]\nstartup_spread = "{args.interval}s"\n'
        f'[fulltext]\nenabled = false\n[log]\nlevel = "WARNING"\n{sources}',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "aggregator", "--config", str(config), "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(instances)
    ]
    try:
        await asyncio.sleep(args.interval * 1.5)  # warm-up: the first round and the spread
        await asyncio.sleep(args.seconds)
        polls_s, obs_s, seen = await measure(admin, db, args.seconds)
        print(
            f"{instances} instance(s): {polls_s:7.1f} polls/s {obs_s:9.0f} observations/s "
            f"({seen} instances wrote; {args.sources} sources due {args.sources / args.interval:.0f} polls/s)"
        )
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between polls of a source")
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement window")
    parser.add_argument("--size", type=int, default=50, help="entries per list")
    parser.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    server, port = start_server(args.size)
    try:
        for n in (1, 2, 3):
            t0 = time.monotonic()
            asyncio.run(run(n, args, f"http://127.0.0.1:{port}"))
            print(f"  (run took {time.monotonic() - t0:.0f}s)")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
