"""The daemon end to end: the real CLI in a subprocess against a loopback HTTP server."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from aggregator.daemon import Daemon
from aggregator.settings import load_settings
from tests.conftest import DATA, LoopbackServer, wait_for


def settings_file(tmp_path: Path, server: LoopbackServer, extra: str = "") -> Path:
    text = f"""
[store]
data_dir = "{tmp_path / "data"}"

[daemon]
rescore_every = "1m"
startup_spread = "0s"

[[sources]]
id = "weibo"
kind = "newsnow"
url = "{server.url("/api/s?id=weibo&latest")}"

[[sources]]
id = "zhihu"
kind = "newsnow"
url = "{server.url("/api/s?id=zhihu&latest")}"

[[sources]]
id = "solidot"
kind = "feed"
name = "Solidot"
url = "{server.url("/solidot.rss")}"
{extra}
"""
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def serve_defaults(server: LoopbackServer) -> None:
    server.serve_file("/api/s?id=weibo&latest", "newsnow/weibo.json")
    server.serve_file("/api/s?id=zhihu&latest", "newsnow/zhihu.json")
    server.serve_file("/api/s?id=baidu&latest", "newsnow/baidu.json")
    server.serve_file("/solidot.rss", "feed/rss.xml", "application/rss+xml; charset=utf-8")


def cli(*args: str, config: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")}
    return subprocess.run(
        [sys.executable, "-m", "aggregator", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def query(tmp_path: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(f"file:{tmp_path / 'data' / 'aggregator.db'}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_run_once_stores_exact_lists(tmp_path: Path, http_server: LoopbackServer) -> None:
    serve_defaults(http_server)
    config = settings_file(tmp_path, http_server)
    done = cli("run", "--once", config=config)
    assert done.returncode == 0, done.stderr
    assert "3 of 3 sources ok" in done.stdout
    weibo = query(tmp_path, "SELECT rank, title, url, heat FROM latest_lists WHERE source_id='weibo' ORDER BY rank")
    assert [(r[0], r[1]) for r in weibo] == [
        (1, "某地暴雨致多条道路积水"),
        (2, "新款手机发布会定档"),
        (3, "演员 & 导演回应争议"),
        (4, "高考成绩今日公布"),
    ]
    assert all(r[3] is None for r in weibo)  # NewsNow's Weibo list carries no heat
    zhihu = query(
        tmp_path, "SELECT rank, title, url, heat, heat_raw FROM latest_lists WHERE source_id='zhihu' ORDER BY rank"
    )
    assert zhihu == [
        (1, "如何看待某地暴雨致多条道路积水？", "https://www.zhihu.com/question/19550225", 8_560_000.0, "856 万热度"),
        (
            2,
            "有哪些适合新手的编程语言？",
            "https://www.zhihu.com/question/1901192719428182699?utm_source=newsnow",
            1_230_000.0,
            "123 万热度",
        ),
        (3, "为什么今年冬天特别冷？", "https://www.zhihu.com/question/30000001", None, None),
    ]
    feed = query(tmp_path, "SELECT rank, title, url FROM latest_lists WHERE source_id='solidot' ORDER BY rank")
    assert feed == [
        (1, "开源数据库发布新版本", "https://www.solidot.org/story?sid=80001&utm_source=rss"),
        (2, "80° 广角镜头的新手机", http_server.url("/story?sid=80002")),
        (3, "科学家发现新的系外行星", "https://www.solidot.org/story?sid=80003"),
    ]
    polls = query(
        tmp_path,
        "SELECT source_id, status, http_status, item_count, new_count, dropped_count FROM polls ORDER BY source_id",
    )
    assert polls == [("solidot", "ok", 200, 3, 3, 0), ("weibo", "ok", 200, 4, 4, 1), ("zhihu", "ok", 200, 3, 3, 0)]
    ranked = query(tmp_path, "SELECT position, score FROM ranked_items ORDER BY position")
    assert ranked[0][1] == 100.0
    assert [r[1] for r in ranked] == sorted((r[1] for r in ranked), reverse=True)
    assert len(ranked) == 9  # Weibo's 暴雨 word and Zhihu's question about it are one story
    merged = query(
        tmp_path,
        "SELECT source_count, sources FROM ranked_items "
        "WHERE story_id = (SELECT story_id FROM items WHERE title = '某地暴雨致多条道路积水')",
    )
    assert merged == [(2, "NewsNow 微博, NewsNow 知乎")]

    top = cli("top", "--json", "--limit", "3", config=config)
    assert top.returncode == 0, top.stderr
    rows = json.loads(top.stdout)
    assert [r["position"] for r in rows] == [1, 2, 3] and rows[0]["score"] == 100.0
    table = cli("top", config=config)
    assert rows[0]["title"][:10] in table.stdout
    only = json.loads(cli("top", "--json", "--source", "solidot", config=config).stdout)
    assert {r["title"] for r in only} == {"开源数据库发布新版本", "80° 广角镜头的新手机", "科学家发现新的系外行星"}
    typo = cli("top", "--source", "solidott", config=config)
    assert typo.returncode == 2 and "no source 'solidott'" in typo.stderr and "solidot" in typo.stderr


def test_second_round_adds_observations_not_items(tmp_path: Path, http_server: LoopbackServer) -> None:
    serve_defaults(http_server)
    config = settings_file(tmp_path, http_server)
    assert cli("run", "--once", config=config).returncode == 0
    payload = json.loads((DATA / "newsnow/weibo.json").read_text())
    payload["items"] = [payload["items"][i] for i in (3, 0, 2, 1)]
    http_server.route("/api/s?id=weibo&latest", json.dumps(payload, ensure_ascii=False))
    assert cli("run", "--once", "--source", "weibo", config=config).returncode == 0
    assert query(tmp_path, "SELECT count(*) FROM items WHERE source_id='weibo'") == [(4,)]
    assert query(tmp_path, "SELECT count(*) FROM observations WHERE source_id='weibo'") == [(8,)]
    latest = query(tmp_path, "SELECT rank, title FROM latest_lists WHERE source_id='weibo' ORDER BY rank")
    assert [t for _, t in latest] == [
        "高考成绩今日公布",
        "某地暴雨致多条道路积水",
        "演员 & 导演回应争议",
        "新款手机发布会定档",
    ]
    history = query(
        tmp_path,
        "SELECT o.rank FROM observations o JOIN items i ON i.id = o.item_id "
        "WHERE i.title = '高考成绩今日公布' ORDER BY o.poll_id",
    )
    assert history == [(4,), (1,)]


def test_one_broken_source_does_not_stop_the_others(tmp_path: Path, http_server: LoopbackServer) -> None:
    serve_defaults(http_server)
    http_server.route(
        "/api/s?id=weibo&latest", "Internal Server Error", status=500, headers={"Content-Type": "text/plain"}
    )
    http_server.serve_file("/api/s?id=zhihu&latest", "newsnow/spa.html", "text/html; charset=utf-8")
    config = settings_file(tmp_path, http_server)
    done = cli("run", "--once", config=config)
    assert done.returncode == 1
    assert "1 of 3 sources ok" in done.stdout
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "http_5xx: HTTP 500" in lines["weibo"]
    assert "HTML page ('NewsNow') where NewsNow JSON was expected" in lines["zhihu"]
    polls = dict(query(tmp_path, "SELECT source_id, status FROM polls"))
    assert polls == {"weibo": "error", "zhihu": "error", "solidot": "ok"}
    assert query(tmp_path, "SELECT count(*) FROM latest_lists WHERE source_id='solidot'") == [(3,)]
    errors = query(
        tmp_path, "SELECT source_id, error_kind, http_status FROM polls WHERE status='error' ORDER BY source_id"
    )
    assert errors == [("weibo", "http_5xx", 500), ("zhihu", "parse", 200)]
    sources = cli("sources", config=config)
    assert sources.returncode == 0
    assert "http_5xx" in sources.stdout and "solidot" in sources.stdout


def _start_daemon(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`run` (or `args`) on `config`; `env` is added to the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")} | (env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "aggregator", "--config", str(config), *(args or ("run",))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def hang_zhihu(http_server: LoopbackServer) -> threading.Event:
    """zhihu's list answers only once the returned event is set; the others as usual."""
    serve_defaults(http_server)
    release = threading.Event()

    def hang(handler: BaseHTTPRequestHandler) -> None:
        release.wait(30)
        body = (DATA / "newsnow/zhihu.json").read_bytes()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    http_server.route("/api/s?id=zhihu&latest", handler=hang)
    return release


