"""Transport faults against the real daemon: each is recorded with its kind, bounded, and contained.

Every case runs the daemon in this process with two good sources beside the faulty one
and checks: the poll's error kind and message, the source's failure state and next
attempt, a warning line (no traceback), the time to the recorded error, the peak of
traced memory, that the good sources stored their lists and that the daemon kept
running until told to stop.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aggregator.collectors.fetch import MAX_REDIRECTS, _classify, fetch, make_fetcher
from aggregator.errors import FetchError
from aggregator.settings import HttpSettings
from tests.faults.conftest import (
    GOOD_LIST,
    MAX_BYTES,
    MIB,
    assert_good_sources_stored,
    assert_recorded,
    fault_settings,
    good_sources_polled,
    poll_count,
    query,
    run_daemon_until,
)
from tests.faults.faultserver import (
    TWO_GB,
    FaultServer,
    concurrent,
    drip,
    endless,
    gzip_bomb,
    gzip_of_zeros,
    hang,
    lie_length,
    newsnow_payload,
    redirect,
    reset_after,
    respond,
    sequence,
    when_header,
)

GOOD = newsnow_payload(GOOD_LIST)
# Start of an in-process daemon to the recorded fault, on a loaded machine.
RUN_BOUND_S = 15.0

pytestmark = pytest.mark.usefixtures("premigrated")


@dataclass(frozen=True)
class Fault:
    name: str
    kind: str
    serve: Callable[[FaultServer], str]  # sets up the routes, returns the faulty source's URL
    message: str = ""  # in the stored error
    max_poll_s: float = 2.0  # the faulty poll's own duration, as stored
    max_peak_mib: float = 16.0
    interval: str = "5s"
    timeout: str = "2s"
    source_kind: str = "newsnow"
    checks: Callable[[FaultServer], None] | None = None
    or_else: tuple[str, str] | None = None  # another (kind, message) the same fault may end as


def _route(path: str, behaviour: Any) -> Callable[[FaultServer], str]:
    return lambda server: server.route(path, behaviour)


def _loop(server: FaultServer) -> str:
    server.route("/loop/a", redirect("/loop/b"))
    server.route("/loop/b", redirect(server.url("/loop/a")))
    return server.url("/loop/a")


def _chain(hops: int) -> Callable[[FaultServer], str]:
    def serve(server: FaultServer) -> str:
        for i in range(hops):
            server.route(f"/hop/{i}", redirect(f"/hop/{i + 1}"))
        server.route(f"/hop/{hops}", respond(GOOD))
        return server.url("/hop/0")

    return serve


def _sent_little(path: str) -> Callable[[FaultServer], None]:
    def check(server: FaultServer) -> None:
        # The client hung up long before 2 GB: what was sent is the cap plus socket buffers.
        assert server.stats_of(path).bytes_sent < 64 * MIB

    return check


def _tls_to_plain(server: FaultServer) -> str:
    return f"https://127.0.0.1:{server.port}/good/list"


def _truncated_gzip() -> bytes:
    return gzip_of_zeros(4096)[:-12]  # the deflate end and the gzip trailer cut off


FAULTS = [
    Fault("hang", "timeout", _route("/hang", hang()), "no complete response within 1s", timeout="1s", max_poll_s=2.5),
    Fault(
        "hang-past-the-poll-deadline",
        "timeout",
        _route("/hang", hang()),
        "poll's deadline of 0.5s",
        interval="1s",
        timeout="30s",
        max_poll_s=2.0,
    ),
    Fault(
        "drip-1-byte-per-s", "timeout", _route("/drip", drip(GOOD, 1.0)), "within 1.5s", timeout="1.5s", max_poll_s=3.0
    ),
    Fault(
        "drip-headers",
        "timeout",
        _route("/drip", drip(GOOD, 1.0, headers_too=True)),
        "within 1.5s",
        timeout="1.5s",
        max_poll_s=3.0,
    ),
    Fault(
        "2gb-declared",
        "too_large",
        _route("/huge", endless(TWO_GB)),
        f"body of {TWO_GB} bytes is over the {MAX_BYTES}-byte cap",
        checks=_sent_little("/huge"),
    ),
    Fault(
        "2gb-undeclared",
        "too_large",
        _route("/huge", endless(None)),
        f"over the {MAX_BYTES}-byte cap",
        checks=_sent_little("/huge"),
    ),
    Fault("gzip-bomb", "too_large", _route("/bomb", gzip_bomb(200 * MIB)), "decoded body over the"),
    Fault("gzip-bomb-undeclared", "too_large", _route("/bomb", gzip_bomb(200 * MIB, declare_length=False)), "decoded"),
    Fault(
        "gzip-truncated",
        "network",
        _route(
            "/cut",
            respond(_truncated_gzip(), headers={"Content-Encoding": "gzip"}),
        ),
        "truncated",
    ),
    Fault("redirect-loop", "redirect_loop", _loop, "redirect loop"),
    Fault(
        "redirect-chain-too-long", "redirect_loop", _chain(MAX_REDIRECTS + 1), f"more than {MAX_REDIRECTS} redirects"
    ),
    Fault("redirect-to-file", "blocked", _route("/to-file", redirect("file:///etc/passwd")), "non-HTTP URL scheme"),
    Fault("redirect-without-location", "http_4xx", _route("/noloc", respond(b"", status=302)), "without Location"),
    Fault("reset-mid-body", "network", _route("/reset", reset_after(GOOD[:40], len(GOOD))), "network error"),
    Fault("short-body", "network", _route("/short", lie_length(GOOD[:40], len(GOOD))), "complete message body"),
    # More bytes than Content-Length, then a close. Read in one segment with the head, the
    # HTTP parser refuses the response; read after it, the body ends at the declared length
    # and the half JSON document is refused. Either way nothing is stored.
    Fault(
        "long-body-after-short-length",
        "parse",
        _route("/cutjson", lie_length(GOOD, 40)),
        "not valid JSON",
        or_else=("network", "malformed HTTP response: Data after `Connection: close`"),
    ),
    Fault("http-500", "http_5xx", _route("/500", respond(b"oops", status=500)), "HTTP 500"),
    Fault("http-404", "http_4xx", _route("/404", respond(b"gone", status=404)), "HTTP 404"),
    Fault("503-without-retry-after", "http_5xx", _route("/503", respond(b"busy", status=503)), "HTTP 503"),
    Fault("tls-to-a-plain-port", "tls", _tls_to_plain, "TLS error"),
    Fault("connection-refused", "network", lambda server: "http://127.0.0.1:9/list", "network error"),
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
async def test_fault_is_recorded_bounded_and_contained(tmp_path: Path, fault_server: FaultServer, fault: Fault) -> None:
    url = fault.serve(fault_server)
    source = {"id": "bad", "kind": fault.source_kind, "url": url, "interval": fault.interval}
    settings = fault_settings(tmp_path, fault_server, [source], timeout=fault.timeout)
    run = await run_daemon_until(settings, lambda: good_sources_polled(tmp_path) and poll_count(tmp_path, "bad") >= 1)
    kind, message = fault.kind, fault.message
    stored_kind = query(tmp_path, "SELECT error_kind FROM polls WHERE source_id = 'bad'")[0][0]
    if fault.or_else is not None and stored_kind != kind:
        kind, message = fault.or_else
    assert_recorded(tmp_path, run, "bad", kind, message)
    # Bounded: the poll ended within its limits; the whole run (daemon start included) soon after.
    duration_ms = query(tmp_path, "SELECT duration_ms FROM polls WHERE source_id = 'bad'")[0][0]
    assert duration_ms <= fault.max_poll_s * 1000, duration_ms
    assert run.elapsed_s < RUN_BOUND_S
    assert run.peak_bytes < fault.max_peak_mib * MIB, f"peak {run.peak_bytes / MIB:.1f} MiB"
    assert_good_sources_stored(tmp_path)
    if fault.checks is not None:
        fault.checks(fault_server)


async def test_500s_then_recovery_keeps_the_last_list_and_resets_backoff(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    first = newsnow_payload(["第一版一", "第一版二"])
    second = newsnow_payload(["第二版一", "第二版二", "第二版三"])
    down = respond(b"down", status=500, content_type="text/plain")
    url = fault_server.route("/flaky", sequence(respond(first), down, down, respond(second)))
    settings = fault_settings(
        tmp_path, fault_server, [{"id": "flaky", "kind": "newsnow", "url": url, "interval": "1s"}]
    )

    def current(source_id: str) -> list[str]:
        return [
            r[0]
            for r in query(tmp_path, "SELECT title FROM latest_lists WHERE source_id = ? ORDER BY rank", (source_id,))
        ]

    seen_during_outage: list[list[str]] = []

    def condition() -> bool:
        if poll_count(tmp_path, "flaky", "error") >= 1 and poll_count(tmp_path, "flaky", "ok") == 1:
            seen_during_outage.append(current("flaky"))
        return poll_count(tmp_path, "flaky", "ok") >= 2

    run = await run_daemon_until(settings, condition, timeout_s=15)
    polls = query(
        tmp_path, "SELECT status, error_kind, started_at, finished_at FROM polls WHERE source_id = 'flaky' ORDER BY id"
    )
    assert [p[:2] for p in polls] == [("ok", None), ("error", "http_5xx"), ("error", "http_5xx"), ("ok", None)]
    # While it failed, the list of the last good poll stayed the current one.
    assert seen_during_outage and all(titles == ["第一版一", "第一版二"] for titles in seen_during_outage)
    assert current("flaky") == ["第二版一", "第二版二", "第二版三"]
    # The second retry waited longer than the first (exponential, 1 s interval).
    gaps = [
        (datetime.fromisoformat(polls[i + 1][2]) - datetime.fromisoformat(polls[i][3])).total_seconds() for i in (1, 2)
    ]
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0, gaps
    row = query(
        tmp_path, "SELECT consecutive_failures, next_attempt_at, last_error_kind FROM sources WHERE id = 'flaky'"
    )
    assert row == [(0, None, "http_5xx")]  # healthy again; the last error stays as history
    assert any("source flaky recovered after 2 failure(s)" in r.getMessage() for r in run.records)
    assert not run.tracebacks()
    assert_good_sources_stored(tmp_path)


def _http_date(seconds_from_now: float) -> str:
    return email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=seconds_from_now), usegmt=True)


@pytest.mark.parametrize(
    ("status", "retry_after", "expected_s"),
    [
        (429, "120", 120.0),
        (429, "date+300", 300.0),
        (503, "90", 90.0),
        (429, "0", 5.0),  # a request to hammer is not honoured: at least 5 s
        (429, "864000", 6 * 3600.0),  # ten days is capped at the backoff cap
        (429, "date-600", 5.0),  # a date in the past
        (429, "soon", 5.0),  # unparsable: the interval's own backoff applies
    ],
    ids=["429-seconds", "429-http-date", "503-seconds", "429-zero", "429-ten-days", "429-past-date", "429-garbage"],
)
async def test_rate_limited_honours_retry_after(
    tmp_path: Path, fault_server: FaultServer, status: int, retry_after: str, expected_s: float
) -> None:
    value = _http_date(float(retry_after[4:])) if retry_after.startswith("date") else retry_after
    url = fault_server.route("/limited", respond(b"slow down", status=status, headers={"Retry-After": value}))
    settings = fault_settings(
        tmp_path, fault_server, [{"id": "limited", "kind": "newsnow", "url": url, "interval": "5s"}]
    )
    run = await run_daemon_until(
        settings, lambda: good_sources_polled(tmp_path) and poll_count(tmp_path, "limited") >= 1
    )
    assert_recorded(tmp_path, run, "limited", "rate_limited", f"HTTP {status}")
    failed_at, next_at = query(tmp_path, "SELECT last_error_at, next_attempt_at FROM sources WHERE id = 'limited'")[0]
    waited = (datetime.fromisoformat(next_at) - datetime.fromisoformat(failed_at)).total_seconds()
    # Stored times have whole seconds; the HTTP date too.
    assert abs(waited - expected_s) <= 2.0, (waited, expected_s)
    # The daemon did not come back early: one request only.
    assert fault_server.hits["/limited"] == 1
    assert_good_sources_stored(tmp_path)


async def test_304_keeps_the_list_and_sends_the_validators(tmp_path: Path, fault_server: FaultServer) -> None:
    from tests.faults.faultserver import rss_payload

    feed = rss_payload(["Feed story one", "Feed story two"])
    fresh = respond(
        feed,
        headers={"ETag": '"v1"', "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"},
        content_type="application/rss+xml",
    )
    url = fault_server.route("/cond.xml", when_header("If-None-Match", '"v1"', respond(b"", status=304), fresh))
    settings = fault_settings(tmp_path, fault_server, [{"id": "cond", "kind": "feed", "url": url, "interval": "1s"}])
    run = await run_daemon_until(settings, lambda: poll_count(tmp_path, "cond", "not_modified") >= 1)
    statuses = [r[0] for r in query(tmp_path, "SELECT status FROM polls WHERE source_id = 'cond' ORDER BY id")]
    assert statuses[0] == "ok" and set(statuses[1:]) == {"not_modified"}
    sent = fault_server.requests_to("/cond.xml")
    assert "if-none-match" not in sent[0].headers
    assert all(r.headers.get("if-none-match") == '"v1"' for r in sent[1:])
    assert all(r.headers.get("if-modified-since") == "Mon, 01 Jan 2024 00:00:00 GMT" for r in sent[1:])
    titles = [r[0] for r in query(tmp_path, "SELECT title FROM latest_lists WHERE source_id = 'cond' ORDER BY rank")]
    assert titles == ["Feed story one", "Feed story two"]
    assert query(tmp_path, "SELECT consecutive_failures, etag FROM sources WHERE id = 'cond'") == [(0, '"v1"')]
    assert not run.tracebacks()


async def test_302_with_a_huge_body_is_followed_without_reading_it(tmp_path: Path, fault_server: FaultServer) -> None:
    fault_server.route("/target", respond(newsnow_payload(["跳转后的列表"])))
    url = fault_server.route("/moved", redirect("/target", huge_body=True))
    settings = fault_settings(
        tmp_path, fault_server, [{"id": "moved", "kind": "newsnow", "url": url, "interval": "5s"}]
    )
    run = await run_daemon_until(settings, lambda: good_sources_polled(tmp_path) and poll_count(tmp_path, "moved") >= 1)
    assert query(tmp_path, "SELECT status, http_status FROM polls WHERE source_id = 'moved'") == [("ok", 200)]
    assert query(tmp_path, "SELECT title FROM latest_lists WHERE source_id = 'moved'") == [("跳转后的列表",)]
    stats = fault_server.stats_of("/moved")
    assert stats.bytes_sent < 64 * MIB and stats.hangups  # the client closed the redirect's body
    assert query(tmp_path, "SELECT duration_ms FROM polls WHERE source_id = 'moved'")[0][0] < 2000
    assert run.elapsed_s < RUN_BOUND_S and run.peak_bytes < 16 * MIB
    assert_good_sources_stored(tmp_path)


async def test_five_redirects_are_followed(tmp_path: Path, fault_server: FaultServer) -> None:
    fetcher = make_fetcher(HttpSettings(timeout=2))
    seen: list[str] = []

    async def check(url: str) -> None:
        seen.append(url)

    try:
        response = await fetch(fetcher, _chain(MAX_REDIRECTS)(fault_server), check_url=check)
    finally:
        await fetcher.aclose()
    assert response.status == 200 and response.url.endswith(f"/hop/{MAX_REDIRECTS}")
    assert len(seen) == MAX_REDIRECTS + 1  # every hop was checked before it was requested


async def test_redirect_to_another_host_drops_credentials(fault_server: FaultServer) -> None:
    fault_server.route("/there", respond(GOOD))
    url = fault_server.route("/here", redirect(f"http://localhost:{fault_server.port}/there"))
    fetcher = make_fetcher(HttpSettings(timeout=2))
    try:
        response = await fetch(fetcher, url, headers={"Authorization": "Bearer s3cret"}, cookies={"SUB": "visitor"})
    finally:
        await fetcher.aclose()
    assert response.status == 200
    here, there = fault_server.requests_to("/here")[0], fault_server.requests_to("/there")[0]
    assert here.headers["authorization"] == "Bearer s3cret" and here.headers["cookie"] == "SUB=visitor"
    assert "authorization" not in there.headers and "cookie" not in there.headers


async def test_per_host_limit(fault_server: FaultServer) -> None:
    release = threading.Event()
    url = fault_server.route("/slow", concurrent(release, respond(GOOD)))
    fetcher = make_fetcher(HttpSettings(timeout=10, per_host_limit=2))
    try:
        tasks = [asyncio.create_task(fetch(fetcher, url)) for _ in range(6)]
        limit = fetcher.host_limit(url)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        # Two requests at the server, four queued in the client.
        while not (fault_server.stats_of("/slow").active == 2 and len(limit._waiters or ()) == 4):
            assert loop.time() < deadline, "requests did not queue at the per-host limit"
            await asyncio.sleep(0.01)
        release.set()
        responses = await asyncio.gather(*tasks)
    finally:
        release.set()
        await fetcher.aclose()
    assert all(r.status == 200 for r in responses)
    assert fault_server.stats_of("/slow").max_active == 2


async def test_proxy_from_the_environment_is_ignored(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    url = fault_server.route("/direct", respond(GOOD))
    fetcher = make_fetcher(HttpSettings(timeout=2))
    try:
        assert (await fetch(fetcher, url)).status == 200
    finally:
        await fetcher.aclose()


async def test_a_configured_proxy_is_used(fault_server: FaultServer) -> None:
    fault_server.route("http://hot.example.invalid/list", respond(GOOD))
    fetcher = make_fetcher(HttpSettings(timeout=2, proxy=fault_server.url("")))
    try:
        response = await fetch(fetcher, "http://hot.example.invalid/list")
    finally:
        await fetcher.aclose()
    assert response.status == 200
    assert fault_server.requests[0].target == "http://hot.example.invalid/list"


def _self_signed(tmp_path: Path) -> ssl.SSLContext:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    try:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make a test certificate: {exc}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


async def test_tls_is_always_verified(tmp_path: Path) -> None:
    server = FaultServer(ssl_context=_self_signed(tmp_path)).start()
    try:
        server.route("/list", respond(GOOD))
        fetcher = make_fetcher(HttpSettings(timeout=2))
        try:
            with pytest.raises(FetchError) as caught:
                await fetch(fetcher, f"https://127.0.0.1:{server.port}/list")
        finally:
            await fetcher.aclose()
    finally:
        server.stop()
    assert caught.value.kind == "tls" and "CERTIFICATE_VERIFY_FAILED" in str(caught.value)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (httpx.ConnectError("[Errno -2] Name or service not known"), "dns"),
        (httpx.ConnectError("[Errno -3] Temporary failure in name resolution"), "dns"),
        (httpx.ConnectError("[Errno 111] Connection refused"), "network"),
        (httpx.ReadTimeout("timed out"), "timeout"),
        (httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"), "tls"),
        (httpx.RemoteProtocolError("peer closed connection"), "network"),
    ],
)
def test_transport_errors_are_classified(error: httpx.HTTPError, kind: str) -> None:
    # DNS failures need a resolver, which tests must not use: the mapping is checked directly.
    assert _classify(error).kind == kind


async def test_total_deadline_holds_against_a_drip_under_the_read_timeout(fault_server: FaultServer) -> None:
    url = fault_server.route("/drip", drip(GOOD, 0.2))
    fetcher = make_fetcher(HttpSettings(timeout=1))
    started = time.monotonic()
    try:
        with pytest.raises(FetchError) as caught:
            await fetch(fetcher, url)
    finally:
        await fetcher.aclose()
    assert caught.value.kind == "timeout"
    assert time.monotonic() - started < 1.5
    hangups = fault_server.stats_of("/drip").hangups
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while not hangups:  # the server sees the client go away
        assert loop.time() < deadline
        await asyncio.sleep(0.02)
