"""Crash benchmark: SIGKILL the real daemon at random moments while it ingests, many rounds.

    python bench/crash.py [--rounds 200] [--sources 6] [--seed 1] [--keep DIR]

Each round starts `python -m aggregator run` on the same SQLite file (six NewsNow lists
of 200 entries at 1 s, 40 new entries a poll, every 7th answer a 500) served from
127.0.0.1, waits for 0–6 new polls and a random 0–300 ms more, then SIGKILLs it and
checks the file (integrity_check, foreign_key_check, every poll the daemon logged as
committed present, no poll half-written; see tests/faults/crashharness.py). Prints the
failures found (there should be none) and how the kills fell.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.faults.crashharness import CrashHarness
from tests.faults.faultserver import FaultServer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--sources", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary directory)")
    args = parser.parse_args()
    server = FaultServer().start()
    temp = None
    if args.keep:
        workdir = Path(args.keep)
    else:
        temp = tempfile.TemporaryDirectory(prefix="aggregator-crash-")
        workdir = Path(temp.name)
    started = time.monotonic()
    try:
        harness = CrashHarness(workdir, server, seed=args.seed, sources=args.sources)
        failed = 0
        for i in range(args.rounds):
            result = harness.run_round()
            if result.problems:
                failed += 1
                print(f"round {i}: {'; '.join(result.problems)[:2000]}", flush=True)
            elif (i + 1) % 25 == 0:
                print(f"{i + 1} rounds, {result.polls_after} polls, no problem so far", flush=True)
        rounds = harness.rounds
        seconds = [r.seconds for r in rounds]
        total = rounds[-1].polls_after
        unlogged = sum(r.polls_after - r.polls_before - r.reported for r in rounds)
        in_flight = sum(r.in_flight for r in rounds)
        mid_poll = sum(1 for r in rounds if r.in_flight or r.polls_after - r.polls_before > r.reported)
        db = harness.db
        wal = db.with_name(db.name + "-wal")
        print()
        print(f"rounds                          {len(rounds)} in {time.monotonic() - started:.0f}s (seed {args.seed})")
        print(f"rounds with a problem           {failed}")
        print(f"polls in the store              {total}")
        print(f"polls logged as committed       {len(harness.reported)} (all present: {failed == 0})")
        print(f"committed, killed before log    {unlogged}")
        print(f"fetched, killed before commit   {in_flight}")
        print(f"rounds killed mid-poll          {mid_poll}")
        print(f"kills before the first poll     {sum(1 for r in rounds if r.polls_after == r.polls_before)}")
        print(
            f"seconds per round               mean {statistics.mean(seconds):.2f}, "
            f"median {statistics.median(seconds):.2f}, max {max(seconds):.2f}"
        )
        size = db.stat().st_size if db.exists() else 0
        wal_size = wal.stat().st_size if wal.exists() else 0
        print(f"database / WAL                  {size / 2**20:.1f} MiB / {wal_size / 2**20:.1f} MiB")
        return 1 if failed else 0
    finally:
        server.stop()
        if temp is not None:
            temp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
