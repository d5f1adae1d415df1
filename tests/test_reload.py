"""SIGHUP: the running daemon (the real CLI in a subprocess) re-reads its settings."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.conftest import DATA, LoopbackServer, wait_for
from tests.test_daemon import query, serve_defaults


def write_settings(tmp_path: Path, server: LoopbackServer, sources: str, extra: str = "") -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(
        f'[store]\ndata_dir = "{tmp_path / "data"}"\n\n'
        '[daemon]\nrescore_every = "1m"\nstartup_spread = "0s"\njitter = "0s"\n\n'
        f"{extra}\n{sources.format(url=server.url(''))}",
        encoding="utf-8",
    )
    return path


def source(source_id: str, interval: str, name: str = "") -> str:
    path = {"weibo": "/api/s?id=weibo&latest", "zhihu": "/api/s?id=zhihu&latest", "baidu": "/api/s?id=baidu&latest"}
    line = f'name = "{name}"\n' if name else ""
    return (
        f'[[sources]]\nid = "{source_id}"\nkind = "newsnow"\nurl = "{{url}}{path[source_id]}"\n'
        f'interval = "{interval}"\n{line}\n'
    )


class Running:
    """`aggregator run` on `config`, its log in a file that the test reads as it grows."""

    def __init__(
        self, config: Path, log: Path, found: bool = False, env: dict[str, str] | None = None, group: bool = False
    ) -> None:
        """`found`: no --config, the daemon finds ./settings.toml in the config's directory;
        `env`: variables added to its environment; `group`: in a process group of its own."""
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")} | (env or {})
        chosen = [] if found else ["--config", str(config)]
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aggregator", *chosen, "run"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                text=True,
                env=env,
                cwd=config.parent,
                start_new_session=group,
            )

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8")

    def reload_and_wait(self, line: str) -> str:
        """Send SIGHUP and wait for `line` in the log; the log's new part."""
        seen = len(self.text())
        self.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: line in self.text()[seen:], timeout_s=20)
        return self.text()[seen:]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


@pytest.fixture
def running(premigrated: Path) -> Iterator[list[Running]]:
    """The daemons a test starts (on the migrated store), killed at the end if still running."""
    started: list[Running] = []
    yield started
    for r in started:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()


def polls(tmp_path: Path, source_id: str) -> int:
    return int(query(tmp_path, f"SELECT count(*) FROM polls WHERE source_id = '{source_id}'")[0][0])  # type: ignore[call-overload]


def test_sighup_adds_removes_and_changes_sources(
    tmp_path: Path, http_server: LoopbackServer, running: list[Running]
) -> None:
    serve_defaults(http_server)
    config = write_settings(tmp_path, http_server, source("weibo", "2s") + source("zhihu", "1h", "Zhihu"))
    daemon = Running(config, tmp_path / "daemon.log")
    running.append(daemon)
    wait_for(lambda: polls(tmp_path, "weibo") >= 2 and polls(tmp_path, "zhihu") >= 1, timeout_s=30)

    # weibo goes, baidu comes, zhihu is renamed and polled every 2 s instead of every hour;
    # a restart-only key and a live one change too.
    write_settings(
        tmp_path,
        http_server,
        source("zhihu", "2s", "知乎热榜") + source("baidu", "2s"),
        extra='[http]\ntimeout = "15s"\n\n[score]\nheat_weight = 0.4\n\n[log]\nlevel = "DEBUG"\nformat = "json"\n',
    )
    new_log = daemon.reload_and_wait("settings reloaded")
    weibo_at_reload = polls(tmp_path, "weibo")
    assert "2 sources, 1 added (baidu), 1 removed (weibo), 1 changed (zhihu)" in new_log
    # The log level changes at once; the format (and [http]) at the next restart.
    assert "reload: log level DEBUG (was INFO)" in new_log
    assert "http.timeout, log.format changed; that takes effect at the next restart" in new_log

    # zhihu at its new interval (an hour would mean no second poll) and baidu from now on.
    wait_for(lambda: polls(tmp_path, "baidu") >= 3 and polls(tmp_path, "zhihu") >= 3, timeout_s=30)
    assert " DEBUG " in daemon.text().split("settings reloaded", 1)[1]
    # At 2 s, weibo would have been polled twice more; one poll under way at the reload may finish.
    assert polls(tmp_path, "weibo") <= weibo_at_reload + 1
    rows = dict(query(tmp_path, "SELECT id, enabled FROM sources"))
    assert rows == {"weibo": 0, "zhihu": 1, "baidu": 1}
    [(shown, interval)] = query(tmp_path, "SELECT display_name, interval_s FROM sources WHERE id = 'zhihu'")
    assert "知乎热榜" in str(shown) and interval == 2.0
    assert daemon.stop() == 0
    assert "daemon stopped" in daemon.text()


