"""Full-text extraction: recorded-shape article pages in UTF-8, GBK (declared gb2312) and undeclared."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator import extract
from aggregator.extract import decode_html, extract_markdown, normalize_charset

DATA = Path(__file__).parent / "data" / "articles"
URL = "https://news.example.cn/finance/2026/02/10/123456.html"

# Lines of the navigation, sidebar and footer the fixtures share; none belongs to an article.
BOILERPLATE = [
    "首页",
    "国内",
    "国际",
    "财经",
    "科技",
    "体育",
    "娱乐",
    "汽车",
    "房产",
    "视频",
    "专题",
    "登录",
    "注册",
    "下载客户端",
    "热门推荐",
    "导航热点甲",
    "导航热点乙",
    "导航热点丙",
    "导航热点丁",
    "关于我们",
    "联系我们",
    "广告服务",
    "招聘信息",
    "网站地图",
    "版权所有",
    "京ICP备",
    "举报电话",
    "分享到",
    "QQ空间",
    "网友评论",
    "文明上网",
    "_hmt",
    "font-family",
    "window.__CONFIG__",
]

CASES = {
    "utf8_news.html": [
        "新华社北京2月10日电（记者李华）记者从国家邮政局获悉，春节假期结束后，全国快递业务量迅速回升",
        "节后快递业务量回升主要得益于**农村地区网购需求**持续释放",
        "多家快递企业实行“春节不打烊”",
        "[国家邮政局发布的统计公报](https://www.spb.gov.cn/gjyzj/c100015/2026/0210.html)",
        "行业高质量发展态势进一步巩固。",
    ],
    "gbk_declared_gb2312.html": [
        "本报讯（记者陈堃）2月10日，一块刻有朱镕基同志题词的石碑在杭州市西湖区某文化公园正式亮相",
        "碑文笔力遒劲，是公园文化景观提升工程的重要组成部分。",
        "市民张喆告诉记者",
    ],
    "gbk_no_charset.html": [
        "中央气象台2月10日06时继续发布寒潮蓝色预警",
        "局地降温幅度可达12摄氏度以上。",
        "体弱人群和老年人外出时仍需注意防护。",
    ],
}


def boilerplate_count(markdown: str) -> int:
    return sum(marker in markdown for marker in BOILERPLATE)


@pytest.mark.parametrize(("name", "paragraphs"), CASES.items())
@pytest.mark.parametrize("content_type", ["text/html", None])
def test_article_text_without_boilerplate(name: str, paragraphs: list[str], content_type: str | None) -> None:
    markdown = extract_markdown((DATA / name).read_bytes(), url=URL, content_type=content_type)
    assert markdown is not None
    for paragraph in paragraphs:
        assert paragraph in markdown
    assert boilerplate_count(markdown) <= 2, markdown
    assert "\ufffd" not in markdown


def test_gb2312_label_decodes_as_gb18030() -> None:
    # 镕, 堃 and 喆 are GBK characters outside GB2312: a strict gb2312 decoder fails on them.
    body = (DATA / "gbk_declared_gb2312.html").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        body.decode("gb2312")
    text = decode_html(body, "text/html; charset=GB2312")
    assert "朱镕基" in text
    assert "陈堃" in text
    assert "张喆" in text


def test_http_charset_wins_over_meta() -> None:
    body = '<html><head><meta charset="gbk"></head><body><p>正文</p></body></html>'.encode()
    assert "正文" in decode_html(body, "text/html; charset=utf-8")


def test_wrong_http_charset_loses_to_detection() -> None:
    """A GBK page served as utf-8, as many Chinese portals do, still decodes."""
    body = (DATA / "gbk_declared_gb2312.html").read_bytes()
    markdown = extract_markdown(body, url=URL, content_type="text/html; charset=utf-8")
    assert markdown is not None
    assert CASES["gbk_declared_gb2312.html"][0] in markdown


def test_undeclared_utf8_and_bom() -> None:
    text = "<html><body><p>没有声明编码的页面</p></body></html>"
    assert "没有声明编码的页面" in decode_html(text.encode("utf-8"), None)
    assert decode_html(b"\xef\xbb\xbf" + text.encode("utf-8"), "text/html; charset=gbk") == text
    assert decode_html(b"\xff\xfe" + text.encode("utf-16-le"), None) == text


@pytest.mark.parametrize(
    ("label", "codec"),
    [
        ("gb2312", "gb18030"),
        ("GBK", "gb18030"),
        ("x-gbk", "gb18030"),
        ("GB18030", "gb18030"),
        ("big5", "big5hkscs"),
        ("iso-8859-1", "cp1252"),
        ("US-ASCII", "cp1252"),
        ("utf8", "utf-8"),
        ("'UTF-8'", "utf-8"),
        ("shift_jis", "shift_jis"),
        ("utf-16", None),
        ("utf-7", None),
        ("zlib", None),
        ("base64", None),
        ("no-such-charset", None),
    ],
)
def test_normalize_charset(label: str, codec: str | None) -> None:
    assert normalize_charset(label) == codec


ARTICLE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title></head><body>
<div class="nav"><a href="/">首页</a></div>
<article><h1>测试标题</h1>
<p>第一段正文，内容足够长以便被识别为文章主体。第一段正文，内容足够长以便被识别为文章主体。第一段正文。</p>
<p>第二段有<a href="javascript:alert(1)">恶意链接</a>、<a href="/rel/page.html">相对链接</a>和
<a href="data:text/html,x">数据链接</a>。第二段正文，内容足够长以便被识别为文章主体。第二段正文。</p>
<p>第三段提到 &lt;script&gt;alert(1)&lt;/script&gt; 这样的文字。第三段正文，内容足够长以便被识别为文章主体。</p>
</article></body></html>"""


