"""Douyin hot search (抖音热榜): `aweme/v1/web/hot/search/list`, the ranked `word_list` only."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aggregator.collectors.fetch import Fetcher, FetchResponse, collect_list, decode_json
from aggregator.collectors.fields import text as _text
from aggregator.collectors.fields import whole_number as _int
from aggregator.errors import ParseError
from aggregator.models import Collected, RawItem, SourceState
from aggregator.settings import SourceSettings

# The web client's own call; without a ttwid visitor cookie it may answer empty, so
# settings can pass one in `cookies` and the Set-Cookie answers are kept between polls.
DEFAULT_URL = (
    "https://www.douyin.com/aweme/v1/web/hot/search/list/"
    "?device_platform=webapp&aid=6383&channel=channel_pc_web&detail_list=1"
)
HOT_URL = "https://www.douyin.com/hot/{}"
SEARCH_URL = "https://www.douyin.com/search/"
HEADERS = {"Accept": "application/json, text/plain, */*", "Referer": "https://www.douyin.com/"}

# `label` badge codes as other projects map them (codes 0,1,3,5,8,9,16,17 were captured);
# an unknown code gives no label. 2 (商) marks a commercial placement and is dropped.
LABELS = {
    1: "新",
    3: "热",
    4: "爆",
    5: "首发",
    7: "同城",
    8: "独家",
    9: "挑战",
    10: "当事人",
    11: "剧集",
    12: "电影",
    13: "综艺",
    15: "晚会",
    16: "辟谣",
    17: "热议",
    20: "解读",
}
PROMOTED_LABELS = frozenset({2})


def _id_text(value: Any) -> str | None:
    number = _int(value)
    if number is not None:
        return str(number)
    text = _text(value)
    return text if text and text.isdigit() else None


def parse(response: FetchResponse) -> tuple[list[RawItem], int]:
    """A Douyin hot search answer → (the ranked word_list, count of promoted and malformed words).

    `trending_list` (实时上升热点) has the same entry shape but no position and no heat;
    it is another list, so it is neither returned nor counted.
    """
    data = decode_json(response, "Douyin")
    if not isinstance(data, dict):
        raise ParseError("Douyin response is not a JSON object", kind="schema")
    status = data.get("status_code")
    if status not in (None, 0):
        message = _text(data.get("status_msg")) or ""
        raise ParseError(f"Douyin status_code {status!r} {message}".strip(), kind="schema")
    body = data.get("data")
    entries = body.get("word_list") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise ParseError("Douyin field 'data.word_list' is missing or not a list", kind="schema")
    if not entries:
        raise ParseError("Douyin 'data.word_list' is empty", kind="empty")
    items: list[RawItem] = []
    dropped = 0
    for index, entry in enumerate(entries, 1):
        word = _text(entry.get("word")) if isinstance(entry, dict) else None
        if word is None:
            dropped += 1
            continue
        code = _int(entry.get("label"))
        if code in PROMOTED_LABELS:
            dropped += 1
            continue
        sentence_id = _id_text(entry.get("sentence_id"))
        position = _int(entry.get("position"))
        hot_value = entry.get("hot_value")
        items.append(
            RawItem(
                title=word,
                url=HOT_URL.format(sentence_id) if sentence_id else SEARCH_URL + quote(word, safe=""),
                rank=position if position is not None and position > 0 else index,
                heat_raw=hot_value if isinstance(hot_value, (int, str)) and not isinstance(hot_value, bool) else None,
                native_id=sentence_id or _id_text(entry.get("group_id")),
                label=LABELS.get(code) if code is not None else None,
            )
        )
    if not items:
        raise ParseError(f"none of the {len(entries)} Douyin words is usable", kind="schema")
    return items, dropped


async def collect(fetcher: Fetcher, source: SourceSettings, state: SourceState) -> Collected:
    return await collect_list(fetcher, source, state, parse, url=source.url or DEFAULT_URL, headers=HEADERS)