def test_sighup_with_broken_settings_keeps_the_running_ones(
    tmp_path: Path, http_server: LoopbackServer, running: list[Running]
) -> None:
    serve_defaults(http_server)
    good = source("weibo", "2s")
    config = write_settings(tmp_path, http_server, good)
    daemon = Running(config, tmp_path / "daemon.log")
    running.append(daemon)
    wait_for(lambda: polls(tmp_path, "weibo") >= 1, timeout_s=30)

    config.write_text(config.read_text(encoding="utf-8") + '[[sources]]\nid = "x"\nkind = "nope"\n', encoding="utf-8")
    new_log = daemon.reload_and_wait("reload: settings error")
    assert "sources[1](id=x).kind" in new_log and "goes on with the settings it has" in new_log
    assert daemon.proc.poll() is None
    before = polls(tmp_path, "weibo")
    wait_for(lambda: polls(tmp_path, "weibo") >= before + 1, timeout_s=30)  # still polling

    config.write_text("[store\n", encoding="utf-8")
    assert "not valid TOML" in daemon.reload_and_wait("reload: settings error")

    write_settings(tmp_path, http_server, good + source("baidu", "1h"))
    assert "1 added (baidu), 0 removed, 0 changed" in daemon.reload_and_wait("settings reloaded")
    wait_for(lambda: polls(tmp_path, "baidu") >= 1, timeout_s=30)
    assert daemon.stop() == 0


def test_sighup_after_settings_toml_went_away_keeps_the_sources(
    tmp_path: Path, http_server: LoopbackServer, running: list[Running]
) -> None:
    serve_defaults(http_server)
    config = write_settings(tmp_path, http_server, source("weibo", "2s"))
    daemon = Running(config, tmp_path / "daemon.log", found=True)
    running.append(daemon)
    wait_for(lambda: polls(tmp_path, "weibo") >= 1, timeout_s=30)
    # Without it the lookup would end at the built-in defaults, which have no sources.
    config.rename(tmp_path / "settings.toml.bak")
    new_log = daemon.reload_and_wait("reload: the settings came from settings.toml at start")
    assert "the built-in defaults (no settings file found)" in new_log
    before = polls(tmp_path, "weibo")
    wait_for(lambda: polls(tmp_path, "weibo") >= before + 1, timeout_s=30)  # still polled
    assert query(tmp_path, "SELECT enabled FROM sources WHERE id = 'weibo'") == [(1,)]
    assert daemon.stop() == 0


def test_command_line_log_options_win_at_start_and_at_every_reload(tmp_path: Path) -> None:
    from argparse import Namespace

    from aggregator.cli import load_checked

    config = tmp_path / "settings.toml"
    config.write_text('[log]\nlevel = "WARNING"\nformat = "json"\n', encoding="utf-8")
    plain = load_checked(str(config), Namespace(log_level=None, log_format=None)).log
    assert (plain.level, plain.format) == ("WARNING", "json")
    forced = load_checked(str(config), Namespace(log_level="DEBUG", log_format=None)).log
    assert (forced.level, forced.format) == ("DEBUG", "json")


