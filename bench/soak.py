"""Soak benchmark: the real daemon, many short-interval sources, resources sampled every minute.

    python bench/soak.py [--sources 100] [--interval 2s] [--minutes 5] [--every 60] [--size 30]

A payload server on 127.0.0.1 (a thread of this process) serves one NewsNow list per
source; each list walks through a fixed pool of titles, so ranks move every poll while
the set of items stays bounded (a soak measures leaks, not the growth of history). The
daemon runs as `aggregator run` in a subprocess on a fresh SQLite file, with short
retention windows (`--retention`, default 2m, run every 30s) so that pruning happens
during the run. Every `--every` seconds it prints the daemon's RSS and open file
descriptors, the sizes of the database and its WAL, rows in observations and polls,
polls per second and what `aggregator health` says; at the end the first and last
steady-state samples side by side. Not a test: figures go to the README.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aggregator.settings import parse_duration  # noqa: E402

# Titles a list cycles through: twice the list size, so every poll moves ranks and a few
# titles leave and come back, while items stay bounded at POOL_FACTOR x size per source.
POOL_FACTOR = 2
# Random two-character "words" from the common CJK block: titles that look different to
# the near-duplicate matcher, as real ones mostly do.
_RNG = random.Random(20261201)
WORDS = ["".join(chr(_RNG.randint(0x4E00, 0x62FF)) for _ in range(2)) for _ in range(2000)]


def pool(source: int, size: int) -> list[str]:
    rng = random.Random(source)
    return [f"{''.join(rng.sample(WORDS, 5))} {source}-{k}" for k in range(size * POOL_FACTOR)]


def list_body(source: int, size: int, step: int, pools: dict[int, list[str]]) -> bytes:
    titles = pools.setdefault(source, pool(source, size))
    start = step % len(titles)
    chosen = [titles[(start + k) % len(titles)] for k in range(size)]
    items: list[dict[str, Any]] = []
    for rank, title in enumerate(chosen, start=1):
        entry: dict[str, Any] = {
            "id": f"{source}/{title}",
            "title": title,
            "url": f"https://hot.example/{source}/{rank}",
        }
        if source % 2 == 0:
            entry["extra"] = {"info": f"{(size - rank + 1) * 13.7:.1f}万热度"}
        items.append(entry)
    return json.dumps({"status": "success", "id": f"s{source}", "items": items}, ensure_ascii=False).encode()


def start_server(size: int, interval_s: float) -> tuple[ThreadingHTTPServer, int]:
    pools: dict[int, list[str]] = {}
    lock = threading.Lock()
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            try:
                source = int(self.path.rsplit("/", 1)[1])
            except ValueError:
                self.send_error(404)
                return
            step = int((time.monotonic() - started) / interval_s)
            with lock:
                body = list_body(source, size, step, pools)
            self.send_response(200)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def write_settings(folder: Path, port: int, args: argparse.Namespace) -> Path:
    keep = args.retention
    lines = [
        "[store]",
        f'data_dir = "{folder / "data"}"',
        "[http]",
        "per_host_limit = 16",
        "[daemon]",
        'startup_spread = "5s"',
        "[fulltext]",
        "enabled = false",  # the lists link to hot.example: nothing to fetch without internet
        "[retention]",
        f'observations = "{keep}"',
        f'polls = "{keep}"',
        f'scores = "{keep}"',
        f'content = "{keep}"',
        'every = "30s"',
        "[health]",
        'heartbeat_every = "10s"',
        'stale_after = "1m"',
    ]
    for i in range(args.sources):
        lines += [
            "[[sources]]",
            f'id = "soak-{i}"',
            'kind = "newsnow"',
            f'interval = "{args.interval}"',
            f'url = "http://127.0.0.1:{port}/nn/{i}"',
        ]
    path = folder / "soak.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def size_mib(path: Path) -> float:
    return path.stat().st_size / 2**20 if path.exists() else 0.0


def counts(db: Path) -> tuple[int, int, int]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        polls, last = con.execute("SELECT count(*), coalesce(max(id), 0) FROM polls").fetchone()
        obs = con.execute("SELECT count(*) FROM observations").fetchone()[0]
        return int(obs), int(polls), int(last)
    finally:
        con.close()


def health(config: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "aggregator", "--config", str(config), "health"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    return f"{done.returncode} {done.stdout.strip()[:80]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=100)
    parser.add_argument("--interval", default="2s", help="every source's poll interval")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between two samples")
    parser.add_argument("--size", type=int, default=30, help="entries per list")
    parser.add_argument("--retention", default="2m", help="observations, polls and scores older than this go")
    args = parser.parse_args()
    interval_s = parse_duration(args.interval)
    server, port = start_server(args.size, interval_s)
    folder = Path(tempfile.mkdtemp(prefix="agg-soak-"))
    config = write_settings(folder, port, args)
    db = folder / "data" / "aggregator.db"
    wal = db.with_name(db.name + "-wal")
    log_path = folder / "daemon.log"
    print(
        f"{args.sources} NewsNow sources every {args.interval}, {args.size} entries each, retention {args.retention}; "
        f"store {db}, daemon log {log_path}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "--config", str(config), "run"],
            stdout=log,
            stderr=log,
            env=env,
            cwd=ROOT,
        )
        samples = []
        try:
            print(
                f"{'min':>5} {'RSS MiB':>8} {'fds':>4} {'db MiB':>7} {'WAL MiB':>8} {'observations':>12} {'polls':>7} "
                f"{'polls/s':>7}  health"
            )
            started = time.monotonic()
            last_id, last_t = 0, started
            deadline = started + args.minutes * 60
            next_at = started + args.every
            while time.monotonic() < deadline:
                time.sleep(max(0.0, min(next_at, deadline) - time.monotonic()))
                if proc.poll() is not None:
                    raise SystemExit(f"the daemon exited with {proc.returncode}; see {log_path}")
                now = time.monotonic()
                obs, polls, newest = counts(db)
                rate = (newest - last_id) / (now - last_t)
                last_id, last_t = newest, now
                sample = (rss_mib(proc.pid), fd_count(proc.pid), size_mib(db), size_mib(wal), obs, polls)
                samples.append(sample)
                rss, fds, db_mib, wal_mib = sample[:4]
                minute = (now - started) / 60
                print(
                    f"{minute:>5.1f} {rss:>8.1f} {fds:>4} {db_mib:>7.1f} {wal_mib:>8.1f} "
                    f"{obs:>12} {polls:>7} {rate:>7.1f}  {health(config)}",
                    flush=True,
                )
                next_at += args.every
        finally:
            stop_started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
            server.shutdown()
    errors = sum(1 for line in log_path.read_text().splitlines() if " WARNING " in line or " ERROR " in line)
    stop_s = time.monotonic() - stop_started
    print(f"daemon stopped with exit status {code} in {stop_s:.1f}s; {errors} warning/error lines in its log")
    if len(samples) >= 3:
        first, last = samples[len(samples) // 2], samples[-1]  # from half-way: retention is in force
        names = ("RSS MiB", "fds", "db MiB", "WAL MiB", "observations", "polls")
        pairs = ", ".join(f"{n} {a:.1f} -> {b:.1f}" for n, a, b in zip(names, first, last, strict=True))
        print(f"steady state, first vs last sample: {pairs}")


if __name__ == "__main__":
    main()