def zhihu_hangs_and_solidot_is_stored(tmp_path: Path, http_server: LoopbackServer) -> None:
    wait_for(
        lambda: http_server.hits["/api/s?id=zhihu&latest"] >= 1 and http_server.hits["/solidot.rss"] >= 1,
        timeout_s=30,
    )
    wait_for(
        lambda: (
            query(tmp_path, "SELECT count(*) FROM polls WHERE source_id='solidot'")[0][0] >= 1
            if (tmp_path / "data" / "aggregator.db").exists()
            else False
        ),
        timeout_s=30,
    )


def test_sigterm_during_a_poll_exits_cleanly(tmp_path: Path, http_server: LoopbackServer) -> None:
    release = hang_zhihu(http_server)
    config = settings_file(tmp_path, http_server)
    proc = _start_daemon(config)
    try:
        zhihu_hangs_and_solidot_is_stored(tmp_path, http_server)
        started = datetime.now(UTC)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
        assert (datetime.now(UTC) - started) < timedelta(seconds=20)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM received" in err
    assert query(tmp_path, "PRAGMA integrity_check") == [("ok",)]
    assert query(tmp_path, "SELECT count(*) FROM polls WHERE source_id='solidot' AND status='ok'")[0][0] >= 1


def test_sigterm_during_run_once_stops_the_polls_and_prints_what_was_done(
    tmp_path: Path, http_server: LoopbackServer
) -> None:
    # A cron job's `timeout 5m aggregator run --once`, say.
    release = hang_zhihu(http_server)
    config = settings_file(tmp_path, http_server)
    proc = _start_daemon(config, "run", "--once", env={"AGGREGATOR_DAEMON__SHUTDOWN_GRACE": "1s"})
    try:
        zhihu_hangs_and_solidot_is_stored(tmp_path, http_server)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "SIGTERM received: stopping" in err and "waiting up to 1s for the polls under way" in err
    lines = out.splitlines()
    assert lines[-1] == "2 of 3 sources ok"
    assert "zhihu                    stopped  not polled, or cut off by the stop" in lines
    assert any(line.startswith("solidot ") and " ok " in line for line in lines)
    assert query(tmp_path, "PRAGMA integrity_check") == [("ok",)]
    assert query(tmp_path, "SELECT source_id, status FROM polls ORDER BY source_id") == [
        ("solidot", "ok"),
        ("weibo", "ok"),
    ]