def test_a_sighup_while_starting_is_applied_once_started(
    tmp_path: Path, http_server: LoopbackServer, running: list[Running]
) -> None:
    serve_defaults(http_server)
    config = write_settings(tmp_path, http_server, source("weibo", "1h"))
    data = tmp_path / "data"
    # Holding the write lock stops the daemon at its first write (its sources), before it
    # schedules anything: the SIGHUP below surely comes while it starts.
    db = sqlite3.connect(data / "aggregator.db", isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        daemon = Running(config, tmp_path / "daemon.log")
        running.append(daemon)
        lock = data / "aggregator.db.lock"
        wait_for(lambda: lock.exists() and lock.read_text().strip() != "", timeout_s=30)
        write_settings(tmp_path, http_server, source("weibo", "1h") + source("baidu", "1h"))
        daemon.proc.send_signal(signal.SIGHUP)
    finally:
        db.execute("ROLLBACK")
        db.close()
    wait_for(lambda: "settings reloaded" in daemon.text(), timeout_s=30)
    text = daemon.text()
    assert text.index(" started: ") < text.index("a SIGHUP came while the daemon was starting")
    assert "1 added (baidu), 0 removed, 0 changed" in text
    wait_for(lambda: polls(tmp_path, "baidu") >= 1, timeout_s=30)
    assert daemon.stop() == 0


FEED = '[[sources]]\nid = "news"\nkind = "feed"\nurl = "{url}/%s"\ninterval = "%s"\n\n'


def two_sites(http_server: LoopbackServer) -> None:
    """/a.rss with validators and a cookie; /b.atom, a server whose content is older than
    /a.rss's Last-Modified: sent the old validators it answers 304 and its list is never read."""
    http_server.route(
        "/a.rss",
        (DATA / "feed" / "rss.xml").read_bytes(),
        headers={
            "Content-Type": "application/rss+xml",
            "ETag": '"a1"',
            "Last-Modified": "Wed, 02 Dec 2026 08:00:00 GMT",
            "Set-Cookie": "sid=site-a; Path=/",
        },
    )
    atom = (DATA / "feed" / "atom.xml").read_bytes()

    def conditional(handler: BaseHTTPRequestHandler) -> None:
        asked = handler.headers.get("If-None-Match") or handler.headers.get("If-Modified-Since")
        handler.send_response(304 if asked else 200)
        handler.send_header("Content-Type", "application/atom+xml")
        handler.send_header("Content-Length", "0" if asked else str(len(atom)))
        handler.end_headers()
        if not asked:
            handler.wfile.write(atom)

    http_server.route("/b.atom", handler=conditional)


def read_afresh_at_b(tmp_path: Path, http_server: LoopbackServer, polled: int) -> None:
    """The source's next poll (after `polled` of them), of /b.atom, went without /a.rss's
    validators and cookie and stored its list."""

    def stored() -> bool:
        return any(r[0] == "/b.atom" for r in http_server.requests) and polls(tmp_path, "news") > polled

    wait_for(stored, timeout_s=30)
    [(_path, headers)] = [r for r in http_server.requests if r[0] == "/b.atom"]
    assert not {"if-none-match", "if-modified-since", "cookie"} & set(headers)
    last = "SELECT status, item_count FROM polls WHERE source_id = 'news' ORDER BY id DESC LIMIT 1"
    [(status, count)] = query(tmp_path, last)
    assert status == "ok" and count > 0
    [(etag, cookies)] = query(tmp_path, "SELECT etag, cookies FROM sources WHERE id = 'news'")
    assert etag is None and "site-a" not in str(cookies)


def test_a_source_given_a_new_url_is_polled_at_once_without_the_old_validators(
    tmp_path: Path, http_server: LoopbackServer, running: list[Running]
) -> None:
    two_sites(http_server)
    config = write_settings(tmp_path, http_server, FEED % ("a.rss", "1h"))
    daemon = Running(config, tmp_path / "daemon.log")
    running.append(daemon)
    wait_for(lambda: polls(tmp_path, "news") >= 1, timeout_s=30)

    write_settings(tmp_path, http_server, FEED % ("b.atom", "1h"))
    reloaded = daemon.reload_and_wait("settings reloaded")
    assert "1 changed (news)" in reloaded
    assert "new URL for news: ETag, Last-Modified, cookies, failures and backoff start afresh" in reloaded
    # Due again in an hour at the old URL; the new one is polled now.
    read_afresh_at_b(tmp_path, http_server, 1)
    assert daemon.stop() == 0


def test_a_source_removed_then_back_at_a_new_url_starts_without_the_old_validators(
    tmp_path: Path, http_server: LoopbackServer, running: list[Running]
) -> None:
    two_sites(http_server)
    serve_defaults(http_server)
    config = write_settings(tmp_path, http_server, FEED % ("a.rss", "2s") + source("weibo", "1h"))
    daemon = Running(config, tmp_path / "daemon.log")
    running.append(daemon)
    wait_for(lambda: polls(tmp_path, "news") >= 1, timeout_s=30)
    write_settings(tmp_path, http_server, source("weibo", "1h"))
    assert "1 removed (news)" in daemon.reload_and_wait("settings reloaded")
    polled = polls(tmp_path, "news")
    write_settings(tmp_path, http_server, FEED % ("b.atom", "2s") + source("weibo", "1h"))
    assert "1 added (news)" in daemon.reload_and_wait("settings reloaded")
    read_afresh_at_b(tmp_path, http_server, polled)
    assert daemon.stop() == 0


@pytest.mark.parametrize("then", ["moved", "removed"])
def test_a_source_moved_or_removed_during_a_poll_owes_that_poll_nothing(
    tmp_path: Path, http_server: LoopbackServer, running: list[Running], then: str
) -> None:
    """A reload while a poll of the old URL hangs; the poll then fails. Moved, the new URL is
    polled as soon as that poll ends; either way the failure is the poll row's alone."""
    release = threading.Event()

    def hanging(handler: BaseHTTPRequestHandler) -> None:
        release.wait(30)
        handler.send_response(500)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    serve_defaults(http_server)
    http_server.route("/old", handler=hanging)
    http_server.serve_file("/new", "newsnow/weibo.json")
    moving = '[[sources]]\nid = "weibo"\nkind = "newsnow"\nurl = "{url}/%s"\ninterval = "1h"\n\n'
    config = write_settings(tmp_path, http_server, moving % "old")
    daemon = Running(config, tmp_path / "daemon.log")
    running.append(daemon)
    try:
        wait_for(lambda: http_server.hits["/old"] == 1, timeout_s=30)
        if then == "moved":
            write_settings(tmp_path, http_server, moving % "new")
            assert "1 changed (weibo)" in daemon.reload_and_wait("settings reloaded")
        else:
            write_settings(tmp_path, http_server, source("baidu", "1h"))
            assert "1 removed (weibo)" in daemon.reload_and_wait("settings reloaded")
    finally:
        release.set()  # the old address fails now, after the reload
    expected = [("error", 500), ("ok", 200)] if then == "moved" else [("error", 500)]
    wait_for(lambda: polls(tmp_path, "weibo") >= len(expected), timeout_s=30)
    wait_for(lambda: "no longer have (not counted)" in daemon.text(), timeout_s=30)
    rows = query(tmp_path, "SELECT status, http_status FROM polls WHERE source_id = 'weibo' ORDER BY id")
    assert rows == expected
    [(failures, next_attempt)] = query(
        tmp_path, "SELECT consecutive_failures, next_attempt_at FROM sources WHERE id = 'weibo'"
    )
    assert failures == 0 and next_attempt is None
    assert http_server.hits["/new"] == (1 if then == "moved" else 0)
    assert daemon.stop() == 0


def test_no_enabled_source_is_a_warning_at_start_and_at_a_reload(
    tmp_path: Path, http_server: LoopbackServer, running: list[Running]
) -> None:
    serve_defaults(http_server)
    config = write_settings(tmp_path, http_server, "")
    daemon = Running(config, tmp_path / "daemon.log")
    running.append(daemon)
    warning = f"no enabled source in the settings ({config}): nothing is polled"
    wait_for(lambda: warning in daemon.text(), timeout_s=30)  # the line after "started"
    assert daemon.text().index(" started: 0 sources") < daemon.text().index(warning)
    write_settings(tmp_path, http_server, source("weibo", "1h"))
    assert warning not in daemon.reload_and_wait("settings reloaded")
    wait_for(lambda: polls(tmp_path, "weibo") == 1, timeout_s=30)
    write_settings(tmp_path, http_server, source("weibo", "1h").replace("interval", "enabled = false\ninterval"))
    assert warning in daemon.reload_and_wait(warning)
    assert daemon.stop() == 0
