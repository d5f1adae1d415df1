"""Exported documents: the seed format (DESIGN section 7), JSON and CSV, written atomically to a directory."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree as ET
from zoneinfo import ZoneInfo

FORMATS = ("seed", "json", "csv", "atom")
JSON_NAME = "top.json"
CSV_NAME = "top.csv"
ATOM_NAME = "top.atom"
ATOM = "http://www.w3.org/2005/Atom"
# Characters XML 1.0 cannot carry at all, even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
# Shown under 原文内容 when neither the full text nor a summary could be had: the section
# is never empty, so a reader can tell "nothing fetched" from a broken file.
FALLBACK_CONTENT = "（未能获取原文内容）"
# The names a seed export writes, and the only names a re-export may delete as stale:
# a position (three digits, more past 999) and an item key. Nothing else in DIR is ours.
_SEED_NAME = re.compile(r"[0-9]{3,}_[0-9a-f]{16}\.txt")
_ITEM_KEY = re.compile(r"[0-9a-f]{16}")
# A handful of tries at a fresh temporary name; a clash at all means something else is
# writing the same directory with our naming scheme.
_TEMP_ATTEMPTS = 8
# Separator of the `sources` column in CSV (JSON gets a list): no source id contains it.
_CSV_LIST_SEPARATOR = ";"
# Spreadsheets run a cell that starts with one of these as a formula (CSV injection).
_CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

# YAML 1.2 double-quoted escapes with a short form. Everything else outside c-printable is
# written as \xNN, \uNNNN or \UNNNNNNNN. Tab, line breaks and the YAML 1.1 line breaks
# (NEL, LS, PS) are escaped too, so the scalar stays on one line and no YAML parser folds it.
_YAML_SHORT_ESCAPES = {
    "\x00": "\\0",
    "\x07": "\\a",
    "\x08": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\x0b": "\\v",
    "\x0c": "\\f",
    "\r": "\\r",
    "\x1b": "\\e",
    '"': '\\"',
    "\\": "\\\\",
    "\x85": "\\N",
    "\u2028": "\\L",
    "\u2029": "\\P",
}
# Characters written escaped: everything outside YAML's c-printable set (which is also what
# PyYAML's reader accepts), the quote and backslash, the line breaks and tab above, and the
# byte order mark, which some front-matter readers strip wherever it stands.
_YAML_ESCAPED = re.compile(
    r"[^\x20\x21\x23-\x5b\x5d-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)

# Text that must stay on one line (heading, link text, footer label): C0 and C1 controls
# and the Unicode line and paragraph separators become a space.
_LINE_BREAKING = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# ASCII punctuation that starts inline Markdown structure (emphasis, links, images, code,
# raw HTML, headings' closing sequence, GFM tables and strikethrough).
_MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]()<>#!|~])")
# `&` only matters when it starts a character reference, which would render as another
# character (`&lt;` as `<`); a lone `&` is left alone so "AT&T" reads as written.
_ENTITY_START = re.compile(r"&(?=#[0-9]{1,7};|#[xX][0-9a-fA-F]{1,6};|[A-Za-z][A-Za-z0-9]{1,31};)")

# Content cleaning: lone surrogates cannot be written as UTF-8; C0/C1 controls other than
# tab and newline are invisible; NEL, LS and PS become newlines so that every reader
# (including Python's str.splitlines) sees the same lines as a Markdown renderer.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CONTENT_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x84\x86-\x9f]")
_CONTENT_BREAKS = re.compile(r"\r\n?|[\x85\u2028\u2029]")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")
# Fenced code at column 0 only: such a line opens a top-level fence for every CommonMark
# renderer, so skipping HTML escaping inside it can never leave a live tag outside code.
_FENCE_OPEN = re.compile(r"(`{3,}|~{3,})(.*)")
_FENCE_CLOSE = re.compile(r" {0,3}(`{3,}|~{3,})[ \t]*")
# An indented (1 to 3 spaces) fence may open at the top level or inside a list item, and
# only a full parser knows which; its first character is escaped so that it opens nothing.
# Fences inside a list item or a quote, and column-0 fences, always end before the footer.
_INDENTED_FENCE = re.compile(r"^( {1,3})(?=`{3,}|~{3,})")
# `<` that can start raw HTML (tag, closing tag, comment, declaration, processing
# instruction) and is not already backslash-escaped (an even run of backslashes before it).
_HTML_START = re.compile(r"(?<!\\)((?:\\\\)*)<(?=[A-Za-z/!?])")
_AUTOLINK = re.compile(r"<https?://[^\s<>]*>", re.IGNORECASE)
# A content line that a reader could take for the footer rule or a front-matter fence.
_RULE_LINE = re.compile(r"([ \t]*)---[ \t]*")
# A content line that starts like the footer's `*自动采集于 …*`.
_FOOTER_LIKE = re.compile(r"^(\s*(?:>\s*)*)([*_])(?=[*_]*\s*自动采集于)")

# Characters percent-encoded in a link destination: they end or confuse a Markdown link
# (space, parentheses, angle brackets, backslash, quotes) or are invisible.
_URL_UNSAFE_ASCII = frozenset(" ()<>\\\"'`")
_URL_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
_URL_STRIPPED = re.compile(r"[\t\n\r]")  # removed anywhere, as a browser does


@dataclass(frozen=True, slots=True)
class ExportDoc:
    """One top story as exported: `position` 0 is the highest score."""

    position: int
    item_key: str  # 16 lowercase hex: names the seed file
    title: str
    url: str
    source_name: str  # display name, e.g. "NewsNow 微博"
    score: float
    content: str | None  # full text of the linked page as Markdown
    summary: str | None
    collected_at: datetime  # aware UTC
    story_id: int
    sources: tuple[str, ...]
    source_count: int

    @classmethod
    def from_row(cls, position: int, row: Mapping[str, Any]) -> ExportDoc:
        """A `ranked_items` row (with `content` and `summary` when read for an export)."""
        return cls(
            position=position,
            item_key=row["item_key"],
            title=row["title"],
            url=row["url"] or "",
            source_name=row["source"],
            score=float(row["score"]),
            content=row.get("content"),
            summary=row.get("summary"),
            collected_at=row["collected_at"],
            story_id=int(row["story_id"]),
            sources=tuple(s.strip() for s in (row["sources"] or "").split(",") if s.strip()),
            source_count=int(row["source_count"]),
        )

    def __post_init__(self) -> None:
        if isinstance(self.position, bool) or not isinstance(self.position, int) or self.position < 0:
            raise ValueError(f"position must be an int >= 0, not {self.position!r}")
        if not isinstance(self.item_key, str) or not _ITEM_KEY.fullmatch(self.item_key):
            raise ValueError(f"item_key must be 16 lowercase hex characters, not {self.item_key!r}")
        if not math.isfinite(self.score):
            raise ValueError(f"score must be finite, not {self.score!r}")
        if self.collected_at.tzinfo is None or self.collected_at.utcoffset() is None:
            raise ValueError("collected_at must be an aware datetime")


def quote_yaml(text: str) -> str:
    """`text` as a one-line YAML 1.2 double-quoted scalar that every YAML parser reads back exactly."""
    return '"' + _YAML_ESCAPED.sub(_yaml_escape, text) + '"'


def escape_markdown_inline(text: str) -> str:
    """`text` on one line with every character that could start inline Markdown or HTML escaped."""
    text = _LINE_BREAKING.sub(" ", _replace_surrogates(text)).strip(" ")
    text = _MARKDOWN_INLINE.sub(r"\\\1", text)
    return _ENTITY_START.sub("\\\\&", text)


def link_url(url: str) -> str | None:
    """`url` made safe as a Markdown link destination, or None when it is not an http(s) URL."""
    url = _URL_STRIPPED.sub("", _replace_surrogates(url)).strip(" ")
    if not is_http_url(url):
        return None
    out: list[str] = []
    for char in url:
        if char in _URL_UNSAFE_ASCII or unicodedata.category(char) in _URL_INVISIBLE_CATEGORIES:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
        else:
            out.append(char)
    return _ENTITY_START.sub("\\\\&", "".join(out))


def neutralize_content(text: str) -> str:
    """Markdown from upstream, made unable to reach outside its section of a seed document.

    - raw HTML is escaped (`<tag` becomes `\\<tag`) except inside column-0 fenced code, where
      renderers never interpret it, and except http(s) autolinks;
    - a fence indented by 1-3 spaces outside code is escaped (`  \\```): it would be a
      top-level fence or one inside a list item depending on what precedes it;
    - a line that is `---` becomes `----`: the same thematic break or setext underline, but
      no longer the footer rule or a front-matter fence;
    - a line that starts like the footer (`*自动采集于`) gets its marker backslash-escaped;
    - a fence left open at the end is closed, so the footer never renders as code;
    - controls are dropped and all line breaks become `\\n`.
    """
    text = _CONTENT_BREAKS.sub("\n", _replace_surrogates(text))
    text = _CONTENT_CONTROLS.sub("", text)
    out: list[str] = []
    fence: tuple[str, int] | None = None
    for line in text.split("\n"):
        if fence is None:
            opening = _FENCE_OPEN.fullmatch(line)
            if opening and not (opening[1][0] == "`" and "`" in opening[2]):
                fence = (opening[1][0], len(opening[1]))
            else:
                line = _escape_html(_INDENTED_FENCE.sub(r"\1\\", line, count=1))
        else:
            closing = _FENCE_CLOSE.fullmatch(line)
            if closing and closing[1][0] == fence[0] and len(closing[1]) >= fence[1]:
                fence = None
        rule = _RULE_LINE.fullmatch(line)
        if rule:
            line = rule[1] + "----"
        out.append(_FOOTER_LIKE.sub(r"\1\\\2", line, count=1))
    if fence is not None:
        out.append(fence[0] * fence[1])
    return _LEADING_BLANK_LINES.sub("", "\n".join(out)).rstrip()


def render_seed(doc: ExportDoc, zone: ZoneInfo, zone_label: str) -> str:
    """The seed document of one story, byte for byte the layout of DESIGN section 7."""
    local = doc.collected_at.astimezone(zone)
    score = _score_text(doc.score)
    body = ""
    for candidate in (doc.content, doc.summary):
        if candidate is not None:
            body = neutralize_content(candidate)
            if body.strip():
                break
    if not body.strip():
        body = FALLBACK_CONTENT
    source_text = escape_markdown_inline(doc.source_name)
    destination = link_url(doc.url)
    source = f"[{source_text}]({destination})" if destination else source_text
    lines = [
        "---",
        f"title: {quote_yaml(doc.title)}",
        f"url: {quote_yaml(doc.url)}",
        f"source: {quote_yaml(doc.source_name)}",
        f"date: {local:%Y-%m-%d}",
        f"score: {score}",
        "---",
        "",
        f"# {escape_markdown_inline(doc.title)}",
        "",
        f"**来源**: {source} | **热度**: {score}",
        "",
        "## 原文内容",
        "",
        body,
        "",
        "---",
        f"*自动采集于 {local:%Y-%m-%d %H:%M:%S} ({escape_markdown_inline(zone_label)})*",
    ]
    return "\n".join(lines) + "\n"


def render_json(docs: Sequence[ExportDoc]) -> str:
    """The top stories as one JSON object `{"stories": [...]}`, in position order."""
    stories = [
        {
            "position": doc.position,
            "item_key": doc.item_key,
            "story_id": doc.story_id,
            "title": doc.title,
            "url": doc.url,
            "source": doc.source_name,
            "sources": list(doc.sources),
            "source_count": doc.source_count,
            "score": round(doc.score, 1),
            "collected_at": _utc_text(doc.collected_at),
            "summary": doc.summary,
            "content": doc.content,
        }
        for doc in sorted(docs, key=lambda d: d.position)
    ]
    return json.dumps({"stories": stories}, ensure_ascii=False, indent=2, allow_nan=False) + "\n"


def render_atom(docs: Sequence[ExportDoc], now: datetime, self_url: str | None = None) -> bytes:
    """The top stories as an Atom 1.0 feed: an entry per story, its id stable while its rank
    changes; the full text (Markdown) as the content when fetched, else the summary. Only
    http(s) URLs are linked; characters XML cannot carry are dropped."""
    ET.register_namespace("", ATOM)

    def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        el = ET.SubElement(parent, f"{{{ATOM}}}{tag}", {k: _NOT_XML.sub("", v) for k, v in attrs.items()})
        if text is not None:
            el.text = _NOT_XML.sub("", text)
        return el

    ordered = sorted(docs, key=lambda d: d.position)
    feed = ET.Element(f"{{{ATOM}}}feed")
    sub(feed, "id", "urn:aggregator:top")
    sub(feed, "title", "aggregator: top stories (热度)")
    sub(feed, "updated", _utc_text(max((d.collected_at for d in ordered), default=now)))
    if self_url:
        sub(feed, "link", rel="self", href=self_url)
    sub(feed, "generator", "aggregator")
    for doc in ordered:
        entry = sub(feed, "entry")
        sub(entry, "id", f"urn:aggregator:story:{doc.story_id}")
        sub(entry, "title", doc.title)
        if is_http_url(doc.url):
            sub(entry, "link", href=doc.url)
        sub(entry, "updated", _utc_text(doc.collected_at))
        sub(entry, "author").append(_named(doc.source_name))
        for name in doc.sources:
            sub(entry, "category", term=name)
        line = f"热度 {_score_text(doc.score)}, #{doc.position + 1}; {', '.join(doc.sources) or doc.source_name}"
        sub(entry, "summary", line + (f"\n\n{doc.summary}" if doc.summary else ""))
        if doc.content:
            sub(entry, "content", doc.content, type="text")
    body: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + body + b"\n"


def _named(name: str) -> ET.Element:
    el = ET.Element(f"{{{ATOM}}}name")
    el.text = _NOT_XML.sub("", name)
    return el


def is_http_url(url: str | None) -> bool:
    """Whether `url` is an absolute http(s) URL, the only kind a feed or page links to."""
    if not url:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def render_csv(docs: Sequence[ExportDoc]) -> str:
    """The top stories as CSV (RFC 4180, CRLF, header row); the full text is left to the other formats."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "position",
            "score",
            "title",
            "url",
            "source",
            "sources",
            "source_count",
            "story_id",
            "item_key",
            "collected_at",
            "summary",
        ]
    )
    for doc in sorted(docs, key=lambda d: d.position):
        writer.writerow(
            [
                doc.position,
                _score_text(doc.score),
                _csv_text(doc.title),
                _csv_text(doc.url),
                _csv_text(doc.source_name),
                _csv_text(_CSV_LIST_SEPARATOR.join(doc.sources)),
                doc.source_count,
                doc.story_id,
                doc.item_key,
                _utc_text(doc.collected_at),
                _csv_text(doc.summary or ""),
            ]
        )
    return buffer.getvalue()


