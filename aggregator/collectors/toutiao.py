"""Toutiao hot board (今日头条热榜): the PC `hot-event/hot-board` JSON, pinned `fixed_top_data` set apart."""

from __future__ import annotations

from typing import Any

from aggregator.collectors.fetch import Fetcher, FetchResponse, collect_list, decode_json
from aggregator.collectors.fields import text as _text
from aggregator.errors import ParseError
from aggregator.models import Collected, RawItem, SourceState
from aggregator.settings import SourceSettings

# The PC board: plain JSON with the heat number, unlike the app feed, whose entries are
# JSON documents inside strings and whose hot_value is often "".
DEFAULT_URL = "https://www.toutiao.com/hot-event/hot-board/?origin=toutiao_pc"
TRENDING_URL = "https://www.toutiao.com/trending/{}/"
HEADERS = {"Accept": "application/json, text/plain, */*", "Referer": "https://www.toutiao.com/"}

# `Label` codes seen in other projects' code; an unknown non-empty code is kept as served.
LABELS = {"hot": "热", "new": "新", "boom": "爆", "refuteRumors": "辟谣", "interpretation": "解读"}


def _id_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)  # json gives exact ints: ids beyond 2**53 survive
    text = _text(value)
    return text if text and text.isdigit() else None


def _heat(value: Any) -> str | int | None:
    if isinstance(value, bool):
        return None
    return value if isinstance(value, int) else _text(value)


def parse(response: FetchResponse) -> tuple[list[RawItem], int]:
    """A Toutiao hot board → (items in board order, count of pinned and malformed entries)."""
    data = decode_json(response, "Toutiao")
    if not isinstance(data, dict):
        raise ParseError("Toutiao response is not a JSON object", kind="schema")
    status = data.get("status")
    if status is not None and status != "success":
        message = _text(data.get("message")) or ""
        raise ParseError(f"Toutiao status {status!r} {message}".strip(), kind="schema")
    entries = data.get("data")
    if not isinstance(entries, list):
        raise ParseError("Toutiao field 'data' is missing or not a list", kind="schema")
    if not entries:
        raise ParseError("Toutiao 'data' is empty", kind="empty")
    pinned = data.get("fixed_top_data")
    dropped = len(pinned) if isinstance(pinned, list) else 0
    items: list[RawItem] = []
    for position, entry in enumerate(entries, 1):
        title = _text(entry.get("Title")) if isinstance(entry, dict) else None
        if title is None:
            dropped += 1
            continue
        cluster_id = _id_text(entry.get("ClusterIdStr")) or _id_text(entry.get("ClusterId"))
        url = _text(entry.get("Url"))
        if not (url and url.startswith(("https://", "http://"))):
            url = TRENDING_URL.format(cluster_id) if cluster_id else None
        if url is None:
            dropped += 1
            continue
        code = _text(entry.get("Label"))
        items.append(
            RawItem(
                title=title,
                url=url,
                rank=position,
                heat_raw=_heat(entry.get("HotValue")),
                native_id=cluster_id,
                label=LABELS.get(code, code) if code else None,
            )
        )
    if not items:
        raise ParseError(f"none of the {len(entries)} Toutiao entries has a Title and a link", kind="schema")
    return items, dropped


async def collect(fetcher: Fetcher, source: SourceSettings, state: SourceState) -> Collected:
    return await collect_list(fetcher, source, state, parse, url=source.url or DEFAULT_URL, headers=HEADERS)
