"""RSS 0.9x/1.0/2.0, Atom and JSON Feed through feedparser, with conditional GET.

feedparser is only ever given bytes: given a string it would open local files and
fetch URLs by itself.

Plain RSS 2.0 (items of title, link, guid, description, pubDate and a few fields we
ignore) is read with the standard library's ElementTree and mapped exactly as
feedparser maps it, with feedparser's own date parser and HTML heuristic: feedparser
spends some 0.4 ms of Python per entry in its SAX callbacks, this path under 0.05 ms.
Anything else (Atom, RSS 1.0, namespaced or nested fields in an item, xml:base, a
DOCTYPE, XML that is not well-formed) goes to feedparser.

Titles and summaries are stored as text: markup of HTML ones is stripped here
(`strip_markup`), so feedparser's sanitizer, which keeps a "safe" subset of markup,
is not needed, nor its rewriting of relative URIs inside that markup.
"""

from __future__ import annotations

import calendar
import re
import time
import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import feedparser
from feedparser.datetimes import _parse_date as feedparser_date
from feedparser.mixin import _FeedParserMixin

from aggregator.collectors.fetch import (
    Fetcher,
    FetchResponse,
    decode_json,
    decode_text,
    fetch,
    looks_blocked,
    parsing,
)
from aggregator.errors import ParseError
from aggregator.models import Collected, RawItem, SourceState
from aggregator.settings import SourceSettings

# A DOCTYPE with an internal subset or any ENTITY declaration is how billion-laughs and
# external-entity attacks arrive; real feeds have no use for them. Looked for in the
# decoded text, anywhere in it: in the bytes, UTF-16 or UTF-7 would hide it.
_DTD_ATTACK = re.compile(r"<!DOCTYPE[^>]*\[|<!ENTITY", re.I)
_FEED_ROOT = re.compile(rb"<(rss|feed|rdf:RDF|RDF|channel)[\s>]", re.I)
_XML_ENCODING = re.compile(r"""^(\s*<\?xml[^>]*?\bencoding\s*=\s*)(["'])[^"']*\2""", re.I)
_XML_ENCODING_BYTES = re.compile(rb"""^\s*<\?xml[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""", re.I)
_BOMS = (
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
# `<?` in UTF-16 and UTF-32 without a byte order mark (XML 1.0 appendix F).
_NUL_PATTERNS = (
    (b"\x00\x00\x00<", "utf-32-be"),
    (b"<\x00\x00\x00", "utf-32-le"),
    (b"\x00<\x00?", "utf-16-be"),
    (b"<\x00?\x00", "utf-16-le"),
)


# Markup as an HTML reader sees it: script, style and applet elements with their
# content (what feedparser's sanitizer drops whole), comments, and every tag, from `<`
# and a letter, `/`, `!` or `?` to the next `>`. An unclosed one runs to the end of
# the text, as in a browser. Every alternative matches once it has started, so a pass
# is linear in the text. Tags that break a line (_BREAKING_TAG) become a space first.
_MARKUP = re.compile(
    r"<(script|style|applet)\b.*?(?:</\1\s*>|\Z)|<!--.*?(?:-->|\Z)|<[A-Za-z/!?][^>]*(?:>|\Z)", re.I | re.S
)
_BREAKING_TAG = re.compile(
    r"</?(?:address|article|blockquote|br|dd|div|dl|dt|figcaption|figure|footer|h[1-6]|header|hr|li|ol|p|pre"
    r"|section|table|td|th|tr|ul)\b[^>]*(?:>|\Z)",
    re.I,
)
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# feedparser's heuristic for RSS fields that are nominally text but often HTML.
_looks_like_html = _FeedParserMixin.looks_like_html


def strip_markup(html: str) -> str:
    """The text of an HTML fragment: elements that are not text dropped, tags removed.

    Character references are left as they are: normalization unescapes them once, so
    `&lt;b&gt;` written as text in the HTML is stored as the text `<b>`, never as a tag.
    """
    if "<" not in html:
        return html
    return _MARKUP.sub("", _BREAKING_TAG.sub(" ", html))


def _text_of(value: str | None, content_type: str | None) -> str | None:
    if value and content_type in _HTML_TYPES:
        return strip_markup(value)
    return value


def _utc(parsed: time.struct_time | None) -> datetime | None:
    if not parsed:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(parsed), UTC)
    except (OverflowError, ValueError, OSError):
        return None


def _when(entry: Any) -> datetime | None:
    for field in ("published_parsed", "updated_parsed", "created_parsed"):
        # dict.get: FeedParserDict's get("updated_parsed") falls back to published_parsed
        # with a DeprecationWarning (an unparseable pubDate got there), and that is tried first anyway.
        parsed: time.struct_time | None = dict.get(entry, field)
        if parsed:
            return _utc(parsed)
    return None


