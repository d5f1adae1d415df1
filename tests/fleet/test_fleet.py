"""Several daemons sharing sources on one PostgreSQL database (skipped without PostgreSQL)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import LoopbackServer, wait_for
from tests.fleet.tcpproxy import TcpProxy

SOURCES = 300
INTERVAL_S = 5.0
PAYLOAD = b'{"status":"success","id":"x","items":[{"id":"1","title":"one"},{"id":"2","title":"two"}]}'

pytestmark = pytest.mark.postgres


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    p = TcpProxy(("127.0.0.1", 5432))
    try:
        yield p
    finally:
        p.close()


def start(config: Path, name: str, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")}
    env["AGGREGATOR_DAEMON__INSTANCE_ID"] = name
    with log.open("wb") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "aggregator", "--config", str(config), "run"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_three_daemons_poll_each_source_once_per_interval(
    tmp_path: Path, http_server: LoopbackServer, pg_url: str, proxy: TcpProxy
) -> None:
    paths = [f"/api/s?id=s{i}&latest" for i in range(SOURCES)]
    for path in paths:
        http_server.route(path, PAYLOAD)
    url = make_url(pg_url).set(port=proxy.port).render_as_string(hide_password=False)
    sources = "".join(
        f'[[sources]]\nid = "s{i}"\nkind = "newsnow"\nurl = "{http_server.url(path)}"\ninterval = "{INTERVAL_S}s"\n'
        for i, path in enumerate(paths)
    )
    config = tmp_path / "settings.toml"
    config.write_text(
        f'[store]\nurl = "{url}"\npool_size = 4\n[daemon]\nstartup_spread = "{INTERVAL_S}s"\n'
        f'rescore_every = "5s"\n[fulltext]\nenabled = false\n{sources}',
        encoding="utf-8",
    )
    procs = [start(config, f"inst-{n}", tmp_path / f"inst-{n}.log") for n in range(3)]
    try:
        # Steady state: every source polled, then measured over several intervals.
        wait_for(lambda: all(http_server.hits[p] >= 2 for p in paths), timeout_s=60)
        t0 = time.monotonic()
        wait_for(lambda: time.monotonic() - t0 > 3 * INTERVAL_S, timeout_s=30)
        end = time.monotonic()
        window = {p: [t for t in http_server.times[p] if t >= t0] for p in paths}
        # Twice within one interval would be a double poll; jitter moves a run by at most a quarter.
        doubles = [p for p, ts in window.items() if any(g < 0.5 * INTERVAL_S for g in gaps(ts))]
        # A source may be late by one interval of slack, never more.
        missed = [p for p, ts in window.items() if not ts or max(gaps([t0, *ts, end])) > 2 * INTERVAL_S]
        assert doubles == [], f"{len(doubles)} sources polled twice within an interval"
        assert missed == [], f"{len(missed)} sources missed an interval"
        # One instance dies: the others take its sources within one interval.
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=10)
        killed_at = time.monotonic()
        wait_for(
            lambda: all(any(t > killed_at + 0.5 for t in http_server.times[p]) for p in paths), timeout_s=3 * INTERVAL_S
        )
        taken_over = max(min(t for t in http_server.times[p] if t > killed_at + 0.5) for p in paths) - killed_at
        assert taken_over < 2 * INTERVAL_S + 1.0
        # PostgreSQL goes away for a few seconds: polls fail and back off, then recover.
        proxy.cut()
        cut_at = time.monotonic()
        wait_for(lambda: time.monotonic() - cut_at > 4.0, timeout_s=10)
        proxy.restore()
        restored_at = time.monotonic()
        wait_for(lambda: all(any(t > restored_at for t in http_server.times[p]) for p in paths), timeout_s=45)
        assert all(p.poll() is None for p in procs[1:])  # they kept running
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=25)
            except subprocess.TimeoutExpired:
                p.kill()
    assert [p.returncode for p in procs[1:]] == [0, 0]
    logs = (tmp_path / "inst-1.log").read_text(errors="replace")
    assert "[inst-1]" in logs
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")}
    shown = subprocess.run(
        [sys.executable, "-m", "aggregator", "--config", str(config), "sources"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    holders = {line.split()[0]: line for line in shown.stdout.splitlines()[1:]}
    assert any("inst-1" in line or "inst-2" in line for line in holders.values())
