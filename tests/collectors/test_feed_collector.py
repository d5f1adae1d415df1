"""The feed and NewsNow collectors against a loopback server: shapes, conditional GET, refusals."""

from __future__ import annotations

import gzip

import pytest

from aggregator.collectors import feed, newsnow
from aggregator.collectors.fetch import FetchResponse, make_fetcher
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


FEED_URL = "https://feed.example/dir/rss.xml"


def feed_response(body: bytes, content_type: str = "application/rss+xml; charset=utf-8") -> FetchResponse:
    return FetchResponse(status=200, url=FEED_URL, headers={"content-type": content_type}, body=body)


def rss(items: str, channel: str = "<title>F</title><link>https://elsewhere.example/</link>") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        f"<channel>{channel}{items}</channel></rss>"
    ).encode()


MARKUP_DESCRIPTION = (
    "&lt;p&gt;新版本带来了&lt;b&gt;更快的查询&lt;/b&gt;。&lt;/p&gt;&lt;p&gt;第二段"
    "&lt;script&gt;alert(1)&lt;/script&gt;&lt;style&gt;p{x:y}&lt;/style&gt;&lt;!-- note --&gt;"
    '&lt;a href="/r" onclick="steal()"&gt;链接&lt;/a&gt;&lt;img src=x onerror=alert(2)&gt;&lt;/p&gt;'
)


def test_markup_is_not_stored_but_text_titles_are_kept() -> None:
    """HTML in descriptions and in HTML titles leaves only its text; a title that is text keeps its `<`."""
    body = rss(
        f"<item><title>&lt;b&gt;热点&lt;/b&gt; 新闻</title><link>/a</link><description>{MARKUP_DESCRIPTION}"
        "</description></item>"
        "<item><title>Show HN: A &lt;tiny&gt; database</title><link>/b</link>"
        "<description><![CDATA[<p>a</p><p>b &amp;lt;c&amp;gt;</p><br>d <i>unclosed]]></description></item>"
    )
    items, _ = normalize_items("t", feed.parse(feed_response(body)))
    assert [i.title for i in items] == ["热点 新闻", "Show HN: A <tiny> database"]
    assert items[0].summary == "新版本带来了更快的查询。 第二段链接"
    # entities written as text in the HTML are text: unescaped once, never markup
    assert items[1].summary == "a b &lt;c&gt; d unclosed"
    atom = (
        '<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>F</title>'
        '<entry><title type="html">&lt;em&gt;Big&lt;/em&gt; news</title><id>urn:1</id><link href="/p/1"/>'
        f'<summary type="html">{MARKUP_DESCRIPTION}</summary></entry>'
        '<entry><title type="text">1 &lt; 2 &amp;&amp; 3 &gt; 2</title><id>urn:2</id>'
        '<summary type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml"><p>x<b>y</b></p><script>z()</script></div>'
        "</summary></entry></feed>"
    ).encode()
    entries, _ = normalize_items("t", feed.parse(feed_response(atom, "application/atom+xml")))
    assert [(i.title, i.summary) for i in entries] == [
        ("Big news", "新版本带来了更快的查询。 第二段链接"),
        ("1 < 2 && 3 > 2", "xy"),
    ]


def test_strip_markup() -> None:
    assert feed.strip_markup("a<b>b</b>c") == "abc"
    assert feed.strip_markup("<p>a</p><p>b</p>line<br/>break") == " a  b line break"
    assert feed.strip_markup("x<SCRIPT type='t'>evil()</script >y<style>z</STYLE>") == "xy"
    assert feed.strip_markup("keep 1 < 2 and 3 > 2, &lt;b&gt;") == "keep 1 < 2 and 3 > 2, &lt;b&gt;"
    assert feed.strip_markup("text <a href='x") == "text "  # an unclosed tag runs to the end, as in a browser
    assert feed.strip_markup("a<!-- <b>hidden</b> -->b<!-- open") == "ab"
    assert feed.strip_markup("a<script>never closed <b>x</b>") == "a"
    hostile = "<a" * 50_000 + "<script" * 50_000 + "<!--" * 50_000
    assert feed.strip_markup(hostile) == ""  # one linear pass, no backtracking blow-up