# Plain RSS 2.0, read without feedparser. Element names are compared lower-cased, as
# feedparser does. In an item: the fields we read (no attributes but guid's
# isPermaLink, no child elements) and fields feedparser reads into nothing we use.
# Any other element in an item, an item or entry anywhere but in a channel, an
# xml:base (or `base`) attribute or a namespaced attribute anywhere, sends the whole
# feed to feedparser.
_RSS_ROOT = re.compile(rb"<rss[\s>]", re.I)
_DOCTYPE = re.compile(rb"<!DOCTYPE", re.I)
_ITEM_READ = frozenset({"title", "link", "guid", "description", "pubdate"})
_ITEM_IGNORED = frozenset({"author", "category", "comments", "enclosure", "{http://purl.org/dc/elements/1.1/}creator"})
_ENTRY_TAGS = frozenset({"item", "entry"})
# What feedparser does to the text of every field (mixin.pop): UTF-8 read as Latin-1
# put right, then C1 controls read as the windows-1252 characters they stand for.
_CP1252 = {c: bytes([c]).decode("cp1252") for c in range(0x80, 0xA0) if c not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)}
# feedparser's _urljoin: `http:////x` is `http://x`; a join that fails is no URL.
_URI_FIXER = re.compile(r"^([A-Za-z][A-Za-z0-9+-.]*://)(/*)(.*?)")
_LINK_ENTITY = re.compile(r"&([A-Za-z0-9_]+);")
_C1 = re.compile(r"[\x80-\x9f]")


def _fp_join(base: str, uri: str) -> str:
    if ":///" in uri:
        uri = _URI_FIXER.sub(r"\1\3", uri)
    try:
        return urljoin(base, uri)
    except ValueError:
        return ""


def _fp_finish(text: str) -> str:
    if text.isascii():
        return text  # unchanged by both steps
    if max(text) <= "\xff":
        try:
            text = text.encode("iso-8859-1").decode("utf-8")
        except UnicodeDecodeError:
            pass
    return text.translate(_CP1252) if _C1.search(text) else text


def _plain_attributes(element: ElementTree.Element) -> bool:
    return not any("{" in name or name.lower() == "base" for name in element.attrib)


def _plain_rss(body: bytes, url: str) -> list[RawItem] | None:
    """The entries of a plain RSS 2.0 feed exactly as feedparser reads them, or None when it is not one."""
    if not _RSS_ROOT.search(body, 0, 4096) or _DOCTYPE.search(body):
        return None
    try:
        # Not defusedxml: a DOCTYPE or ENTITY was refused before this, and expat never
        # loads external entities for ElementTree.
        root = ElementTree.fromstring(body)  # noqa: S314
    except (ElementTree.ParseError, ValueError):
        return None  # feedparser's loose parser may still read it
    if root.tag.lower() != "rss" or not all(channel.tag.lower() == "channel" for channel in root):
        return None
    entries = 0
    for element in root.iter():
        if element.attrib and not _plain_attributes(element):
            return None
        if element.tag.rpartition("}")[2].lower() in _ENTRY_TAGS:
            entries += 1  # in any namespace: feedparser reads atom:entry, rdf items and the like as entries
    items = [item for channel in root for item in channel if item.tag.lower() == "item"]
    if not items or len(items) != entries:
        return None
    base = _fp_join(url, url) or url
    out = []
    for item in items:
        if item.attrib:
            return None
        fields: dict[str, str] = {}
        permalink = False
        for child in item:
            name = child.tag.lower()
            if len(child):
                return None
            if name in _ITEM_READ:
                if name in fields:
                    return None
                if name == "guid":
                    if len(child.attrib) > 1 or any(key.lower() != "ispermalink" for key in child.attrib):
                        return None
                    permalink = next(iter(child.attrib.values()), "true") == "true"
                elif child.attrib:
                    return None
                fields[name] = (child.text or "").strip()
            elif name not in _ITEM_IGNORED:
                return None
        title = fields.get("title", "")
        html_title = ("<" in title or "&" in title) and _looks_like_html(title)
        title = _fp_finish(title)
        link = fields.get("link")
        if link is not None:
            link = _fp_finish(_fp_join(base, link) if link else link)
            link = _LINK_ENTITY.sub(r"&\g<1>", link.replace("&amp;", "&"))
        guid = fields.get("guid")
        if guid is not None:
            guid = _fp_finish(_fp_join(base, guid) if guid and permalink else guid)
            if link is None and permalink:
                link = guid
        summary = fields.get("description")
        published = fields.get("pubdate")
        out.append(
            RawItem(
                title=strip_markup(title) if html_title else title,
                url=link or None,
                native_id=guid or None,
                summary=strip_markup(_fp_finish(summary)) or None if summary else None,
                published_at=_utc(feedparser_date(_fp_finish(published))) if published else None,
            )
        )
    return out


