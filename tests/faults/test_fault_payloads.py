"""Bad payloads against the real daemon: refused with a kind, or cleaned and kept; never stored broken.

Refusals are checked like the transport faults (kind, bound, good sources stored,
daemon running); accepted payloads by what reached the store: the good entries of a
partly broken list, GBK text sent as UTF-8 read right, invisible characters gone,
titles, URLs and list lengths within their limits.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aggregator.normalize import MAX_ITEMS, MAX_TITLE_CHARS, MAX_URL_CHARS
from tests.conftest import DATA
from tests.faults.conftest import (
    MIB,
    assert_good_sources_stored,
    assert_recorded,
    fault_settings,
    good_sources_polled,
    poll_count,
    query,
    run_daemon_until,
)
from tests.faults.faultserver import FaultServer, json_body, newsnow_payload, respond, rss_payload

JSON_UTF8 = "application/json; charset=utf-8"
RSS_UTF8 = "application/rss+xml; charset=utf-8"
BILLION = (DATA / "feed" / "billion.xml").read_bytes()
CAPTCHA = (DATA / "feed" / "captcha.html").read_bytes()
MOJIBAKE_MARKS = ("Ã", "Ö", "Ð", "¢", "\ufffd")

pytestmark = pytest.mark.usefixtures("premigrated")


@dataclass(frozen=True)
class Refusal:
    name: str
    kind: str
    body: bytes
    message: str
    source_kind: str = "newsnow"
    content_type: str = JSON_UTF8


def _envelope(**fields: Any) -> bytes:
    return json_body({"status": "success", "id": "x", "updatedTime": 1, **fields})


_GBK_CAPTCHA = "<html><head><title>安全验证</title></head><body>请输入验证码</body></html>".encode("gbk")
_AFTER_COMMENT = b'<?xml version="1.0"?>\n<!--' + b"x" * 100_000 + b"-->\n" + BILLION.split(b"?>", 1)[1]
_EXTERNAL = (
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b'<rss version="2.0"><channel><item><title>&x;</title></item></channel></rss>'
)

REFUSALS = [
    Refusal("captcha-html-for-json", "blocked", CAPTCHA, "anti-bot or login page", content_type="text/html"),
    Refusal("gbk-captcha-for-json", "blocked", _GBK_CAPTCHA, "anti-bot or login page", content_type="text/html"),
    Refusal(
        "login-page-for-json",
        "blocked",
        "<html><title>登录</title><body>请登录后查看</body></html>".encode(),
        "login page",
        content_type="text/html",
    ),
    Refusal("captcha-for-feed", "blocked", CAPTCHA, "anti-bot", source_kind="feed", content_type="text/html"),
    Refusal("spa-html-for-json", "parse", (DATA / "newsnow" / "spa.html").read_bytes(), "HTML page"),
    Refusal("billion-laughs", "parse", BILLION, "DOCTYPE", source_kind="feed", content_type="application/rss+xml"),
    Refusal(
        "billion-laughs-utf16",
        "parse",
        BILLION.decode().replace('version="1.0"', 'version="1.0" encoding="utf-16"').encode("utf-16"),
        "DOCTYPE",
        source_kind="feed",
        content_type="application/rss+xml",
    ),
    Refusal(
        "billion-laughs-after-100kb-comment",
        "parse",
        _AFTER_COMMENT,
        "DOCTYPE",
        source_kind="feed",
        content_type="application/rss+xml",
    ),
    Refusal("external-entity", "parse", _EXTERNAL, "ENTITY", source_kind="feed", content_type="application/rss+xml"),
    Refusal(
        "all-entries-wrong-typed",
        "schema",
        _envelope(items=[{"title": 1}, {"title": None}, "x", [], {"title": ["a"]}, {"title": {"a": 1}}]),
        "none of the 6 NewsNow items has a title",
    ),
    Refusal("items-not-a-list", "schema", _envelope(items={"0": {"title": "a"}}), "not a list"),
    Refusal("items-missing", "schema", json_body({"status": "success"}), "missing"),
    Refusal("status-error", "schema", json_body({"status": "error", "message": "upstream failed"}), "upstream failed"),
    Refusal("not-an-object", "schema", b"[1, 2, 3]", "not a JSON object"),
    Refusal("empty-list", "empty", _envelope(items=[]), "empty list"),
    Refusal("empty-body", "empty", b"", "empty body"),
    Refusal("empty-feed-body", "empty", b"  \n", "empty body", source_kind="feed", content_type="application/rss+xml"),
    Refusal("deep-nesting", "parse", b"[" * 200_000, "nests too deep"),
    Refusal("huge-integer", "parse", b'{"status": "success", "items": [' + b"9" * 5000 + b"]}", "not valid JSON"),
    Refusal("truncated-json", "parse", _envelope(items=[{"title": "a"}])[:-3], "not valid JSON"),
    Refusal("neither-utf8-nor-gbk", "parse", b'{"status": "success", "items": [{"title": "\x80\xff"}]}', "GB18030"),
    Refusal(
        "feed-neither-utf8-nor-gbk",
        "parse",
        rss_payload(["x"]).replace(b"<title>x", b"<title>\x80\xff"),
        "GB18030",
        source_kind="feed",
        content_type=RSS_UTF8,
    ),
]


@pytest.mark.parametrize("case", REFUSALS, ids=lambda c: c.name)
async def test_bad_payload_is_refused_with_its_kind(tmp_path: Path, fault_server: FaultServer, case: Refusal) -> None:
    url = fault_server.route("/bad", respond(case.body, content_type=case.content_type))
    settings = fault_settings(tmp_path, fault_server, [{"id": "bad", "kind": case.source_kind, "url": url}])
    run = await run_daemon_until(settings, lambda: good_sources_polled(tmp_path) and poll_count(tmp_path, "bad") >= 1)
    assert_recorded(tmp_path, run, "bad", case.kind, case.message)
    assert query(tmp_path, "SELECT duration_ms FROM polls WHERE source_id = 'bad'")[0][0] < 2000
    assert run.elapsed_s < 15.0
    assert run.peak_bytes < 16 * MIB, f"peak {run.peak_bytes / MIB:.1f} MiB"
    assert_good_sources_stored(tmp_path)


async def _stored(
    tmp_path: Path, fault_server: FaultServer, body: bytes, *, kind: str = "newsnow", content_type: str = JSON_UTF8
) -> list[tuple[Any, ...]]:
    """Serve `body` to one source, run the daemon until it polled; its current list as stored."""
    url = fault_server.route("/payload", respond(body, content_type=content_type))
    settings = fault_settings(tmp_path, fault_server, [{"id": "src", "kind": kind, "url": url}])
    run = await run_daemon_until(settings, lambda: good_sources_polled(tmp_path) and poll_count(tmp_path, "src") >= 1)
    assert not run.tracebacks(), run.tracebacks()
    assert_good_sources_stored(tmp_path)
    return query(
        tmp_path,
        "SELECT rank, title, url, heat, heat_raw FROM latest_lists WHERE source_id = 'src' ORDER BY rank",
    )


def _poll(tmp_path: Path) -> tuple[Any, ...]:
    return query(tmp_path, "SELECT status, item_count, dropped_count, error_kind FROM polls WHERE source_id = 'src'")[0]


async def test_wrong_typed_entries_are_dropped_and_counted(tmp_path: Path, fault_server: FaultServer) -> None:
    items: list[Any] = [
        {"id": "a", "title": "正常一", "url": "https://example.com/1", "extra": {"info": "12万"}},
        {"id": "b", "title": 123},
        {"id": "c", "title": None, "url": "https://example.com/3"},
        "not an object",
        ["nor", "this"],
        {"id": "d", "title": ["list"]},
        {"id": "e", "title": "正常二", "url": 5, "mobileUrl": {"x": 1}, "extra": "not an object"},
        {"id": {"x": 1}, "title": "正常三", "url": None, "extra": {"info": {"nested": True}, "hover": 7}},
        {"title": "   "},
    ]
    rows = await _stored(tmp_path, fault_server, _envelope(items=items))
    assert [r[1] for r in rows] == ["正常一", "正常二", "正常三"]
    assert [r[0] for r in rows] == [1, 2, 3]
    assert rows[0][2] == "https://example.com/1" and rows[0][3] == 120_000.0
    assert rows[1][2] is None and rows[2][3] is None  # a URL that is a number is no URL; a dict is no heat
    assert _poll(tmp_path) == ("ok", 3, 6, None)


async def test_json_kind_drops_wrong_typed_entries(tmp_path: Path, fault_server: FaultServer) -> None:
    body = json_body({"data": {"list": [{"t": "好", "u": "https://e.com/1"}, {"t": {"x": 1}}, 7, {"t": True}]}})
    url = fault_server.route("/mapped", respond(body))
    source = {"id": "src", "kind": "json", "url": url, "items_path": "data.list", "title_field": "t", "url_field": "u"}
    settings = fault_settings(tmp_path, fault_server, [source])
    run = await run_daemon_until(settings, lambda: good_sources_polled(tmp_path) and poll_count(tmp_path, "src") >= 1)
    assert not run.tracebacks()
    assert query(tmp_path, "SELECT title, url FROM latest_lists WHERE source_id = 'src'") == [("好", "https://e.com/1")]
    assert _poll(tmp_path) == ("ok", 1, 3, None)


GBK_TITLES = ["微博热搜：某地暴雨", "知乎：为什么今年冬天特别冷？", "财联社电报"]


@pytest.mark.parametrize(
    ("kind", "body", "content_type"),
    [
        ("newsnow", newsnow_payload(GBK_TITLES).decode().encode("gbk"), JSON_UTF8),
        ("newsnow", newsnow_payload(GBK_TITLES).decode().encode("gbk"), "application/json"),
        ("newsnow", newsnow_payload(GBK_TITLES).decode().encode("gbk"), "application/json; charset=gbk"),
        ("feed", rss_payload(GBK_TITLES, encoding="gb18030", declared="utf-8"), RSS_UTF8),
        ("feed", rss_payload(GBK_TITLES, encoding="gbk", declared="utf-8"), "application/rss+xml"),
        ("feed", rss_payload(GBK_TITLES, encoding="gbk", declared="gb2312"), "application/rss+xml"),
        ("feed", rss_payload(GBK_TITLES, encoding="utf-16"), "application/rss+xml"),
        ("feed", rss_payload(GBK_TITLES), "text/xml; charset=ISO-8859-1"),
    ],
    ids=[
        "json-gbk-sent-as-utf8",
        "json-gbk-no-charset",
        "json-gbk-declared",
        "feed-gbk-sent-as-utf8",
        "feed-gbk-declared-utf8-in-xml-only",
        "feed-gbk-declared-gb2312",
        "feed-utf16-with-bom",
        "feed-utf8-labelled-latin1",
    ],
)
async def test_chinese_text_is_decoded_right_or_not_at_all(
    tmp_path: Path, fault_server: FaultServer, kind: str, body: bytes, content_type: str
) -> None:
    rows = await _stored(tmp_path, fault_server, body, kind=kind, content_type=content_type)
    assert [r[1] for r in rows] == GBK_TITLES
    stored = query(tmp_path, "SELECT title FROM items")
    assert not any(mark in title for (title,) in stored for mark in MOJIBAKE_MARKS), stored


async def test_text_is_cleaned_and_limited(tmp_path: Path, fault_server: FaultServer) -> None:
    long_url = "https://example.com/" + "a" * (MAX_URL_CHARS + 10)
    items: list[dict[str, Any]] = [
        {
            "id": "ctl",
            "title": "控制\x00字\x07符\x1b[31m红\u202e反向\u2066隔离\u2069\u200b零宽\ufeff\u061c完",
            "url": "https://e.com/1",
        },
        {"id": "sur", "title": "孤\ud800代理\udfff项", "url": "https://e.com/2"},
        {"id": "long", "title": "长" * (MAX_TITLE_CHARS * 4), "url": long_url},
        {"id": "inf", "title": "热度无穷", "url": "https://e.com/4", "extra": {"info": 1e400}},
        {"id": "big", "title": "热度巨大", "url": "https://e.com/5", "extra": {"info": 10**30}},
        {"id": "js", "title": "脚本链接", "url": "javascript:alert(1)"},
    ]
    items += [{"id": f"n{i}", "title": f"第{i}条", "url": f"https://e.com/n/{i}"} for i in range(MAX_ITEMS * 3)]
    body = json.dumps(
        {"status": "success", "id": "x", "items": items}, ensure_ascii=True
    ).encode()  # \ud800 as JSON escapes
    rows = await _stored(tmp_path, fault_server, body)
    by_id = {r[1][:4]: r for r in rows}
    assert by_id["控制字符"][1] == "控制字符[31m红反向隔离零宽完"
    assert "孤代理项" in by_id
    longest = next(r for r in rows if r[1].startswith("长"))
    assert len(longest[1]) == MAX_TITLE_CHARS and longest[2] is None  # a cut URL would point elsewhere: none
    assert by_id["热度无穷"][3] is None and by_id["热度巨大"][3] is None
    assert by_id["脚本链接"][2] is None
    assert len(rows) == MAX_ITEMS
    status, item_count, dropped, _ = _poll(tmp_path)
    assert (status, item_count, dropped) == ("ok", MAX_ITEMS, len(items) - MAX_ITEMS)
    every_text = query(tmp_path, "SELECT title, coalesce(url, ''), coalesce(summary, '') FROM items")
    invisible = set("\x00\x07\x1b\u202e\u2066\u2069\u200b\ufeff\u061c")
    assert not any(set(text) & invisible for row in every_text for text in row)


def _kinds_of(tmp_path: Path) -> Callable[[], dict[str, str]]:
    return lambda: dict(query(tmp_path, "SELECT source_id, error_kind FROM polls WHERE status = 'error'"))


async def test_many_bad_sources_at_once_leave_the_good_ones_alone(tmp_path: Path, fault_server: FaultServer) -> None:
    """All the refusals in one daemon: each gets its kind, the good sources their lists."""
    sources = []
    for i, case in enumerate(REFUSALS):
        url = fault_server.route(f"/bad/{i}", respond(case.body, content_type=case.content_type))
        sources.append({"id": f"bad-{i}", "kind": case.source_kind, "url": url})
    settings = fault_settings(tmp_path, fault_server, sources)
    kinds = _kinds_of(tmp_path)
    run = await run_daemon_until(settings, lambda: good_sources_polled(tmp_path) and len(kinds()) == len(REFUSALS))
    assert kinds() == {f"bad-{i}": case.kind for i, case in enumerate(REFUSALS)}
    assert not run.tracebacks()
    assert run.peak_bytes < 32 * MIB
    assert_good_sources_stored(tmp_path)
