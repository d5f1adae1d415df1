"""RSS 0.9x/1.0/2.0, Atom and JSON Feed through feedparser, with conditional GET.

feedparser is only ever given bytes: given a string it would open local files and
fetch URLs by itself.
"""

from __future__ import annotations

import calendar
import re
import time
from datetime import UTC, datetime
from typing import Any

import feedparser

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


def _when(entry: Any) -> datetime | None:
    for field in ("published_parsed", "updated_parsed", "created_parsed"):
        parsed: time.struct_time | None = entry.get(field)
        if parsed:
            try:
                return datetime.fromtimestamp(calendar.timegm(parsed), UTC)
            except (OverflowError, ValueError, OSError):
                return None
    return None


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
    headers = {
        "content-type": f"{response.content_type or 'application/xml'}; charset=utf-8",
        "content-location": response.url,
    }
    parsed = feedparser.parse(body, response_headers=headers, sanitize_html=True, resolve_relative_uris=True)
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
        title = entry.get("title") or ""
        link = entry.get("link") or None
        summary = entry.get("summary") or None
        items.append(
            RawItem(
                title=title, url=link, native_id=entry.get("id") or None, summary=summary, published_at=_when(entry)
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
