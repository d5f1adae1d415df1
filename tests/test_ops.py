"""Running for months: health, heartbeats, retention, backups, checks, refusals and log lines."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from aggregator.daemon import Daemon
from aggregator.errors import ConfigError, StoreError
from aggregator.health import Heartbeat, choose_heartbeat, decide
from aggregator.logs import JsonFormatter, TextFormatter
from aggregator.settings import RetentionSettings, ScoreSettings, load_settings
from aggregator.store import PollWrite, Store
from aggregator.store.engine import head_revision
from aggregator.store.maintenance import (
    CONTENT_PRUNED,
    apply_retention,
    backup_sqlite,
    write_heartbeat,
)
from aggregator.store.schema import items, meta, observations, polls, stories, story_scores
from tests.conftest import LoopbackServer, wait_for
from tests.test_daemon import _start_daemon, cli, query, serve_defaults, settings_file
from tests.test_store import T0, open_store, poll_write

HOST = socket.gethostname()
NOW = datetime(2027, 3, 1, 12, 0, 0, tzinfo=UTC)


def beat(
    age_s: float = 10,
    running: bool = True,
    total: int = 3,
    failing: int = 0,
    instance: str = "",
    now: datetime = NOW,
) -> Heartbeat:
    return Heartbeat(now - timedelta(seconds=age_s), instance or f"{HOST}:4242", 4242, running, total, failing)


# -- the decision ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("heartbeat", "problem", "ok", "reason"),
    [
        (beat(10), None, True, r"^ok: daemon \S+:4242 heartbeat 10s ago, 3 sources, 0 failing$"),
        (beat(300), None, True, r"^ok: "),  # exactly at the limit is still fresh
        (beat(301), None, False, r"^heartbeat is stale: last one 5m ago .* \(limit 5m\)"),
        (beat(3 * 3600), None, False, r"^heartbeat is stale: last one 3\.0h ago"),
        (beat(10, running=False), None, False, r"is stopped \(scheduler not running since 10s ago\)"),
        (beat(10, failing=3), None, False, r"^all 3 sources are failing"),
        (beat(10, failing=2), None, True, r"2 failing$"),
        (beat(10, total=0), None, True, r"0 sources"),
        (None, None, False, r"^no heartbeat in the store"),
        (beat(10), "database is locked", False, r"^store not writable: database is locked$"),
    ],
)
def test_decide(heartbeat: Heartbeat | None, problem: str | None, ok: bool, reason: str) -> None:
    got_ok, got_reason = decide(heartbeat, NOW, 300.0, problem)
    assert got_ok is ok
    assert re.search(reason, got_reason), got_reason
    assert "\n" not in got_reason


def test_choose_heartbeat_by_instance_then_host() -> None:
    old = beat(100, instance=f"{HOST}:1")
    new = beat(5, instance=f"{HOST}:2")
    other_host = beat(1, instance="elsewhere:3")
    named = beat(50, instance="collector-a")
    beats = [old, new, other_host, named]
    assert choose_heartbeat(beats, "", HOST) == new  # the newest of this host
    assert choose_heartbeat(beats, "collector-a", HOST) == named
    assert choose_heartbeat(beats, "collector-b", HOST) is None
    assert choose_heartbeat([other_host], "", HOST) is None


def test_heartbeat_json_round_trip() -> None:
    b = beat(7, failing=1)
    assert Heartbeat.from_json(b.to_json()) == b
    assert json.loads(b.to_json())["at"] == "2027-03-01T11:59:53+00:00"
    with pytest.raises(ValueError, match="not a heartbeat"):
        Heartbeat.from_json('{"at": "yesterday"}')


def test_retention_and_health_settings(tmp_path: Path) -> None:
    defaults = load_settings(environ={})
    assert (defaults.retention.observations, defaults.retention.polls) == (90 * 86400.0, 90 * 86400.0)
    assert (defaults.retention.content, defaults.retention.scores) == (30 * 86400.0, 30 * 86400.0)
    assert (defaults.retention.every, defaults.retention.batch) == (86400.0, 5000)
    assert (defaults.health.stale_after, defaults.health.heartbeat_every) == (300.0, 30.0)
    env = {"AGGREGATOR_RETENTION__OBSERVATIONS": "0", "AGGREGATOR_HEALTH__STALE_AFTER": "2m"}
    overridden = load_settings(environ=env)
    assert overridden.retention.observations == 0.0 and overridden.health.stale_after == 120.0
    with pytest.raises(ConfigError, match="stale_after must be at least twice heartbeat_every") as info:
        load_settings(environ={"AGGREGATOR_HEALTH__HEARTBEAT_EVERY": "3m"})
    assert info.value.key == "health"
    with pytest.raises(ConfigError, match=r"retention\.batch"):
        load_settings(environ={"AGGREGATOR_RETENTION__BATCH": "10"})


# -- `aggregator health` in each state --------------------------------------------------


def health_config(tmp_path: Path, busy_timeout: str = "10s") -> Path:
    path = tmp_path / "health.toml"
    path.write_text(
        f'[store]\ndata_dir = "{tmp_path / "data"}"\nbusy_timeout = "{busy_timeout}"\n\n[health]\nstale_after = "5m"\n'
    )
    return path


async def store_with(tmp_path: Path, *beats: Heartbeat) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'aggregator.db'}")
    try:
        for b in beats:
            assert await write_heartbeat(store, b)
    finally:
        await store.close()


def now_beat(age_s: float, running: bool = True, failing: int = 0, instance: str = "") -> Heartbeat:
    return beat(age_s, running, 3, failing, instance, datetime.now(UTC))


@pytest.mark.parametrize(
    ("beats", "code", "line"),
    [
        ([{"age_s": 5}], 0, r"^ok: daemon \S+:4242 heartbeat \d+s ago, 3 sources, 0 failing$"),
        ([{"age_s": 400}], 1, r"^unhealthy: heartbeat is stale: last one 7m ago"),
        ([{"age_s": 5, "running": False}], 1, r"^unhealthy: daemon \S+ is stopped"),
        ([{"age_s": 5, "failing": 3}], 1, r"^unhealthy: all 3 sources are failing"),
        ([], 1, r"^unhealthy: no heartbeat in the store"),
        ([{"age_s": 5, "instance": "elsewhere:1"}], 1, r"^unhealthy: no heartbeat"),
        # A crashed run's stale beat next to the restarted daemon's fresh one: the newest counts.
        ([{"age_s": 4000, "instance": f"{HOST}:1"}, {"age_s": 5, "instance": f"{HOST}:2"}], 0, r"^ok: daemon \S+:2 "),
    ],
    ids=["fresh", "stale", "stopped", "all-failing", "none", "other-host", "restarted"],
)
async def test_health_command_in_each_state(tmp_path: Path, beats: list[dict[str, Any]], code: int, line: str) -> None:
    await store_with(tmp_path, *(now_beat(**b) for b in beats))
    done = cli("health", config=health_config(tmp_path))
    assert done.returncode == code, done.stdout + done.stderr
    assert len(done.stdout.splitlines()) == 1 and re.search(line, done.stdout), done.stdout


def test_health_without_a_database_creates_nothing(tmp_path: Path) -> None:
    done = cli("health", config=health_config(tmp_path))
    assert done.returncode == 1
    assert done.stdout.startswith("unhealthy: no database at ") and "the daemon has not started" in done.stdout
    assert not (tmp_path / "data").exists()


async def test_health_when_the_store_is_locked(tmp_path: Path) -> None:
    await store_with(tmp_path, now_beat(5))
    holder = sqlite3.connect(tmp_path / "data" / "aggregator.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # a writer that never commits: every write waits, then fails
        done = cli("health", config=health_config(tmp_path, busy_timeout="0.3s"), timeout=30)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert done.returncode == 1
    assert done.stdout.strip() == "unhealthy: store not writable: database is locked"


async def test_health_when_the_store_file_is_read_only(tmp_path: Path) -> None:
    await store_with(tmp_path, now_beat(5))
    db = tmp_path / "data" / "aggregator.db"
    if os.geteuid() != 0:
        db.chmod(0o444)
    elif shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode:
        pytest.skip("running as root and chattr +i is not available here: a file root can write is not read-only")
    try:
        done = cli("health", config=health_config(tmp_path))
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(db)], check=True)
        db.chmod(0o644)
    assert done.returncode == 1
    assert done.stdout.startswith(f"unhealthy: store not writable: {db} is not writable by uid"), done.stdout


@pytest.mark.usefixtures("premigrated")
def test_health_of_a_running_daemon_whose_sources_all_fail(tmp_path: Path, http_server: LoopbackServer) -> None:
    extra = '\n[health]\nheartbeat_every = "1s"\nstale_after = "10s"\n'
    config = fast_config(tmp_path, http_server, 2, extra)
    http_server.route("/hot", "upstream down", status=503, headers={"Content-Type": "text/plain"})
    proc = _start_daemon(config)
    try:
        wait_for(lambda: db_ready(tmp_path, "SELECT count(DISTINCT source_id) FROM polls WHERE status = 'error'", 2))
        wait_for(lambda: cli("health", config=config).returncode == 1, timeout_s=15)
        done = cli("health", config=config)
    finally:
        stop(proc)
    assert re.fullmatch(r"unhealthy: all 2 sources are failing \(daemon \S+\)\n", done.stdout), done.stdout


# -- retention -------------------------------------------------------------------------

DAY = timedelta(days=1)
RETENTION_NOW = T0 + 150 * DAY  # the polls below run from T0 to T0 + 98 days
KEEP_TITLES = [f"常驻 {j}" for j in range(5)]


async def seed_history(store: Store) -> None:
    """50 weibo polls two days apart (5 items always listed, 5 new ones each time), each
    rescored (story_scores history, best ranks, peak scores), some failed zhihu polls, and
    full text for every item of the first and last polls."""
    for k in range(50):
        at = T0 + 2 * k * DAY
        titles = [*KEEP_TITLES, *(f"第{k}轮 新闻 {j}" for j in range(5))]
        if k % 2:
            titles.reverse()  # ranks move, so best_rank differs from last_rank
        written = await store.record_poll(poll_write("weibo", titles, at))
        assert written.new_count == (10 if k == 0 else 5)
        if k % 10 == 0:
            await store.record_poll(
                PollWrite("zhihu", at - timedelta(seconds=5), at, "error", 503, error_kind="http_5xx", error="HTTP 503")
            )
        await store.rescore(at + timedelta(minutes=1), ScoreSettings())
    first, last = await poll_item_ids(store)
    for item_id in first | last:
        await store.record_content(item_id, "ok", f"全文 {item_id}", None, T0, None)


async def poll_item_ids(store: Store) -> tuple[set[int], set[int]]:
    async with store.engine.connect() as conn:
        lo, hi = (await conn.execute(sa.select(sa.func.min(polls.c.id), sa.func.max(polls.c.id)))).one()
        ids = []
        for poll_id in (lo, hi):
            q = sa.select(observations.c.item_id).where(observations.c.poll_id == poll_id)
            ids.append({r[0] for r in await conn.execute(q)})
    return ids[0], ids[1]


async def summaries(store: Store) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    async with store.engine.connect() as conn:
        item_rows = await conn.execute(
            sa.select(
                items.c.id, items.c.story_id, items.c.first_seen_at, items.c.last_seen_at, items.c.best_rank,
                items.c.last_rank,
            ).order_by(items.c.id)
        )  # fmt: skip
        story_rows = await conn.execute(
            sa.select(
                stories.c.id, stories.c.title, stories.c.first_seen_at, stories.c.last_seen_at, stories.c.peak_score,
                stories.c.source_count,
            ).order_by(stories.c.id)
        )  # fmt: skip
        return [tuple(r) for r in item_rows], [tuple(r) for r in story_rows]


async def scalar(store: Store, q: Any) -> Any:
    async with store.engine.connect() as conn:
        return (await conn.execute(q)).scalar()


async def test_retention_keeps_summaries_and_removes_old_rows(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        await seed_history(store)
        items_before, stories_before = await summaries(store)
        assert len(items_before) == 5 + 50 * 5
        assert max(s[4] for s in stories_before) == 100.0  # peak 热度 recorded by rescoring
        first_items, last_items = await poll_item_ids(store)
        old_beat = beat(0, instance="gone:1", now=RETENTION_NOW - 8 * DAY)
        await write_heartbeat(store, old_beat)
        await write_heartbeat(store, beat(0, now=RETENTION_NOW))
        settings = RetentionSettings(observations="90d", polls="90d", content="60d", scores="90d", batch=100)
        old_scores = await scalar(
            store,
            sa.select(sa.func.count()).where(story_scores.c.scored_at < RETENTION_NOW - 90 * DAY),
        )

        report = await apply_retention(store, settings, RETENTION_NOW, pause_s=0)

        cutoff = RETENTION_NOW - 90 * DAY  # T0 + 60 days: polls 0..29 are older
        assert report.observations == 30 * 10
        assert report.polls == 30 + 3  # the emptied weibo polls and the failed zhihu polls before the cutoff
        assert report.batches >= 6  # 300 observations and 33 polls at most 100 rows (plus one poll) a batch
        assert report.heartbeats == 1
        assert await scalar(store, sa.select(sa.func.count()).select_from(observations)) == 20 * 10
        assert await scalar(store, sa.select(sa.func.min(observations.c.collected_at))) >= cutoff
        assert await scalar(store, sa.select(sa.func.min(polls.c.started_at))) >= cutoff - timedelta(seconds=5)
        assert await scalar(store, sa.select(sa.func.count()).select_from(polls)) == 20 + 2
        assert await scalar(store, sa.select(sa.func.min(story_scores.c.scored_at))) >= cutoff
        assert report.scores == old_scores > 0
        # Items and stories stay, with their summary untouched.
        assert await summaries(store) == (items_before, stories_before)
        # Full text: dropped for items last seen before T0 + 90 days, kept for the ones still listed.
        async with store.engine.connect() as conn:
            content = {
                r.id: (r.content, r.content_status)
                for r in await conn.execute(sa.select(items.c.id, items.c.content, items.c.content_status))
            }
            keys = {r[0] for r in await conn.execute(sa.select(meta.c.key))}
        dropped = first_items - last_items
        assert report.contents == len(dropped) == 5
        assert all(content[i] == (None, CONTENT_PRUNED) for i in dropped)
        assert all(content[i] == (f"全文 {i}", "ok") for i in last_items)
        assert old_beat.key not in keys and f"heartbeat:{HOST}:4242" in keys
        # The views still answer, from what is left.
        latest = await store.top(3)
        assert latest and latest[0]["score"] == 100.0
        async with store.engine.connect() as conn:
            listed = (
                await conn.execute(sa.text("SELECT count(*) FROM latest_lists WHERE source_id = 'weibo'"))
            ).scalar()
        assert listed == 10

        again = await apply_retention(store, settings, RETENTION_NOW, pause_s=0)
        assert (again.observations, again.polls, again.contents, again.scores, again.batches) == (0, 0, 0, 0, 0)
        stopped = await apply_retention(store, settings, RETENTION_NOW + 30 * DAY, pause_s=0, stop=lambda: True)
        assert stopped.batches == 0 and stopped.observations == 0
        kept = await apply_retention(store, RetentionSettings(observations=0, polls=0, content=0, scores=0), NOW)
        assert (kept.observations, kept.polls, kept.contents, kept.scores) == (0, 0, 0, 0)
    finally:
        await store.close()


async def test_retention_lets_polls_commit_between_batches(tmp_path: Path) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    try:
        for k in range(40):
            titles = [f"第{k}轮 {j}" for j in range(25)]
            await store.record_poll(poll_write("weibo", titles, T0 + k * timedelta(hours=1)))
        settings = RetentionSettings(observations="1d", polls="1d", content=0, scores=0, batch=100)
        retention = asyncio.create_task(apply_retention(store, settings, T0 + 30 * DAY, pause_s=0.01))
        committed_during = 0
        for k in range(5):
            await store.record_poll(poll_write("zhihu", [f"知乎 {k}"], T0 + 30 * DAY + k * timedelta(seconds=1)))
            committed_during += not retention.done()
        report = await retention
        assert report.observations == 40 * 25 and report.batches >= 10
        assert committed_during >= 3  # polls went in between retention's transactions
        assert await store.poll_count() == 5
    finally:
        await store.close()


async def test_daemon_schedules_heartbeat_and_retention(tmp_path: Path, http_server: LoopbackServer) -> None:
    config = settings_file(tmp_path, http_server, '\n[health]\nheartbeat_every = "15s"\nstale_after = "1m"\n')
    settings = load_settings(str(config), environ={})
    daemon = Daemon(settings)
    daemon._schedule(settings.sources, {})
    jobs = {job.id: job for job in daemon.scheduler.get_jobs()}
    for name in ("heartbeat", "retention"):
        assert jobs[name].coalesce is True and jobs[name].max_instances == 1
    assert jobs["heartbeat"].trigger.interval == timedelta(seconds=15)
    # The beat counts the sources polled now (a reload may change them), not those at start.
    assert [s.id for s in daemon.chosen] == ["weibo", "zhihu", "solidot"]
    assert jobs["retention"].trigger.interval == timedelta(days=1)
    off = load_settings(str(config), environ={"AGGREGATOR_RETENTION__EVERY": "0"})
    quiet = Daemon(off)
    quiet._schedule(off.sources, {})
    assert "retention" not in {job.id for job in quiet.scheduler.get_jobs()}


def fast_config(tmp_path: Path, server: LoopbackServer, count: int, extra: str = "") -> Path:
    """Settings with `count` NewsNow sources polled every second, all served Zhihu's recorded list."""
    url = server.serve_file("/hot", "newsnow/zhihu.json")
    text = f'[store]\ndata_dir = "{tmp_path / "data"}"\n\n[daemon]\nstartup_spread = "0s"\njitter = "0s"\n{extra}'
    for i in range(count):
        text += f'\n[[sources]]\nid = "hot-{i}"\nkind = "newsnow"\ninterval = "1s"\nurl = "{url}?s={i}"\n'
    path = tmp_path / "fast.toml"
    path.write_text(text)
    return path


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def db_ready(tmp_path: Path, sql: str, minimum: int) -> bool:
    if not (tmp_path / "data" / "aggregator.db").exists():
        return False
    try:
        return int(query(tmp_path, sql)[0][0] or 0) >= minimum
    except sqlite3.OperationalError:
        return False  # the schema is not there yet