def _json_feed(response: FetchResponse) -> list[RawItem]:
    data = decode_json(response, "JSON Feed")
    if not isinstance(data, dict) or not str(data.get("version", "")).startswith("https://jsonfeed.org/version/"):
        raise ParseError("JSON document is not a JSON Feed (no jsonfeed.org version)", kind="schema")
    entries = data.get("items")
    if not isinstance(entries, list):
        raise ParseError("JSON Feed field 'items' is missing or not a list", kind="schema")
    items = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        title = entry.get("title") or entry.get("summary") or ""
        if not isinstance(title, str):
            continue
        published = None
        if isinstance(entry.get("date_published"), str):
            try:
                published = datetime.fromisoformat(entry["date_published"].replace("Z", "+00:00"))
            except ValueError:
                published = None
        url = entry.get("url") if isinstance(entry.get("url"), str) else None
        summary = entry.get("summary") if isinstance(entry.get("summary"), str) else None
        native = entry.get("id")
        items.append(
            RawItem(
                title=title,
                url=url,
                native_id=str(native) if native is not None else None,
                summary=summary,
                published_at=published,
            )
        )
    return items


def _feed_text(response: FetchResponse) -> str:
    """The feed as text: byte order mark, then HTTP charset, then the XML declaration."""
    body = response.body
    for mark, codec in _BOMS:
        if body.startswith(mark):
            return decode_text(body[len(mark) :], codec, "feed")
    for pattern, codec in _NUL_PATTERNS:
        if body.startswith(pattern):
            return decode_text(body, codec, "feed")
    declared = _XML_ENCODING_BYTES.match(body)
    return decode_text(body, response.charset or (declared.group(1).decode() if declared else None), "feed")


def parse(response: FetchResponse) -> list[RawItem]:
    stripped = response.body.lstrip(b"\xef\xbb\xbf \t\r\n")
    if response.content_type in ("application/feed+json", "application/json") or stripped[:1] == b"{":
        return _json_feed(response)
    if not stripped:
        raise ParseError("empty body where a feed was expected", kind="empty")
    text = _feed_text(response)
    if _DTD_ATTACK.search(text):
        raise ParseError("feed declares a DOCTYPE subset or ENTITY: refused before parsing", kind="parse")
    # feedparser gets UTF-8 that says so: left to guess, it falls back to windows-1252
    # and GBK titles come out as mojibake.
    body = _XML_ENCODING.sub(r"\1\2utf-8\2", text.lstrip("\ufeff"), count=1).encode("utf-8")
    plain = _plain_rss(body, response.url)
    if plain is not None:
        return plain
    return _feedparser_items(body, response)


def _feedparser_items(body: bytes, response: FetchResponse) -> list[RawItem]:
    headers = {
        "content-type": f"{response.content_type or 'application/xml'}; charset=utf-8",
        "content-location": response.url,
    }
    # Links and permalink guids are still made absolute against content-location (and
    # xml:base); what the two options would do to markup, strip_markup removes anyway.
    parsed = feedparser.parse(body, response_headers=headers, sanitize_html=False, resolve_relative_uris=False)
    entries = parsed.get("entries") or []
    if not entries:
        # A valid feed may be empty; an HTML page parses as a "feed" with nothing in it.
        if parsed.get("version") and _FEED_ROOT.search(body[:4096]) and not parsed.get("bozo"):
            return []
        if looks_blocked(body):
            raise ParseError("an anti-bot or login page where a feed was expected", kind="blocked")
        reason = parsed.get("bozo_exception")
        detail = f": {reason}" if reason else ""
        raise ParseError(f"not a feed, no entries found{detail}", kind="parse")
    items = []
    for entry in entries:
        title = _text_of(entry.get("title"), (entry.get("title_detail") or {}).get("type")) or ""
        summary = strip_markup(entry.get("summary") or "") or None
        items.append(
            RawItem(
                title=title,
                url=entry.get("link") or None,
                native_id=entry.get("id") or None,
                summary=summary,
                published_at=_when(entry),
            )
        )
    return items


async def collect(fetcher: Fetcher, source: SourceSettings, state: SourceState) -> Collected:
    accept = "application/rss+xml, application/atom+xml, application/feed+json, application/xml;q=0.9, */*;q=0.8"
    response = await fetch(
        fetcher,
        source.url,
        headers={"Accept": accept, **source.headers},
        cookies={**state.cookies, **source.cookies},
        etag=state.etag,
        last_modified=state.last_modified,
    )
    etag = response.headers.get("etag") or state.etag
    last_modified = response.headers.get("last-modified") or state.last_modified
    if response.status == 304:
        return Collected(items=[], http_status=304, not_modified=True, etag=etag, last_modified=last_modified)
    with parsing(response):
        entries = parse(response)
    return Collected(
        items=entries,
        http_status=response.status,
        etag=response.headers.get("etag"),
        last_modified=response.headers.get("last-modified"),
        cookies=response.set_cookies or None,
    )