def test_relative_links_and_permalink_guids_become_absolute() -> None:
    body = rss(
        "<item><title>a</title><link>/story?sid=1&amp;x=2</link><guid>80001</guid></item>"
        "<item><title>b</title><guid>../p/2</guid></item>"
        '<item><title>c</title><link>https:////other.example/c</link><guid isPermaLink="false">c-3</guid></item>'
    )
    assert [(i.url, i.native_id) for i in feed.parse(feed_response(body))] == [
        ("https://feed.example/story?sid=1&x=2", "https://feed.example/dir/80001"),
        ("https://feed.example/p/2", "https://feed.example/p/2"),
        ("https://other.example/c", "c-3"),
    ]
    # feeds feedparser reads (Atom, xml:base) resolve against the feed URL and xml:base too
    atom = (
        b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>F</title>'
        b'<entry><title>a</title><id>urn:a</id><link href="p/1"/></entry>'
        b'<entry xml:base="https://base.example/sub/"><title>b</title><id>urn:b</id><link href="p/2"/></entry>'
        b"</feed>"
    )
    assert [i.url for i in feed.parse(feed_response(atom, "application/atom+xml"))] == [
        "https://feed.example/dir/p/1",
        "https://base.example/sub/p/2",
    ]


# Plain RSS that the fast path reads: each field in the forms feedparser treats specially.
_PARITY_ITEMS = [
    "<title>开源数据库发布新版本</title><link>https://a.example/1?x=1&amp;y=2</link>"
    '<guid isPermaLink="false">id-1</guid><description>&lt;p&gt;新&lt;b&gt;版&lt;/b&gt;&lt;/p&gt;</description>'
    "<pubDate>Mon, 30 Nov 2026 08:00:00 +0800</pubDate><dc:creator>someone</dc:creator>",
    "<title>  80&#176; 广角  </title><guid>12345</guid><PubDate>2026-11-30T08:00:00Z</PubDate>",
    "<TITLE>AT&amp;amp;T &amp;lt;b&amp;gt;</TITLE><link></link><guid>https://g.example/2</guid>",
    "<guid>https://g.example/3</guid><title>&lt;b&gt;Hot&lt;/b&gt; &lt;tiny&gt;</title><link>rel/3</link>",
    "<title>A &lt;tiny&gt; &lt;script&gt;x&lt;/script&gt;</title><link>//proto.example/4</link>"
    "<pubDate>garbage</pubDate><category>c</category><author>a@b.c</author>",
    "<title>Ã©tÃ© &#150; &#x9f;</title><link>javascript:alert(1)</link><guid isPermaLink='True'>x</guid>"
    "<description><![CDATA[<p>a</p><script>b</script>]]></description><pubDate>Tue, 31 Feb 2026 00:00:00 GMT</pubDate>",
    "<title><![CDATA[<b>cdata</b> x]]></title><link>https://h.example/?</link><guid></guid>"
    '<enclosure url="/e.mp3" length="1" type="audio/mpeg"/><comments>/c</comments><pubDate></pubDate>',
    "<title>x<!-- c -->y</title><link>http://[::1</link><description>  </description>"
    "<pubDate>30 Nov 26 08:00 EST</pubDate>",
]


@pytest.mark.parametrize(
    "channel",
    [
        "<title>F</title><link>https://elsewhere.example/</link><description>d</description>",
        '<atom:link xmlns:atom="http://www.w3.org/2005/Atom" href="https://feed.example/self" rel="self"/>'
        "<image><url>/i.png</url><title>I</title><link>/</link></image>",
    ],
)
def test_plain_rss_is_read_as_feedparser_reads_it(channel: str) -> None:
    body = rss("".join(f"<item>{fields}</item>" for fields in _PARITY_ITEMS), channel)
    fast = feed._plain_rss(body, FEED_URL)
    assert fast is not None
    assert fast == feed._feedparser_items(body, feed_response(body))
    assert len(fast) == len(_PARITY_ITEMS)


def test_plain_rss_skips_feedparser_and_anything_else_gets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = feed.feedparser.parse

    def counting(body: bytes, **kwargs: object) -> object:
        calls.append(body)
        return real(body, **kwargs)

    monkeypatch.setattr(feed.feedparser, "parse", counting)
    plain = rss("".join(f"<item><title>t{i}</title><link>/p/{i}</link></item>" for i in range(50)))
    assert len(feed.parse(feed_response(plain))) == 50 and calls == []
    item = "<item><title>t</title><link>p/1</link>{}</item>"
    content = '<content:encoded xmlns:content="http://purl.org/rss/1.0/modules/content/">x</content:encoded>'
    others = {
        "dc:date in an item": rss(item.format("<dc:date>2026-11-30T01:02:03Z</dc:date>")),
        "content:encoded": rss(item.format(content)),
        "two titles": rss(item.format("<title>again</title>")),
        "xml:base": rss(item.format(""), '<title xml:base="https://b.example/">F</title>'),
        "an Atom entry": rss(item.format("") + '<entry xmlns="http://www.w3.org/2005/Atom"><title>e</title></entry>'),
    }
    for name, body in others.items():
        calls.clear()
        got = feed.parse(feed_response(body))
        assert len(calls) == 1, name
        assert got[0].title == "t" and got[0].url == "https://feed.example/dir/p/1", name
