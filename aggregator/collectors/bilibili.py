"""Bilibili popular videos (哔哩哔哩热门): `x/web-interface/popular` and `ranking/v2`, `data.list`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aggregator.collectors.fetch import Fetcher, FetchResponse, collect_list, decode_json
from aggregator.collectors.fields import text as _text
from aggregator.collectors.fields import whole_number as _int
from aggregator.errors import ParseError
from aggregator.models import Collected, RawItem, SourceState
from aggregator.settings import SourceSettings

# ps=20 is the page size the site itself asks for; larger pages are not documented.
DEFAULT_URL = "https://api.bilibili.com/x/web-interface/popular?ps=20&pn=1"
VIDEO_URL = "https://www.bilibili.com/video/{}"
HEADERS = {"Accept": "application/json, text/plain, */*", "Referer": "https://www.bilibili.com/"}

# Errors come with HTTP 200 and a negative `code`: these are the anti-abuse answers
# (-352 risk control, -412 request intercepted, -403/-401 access refused).
BLOCKED_CODES = frozenset({-352, -412, -403, -401})


def _published_at(value: Any) -> datetime | None:
    seconds = _int(value)
    if seconds is None or seconds <= 0:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def parse(response: FetchResponse) -> tuple[list[RawItem], int]:
    """A Bilibili popular (or ranking) list → (videos in list order, count of malformed entries)."""
    data = decode_json(response, "Bilibili")
    if not isinstance(data, dict):
        raise ParseError("Bilibili response is not a JSON object", kind="schema")
    code = data.get("code")
    if code != 0:
        message = _text(data.get("message")) or ""
        kind = "blocked" if code in BLOCKED_CODES else "schema"
        raise ParseError(f"Bilibili code {code!r} {message}".strip(), kind=kind)
    body = data.get("data")
    entries = body.get("list") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise ParseError("Bilibili field 'data.list' is missing or not a list", kind="schema")
    if not entries:
        raise ParseError("Bilibili 'data.list' is empty", kind="empty")
    items: list[RawItem] = []
    dropped = 0
    for position, entry in enumerate(entries, 1):
        title = _text(entry.get("title")) if isinstance(entry, dict) else None
        bvid = _text(entry.get("bvid")) if isinstance(entry, dict) else None
        aid = _int(entry.get("aid")) if isinstance(entry, dict) else None
        video_id = bvid or (f"av{aid}" if aid is not None else None)
        if title is None or video_id is None:
            dropped += 1
            continue
        stat = entry.get("stat")
        views = _int(stat.get("view")) if isinstance(stat, dict) else None
        reason = entry.get("rcmd_reason")
        description = _text(entry.get("desc"))
        items.append(
            RawItem(
                title=title,
                url=VIDEO_URL.format(video_id),
                rank=position,
                heat_raw=views,
                native_id=video_id,
                label=_text(reason.get("content")) if isinstance(reason, dict) else None,
                summary=description if description != "-" else None,  # "-" is the uploader's empty description
                published_at=_published_at(entry.get("pubdate")),
            )
        )
    if not items:
        raise ParseError(f"none of the {len(entries)} Bilibili entries has a title and a bvid", kind="schema")
    return items, dropped


async def collect(fetcher: Fetcher, source: SourceSettings, state: SourceState) -> Collected:
    return await collect_list(fetcher, source, state, parse, url=source.url or DEFAULT_URL, headers=HEADERS)
