"""Seed, JSON and CSV exports: golden layout, YAML escaping, injection, atomic writes."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import feedparser
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator import export
from aggregator.export import (
    ExportDoc,
    escape_markdown_inline,
    link_url,
    neutralize_content,
    quote_yaml,
    render_csv,
    render_json,
    render_seed,
    write_export,
)

DATA = Path(__file__).parent / "data" / "export"
SHANGHAI = ZoneInfo("Asia/Shanghai")
LABEL = "北京时间"
COLLECTED_AT = datetime(2026, 2, 10, 16, 5, 9, tzinfo=UTC)  # 2026-02-11 00:05:09 in Beijing

GOLDEN_CONTENT = """国家邮政局监测数据显示，2月10日全国邮政快递业共揽收快递包裹7.2亿件，同比增长**12.5%**。

业内人士表示，快递量增长主要来自：

- 农村地区网购需求持续释放；
- 即时零售与直播电商带动。

更多数据见[国家邮政局官网](https://www.spb.gov.cn/)。
"""


def make_doc(**changes: object) -> ExportDoc:
    doc = ExportDoc(
        position=0,
        item_key="0123456789abcdef",
        title='央视："双十一"快递量创新高',
        url="https://news.example.cn/detail/2026/02/10/123456.html",
        source_name="NewsNow 微博",
        score=87.3,
        content=GOLDEN_CONTENT,
        summary="快递量创新高",
        collected_at=COLLECTED_AT,
        story_id=42,
        sources=("weibo", "zhihu"),
        source_count=2,
    )
    return dataclasses.replace(doc, **changes)


def front_matter(text: str) -> dict[str, object]:
    assert text.startswith("---\n")
    head, sep, _ = text[4:].partition("\n---\n")
    assert sep
    loaded = yaml.safe_load(head)
    assert isinstance(loaded, dict)
    return loaded


def body_lines(text: str) -> list[str]:
    """The lines after the front matter."""
    return text[4:].partition("\n---\n")[2].split("\n")


# -- golden -------------------------------------------------------------------------------


def test_golden_seed_byte_for_byte() -> None:
    expected = (DATA / "golden_seed.txt").read_bytes()
    assert render_seed(make_doc(), SHANGHAI, LABEL).encode("utf-8") == expected


def test_reproduces_the_real_seed_example() -> None:
    """The document in shared/seed-example.txt, rebuilt from its parts, is the same bytes."""
    expected = (DATA / "seed_example.txt").read_text(encoding="utf-8")
    content = expected.split("\n## 原文内容\n\n", 1)[1].rsplit("\n\n---\n*自动采集于", 1)[0]
    doc = make_doc(
        title="求是网：前瞻布局和发展未来产业",
        url="https://www.cls.cn/detail/2286386",
        source_name="NewsNow 微博",
        score=100.0,
        content=content,
        collected_at=datetime(2026, 2, 10, 22, 43, 48, tzinfo=UTC),
    )
    assert render_seed(doc, SHANGHAI, LABEL) == expected


def test_front_matter_fields() -> None:
    meta = front_matter(render_seed(make_doc(), SHANGHAI, LABEL))
    assert meta == {
        "title": '央视："双十一"快递量创新高',
        "url": "https://news.example.cn/detail/2026/02/10/123456.html",
        "source": "NewsNow 微博",
        "date": date(2026, 2, 11),  # the Beijing date, not the UTC one
        "score": 87.3,
    }


@pytest.mark.parametrize(
    ("score", "shown"),
    [(100.0, "100.0"), (0.0, "0.0"), (-0.0, "0.0"), (99.96, "100.0"), (12.34, "12.3"), (5, "5.0")],
)
def test_score_has_one_decimal(score: float, shown: str) -> None:
    text = render_seed(make_doc(score=score), SHANGHAI, LABEL)
    assert f"\nscore: {shown}\n" in text
    assert f"| **热度**: {shown}\n" in text


def test_other_zone_and_label() -> None:
    text = render_seed(make_doc(), ZoneInfo("America/New_York"), "America/New_York")
    assert "\ndate: 2026-02-10\n" in text
    assert text.endswith("*自动采集于 2026-02-10 11:05:09 (America/New\\_York)*\n")


def test_aware_non_utc_time_is_converted() -> None:
    moment = COLLECTED_AT.astimezone(timezone(timedelta(hours=-7)))
    assert render_seed(make_doc(collected_at=moment), SHANGHAI, LABEL) == render_seed(make_doc(), SHANGHAI, LABEL)


def test_summary_then_fallback() -> None:
    with_summary = render_seed(make_doc(content=None, summary="一句话摘要"), SHANGHAI, LABEL)
    assert "## 原文内容\n\n一句话摘要\n\n---\n" in with_summary
    blank_content = render_seed(make_doc(content="  \n\n", summary="一句话摘要"), SHANGHAI, LABEL)
    assert "## 原文内容\n\n一句话摘要\n\n---\n" in blank_content
    neither = render_seed(make_doc(content=None, summary=None), SHANGHAI, LABEL)
    assert f"## 原文内容\n\n{export.FALLBACK_CONTENT}\n\n---\n" in neither


@pytest.mark.parametrize(
    "changes",
    [
        {"item_key": "0123456789ABCDEF"},
        {"item_key": "../../etc/passwd"},
        {"item_key": "0123456789abcde"},
        {"position": -1},
        {"score": float("nan")},
        {"score": float("inf")},
        {"collected_at": datetime(2026, 2, 10, 16, 5, 9)},  # naive
    ],
)
def test_invalid_docs_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_doc(**changes)


# -- YAML ----------------------------------------------------------------------------------

HOSTILE_TITLES = [
    'He said "hi"',
    "back\\slash \\n not a newline",
    "key: value # comment",
    "line one\nline two",
    "tab\there",
    "---",
    "...",
    "--- \n---\n",
    "\x00\x01\x07\x08\x0b\x0c\x1b\x7f",
    "\x85 NEL \u2028 LS \u2029 PS",
    "\ufeffBOM and \ufffe\uffff",
    "C1 \x80\x9f and nbsp\xa0",
    "emoji 😀 and 𠮷",
    "'single' and `back`",
    "{flow: [seq]} & *alias !tag %directive @at",
    "  leading and trailing  ",
    "",
    "\r\n windows \r",
    "# 求是网：前瞻布局",
]


@pytest.mark.parametrize("title", HOSTILE_TITLES)
def test_front_matter_round_trips(title: str) -> None:
    text = render_seed(make_doc(title=title, source_name=title, url=title), SHANGHAI, LABEL)
    meta = front_matter(text)
    assert meta["title"] == title
    assert meta["source"] == title
    assert meta["url"] == title
    assert text.split("\n")[1].startswith('title: "')


def test_quote_yaml_escapes_lone_surrogates() -> None:
    assert yaml.safe_load("k: " + quote_yaml("a\ud800b"))["k"] == "a\ud800b"


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_quote_yaml_round_trips_any_text(title: str) -> None:
    quoted = quote_yaml(title)
    assert "\n" not in quoted
    assert yaml.safe_load("title: " + quoted) == {"title": title}


@settings(max_examples=200, deadline=None)
@given(title=st.text(), source=st.text(), content=st.text())
def test_any_text_keeps_the_layout(title: str, source: str, content: str) -> None:
    text = render_seed(make_doc(title=title, source_name=source, content=content), SHANGHAI, LABEL)
    meta = front_matter(text)
    assert meta["title"] == title
    assert meta["source"] == source
    lines = text.split("\n")
    # Every reader sees the same lines, and exactly three rules: two fences and the footer's.
    assert text.splitlines() == lines[:-1]
    assert [i for i, line in enumerate(lines) if line == "---"] == [0, 6, len(lines) - 3]
    assert lines[-2].startswith("*自动采集于 ")
    assert lines[-1] == ""
    assert lines[8].startswith("# ")
    assert lines[10].startswith("**来源**: ")
    assert lines[12] == "## 原文内容"
    assert not any(line.lstrip().startswith("*自动采集于") for line in lines[13:-2])


# -- Markdown and HTML injection -----------------------------------------------------------


def test_title_newline_cannot_start_a_heading() -> None:
    text = render_seed(make_doc(title="正常标题\n# 伪造标题\n\n---\n<script>x</script>"), SHANGHAI, LABEL)
    lines = body_lines(text)
    assert lines[1] == "# 正常标题 \\# 伪造标题 --- \\<script\\>x\\</script\\>"
    assert sum(line.startswith("# ") for line in lines) == 1


@pytest.mark.parametrize(
    ("title", "heading"),
    [
        ("[点我](javascript:alert(1))", "# \\[点我\\]\\(javascript:alert\\(1\\)\\)"),
        ("**粗体** _斜体_ `代码`", "# \\*\\*粗体\\*\\* \\_斜体\\_ \\`代码\\`"),
        ("结尾井号 ##", "# 结尾井号 \\#\\#"),
        ("AT&T &amp; &#60;", "# AT&T \\&amp; &\\#60;"),  # `\#` already breaks the reference
        ("![img](x) | ~~del~~ \\", "# \\!\\[img\\]\\(x\\) \\| \\~\\~del\\~\\~ \\\\"),
    ],
)
def test_title_markdown_is_escaped(title: str, heading: str) -> None:
    assert body_lines(render_seed(make_doc(title=title), SHANGHAI, LABEL))[1] == heading


def test_source_line_escapes_name_and_url() -> None:
    doc = make_doc(source_name="微博](http://evil.example) [x", url='https://ex.com/a b/(c)<d>"e\n?q=1')
    line = body_lines(render_seed(doc, SHANGHAI, LABEL))[3]
    assert line == (
        "**来源**: [微博\\]\\(http://evil.example\\) \\[x](https://ex.com/a%20b/%28c%29%3Cd%3E%22e?q=1)"
        " | **热度**: 87.3"
    )


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "data:text/html,<b>x</b>", "file:///etc/passwd", "", "//ex.com/x", "http:///nohost"]
)
def test_source_line_has_no_link_for_non_http_urls(url: str) -> None:
    line = body_lines(render_seed(make_doc(url=url), SHANGHAI, LABEL))[3]
    assert line == "**来源**: NewsNow 微博 | **热度**: 87.3"


def test_link_url_keeps_ordinary_urls() -> None:
    assert link_url("https://www.cls.cn/detail/2286386") == "https://www.cls.cn/detail/2286386"
    assert link_url("HTTPS://例子.中国/路径?a=1&b=2#frag") == "HTTPS://例子.中国/路径?a=1&b=2#frag"
    assert link_url("https://ex.com/\u202egnp.exe") == "https://ex.com/%E2%80%AEgnp.exe"


def test_content_cannot_forge_the_footer() -> None:
    content = "第一段。\n\n---\n*自动采集于 2020-01-01 00:00:00 (北京时间)*\n\n---\ntitle: fake\n---\n后文。"
    text = render_seed(make_doc(content=content), SHANGHAI, LABEL)
    lines = text.split("\n")
    assert [i for i, line in enumerate(lines) if line == "---"] == [0, 6, len(lines) - 3]
    assert text.count("\n*自动采集于") == 1
    assert "\n----\n\\*自动采集于 2020-01-01 00:00:00 (北京时间)*\n" in text
    assert text.endswith("后文。\n\n---\n*自动采集于 2026-02-11 00:05:09 (北京时间)*\n")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("<script>alert(1)</script>", "\\<script>alert(1)\\</script>"),
        ("a <img src=x onerror=alert(1)> b", "a \\<img src=x onerror=alert(1)> b"),
        ("<!-- comment", "\\<!-- comment"),
        ("<?php echo 1; ?>", "\\<?php echo 1; ?>"),
        ("<!DOCTYPE html>", "\\<!DOCTYPE html>"),
        ("already \\<b> escaped", "already \\<b> escaped"),
        ("escaped backslash \\\\<b>", "escaped backslash \\\\\\<b>"),
        ("1 < 2 and 3 <= 4", "1 < 2 and 3 <= 4"),
        ("see <https://ex.com/a> here", "see <https://ex.com/a> here"),
        ("bad <javascript:alert(1)>", "bad \\<javascript:alert(1)>"),
        ("```html\n<div>code</div>\n```\n<div>out</div>", "```html\n<div>code</div>\n```\n\\<div>out\\</div>"),
        ("~~~\n<b>\n~~~~\n<b>", "~~~\n<b>\n~~~~\n\\<b>"),
        ("``` a`b\n<b>", "``` a`b\n\\<b>"),  # not a fence: backtick in the info string
        ("  ```\n<b>", "  \\```\n\\<b>"),  # an indented fence may or may not open: it is escaped
        ("   ~~~ x", "   \\~~~ x"),
        ("```\n  ```\n<b>", "```\n  ```\n\\<b>"),  # an indented closer still closes
        ("    ```", "    ```"),  # indented code, not a fence
        ("```\n<b>never closed", "```\n<b>never closed\n```"),
        ("a\n---\nb", "a\n----\nb"),
        ("  ---  ", "  ----"),
        ("- - -\n***\n----", "- - -\n***\n----"),
        ("*自动采集于 x*", "\\*自动采集于 x*"),
        ("> **自动采集于 x**", "> \\**自动采集于 x**"),
        ("a\r\nb\rc\x85d\u2028e\u2029f", "a\nb\nc\nd\ne\nf"),
        ("nul\x00 bell\x07 esc\x1b", "nul bell esc"),
        ("\n\n  \n正文   \n\n\n", "正文"),
    ],
)
def test_neutralize_content(content: str, expected: str) -> None:
    assert neutralize_content(content) == expected


def test_script_in_content_is_not_live_in_the_document() -> None:
    text = render_seed(make_doc(content="前文<script>alert(1)</script>后文"), SHANGHAI, LABEL)
    assert "<script>" not in text.replace("\\<script>", "")
    assert "前文\\<script>alert(1)\\</script>后文" in text


def test_escape_markdown_inline_is_one_line() -> None:
    assert escape_markdown_inline("  a\n\nb\tc\u2028d\x00e  ") == "a b c d e"


# -- JSON and CSV --------------------------------------------------------------------------


def test_render_json_parses() -> None:
    docs = [make_doc(position=1, item_key="1" * 16, score=50.0), make_doc()]
    loaded = json.loads(render_json(docs))
    stories = loaded["stories"]
    assert [s["position"] for s in stories] == [0, 1]
    assert stories[0] == {
        "position": 0,
        "item_key": "0123456789abcdef",
        "story_id": 42,
        "title": '央视："双十一"快递量创新高',
        "url": "https://news.example.cn/detail/2026/02/10/123456.html",
        "source": "NewsNow 微博",
        "sources": ["weibo", "zhihu"],
        "source_count": 2,
        "score": 87.3,
        "collected_at": "2026-02-10T16:05:09Z",
        "summary": "快递量创新高",
        "content": GOLDEN_CONTENT,
    }


def test_render_csv_parses() -> None:
    docs = [make_doc(title='=HYPERLINK("http://evil")\n第二行', summary=None), make_doc(position=1, item_key="f" * 16)]
    text = render_csv(docs)
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == 2
    assert rows[0]["title"] == '\'=HYPERLINK("http://evil")\n第二行'  # formula neutralized, text kept
    assert rows[0]["summary"] == ""
    assert rows[1]["title"] == '央视："双十一"快递量创新高'
    assert rows[1] | {"title": ""} == {
        "position": "1",
        "score": "87.3",
        "title": "",
        "url": "https://news.example.cn/detail/2026/02/10/123456.html",
        "source": "NewsNow 微博",
        "sources": "weibo;zhihu",
        "source_count": "2",
        "story_id": "42",
        "item_key": "ffffffffffffffff",
        "collected_at": "2026-02-10T16:05:09Z",
        "summary": "快递量创新高",
    }
    assert text.startswith("position,score,title,")
    assert text.endswith("\r\n")


# -- write_export --------------------------------------------------------------------------


def top_docs(keys: list[str]) -> list[ExportDoc]:
    return [make_doc(position=i, item_key=key, score=100.0 - i) for i, key in enumerate(keys)]


def write(docs: list[ExportDoc], out: Path, fmt: str = "seed") -> list[Path]:
    return write_export(docs, out, fmt, zone=SHANGHAI, zone_label=LABEL)


def test_write_seed_names_and_content(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"
    docs = top_docs(["a" * 16, "b" * 16, "c" * 16])
    paths = write(list(reversed(docs)), out)
    assert [p.name for p in paths] == [f"000_{'a' * 16}.txt", f"001_{'b' * 16}.txt", f"002_{'c' * 16}.txt"]
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in paths]
    assert paths[0].read_text(encoding="utf-8") == render_seed(docs[0], SHANGHAI, LABEL)
    assert "score: 98.0" in paths[2].read_text(encoding="utf-8")


def test_position_past_999_keeps_its_digits(tmp_path: Path) -> None:
    [path] = write([make_doc(position=1234)], tmp_path)
    assert path.name == "1234_0123456789abcdef.txt"


def test_reexport_replaces_and_removes_stale_seed_files_only(tmp_path: Path) -> None:
    write(top_docs(["a" * 16, "b" * 16, "c" * 16]), tmp_path)
    others = {
        "README.md": "mine",
        "000_notakey.txt": "not ours",
        "001_ABCDEFABCDEFABCD.txt": "upper case is not ours",
        f"002_{'d' * 16}.txt.bak": "suffix",
        f"x002_{'d' * 16}.txt": "prefix",
        "top.json": "{}",
    }
    for name, text in others.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / f"009_{'e' * 16}.txt").mkdir()  # a directory with our name is left alone

    paths = write(top_docs(["c" * 16, "a" * 16]), tmp_path)

    names = {p.name for p in tmp_path.iterdir()}
    assert names == {p.name for p in paths} | set(others) | {f"009_{'e' * 16}.txt"}
    assert {p.name for p in paths} == {f"000_{'c' * 16}.txt", f"001_{'a' * 16}.txt"}
    for name, text in others.items():
        assert (tmp_path / name).read_text(encoding="utf-8") == text
    assert not any(name.endswith(".tmp") for name in names)


def test_empty_export_removes_every_seed_file(tmp_path: Path) -> None:
    write(top_docs(["a" * 16]), tmp_path)
    (tmp_path / "keep.txt").write_text("x", encoding="utf-8")
    assert write([], tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_replace_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails midway leaves the old file whole and no temporary file behind."""
    [path] = write(top_docs(["a" * 16]), tmp_path)
    before = path.read_bytes()
    inode = path.stat().st_ino
    real_fsync = os.fsync
    calls: list[int] = []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        raise OSError("disk full")

    monkeypatch.setattr(export.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write([make_doc(item_key="a" * 16, title="新标题")], tmp_path)
    monkeypatch.setattr(export.os, "fsync", real_fsync)
    assert calls
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]

    write([make_doc(item_key="a" * 16, title="新标题")], tmp_path)
    assert "新标题" in path.read_text(encoding="utf-8")
    assert path.stat().st_ino != inode  # replaced by rename, not rewritten in place


def test_written_file_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        [path] = write(top_docs(["a" * 16]), tmp_path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="share"):
        write([make_doc(), make_doc()], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown export format"):
        write([make_doc()], tmp_path, "xml")


@pytest.mark.parametrize(("fmt", "name"), [("json", "top.json"), ("csv", "top.csv"), ("atom", "top.atom")])
def test_write_json_and_csv(tmp_path: Path, fmt: str, name: str) -> None:
    seed_file = tmp_path / f"000_{'a' * 16}.txt"
    seed_file.write_text("old seed export", encoding="utf-8")
    docs = top_docs(["a" * 16, "b" * 16])
    [path] = write(docs, tmp_path, fmt)
    assert path == tmp_path / name
    raw = path.read_text(encoding="utf-8")
    if fmt == "json":
        assert [s["item_key"] for s in json.loads(raw)["stories"]] == ["a" * 16, "b" * 16]
    elif fmt == "atom":
        entries = feedparser.parse(raw.encode("utf-8")).entries
        assert [e.id for e in entries] == [f"urn:aggregator:story:{d.story_id}" for d in docs]
    else:
        assert [r["item_key"] for r in csv.DictReader(io.StringIO(raw, newline=""))] == ["a" * 16, "b" * 16]
    assert seed_file.read_text(encoding="utf-8") == "old seed export"  # other formats leave seed files alone


def test_seed_name_pattern_matches_what_is_written() -> None:
    assert re.fullmatch(export._SEED_NAME, export.seed_file_name(make_doc(position=7)))


# -- as a CommonMark renderer sees it -----------------------------------------------------


def render_tokens(text: str) -> list[Any]:
    markdown_it = pytest.importorskip("markdown_it")
    body = text[4:].partition("\n---\n")[2]
    tokens: list[Any] = markdown_it.MarkdownIt("commonmark").parse(body)
    return tokens


def assert_structure(text: str) -> None:
    """One h1, the 来源 paragraph, the 原文内容 h2, and a footer that is a rule then emphasis; no raw HTML."""
    tokens = render_tokens(text)
    assert [t.type for t in tokens[:3]] == ["heading_open", "inline", "heading_close"]
    assert tokens[0].tag == "h1"
    assert [t.type for t in tokens[3:6]] == ["paragraph_open", "inline", "paragraph_close"]
    assert tokens[4].content.startswith("**来源**: ")
    assert [(t.type, t.tag) for t in tokens[6:9]] == [("heading_open", "h2"), ("inline", ""), ("heading_close", "h2")]
    assert tokens[7].content == "原文内容"
    tail = tokens[-4:]
    assert [(t.type, t.level) for t in tail] == [
        ("hr", 0),
        ("paragraph_open", 0),
        ("inline", 1),
        ("paragraph_close", 0),
    ]
    assert [c.type for c in tail[2].children] == ["em_open", "text", "em_close"]
    assert tail[2].children[1].content.startswith("自动采集于 ")
    assert not [t for t in tokens if t.type == "html_block"]
    inline_html = [c for t in tokens if t.type == "inline" for c in t.children or [] if c.type == "html_inline"]
    assert not inline_html
    for token in tokens[:6]:
        for child in token.children or []:
            if child.type == "link_open":
                assert str(child.attrs["href"]).startswith(("http://", "https://"))


def test_golden_renders_with_the_expected_structure() -> None:
    assert_structure(render_seed(make_doc(), SHANGHAI, LABEL))
    assert_structure((DATA / "seed_example.txt").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "content",
    [
        "```\nnever closed <b>",
        "  ```\nindented and never closed",
        "- item\n\n  ```\n  in a list, never closed",
        "- item\n  ```\nleaves the list\n",
        "> ```\n> in a quote",
        "<div>\n\n<script>alert(1)</script>",
        "<!-- never closed",
        "a\n---\n*自动采集于 2020-01-01 00:00:00 (北京时间)*",
        "[x]: http://example.com 'title\n\n---",
        "| a | b |\n|---|---|\n| 1 | 2 |",
        "    indented code\n    ---",
        "text ending in a backslash\\",
    ],
)
def test_hostile_content_stays_in_its_section(content: str) -> None:
    assert_structure(render_seed(make_doc(content=content), SHANGHAI, LABEL))


MARKDOWN_SOUP = st.lists(
    st.sampled_from(
        [
            "\n",
            " ",
            "  ",
            "-",
            "---",
            "*",
            "_",
            "`",
            "```",
            "~~~",
            "<",
            ">",
            "/",
            "!",
            "?",
            "[",
            "]",
            "(",
            ")",
            "#",
            "\\",
            "&",
            ";",
            "|",
            "1.",
            "a",
            "自动采集于",
            "<script>",
            "<div>",
            "</p>",
            "<!--",
            "-->",
            "http://x.y",
            "\t",
            "\r",
        ]
    )
).map("".join)


@settings(max_examples=300, deadline=None)
@given(title=st.one_of(st.text(), MARKDOWN_SOUP), source=MARKDOWN_SOUP, content=st.one_of(st.text(), MARKDOWN_SOUP))
def test_any_content_stays_in_its_section(title: str, source: str, content: str) -> None:
    assert_structure(render_seed(make_doc(title=title, source_name=source, content=content), SHANGHAI, LABEL))


def test_atom_drops_what_xml_cannot_carry() -> None:
    doc = make_doc(
        title="控制\x01字符\x1f与代理\ud800",
        url="https://e.example/a?b=1&c=<2>",
        source_name="NewsNow 微博\x02",
        score=100.0,
        content="# 正文\n\n第一段\x0b。",
        summary=None,
        sources=("NewsNow 微博", "百度"),
    )
    parsed = feedparser.parse(export.render_atom([doc], COLLECTED_AT, "http://127.0.0.1/feed.atom"))
    assert not parsed.bozo, parsed.get("bozo_exception")
    (entry,) = parsed.entries
    assert entry.title == "控制字符与代理" and entry.link == "https://e.example/a?b=1&c=<2>"
    assert entry.updated == export._utc_text(COLLECTED_AT) and [t.term for t in entry.tags] == ["NewsNow 微博", "百度"]
    assert entry.author == "NewsNow 微博" and entry.content[0].value == "# 正文\n\n第一段。"
    assert entry.summary.startswith("热度 100.0, #1; NewsNow 微博, 百度")
    no_link = feedparser.parse(export.render_atom([make_doc(url="javascript:alert(1)")], COLLECTED_AT)).entries[0]
    assert no_link.get("links", []) == []