@pytest.mark.usefixtures("premigrated")
def test_daemon_prunes_while_it_runs(tmp_path: Path, http_server: LoopbackServer) -> None:
    extra = '\n[retention]\nobservations = "2s"\npolls = "2s"\nevery = "1s"\nbatch = 100\n'
    proc = _start_daemon(fast_config(tmp_path, http_server, 4, extra))
    try:
        wait_for(lambda: db_ready(tmp_path, "SELECT min(id) FROM polls", 5), timeout_s=30)  # the first polls are gone
        rows = query(
            tmp_path,
            "SELECT count(*), min(collected_at) >= datetime('now', '-5 seconds') FROM observations",
        )
        assert rows[0][0] > 0 and rows[0][1] == 1
        assert query(tmp_path, "SELECT count(*) FROM items") == [(3 * 4,)]  # every item kept its row
        assert query(tmp_path, "SELECT count(*) FROM items WHERE best_rank IS NULL") == [(0,)]
    finally:
        err = stop(proc)
    assert "retention: removed" in err and "_retention_job" not in err and "retention failed" not in err, err


# -- backups and checks ----------------------------------------------------------------


def polls_of(db: Path, up_to: int) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(
            "SELECT p.id, p.source_id, p.status, p.item_count, "
            "(SELECT count(*) FROM observations o WHERE o.poll_id = p.id) FROM polls p WHERE p.id <= ? ORDER BY p.id",
            (up_to,),
        ).fetchall()
    finally:
        con.close()