def test_links_are_kept_only_when_http() -> None:
    markdown = extract_markdown(ARTICLE.encode(), url="https://news.example.cn/a/b.html", content_type="text/html")
    assert markdown is not None
    assert "[相对链接](https://news.example.cn/rel/page.html)" in markdown
    assert "恶意链接" in markdown
    assert "数据链接" in markdown
    assert "javascript:" not in markdown
    assert "data:" not in markdown
    assert "<script>" not in markdown.replace("\\<script>", "")


@pytest.mark.parametrize("content_type", ["image/png", "application/pdf", "application/json", "text/css"])
def test_non_html_types_give_none(content_type: str) -> None:
    assert extract_markdown(ARTICLE.encode(), url=URL, content_type=content_type) is None


def test_html_sent_as_octet_stream_is_sniffed() -> None:
    assert extract_markdown(ARTICLE.encode(), url=URL, content_type="application/octet-stream") is not None
    assert extract_markdown(b"%PDF-1.7 binary", url=URL, content_type="application/octet-stream") is None


@pytest.mark.parametrize("page", ["", "<html></html>", "<html><body><script>var x = 1;</script></body></html>"])
def test_pages_without_an_article_give_none(page: str) -> None:
    assert extract_markdown(page.encode(), url=URL, content_type="text/html") is None


def test_output_is_capped_at_a_paragraph(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extract, "MAX_OUTPUT_CHARS", 2000)
    paragraphs = "".join(f"<p>第{i}段。{'很长的正文内容' * 20}</p>" for i in range(100))
    body = f"<html><body><article>{paragraphs}</article></body></html>".encode()
    markdown = extract_markdown(body, url=URL, content_type="text/html")
    assert markdown is not None
    assert len(markdown) <= 2000 + len(extract.TRUNCATED_NOTE) + 2
    assert markdown.endswith("很长的正文内容\n\n" + extract.TRUNCATED_NOTE)
    assert markdown.startswith("第0段。")


@pytest.mark.parametrize("cut", [0, 1, 2])  # bytes of a 3-byte character left at the end
def test_input_is_capped(monkeypatch: pytest.MonkeyPatch, cut: int) -> None:
    head = "<html><body><article>" + "".join(f"<p>前文{i}。{'正文内容' * 30}</p>" for i in range(5))
    monkeypatch.setattr(extract, "MAX_INPUT_BYTES", len(head.encode()) + cut)
    body = (head + "超出上限的尾部内容。" + "尾部" * 2000 + "</article></body></html>").encode()
    markdown = extract_markdown(body, url=URL, content_type="text/html; charset=utf-8")
    assert markdown is not None
    assert "前文4。" in markdown
    assert "超" not in markdown
    assert "\ufffd" not in markdown
