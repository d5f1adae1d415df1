"""NewsNow-compatible API: `GET {base}/api/s?id=<id>&latest` → ranked items."""

from __future__ import annotations

from typing import Any

from aggregator.collectors.fetch import Fetcher, FetchResponse, collect_list, decode_json
from aggregator.errors import ParseError
from aggregator.models import Collected, RawItem, SourceState
from aggregator.settings import SourceSettings

OK_STATUSES = ("success", "cache")  # "cache": served from NewsNow's own cache, still current


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def parse(response: FetchResponse) -> tuple[list[RawItem], int]:
    """A NewsNow envelope → (items in list order, count of entries dropped as unusable)."""
    data = decode_json(response, "NewsNow")
    if not isinstance(data, dict):
        raise ParseError("NewsNow response is not a JSON object", kind="schema")
    status = data.get("status")
    if status not in OK_STATUSES:
        message = data.get("message") or data.get("error") or ""
        raise ParseError(f"NewsNow status {status!r} {message}".strip(), kind="schema")
    entries = data.get("items")
    if not isinstance(entries, list):
        raise ParseError("NewsNow field 'items' is missing or not a list", kind="schema")
    if not entries:
        # A hot list is never empty: NewsNow answers this way when its own fetch failed, and
        # storing it would replace the current list with nothing.
        raise ParseError("NewsNow answered with an empty list", kind="empty")
    items: list[RawItem] = []
    dropped = 0
    for entry in entries:
        title = entry.get("title") if isinstance(entry, dict) else None
        if not isinstance(title, str) or not title.strip():
            dropped += 1
            continue
        extra = entry.get("extra") if isinstance(entry.get("extra"), dict) else {}
        info = extra.get("info")
        url = _text(entry.get("url")) or _text(entry.get("mobileUrl"))
        items.append(
            RawItem(
                title=title,
                url=url,
                heat_raw=info if isinstance(info, (str, int, float)) and not isinstance(info, bool) else None,
                native_id=_text(entry.get("id")),
                summary=_text(extra.get("hover")),
            )
        )
    if not items:
        raise ParseError(f"none of the {len(entries)} NewsNow items has a title", kind="schema")
    return items, dropped


async def collect(fetcher: Fetcher, source: SourceSettings, state: SourceState) -> Collected:
    return await collect_list(fetcher, source, state, parse, url=source.url, headers={"Accept": "application/json"})
