"""Full text through the guarded fetch path and `aggregator export`, end to end on loopback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import feedparser
import pytest

from aggregator.collectors.fetch import make_fetcher
from aggregator.errors import FetchError
from aggregator.fulltext import fetch_page
from aggregator.settings import FulltextSettings, HttpSettings
from tests.conftest import DATA, LoopbackServer
from tests.test_daemon import cli, query

ARTICLES = DATA / "articles"
UTF8_PARAGRAPH = "新华社北京2月10日电（记者李华）记者从国家邮政局获悉，春节假期结束后，全国快递业务量迅速回升"
GBK_PARAGRAPH = "本报讯（记者陈堃）2月10日，一块刻有朱镕基同志题词的石碑在杭州市西湖区某文化公园正式亮相"


def serve_articles(server: LoopbackServer) -> None:
    server.route("/a/utf8", (ARTICLES / "utf8_news.html").read_bytes(), headers={"Content-Type": "text/html"})
    server.route(
        "/a/gbk",
        (ARTICLES / "gbk_declared_gb2312.html").read_bytes(),
        headers={"Content-Type": "text/html; charset=gb2312"},
    )
    server.route("/a/moved", b"", status=301, headers={"Location": "/a/utf8"})
    server.route(
        "/a/huge", b"<html><body>" + b"<p>x</p>" * 200_000 + b"</body></html>", headers={"Content-Type": "text/html"}
    )
    server.route("/a/metadata", b"", status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})


ALLOW = FulltextSettings(allow_private=("127.0.0.1",), max_bytes=1024 * 1024)


async def page(url: str, settings: FulltextSettings = ALLOW) -> str | None:
    fetcher = make_fetcher(HttpSettings())
    try:
        return await fetch_page(fetcher, url, settings)
    finally:
        await fetcher.aclose()


async def test_article_pages_utf8_gbk_and_redirect(http_server: LoopbackServer) -> None:
    serve_articles(http_server)
    utf8 = await page(http_server.url("/a/utf8"))
    assert utf8 is not None and UTF8_PARAGRAPH in utf8 and "下载客户端" not in utf8
    gbk = await page(http_server.url("/a/gbk"))
    assert gbk is not None and GBK_PARAGRAPH in gbk
    moved = await page(http_server.url("/a/moved"))
    assert moved is not None and UTF8_PARAGRAPH in moved


async def test_too_large_and_redirect_to_metadata_are_refused(http_server: LoopbackServer) -> None:
    serve_articles(http_server)
    with pytest.raises(FetchError) as info:
        await page(http_server.url("/a/huge"))
    assert info.value.kind == "too_large"
    with pytest.raises(FetchError) as info:
        await page(http_server.url("/a/metadata"))
    assert info.value.kind == "blocked"


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.1", "0x7f.1", "2130706433", "[::ffff:127.0.0.1]", "localhost", "0177.0.0.1"],
)
async def test_private_addresses_are_refused_before_connecting(http_server: LoopbackServer, host: str) -> None:
    serve_articles(http_server)
    with pytest.raises(FetchError) as info:
        await page(f"http://{host}:{http_server.port}/a/utf8", FulltextSettings())
    assert info.value.kind == "blocked"
    assert http_server.hits["/a/utf8"] == 0  # refused before any connection was made


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/", "http://100.64.0.1/", "file:///etc/passwd", "gopher://127.0.0.1:70/"]
)
async def test_ssrf_matrix(url: str) -> None:
    with pytest.raises(FetchError) as info:
        await page(url, FulltextSettings())
    assert info.value.kind == "blocked"


def feed_with_articles(server: LoopbackServer) -> str:
    items = "".join(
        f"<item><title>{title}</title><link>{server.url(path)}</link><guid>{path}</guid>"
        f"<description>{summary}</description></item>"
        for title, path, summary in [
            ('全国快递业务量春节后迅速回升 "快" & 稳', "/a/utf8", "快递摘要"),
            ("西湖区文化公园石碑亮相", "/a/gbk", "石碑摘要"),
            ("一篇取不到原文的文章", "/a/missing", "只有摘要：页面不存在"),
        ]
    )
    xml = f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>t</title>{items}</channel></rss>'
    return server.route("/feed", xml, headers={"Content-Type": "application/rss+xml"})


def test_export_writes_seed_documents_and_replaces_the_set(tmp_path: Path, http_server: LoopbackServer) -> None:
    serve_articles(http_server)
    url = feed_with_articles(http_server)
    config = tmp_path / "settings.toml"
    config.write_text(
        f'[store]\ndata_dir = "{tmp_path / "data"}"\n[fulltext]\nallow_private = ["127.0.0.1"]\n'
        f'[[sources]]\nid = "articles"\nkind = "feed"\nname = "示例新闻"\nurl = "{url}"\n',
        encoding="utf-8",
    )
    assert cli("run", "--once", config=config).returncode == 0
    out = tmp_path / "export"
    (out / "notes.md").parent.mkdir()
    (out / "notes.md").write_text("not ours")
    done = cli("export", "--fetch", "--top", "3", "--out", str(out), config=config)
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in out.glob("*.txt"))
    assert [f[:4] for f in files] == ["000_", "001_", "002_"]
    assert all(re.fullmatch(r"\d{3}_[0-9a-f]{16}\.txt", f) for f in files)
    docs = {f: (out / f).read_text(encoding="utf-8") for f in files}
    first = docs[files[0]]
    assert first.startswith('---\ntitle: "全国快递业务量春节后迅速回升 \\"快\\" & 稳"\n')
    assert 'source: "示例新闻"\n' in first and "score: 100.0\n" in first
    assert "\n## 原文内容\n\n" in first and UTF8_PARAGRAPH in first
    assert re.search(r"\n---\n\*自动采集于 \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(北京时间\)\*\n$", first)
    assert GBK_PARAGRAPH in docs[files[1]]
    assert "只有摘要：页面不存在" in docs[files[2]]  # no page: the summary stands in
    statuses = dict(query(tmp_path, "SELECT title, content_status FROM items"))
    assert statuses["一篇取不到原文的文章"] == "error"
    key = files[0][4:20]
    assert query(tmp_path, f"SELECT count(*) FROM ranked_items WHERE item_key = '{key}' AND position = 1") == [(1,)]

    again = cli("export", "--top", "1", "--out", str(out), config=config)
    assert again.returncode == 0
    assert sorted(p.name for p in out.glob("*.txt")) == [files[0]]  # stale documents removed
    assert (out / "notes.md").read_text() == "not ours"

    as_json = cli("export", "--top", "2", "--out", str(out), "--format", "json", config=config)
    assert as_json.returncode == 0
    stories = json.loads((out / "top.json").read_text(encoding="utf-8"))["stories"]
    assert len(stories) == 2 and stories[0]["title"].startswith("全国快递业务量")
    assert cli("export", "--top", "2", "--out", str(out), "--format", "csv", config=config).returncode == 0
    assert (out / "top.csv").read_text(encoding="utf-8").splitlines()[0].startswith("position")
    # The Atom feed carries the fetched full text, for feed readers and static hosting.
    assert cli("export", "--top", "3", "--out", str(out), "--format", "atom", config=config).returncode == 0
    feed = feedparser.parse((out / "top.atom").read_bytes())
    assert not feed.bozo and len(feed.entries) == 3
    assert [e.title for e in feed.entries[:2]] == [s["title"] for s in stories]
    assert UTF8_PARAGRAPH in feed.entries[0].content[0].value and feed.entries[0].author == "示例新闻"