@pytest.mark.usefixtures("premigrated")
def test_backup_under_concurrent_writes(tmp_path: Path, http_server: LoopbackServer) -> None:
    config = fast_config(tmp_path, http_server, 30)
    live = tmp_path / "data" / "aggregator.db"
    proc = _start_daemon(config)
    try:
        wait_for(lambda: db_ready(tmp_path, "SELECT count(*) FROM polls", 30), timeout_s=30)
        copies = []
        for n in range(3):
            committed = query(tmp_path, "SELECT max(id) FROM polls")[0][0]
            target = tmp_path / f"backup-{n}.db"
            done = cli("db", "backup", str(target), config=config)
            assert done.returncode == 0, done.stderr
            assert re.match(rf"backup of {re.escape(str(live))} written to {re.escape(str(target))}: ", done.stdout)
            copies.append((target, committed))
            wait_for(lambda c=committed: db_ready(tmp_path, "SELECT max(id) FROM polls", c + 5), timeout_s=30)
    finally:
        stop(proc)
    for target, committed in copies:
        copy = sqlite3.connect(target)
        try:
            assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # one self-contained file
            newest = copy.execute("SELECT max(id) FROM polls").fetchone()[0]
        finally:
            copy.close()
        assert not Path(f"{target}-wal").exists()
        assert newest >= committed
        in_copy = polls_of(target, newest)
        assert polls_of(live, committed) == in_copy[: len(polls_of(live, committed))]  # every committed poll
        assert in_copy == polls_of(live, newest)  # and the copy is exactly the database as of one commit
        assert all(p[3] == p[4] for p in in_copy if p[2] == "ok")  # no poll without all its observations


