"""The SIGKILL harness: start the real daemon, kill it at a random moment while it ingests, check the store.

Used by tests/faults/test_crash.py (25+ rounds) and bench/crash.py (as many as asked).
Each round starts `python -m aggregator run` on the same SQLite file, waits until a
random number of new polls is visible, waits a random 0–300 ms more, sends SIGKILL,
then checks the file:
- PRAGMA integrity_check is "ok" and PRAGMA foreign_key_check finds nothing;
- every poll the daemon logged as committed ("... [poll N]") is in the store;
- no poll is half-written: an ok poll has exactly item_count observations, an error
  poll none, every observation has its poll and every item its story.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.faults.faultserver import FaultServer, rotating_list

# "poll crash-3 ok: 60 items (10 new, 0 dropped) in 0.02s [poll 118]", also "not modified".
_COMMITTED = re.compile(r"poll (\S+) (?:ok: \d+ items|not modified).*\[poll (\d+)\]")
REPO = Path(__file__).resolve().parents[2]


def daemon_config(
    workdir: Path,
    server: FaultServer,
    *,
    sources: int = 6,
    items: int = 200,
    new_per_poll: int = 40,
    fail_every: int = 7,
    interval: str = "1s",
    data_dir: Path | None = None,
    startup_spread: str = "0.5s",
    daemon_extra: str = "",
    extra: str = "",
) -> Path:
    """A settings file with `sources` NewsNow lists at `interval` on the fault server."""
    entries = []
    for i in range(sources):
        path = f"/crash/{i}"
        if path not in server.routes:
            server.route(path, rotating_list(items, new_per_poll, fail_every=fail_every, name=f"s{i}"))
        entries.append(
            f'[[sources]]\nid = "crash-{i}"\nkind = "newsnow"\nurl = "{server.url(path)}"\ninterval = "{interval}"\n'
        )
    text = f"""
[store]
data_dir = "{data_dir or workdir / "data"}"

[http]
timeout = "2s"
connect_timeout = "1s"

[daemon]
startup_spread = "{startup_spread}"
jitter = "0s"
rescore_every = "1s"
shutdown_grace = "2s"
{daemon_extra}

[fulltext]
enabled = false
{extra}
""" + "\n".join(entries)
    path = workdir / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")}
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "aggregator", "--config", str(config), "run"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            cwd=REPO,
        )


def connect_ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def poll_total(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = connect_ro(db)
    except sqlite3.OperationalError:
        return 0
    try:
        return int(conn.execute("SELECT count(*) FROM polls").fetchone()[0])
    except sqlite3.OperationalError:  # tables not there yet
        return 0
    finally:
        conn.close()


def committed_in_log(text: str) -> dict[int, str]:
    """Poll id → source id of every poll the daemon logged as committed."""
    return {int(m.group(2)): m.group(1) for m in _COMMITTED.finditer(text)}


def check_store(db: Path, reported: dict[int, str]) -> list[str]:
    """Everything wrong with the store after a kill (empty when all is well)."""
    if not db.exists():
        return [] if not reported else [f"{len(reported)} polls reported but no database"]
    conn = sqlite3.connect(db, timeout=10)  # read-write: a reader of a killed writer's WAL recovers it
    try:
        problems = []
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        if integrity != [("ok",)]:
            problems.append(f"integrity_check: {integrity[:5]}")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "polls" not in tables:
            return problems + ([f"{len(reported)} polls reported but no polls table"] if reported else [])
        fk = conn.execute("PRAGMA foreign_key_check").fetchall()
        if fk:
            problems.append(f"foreign_key_check: {fk[:5]}")
        polls = {r[0]: r[1:] for r in conn.execute("SELECT id, source_id, status, item_count FROM polls")}
        counts = dict(conn.execute("SELECT poll_id, count(*) FROM observations GROUP BY poll_id").fetchall())
        for poll_id, source_id in sorted(reported.items()):
            row = polls.get(poll_id)
            if row is None:
                problems.append(f"poll {poll_id} of {source_id} was reported committed but is missing")
            elif row[0] != source_id or row[1] not in ("ok", "not_modified"):
                problems.append(f"poll {poll_id} reported for {source_id} is {row}")
        for poll_id, (source_id, status, item_count) in polls.items():
            observed = counts.get(poll_id, 0)
            expected = item_count if status == "ok" else 0
            if observed != expected:
                problems.append(f"poll {poll_id} ({source_id}, {status}) has {observed} observations, not {expected}")
        orphans = set(counts) - set(polls)
        if orphans:
            problems.append(f"observations of missing polls: {sorted(orphans)[:5]}")
        storyless = conn.execute(
            "SELECT count(*) FROM items WHERE story_id NOT IN (SELECT id FROM stories)"
        ).fetchone()[0]
        if storyless:
            problems.append(f"{storyless} items without their story")
        return problems
    finally:
        conn.close()


@dataclass
class Round:
    index: int
    target: int  # new polls waited for before the kill
    extra_ms: float  # random wait after that
    polls_before: int
    polls_at_kill: int
    polls_after: int
    reported: int  # polls the round's daemon logged as committed
    in_flight: int  # lists fetched but not committed when the kill came
    seconds: float
    problems: list[str] = field(default_factory=list)


@dataclass
class CrashHarness:
    workdir: Path
    server: FaultServer
    seed: int = 0
    sources: int = 6
    max_new_polls: int = 6
    max_extra_ms: float = 300.0
    wait_s: float = 30.0
    rng: random.Random = field(init=False)
    config: Path = field(init=False)
    rounds: list[Round] = field(default_factory=list)
    reported: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = daemon_config(self.workdir, self.server, sources=self.sources)

    def _fetched(self) -> int:
        return sum(n for path, n in self.server.hits.items() if path.startswith("/crash/"))

    @property
    def db(self) -> Path:
        return self.workdir / "data" / "aggregator.db"

    def run_round(self) -> Round:
        index = len(self.rounds)
        log = self.workdir / f"round-{index:03d}.log"
        before = poll_total(self.db)
        fetched_before = self._fetched()
        target = self.rng.randint(0, self.max_new_polls)
        extra_ms = self.rng.uniform(0, self.max_extra_ms)
        started = time.monotonic()
        proc = start_daemon(self.config, log)
        problems: list[str] = []
        try:
            deadline = started + self.wait_s
            while poll_total(self.db) < before + target:
                if proc.poll() is not None:
                    problems.append(f"daemon exited by itself with {proc.returncode}: {log.read_text()[-500:]}")
                    break
                if time.monotonic() > deadline:
                    problems.append(f"no {target} new polls within {self.wait_s}s")
                    break
                time.sleep(0.01)
            time.sleep(extra_ms / 1000)  # the random moment of the kill
            at_kill = poll_total(self.db)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        text = log.read_text(encoding="utf-8", errors="replace")
        if "Traceback" in text:
            problems.append(f"traceback in the log of round {index}: {text[text.index('Traceback') :][:800]}")
        reported = committed_in_log(text)
        self.reported.update(reported)
        problems += check_store(self.db, self.reported)
        after = poll_total(self.db)
        result = Round(
            index,
            target,
            extra_ms,
            before,
            at_kill,
            after,
            len(reported),
            max(0, self._fetched() - fetched_before - (after - before)),
            time.monotonic() - started,
            problems,
        )
        self.rounds.append(result)
        return result
