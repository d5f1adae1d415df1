"""The feed and NewsNow collectors against a loopback server: shapes, conditional GET, refusals."""

from __future__ import annotations

import gzip

import pytest

from aggregator.collectors import feed, newsnow
from aggregator.collectors.fetch import make_fetcher
from aggregator.errors import FetchError, ParseError
from aggregator.models import SourceState
from aggregator.normalize import normalize_items
from aggregator.settings import HttpSettings, SourceSettings
from tests.conftest import DATA, LoopbackServer


def source(kind: str, url: str) -> SourceSettings:
    return SourceSettings(id="t", kind=kind, url=url, interval="10m")  # type: ignore[arg-type]


async def collect_feed(url: str, state: SourceState | None = None, **http: object):  # type: ignore[no-untyped-def]
    fetcher = make_fetcher(HttpSettings(**http))  # type: ignore[arg-type]
    try:
        return await feed.collect(fetcher, source("feed", url), state or SourceState())
    finally:
        await fetcher.aclose()


async def test_rss_entries_in_order_with_entities_and_relative_links(http_server: LoopbackServer) -> None:
    url = http_server.serve_file("/rss", "feed/rss.xml", "application/rss+xml")
    got = await collect_feed(url)
    assert [i.title for i in got.items] == ["开源数据库发布新版本", "80° 广角镜头的新手机", "科学家发现新的系外行星"]
    assert got.items[1].url == http_server.url("/story?sid=80002")
    assert got.items[0].native_id == "solidot-80001"
    assert (
        got.items[0].published_at is not None and got.items[0].published_at.isoformat() == "2026-11-30T00:00:00+00:00"
    )
    assert got.items[0].summary is not None and "更快的查询" in got.items[0].summary


async def test_atom_and_json_feed(http_server: LoopbackServer) -> None:
    atom = await collect_feed(http_server.serve_file("/atom", "feed/atom.xml", "application/atom+xml"))
    items, _ = normalize_items("t", atom.items)  # HTML titles arrive escaped; normalization unescapes once
    assert [i.title for i in items] == ["Show HN: A <tiny> database", "Second post"]
    assert atom.items[0].url == "https://example.org/posts/1?utm_campaign=x"
    jf = await collect_feed(http_server.serve_file("/jf", "feed/jsonfeed.json", "application/feed+json"))
    assert [(i.title, i.url) for i in jf.items] == [
        ("第一篇", "https://json.example/1"),
        ("第二篇", "https://json.example/2"),
    ]


async def test_conditional_get_gives_not_modified(http_server: LoopbackServer) -> None:
    body = (DATA / "feed/rss.xml").read_bytes()
    http_server.route(
        "/rss",
        body,
        headers={
            "Content-Type": "application/rss+xml",
            "ETag": '"v1"',
            "Last-Modified": "Mon, 30 Nov 2026 08:00:00 GMT",
        },
    )
    first = await collect_feed(http_server.url("/rss"))
    assert first.etag == '"v1"' and first.last_modified == "Mon, 30 Nov 2026 08:00:00 GMT"
    http_server.route("/rss", b"", status=304, headers={"ETag": '"v1"'})
    state = SourceState(etag=first.etag, last_modified=first.last_modified)
    second = await collect_feed(http_server.url("/rss"), state)
    assert second.not_modified and second.items == [] and second.etag == '"v1"'
    sent = http_server.requests[-1][1]
    assert sent["if-none-match"] == '"v1"' and sent["if-modified-since"] == "Mon, 30 Nov 2026 08:00:00 GMT"


async def test_valid_empty_feed_is_ok_but_html_is_not(http_server: LoopbackServer) -> None:
    empty = await collect_feed(http_server.serve_file("/empty", "feed/empty.xml", "application/rss+xml"))
    assert empty.items == []
    with pytest.raises(ParseError) as info:
        await collect_feed(http_server.serve_file("/captcha", "feed/captcha.html", "text/html"))
    assert info.value.kind == "blocked" and info.value.http_status == 200
    with pytest.raises(ParseError, match="not a feed"):
        await collect_feed(http_server.serve_file("/spa", "newsnow/spa.html", "text/html"))


async def test_entity_declarations_are_refused(http_server: LoopbackServer) -> None:
    with pytest.raises(ParseError, match="DOCTYPE subset or ENTITY"):
        await collect_feed(http_server.serve_file("/lol", "feed/billion.xml", "application/xml"))


async def test_body_cap_and_gzip_cap(http_server: LoopbackServer) -> None:
    http_server.route("/big", b"<rss>" + b"x" * 5000, headers={"Content-Type": "application/xml"})
    with pytest.raises(FetchError) as info:
        await collect_feed(http_server.url("/big"), max_bytes=2048)
    assert info.value.kind == "too_large"
    bomb = gzip.compress(b"<rss>" + b" " * 5_000_000)
    assert len(bomb) < 10_000
    http_server.route("/bomb", bomb, headers={"Content-Type": "application/xml", "Content-Encoding": "gzip"})
    with pytest.raises(FetchError) as info:
        await collect_feed(http_server.url("/bomb"), max_bytes=64 * 1024)
    assert info.value.kind == "too_large"
    ok = gzip.compress((DATA / "feed/rss.xml").read_bytes())
    http_server.route("/gz", ok, headers={"Content-Type": "application/rss+xml", "Content-Encoding": "gzip"})
    assert len((await collect_feed(http_server.url("/gz"))).items) == 3


async def test_newsnow_refusals(http_server: LoopbackServer) -> None:
    fetcher = make_fetcher(HttpSettings())
    try:
        http_server.route("/bad", '{"status":"error","message":"unknown id"}')
        with pytest.raises(ParseError, match="NewsNow status 'error' unknown id"):
            await newsnow.collect(fetcher, source("newsnow", http_server.url("/bad")), SourceState())
        http_server.route("/noitems", '{"status":"success","id":"x"}')
        with pytest.raises(ParseError, match="'items' is missing"):
            await newsnow.collect(fetcher, source("newsnow", http_server.url("/noitems")), SourceState())
        http_server.route("/redir", b"", status=302, headers={"Location": "/redir"})
        with pytest.raises(FetchError) as info:
            await newsnow.collect(fetcher, source("newsnow", http_server.url("/redir")), SourceState())
        assert info.value.kind == "redirect_loop"
        http_server.route("/slow429", b"", status=429, headers={"Retry-After": "120"})
        with pytest.raises(FetchError) as info:
            await newsnow.collect(fetcher, source("newsnow", http_server.url("/slow429")), SourceState())
        assert info.value.kind == "rate_limited" and info.value.retry_after_s == 120
    finally:
        await fetcher.aclose()