async def test_backup_refuses_to_overwrite_and_names_a_dated_file_in_a_directory(tmp_path: Path) -> None:
    await store_with(tmp_path, now_beat(5))
    config = health_config(tmp_path)
    target = tmp_path / "copy.db"
    target.write_bytes(b"keep me")
    refused = cli("db", "backup", str(target), config=config)
    assert refused.returncode == 2 and "exists; choose another name, or pass --force" in refused.stderr
    assert target.read_bytes() == b"keep me"
    forced = cli("db", "backup", "--force", str(target), config=config)
    assert forced.returncode == 0, forced.stderr
    assert sqlite3.connect(target).execute("SELECT count(*) FROM aggregator_meta").fetchone()[0] >= 2
    folder = tmp_path / "backups"
    folder.mkdir()
    dated = cli("db", "backup", str(folder), config=config)
    assert dated.returncode == 0, dated.stderr
    [made] = folder.iterdir()
    assert re.fullmatch(r"aggregator-\d{8}T\d{6}Z\.db", made.name)
    assert not list(tmp_path.glob(".*partial*")) and not list(folder.glob(".*partial*"))
    with pytest.raises(StoreError, match="is the live database itself"):
        backup_sqlite(tmp_path / "data" / "aggregator.db", tmp_path / "data" / "aggregator.db", overwrite=True)