def test_second_daemon_on_the_same_file_refuses(tmp_path: Path, http_server: LoopbackServer) -> None:
    serve_defaults(http_server)
    config = settings_file(tmp_path, http_server)
    first = _start_daemon(config)
    try:
        wait_for(lambda: http_server.hits["/solidot.rss"] >= 1, timeout_s=30)
        second = cli("run", config=config, timeout=30)
        assert second.returncode == 2
        assert "another aggregator daemon" in second.stderr and "already running" in second.stderr
        once = cli("run", "--once", config=config, timeout=30)
        assert once.returncode == 2
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=20)
    assert first.returncode == 0


async def test_restart_resumes_each_cadence(tmp_path: Path, http_server: LoopbackServer) -> None:
    config = settings_file(tmp_path, http_server)
    settings = load_settings(str(config), environ={})
    daemon = Daemon(settings)
    now = datetime.now(UTC)
    last = {"weibo": now - timedelta(seconds=30), "zhihu": now - timedelta(hours=2), "solidot": None}
    daemon._schedule(settings.sources, last)
    jobs = {job.id: job for job in daemon.scheduler.get_jobs()}
    weibo_due = jobs["weibo"].next_run_time
    assert abs((weibo_due - (last["weibo"] + timedelta(seconds=120))).total_seconds()) < 1  # type: ignore[operator]
    assert jobs["zhihu"].next_run_time <= now + timedelta(seconds=31)  # overdue: soon, spread
    assert jobs["solidot"].next_run_time <= now + timedelta(seconds=31)
    for source in settings.sources:
        job = jobs[source.id]
        assert job.coalesce is True and job.max_instances == 1
        assert job.misfire_grace_time == int(source.interval_s * settings.daemon.misfire_fraction)
    assert "rescore" in jobs


@pytest.mark.parametrize("bad", ["[store]\nnope = 1\n"])
def test_bad_settings_exit_2(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(bad)
    done = cli("run", "--once", config=path)
    assert done.returncode == 2 and "store.nope: unknown key" in done.stderr


def test_set_cookie_is_kept_across_runs_and_never_shown(tmp_path: Path, http_server: LoopbackServer) -> None:
    serve_defaults(http_server)
    body = (DATA / "newsnow/weibo.json").read_bytes()
    http_server.route(
        "/api/s?id=weibo&latest",
        body,
        headers={"Content-Type": "application/json", "Set-Cookie": "SUB=secret-visitor-42; Path=/"},
    )
    config = settings_file(tmp_path, http_server)
    first = cli("run", "--once", "--source", "weibo", config=config)
    assert first.returncode == 0
    http_server.route("/api/s?id=weibo&latest", "nope", status=500, headers={"Content-Type": "text/plain"})
    second = cli("run", "--once", "--source", "weibo", config=config)  # a new process: the cookie came from the store
    assert second.returncode == 1
    sent = [headers for path, headers in http_server.requests if path == "/api/s?id=weibo&latest"]
    assert "cookie" not in sent[0] and sent[1]["cookie"] == "SUB=secret-visitor-42"
    shown = first.stdout + first.stderr + second.stdout + second.stderr + cli("sources", config=config).stdout
    assert "secret-visitor-42" not in shown
    assert all("secret-visitor-42" not in str(row) for row in query(tmp_path, "SELECT * FROM polls"))


async def test_restart_keeps_a_failing_sources_backoff(tmp_path: Path, http_server: LoopbackServer) -> None:
    config = settings_file(tmp_path, http_server)
    settings = load_settings(str(config), environ={})
    daemon = Daemon(settings)
    now = datetime.now(UTC)
    later = now + timedelta(hours=2)
    daemon._schedule(settings.sources, {"weibo": now - timedelta(minutes=5)}, {"weibo": later})
    job = daemon.scheduler.get_job("weibo")
    assert job is not None and abs((job.next_run_time - later).total_seconds()) < 1


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path: Path, http_server: LoopbackServer) -> None:
    serve_defaults(http_server)
    config = settings_file(tmp_path, http_server)
    assert cli("run", "--once", config=config).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")}
    for command in ("sources", "top"):
        proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "--config", str(config), command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # as `| head` does once it has its lines: before the first write here
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        assert proc.wait(timeout=60) == 1, err
        assert "Traceback" not in err and "BrokenPipeError" not in err, err
