"""The real daemon process against many faults at once; `aggregator sources` shows each source's health."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import DATA, wait_for
from tests.faults.conftest import GOOD_FEED, GOOD_LIST
from tests.faults.crashharness import start_daemon
from tests.faults.faultserver import (
    TWO_GB,
    Behaviour,
    FaultServer,
    drip,
    endless,
    gzip_bomb,
    hang,
    newsnow_payload,
    respond,
    rss_payload,
    sequence,
)
from tests.test_daemon import cli, query

GOOD = newsnow_payload(GOOD_LIST)

# id → (kind, behaviour, the error kind it must be recorded with)
FAULTY: dict[str, tuple[str, Behaviour, str]] = {
    "hang": ("newsnow", hang(), "timeout"),
    "drip": ("newsnow", drip(GOOD, 1.0), "timeout"),
    "huge": ("newsnow", endless(TWO_GB), "too_large"),
    "huge-undeclared": ("newsnow", endless(None), "too_large"),
    "bomb": ("newsnow", gzip_bomb(), "too_large"),
    "captcha": ("newsnow", respond((DATA / "feed" / "captcha.html").read_bytes(), content_type="text/html"), "blocked"),
    "laughs": ("feed", respond((DATA / "feed" / "billion.xml").read_bytes(), content_type="application/xml"), "parse"),
    "down": ("newsnow", respond(b"down", status=500, content_type="text/plain"), "http_5xx"),
    "limited": ("newsnow", respond(b"", status=429, headers={"Retry-After": "600"}), "rate_limited"),
    "wrong-types": ("newsnow", respond(b'{"status": "success", "items": [{"title": 1}, 2]}'), "schema"),
}


def _config(tmp_path: Path, server: FaultServer, sources: dict[str, tuple[str, str]]) -> Path:
    entries = "".join(
        f'\n[[sources]]\nid = "{sid}"\nkind = "{kind}"\nurl = "{url}"\ninterval = "5s"\n'
        for sid, (kind, url) in sources.items()
    )
    text = f"""
[store]
data_dir = "{tmp_path / "data"}"

[http]
timeout = "1.5s"
connect_timeout = "1s"
max_bytes = 262144

[daemon]
startup_spread = "0s"
jitter = "0s"
shutdown_grace = "2s"

[fulltext]
enabled = false
{entries}"""
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _db_errors(tmp_path: Path) -> dict[str, str]:
    if not (tmp_path / "data" / "aggregator.db").exists():
        return {}
    try:
        return dict(query(tmp_path, "SELECT source_id, error_kind FROM polls WHERE status = 'error'"))
    except sqlite3.OperationalError:
        return {}


def test_daemon_process_survives_every_fault_and_reports_health(tmp_path: Path, fault_server: FaultServer) -> None:
    sources = {"good-list": ("newsnow", fault_server.route("/good/list", respond(GOOD)))}
    sources["good-feed"] = (
        "feed",
        fault_server.route("/good/feed", respond(rss_payload(GOOD_FEED), content_type="application/rss+xml")),
    )
    for sid, (kind, behaviour, _) in FAULTY.items():
        sources[sid] = (kind, fault_server.route(f"/fault/{sid}", behaviour))
    config = _config(tmp_path, fault_server, sources)
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, log)
    try:
        wait_for(lambda: len(_db_errors(tmp_path)) == len(FAULTY), timeout_s=30)
        wait_for(lambda: query(tmp_path, "SELECT count(DISTINCT source_id) FROM latest_lists") == [(2,)], timeout_s=30)
        assert proc.poll() is None, log.read_text()[-2000:]
        assert _db_errors(tmp_path) == {sid: kind for sid, (_, _, kind) in FAULTY.items()}
        shown = cli("sources", config=config)
        running_log = log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    # Each failing source is one warning line with its id and kind; there is no traceback.
    assert "Traceback" not in running_log
    for sid, (_, _, kind) in FAULTY.items():
        assert re.search(
            rf"WARNING .*poll {re.escape(sid)} failed \(1 in a row, next try [^)]+\): {kind}: ", running_log
        )
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line for line in shown.stdout.splitlines()[1:] if line.strip()}
    for sid in ("good-list", "good-feed"):
        assert re.search(r"\s ok\s", lines[sid]), lines[sid]
    for sid, (_, _, kind) in FAULTY.items():
        assert "backing off until" in lines[sid] and f"{kind}: " in lines[sid], lines[sid]
    assert "(x1 since " in lines["down"] and "HTTP 500" in lines["down"]
    assert "HTTP 429" in lines["limited"]


@pytest.mark.usefixtures("premigrated")
def test_sources_shows_failing_since_and_recovery(tmp_path: Path, fault_server: FaultServer) -> None:
    down = respond(b"down", status=503, content_type="text/plain")
    url = fault_server.route("/flaky", sequence(down, down, respond(GOOD)))
    config = _config(tmp_path, fault_server, {"flaky": ("newsnow", url)})
    assert cli("run", "--once", config=config).returncode == 1
    first_failure = query(tmp_path, "SELECT finished_at FROM polls WHERE source_id = 'flaky'")[0][0]
    shown = cli("sources", config=config).stdout
    assert "backing off until" in shown and "http_5xx: HTTP 503" in shown and "(x1 since" in shown
    (flaky,) = [r for r in json.loads(cli("sources", "--json", config=config).stdout) if r["id"] == "flaky"]
    assert flaky["state"] == "backing_off" and flaky["last_error_kind"] == "http_5xx"
    assert flaky["consecutive_failures"] == 1 and flaky["next_due"] > flaky["last_poll_at"]
    assert "cookies" not in flaky and "etag" not in flaky
    # Past its next attempt it is failing, not backing off; since the first failure of the run of them.
    assert cli("run", "--once", config=config).returncode == 1
    db = sqlite3.connect(tmp_path / "data" / "aggregator.db")
    with db:
        db.execute("UPDATE sources SET next_attempt_at = '2000-01-01 00:00:00' WHERE id = 'flaky'")
    db.close()
    shown = cli("sources", config=config).stdout
    line = next(line for line in shown.splitlines() if line.startswith("flaky"))
    assert "failing since" in line and "(x2 since" in line, line
    since = re.search(r"failing since (\S+ \S+)", line)
    assert since is not None
    # Shown in the display zone (Asia/Shanghai, UTC+8): the first failure, not the second.
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    first_local = datetime.fromisoformat(first_failure).replace(tzinfo=UTC).astimezone(ZoneInfo("Asia/Shanghai"))
    assert since.group(1) == first_local.strftime("%Y-%m-%d %H:%M:%S")
    assert cli("run", "--once", config=config).returncode == 0
    line = next(line for line in cli("sources", config=config).stdout.splitlines() if line.startswith("flaky"))
    assert re.search(r"\s ok\s", line) and line.rstrip().endswith("-"), line
    (flaky,) = [r for r in json.loads(cli("sources", "--json", config=config).stdout) if r["id"] == "flaky"]
    assert flaky["state"] == "ok" and flaky["last_error"] is None and flaky["failing_since"] is None