def seed_file_name(doc: ExportDoc) -> str:
    """`{position:03d}_{item_key}.txt`; refuses a key that could name anything else."""
    if not _ITEM_KEY.fullmatch(doc.item_key):
        raise ValueError(f"item_key must be 16 lowercase hex characters, not {doc.item_key!r}")
    name = f"{doc.position:03d}_{doc.item_key}.txt"
    assert _SEED_NAME.fullmatch(name), name
    return name


def write_export(
    docs: Sequence[ExportDoc], out_dir: Path, fmt: str = "seed", *, zone: ZoneInfo, zone_label: str
) -> list[Path]:
    """Write the export into `out_dir` (created if missing); return the files written.

    Every file is replaced atomically. A seed export then deletes the seed files of the
    previous export that are not in this one; no other file in `out_dir` is touched.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        path = out_dir / JSON_NAME
        _write_atomic(path, render_json(docs).encode("utf-8"))
        return [path]
    if fmt == "csv":
        path = out_dir / CSV_NAME
        _write_atomic(path, render_csv(docs).encode("utf-8"))
        return [path]
    if fmt == "atom":
        path = out_dir / ATOM_NAME
        _write_atomic(path, render_atom(docs, datetime.now(UTC)))
        return [path]

    ordered = sorted(docs, key=lambda d: d.position)
    names = [seed_file_name(doc) for doc in ordered]
    if len(set(names)) != len(names):
        raise ValueError("two exported documents share a position and item key")
    written = []
    for doc, name in zip(ordered, names, strict=True):
        path = out_dir / name
        _write_atomic(path, render_seed(doc, zone, zone_label).encode("utf-8"))
        written.append(path)
    keep = set(names)
    removed = False
    with os.scandir(out_dir) as entries:
        stale = [e for e in entries if _SEED_NAME.fullmatch(e.name) and e.name not in keep]
    for entry in stale:
        if entry.is_dir(follow_symlinks=False):
            continue
        Path(entry.path).unlink(missing_ok=True)
        removed = True
    if removed:
        _fsync_dir(out_dir)
    return written


def _yaml_escape(match: re.Match[str]) -> str:
    char = match[0]
    short = _YAML_SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02X}"
    if code <= 0xFFFF:
        return f"\\u{code:04X}"
    return f"\\U{code:08X}"


def _replace_surrogates(text: str) -> str:
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _escape_html(line: str) -> str:
    if "<" not in line:
        return line
    pieces = []
    start = 0
    for match in _HTML_START.finditer(line):
        lt = match.end() - 1
        if _AUTOLINK.match(line, lt):
            continue
        pieces.append(line[start:lt])
        pieces.append("\\<")
        start = lt + 1
    pieces.append(line[start:])
    return "".join(pieces)


def _score_text(score: float) -> str:
    text = f"{score:.1f}"
    return "0.0" if text == "-0.0" else text


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _csv_text(value: str) -> str:
    return "'" + value if value.startswith(_CSV_FORMULA_START) else value


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never a part."""
    directory = path.parent
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_TEMP_ATTEMPTS):
        temp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            # 0o666 and the umask, as for any file a user writes (mkstemp would make it 0600).
            fd = os.open(temp, flags, 0o666)
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(f"no free temporary name for {path}")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
