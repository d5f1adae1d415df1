"""Zhihu hot list (知乎热榜): `api/v3/feed/topstory/hot-lists/total`, old and new entry shapes."""

from __future__ import annotations

import re
from typing import Any

from aggregator.collectors.fetch import Fetcher, FetchResponse, collect_list, decode_json
from aggregator.collectors.fields import text as _text
from aggregator.errors import ParseError
from aggregator.models import Collected, RawItem, SourceState
from aggregator.settings import SourceSettings

# limit=50 is what the site asks for; the server may still answer with fewer (30 in 2025).
DEFAULT_URL = "https://www.zhihu.com/api/v3/feed/topstory/hot-lists/total?limit=50&desktop=true"
# The old shape links api.zhihu.com/questions/<qid>; readers want the web page.
QUESTION_URL = "https://www.zhihu.com/question/{}"
HEADERS = {"Accept": "application/json, text/plain, */*", "Referer": "https://www.zhihu.com/hot"}

# card_label.type of the new shape; the old shape has only `debut` (first time on the list).
CARD_LABELS = {"hot": "热", "new": "新"}

_QUESTION_ID = re.compile(r"zhihu\.com/(?:api/v4/)?questions?/(\d+)")


def _area(target: dict[str, Any], name: str) -> str | None:
    area = target.get(name)
    return _text(area.get("text")) if isinstance(area, dict) else None


def _id_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    return _text(value)


def _question_id(entry: dict[str, Any], target: dict[str, Any], link: str | None) -> str | None:
    card_id = _text(entry.get("card_id"))
    if card_id and card_id.startswith("Q_") and card_id[2:].isdigit():
        return card_id[2:]
    for url in (link, _text(target.get("url"))):
        match = _QUESTION_ID.search(url) if url else None
        if match:
            return match.group(1)
    if target.get("type") in (None, "question"):
        return _id_text(target.get("id"))
    return None


def _is_promoted(entry: dict[str, Any]) -> bool:
    kind = str(entry.get("type", ""))
    return bool(entry.get("promotion_extra") or entry.get("ad")) or kind.endswith("_ad") or "promotion" in kind


def _web_url(link: str | None, qid: str | None) -> str | None:
    if qid is not None and (link is None or "api.zhihu.com" in link or not link.startswith("http")):
        return QUESTION_URL.format(qid)
    return link if link and link.startswith(("https://", "http://")) else None


def parse(response: FetchResponse) -> tuple[list[RawItem], int]:
    """A Zhihu hot list → (items in list order, count of promoted or malformed entries)."""
    data = decode_json(response, "Zhihu")
    if not isinstance(data, dict):
        raise ParseError("Zhihu response is not a JSON object", kind="schema")
    entries = data.get("data")
    if not isinstance(entries, list):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            raise ParseError(f"Zhihu error {error.get('code')!r}: {error.get('message')}", kind="schema")
        raise ParseError("Zhihu field 'data' is missing or not a list", kind="schema")
    if not entries:
        raise ParseError("Zhihu 'data' is empty", kind="empty")
    items: list[RawItem] = []
    dropped = shown = 0
    for entry in entries:
        if isinstance(entry, dict) and _is_promoted(entry):
            dropped += 1
            continue
        shown += 1  # the rank on the page counts every organic row, usable here or not
        target = entry.get("target") if isinstance(entry, dict) else None
        if not isinstance(target, dict):
            dropped += 1
            continue
        # New shape (2021→): title_area / metrics_area / link; old: title / detail_text / url.
        title = _area(target, "title_area") or _text(target.get("title"))
        link_area = target.get("link")
        link = _text(link_area.get("url")) if isinstance(link_area, dict) else None
        qid = _question_id(entry, target, link)
        url = _web_url(link, qid)
        if title is None or url is None:
            dropped += 1
            continue
        card_label = entry.get("card_label")
        label = CARD_LABELS.get(str(card_label.get("type"))) if isinstance(card_label, dict) else None
        if label is None and entry.get("debut") is True:
            label = "新"
        items.append(
            RawItem(
                title=title,
                url=url,
                rank=shown,
                heat_raw=_area(target, "metrics_area") or _text(entry.get("detail_text")),
                native_id=qid or _text(entry.get("card_id")),
                label=label,
                summary=_area(target, "excerpt_area") or _text(target.get("excerpt")),
            )
        )
    if not items:
        raise ParseError(f"none of the {len(entries)} Zhihu entries has a title and a link", kind="schema")
    return items, dropped


async def collect(fetcher: Fetcher, source: SourceSettings, state: SourceState) -> Collected:
    return await collect_list(fetcher, source, state, parse, url=source.url or DEFAULT_URL, headers=HEADERS)
