"""Serve benchmark: requests per second and latency of `aggregator serve` on a filled store.

    python bench/serve.py [--lists 200] [--feeds 200] [--seconds 5] [--concurrency 8]

Fills a SQLite store with `aggregator run --once` against the synthetic lists and feeds of
bench/payloads.py (served from 127.0.0.1 by a separate process), starts `aggregator serve`
on it as a process of its own, and asks each path from `--concurrency` clients at once for
`--seconds`. Prints per path the requests per second, the median and 99th percentile
latency and the answer's size, then the server's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from payloads import WORDS, start_server

PATHS = (
    "/top.json?limit=20",
    "/feed.atom?limit=50",
    "/feed.atom?limit=50 (304)",
    f"/search.json?q={WORDS[0]}",  # a word the synthetic titles are made of
    "/sources.json",
    "/metrics",
    "/top.json?limit=20&source=nn-7",
)


def aggregator(config: Path, *args: str, **kwargs: object) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")}
    return subprocess.Popen([sys.executable, "-m", "aggregator", "--config", str(config), *args], env=env, **kwargs)  # type: ignore[call-overload, no-any-return]


async def hammer(base: str, path: str, seconds: float, concurrency: int) -> tuple[int, list[float], int]:
    """(requests answered, their latencies in seconds, size of the last answer)."""
    etag = path.endswith("(304)")
    path = path.removesuffix(" (304)")
    latencies: list[float] = []
    size = 0
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        headers = {"If-None-Match": (await http.get(path)).headers["etag"]} if etag else {}
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal size
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                answer = await http.get(path, headers=headers)
                latencies.append(time.perf_counter() - t0)
                assert answer.status_code == (304 if etag else 200), (path, answer.status_code, answer.text[:200])
                size = len(answer.content)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return len(latencies), latencies, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lists", type=int, default=200)
    parser.add_argument("--feeds", type=int, default=200)
    parser.add_argument("--size", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    proc, port = start_server(args.size)
    tmp = Path(tempfile.mkdtemp(prefix="agg-serve-bench-"))
    base = f"http://127.0.0.1:{port}"
    sources = [f'[[sources]]\nid = "nn-{i}"\nkind = "newsnow"\nurl = "{base}/nn/{i}"\n' for i in range(args.lists)]
    sources += [f'[[sources]]\nid = "feed-{i}"\nkind = "feed"\nurl = "{base}/feed/{i}"\n' for i in range(args.feeds)]
    config = tmp / "settings.toml"
    config.write_text(
        f'[store]\ndata_dir = "{tmp / "data"}"\n[http]\nper_host_limit = 16\n[fulltext]\nenabled = false\n'
        + "".join(sources),
        encoding="utf-8",
    )
    httpx.get(f"{base}/round/0/{max(args.lists, args.feeds)}", timeout=60)
    t0 = time.perf_counter()
    filled = aggregator(config, "run", "--once", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert filled.wait(timeout=600) == 0, "run --once failed"
    print(f"store filled by run --once in {time.perf_counter() - t0:.1f}s: {args.lists} lists, {args.feeds} feeds")
    out = tmp / "serve.out"
    with out.open("wb") as fh:
        server = aggregator(config, "--log-level", "WARNING", "serve", "--port", "0", stdout=fh, stderr=fh)
    try:
        deadline = time.monotonic() + 60
        while "serving on " not in out.read_text(errors="replace"):
            assert server.poll() is None and time.monotonic() < deadline, out.read_text(errors="replace")
            time.sleep(0.05)
        url = out.read_text(errors="replace").split("serving on ", 1)[1].split()[0].rstrip("/")
        print(f"{'path':<34} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'bytes':>8}")
        for path in PATHS:
            count, latencies, size = asyncio.run(hammer(url, path, args.seconds, args.concurrency))
            cuts = statistics.quantiles(latencies, n=100)
            print(
                f"{path:<34} {count / args.seconds:>7.0f} {statistics.median(latencies) * 1000:>7.1f} "
                f"{cuts[98] * 1000:>7.1f} {size:>8}"
            )
        status = Path(f"/proc/{server.pid}/status").read_text()
        peak = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
        print(f"serve peak RSS: {int(peak) / 1024:.0f} MB ({args.concurrency} clients at once)")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        proc.terminate()


if __name__ == "__main__":
    main()