async def test_db_check_reports_the_schema_and_finds_damage(tmp_path: Path) -> None:
    await store_with(tmp_path, now_beat(5))
    config = health_config(tmp_path)
    db = tmp_path / "data" / "aggregator.db"
    good = cli("db", "check", config=config)
    assert good.returncode == 0, good.stderr
    assert f"database: {db} (" in good.stdout
    assert f"schema revision: {head_revision()} (this aggregator's head: {head_revision()}, up to date)" in good.stdout
    assert "integrity_check: ok" in good.stdout and "foreign_key_check: ok" in good.stdout
    assert "quick_check: ok" in cli("db", "check", "--quick", config=config).stdout
    # Damage an index page (its rows stay readable) and the check must say so.
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'ix_polls_source_status'").fetchone()[0]
    con.close()
    with db.open("r+b") as fh:
        fh.seek((root - 1) * page_size)
        fh.write(b"\x0d" + b"\xff" * 64)  # a leaf table page header where an index page was
    bad = cli("db", "check", config=config)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "integrity_check: " in bad.stdout and "integrity_check: ok" not in bad.stdout


# -- refusals --------------------------------------------------------------------------


def foreign_db(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO customers (name) VALUES ('ada')")
    db.commit()
    db.close()


async def newer_db(path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    await store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE alembic_version SET version_num = '9999'")
    db.commit()
    db.close()


@pytest.mark.parametrize("kind", ["foreign", "newer"])
async def test_refuses_a_foreign_or_newer_database_and_leaves_it_untouched(tmp_path: Path, kind: str) -> None:
    db = tmp_path / "data" / "aggregator.db"
    db.parent.mkdir()
    if kind == "foreign":
        foreign_db(db)
        message = "not an aggregator database; refusing to touch it"
    else:
        await newer_db(db)
        message = "which this version of aggregator does not know (it was written by a newer version)"
    before = db.read_bytes()
    config = health_config(tmp_path)
    commands = ((("run",), 2), (("run", "--once"), 2), (("db", "upgrade"), 2), (("db", "check"), 2), (("health",), 1))
    for args, code in commands:
        done = cli(*args, config=config)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        assert message in done.stdout + done.stderr, (args, done.stdout, done.stderr)
        assert len((done.stdout + done.stderr).strip().splitlines()) == 1, (args, done.stdout, done.stderr)
    done = cli("db", "backup", str(tmp_path / "copy.db"), config=config)
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "copy.db").exists()
    assert db.read_bytes() == before
    # Read-only checks of a WAL database may leave an empty -wal (and its -shm index): no change of any page.
    wal = db.with_name("aggregator.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0


# -- log lines -------------------------------------------------------------------------

FORGED = "poll weibo ok\n2027-03-01T12:00:00Z ERROR   aggregator.daemon: forged\r\x1b[1A\u2028"


@pytest.mark.parametrize("formatter", [TextFormatter("host:1"), JsonFormatter("host:1")], ids=["text", "json"])
def test_upstream_text_cannot_forge_log_lines(formatter: logging.Formatter) -> None:
    record = logging.LogRecord("aggregator.poll", logging.WARNING, __file__, 1, "poll %s: %s", ("weibo", FORGED), None)
    try:
        raise ValueError(FORGED)
    except ValueError:
        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line
    if isinstance(formatter, JsonFormatter):
        entry = json.loads(line)
        assert entry["message"] == f"poll weibo: {FORGED}" and entry["instance"] == "host:1"
        assert entry["exception"].endswith(f"ValueError: {FORGED}")
    else:
        assert "\x1b" not in line and "\u2028" not in line
        assert line.count(" WARNING ") == 1 and "\\n2027-03-01T12:00:00Z ERROR" in line


@pytest.mark.usefixtures("premigrated")
def test_log_format_json_is_one_object_per_line(tmp_path: Path, http_server: LoopbackServer) -> None:
    # Upstream text (a page title) with a line break and a fake log line in it.
    title = "登录\n2027-03-01T12:00:00Z ERROR   aggregator.daemon: forged"
    serve_defaults(http_server)
    page = f"<html><title>{title}</title></html>"
    http_server.route("/api/s?id=weibo&latest", page, headers={"Content-Type": "text/html"})
    config = settings_file(tmp_path, http_server)
    done = cli("--log-format", "json", "run", "--once", config=config)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    entries = [json.loads(line) for line in lines]
    assert len(entries) >= 3 and all(e["time"] and e["level"] for e in entries)
    failed = [e for e in entries if e["message"].startswith("poll weibo failed")]
    assert len(failed) == 1 and "forged" in failed[0]["message"]
    assert not any(line.startswith("2027-03-01") for line in lines)
