"""`aggregator serve` as a process: JSON, the Atom feed, search and health over real HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import feedparser
import httpx
import pytest

from aggregator.serve import _is_loopback
from tests.conftest import LoopbackServer, wait_for
from tests.test_daemon import cli, query
from tests.test_explain_history import three_sources

HOSTILE = '<script>alert(1)</script> & "引号" ]]> 标题'


@pytest.fixture
def filled(tmp_path: Path, http_server: LoopbackServer, premigrated: Path) -> Path:
    config = three_sources(tmp_path, http_server)
    payload = {"status": "success", "id": "odd", "items": [{"id": "1", "title": HOSTILE, "url": "javascript:x()"}]}
    http_server.route("/api/s?id=odd&latest", json.dumps(payload, ensure_ascii=False))
    url = http_server.url("/api/s?id=odd&latest")
    with config.open("a", encoding="utf-8") as fh:
        fh.write(f'\n[[sources]]\nid = "odd"\nkind = "newsnow"\nurl = "{url}"\n')
    done = cli("run", "--once", config=config)
    assert done.returncode == 0, done.stdout + done.stderr
    return config


def start_serve(config: Path, out: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")}
    with out.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "aggregator", "--config", str(config), "serve", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )


@contextlib.contextmanager
def running_serve(config: Path, out: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`serve --port 0` on `config`, its base URL once it listens; killed afterwards if still running."""
    proc = start_serve(config, out, "--port", "0")
    try:
        wait_for(lambda: "serving on http://" in out.read_text(errors="replace") or proc.poll() is not None, 30)
        text = out.read_text(errors="replace")
        assert proc.poll() is None, text
        yield text.split("serving on ", 1)[1].split()[0], proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def served(filled: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    out = tmp_path / "serve.out"
    with running_serve(filled, out) as (base, proc):
        yield base, proc, out


def test_top_feed_search_and_health(served: tuple[str, subprocess.Popen[bytes], Path], filled: Path) -> None:
    base, proc, out = served
    with httpx.Client(base_url=base, timeout=10) as http:
        top = http.get("/top.json")
        assert top.status_code == 200 and top.headers["content-type"].startswith("application/json")
        rows = top.json()
        expected = query(filled.parent, "SELECT position, story_id, title, score FROM ranked_items ORDER BY position")
        assert [(r["position"], r["story_id"], r["title"], r["score"]) for r in rows] == [tuple(e) for e in expected]
        assert rows[0]["score"] == 100.0 and rows[0]["last_seen_at"].endswith("+00:00")
        two = http.get("/top.json", params={"limit": 2}).json()
        assert [r["story_id"] for r in two] == [e[1] for e in expected[:2]]
        assert {r["title"] for r in http.get("/top.json", params={"source": "odd"}).json()} == {HOSTILE}

        feed = http.get("/feed.atom", params={"limit": 50})
        assert feed.headers["content-type"].startswith("application/atom+xml")
        parsed = feedparser.parse(feed.content)
        assert not parsed.bozo, parsed.get("bozo_exception")
        assert [e.title for e in parsed.entries] == [r["title"] for r in rows]
        by_title = {e.title: e for e in parsed.entries}
        assert by_title[HOSTILE].get("links", []) == []  # a javascript: URL is not a link
        top_entry = parsed.entries[0]
        assert top_entry.id == f"urn:aggregator:story:{rows[0]['story_id']}"
        assert top_entry.link == rows[0]["url"] and top_entry.summary.startswith("热度 100.0, #1; ")
        again = feedparser.parse(http.get("/feed.atom").content)
        assert [e.id for e in again.entries] == [e.id for e in parsed.entries]  # ids stay
        # A feed reader asking again with the ETag it has gets a 304 until the stories change.
        etag = feed.headers["etag"]
        same = http.get("/feed.atom", params={"limit": 50}, headers={"If-None-Match": etag})
        assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == etag
        other = http.get("/feed.atom", params={"limit": 1}, headers={"If-None-Match": etag})
        assert other.status_code == 200 and other.headers["etag"] != etag

        found = http.get("/search.json", params={"q": "国足 对手"}).json()
        assert sorted(r["title"] for r in found) == sorted(
            str(t) for (t,) in query(filled.parent, "SELECT title FROM stories WHERE title LIKE '国足%'")
        )
        page = http.get("/")
        assert "&lt;script&gt;" in page.text and "<script>" not in page.text

        # Bad requests: a clear JSON error, never a traceback.
        bad = http.get("/top.json", params={"limit": "lots"})
        assert bad.status_code == 400 and "limit" in bad.json()["error"]
        assert http.get("/search.json").status_code == 400
        many = http.get("/search.json", params={"q": " ".join(["词"] * 21)})
        assert many.status_code == 400 and "at most 20 words" in many.json()["error"]
        for odd in ("²", "9" * 5000, "-1"):
            assert http.get("/top.json", params={"limit": odd}).status_code == 400
        missing = http.get("/top.json", params={"source": "weibo2"})
        assert missing.status_code == 404 and "no source 'weibo2'" in missing.json()["error"]
        assert http.post("/top.json").status_code == 405
        host, port = base.removeprefix("http://").rstrip("/").rsplit(":", 1)
        for raw in (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"):
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                conn.sendall(raw)
                assert conn.recv(64).startswith(b"HTTP/1.0 400 ")
        assert http.get("/nothing-here").status_code == 404
        reports = http.get("/sources.json").json()
        assert {r["id"]: r["state"] for r in reports} == {s: "ok" for s in ("weibo", "baidu", "toutiao", "odd")}
        metrics = http.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = dict(line.rsplit(" ", 1) for line in metrics.text.splitlines() if line and not line.startswith("#"))
        assert samples['aggregator_source_up{source="weibo",kind="newsnow"}'] == "1"
        assert samples['aggregator_source_consecutive_failures{source="odd",kind="newsnow"}'] == "0"
        last = float(samples['aggregator_source_last_success_timestamp_seconds{source="baidu",kind="newsnow"}'])
        baidu = next(r for r in reports if r["id"] == "baidu")
        assert last == datetime.fromisoformat(baidu["last_success_at"]).timestamp()
        assert samples["aggregator_healthy"] == "0"  # no daemon has written a heartbeat here
        health = http.get("/health")
        assert health.status_code == 503 and "no heartbeat" in health.text
        # `docker compose kill -s HUP` (to reload the daemon) reaches serve too: it keeps serving.
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP received" in out.read_text(errors="replace"), 10)
        assert http.get("/top.json").status_code == 200 and proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    log = out.read_text(errors="replace")
    assert '"GET /top.json HTTP/1.1" 200' in log and "serve stopped" in log
    # Requests the parser refused are one line each, not an ERROR with a traceback.
    assert "malformed request from 127.0.0.1: LineTooLong: " in log
    assert "malformed request from 127.0.0.1: BadHttpMessage: " in log
    assert "Traceback" not in log and "ERROR" not in log


TOKEN = "s3cret-token-for-tests"


def test_a_token_guards_every_path_but_health(filled: Path, tmp_path: Path) -> None:
    with filled.open("a", encoding="utf-8") as fh:
        fh.write(f'\n[serve]\ntoken = "{TOKEN}"\n')
    with running_serve(filled, tmp_path / "serve.out") as (base, _proc), httpx.Client(base_url=base) as http:
        for path in ("/", "/top.json", "/feed.atom", "/search.json?q=国足", "/sources.json", "/metrics", "/nope"):
            refused = http.get(path)
            assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer"), path
            assert "serve.token" in refused.json()["error"]
            assert TOKEN not in refused.text
        for wrong in ({"Authorization": "Bearer " + TOKEN[:-1]}, {"Authorization": TOKEN}):
            assert http.get("/top.json", headers=wrong).status_code == 401
        assert http.get("/top.json", params={"token": TOKEN + "x"}).status_code == 401
        rows = http.get("/top.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert rows and rows[0]["score"] == 100.0
        feed = http.get("/feed.atom", params={"token": TOKEN, "limit": 3})
        assert feed.status_code == 200 and len(feedparser.parse(feed.content).entries) == 3
        assert TOKEN not in feed.text  # the feed's own link leaves the token out
        assert http.get("/health").status_code == 503  # open to a probe: no daemon here, so unhealthy
        page = http.get("/", params={"token": TOKEN})
        assert page.status_code == 200
        linked = re.search(r'href="(/sources\.json\?[^"]+)"', page.text)
        assert linked and http.get(linked.group(1)).status_code == 200  # its links keep the token


def test_a_short_or_spaced_token_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    for bad in ("short", "sixteen chars with spaces"):
        config.write_text(f'[store]\ndata_dir = "{tmp_path / "data"}"\n[serve]\ntoken = "{bad}"\n', encoding="utf-8")
        done = cli("serve", config=config)
        assert done.returncode == 2 and "serve.token: " in done.stderr and "16 to 256" in done.stderr, done.stderr
        assert bad not in done.stderr


@pytest.mark.parametrize(
    ("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("::", False)]
)
def test_which_hosts_count_as_this_machine(host: str, loopback: bool) -> None:
    assert _is_loopback(host) is loopback


def test_a_port_in_use_exits_2_with_the_reason(filled: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = tmp_path / "serve.out"
        proc = start_serve(filled, out, "--port", str(port))
        assert proc.wait(timeout=30) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in out.read_text(errors="replace")


def test_serve_settings_are_checked(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(f'[store]\ndata_dir = "{tmp_path / "data"}"\n[serve]\nport = 70000\n', encoding="utf-8")
    done = cli("serve", config=config)
    assert done.returncode == 2 and "serve.port" in done.stderr
    assert not (tmp_path / "data").exists()


def test_serve_never_creates_or_migrates_the_database(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(f'[store]\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    (tmp_path / "data").mkdir()
    missing = cli("serve", "--port", "0", config=config)
    assert missing.returncode == 2 and "no database at" in missing.stderr and "aggregator run" in missing.stderr
    assert not (tmp_path / "data" / "aggregator.db").exists()
    sqlite3.connect(tmp_path / "data" / "aggregator.db").close()  # an empty file: no schema yet
    empty = cli("serve", "--port", "0", config=config)
    assert empty.returncode == 2 and "aggregator db upgrade" in empty.stderr
    assert query(tmp_path, "SELECT count(*) FROM sqlite_master") == [(0,)]
