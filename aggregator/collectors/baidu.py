"""Baidu hot search board (百度热搜): `top.baidu.com/api/board?tab=realtime`, pinned row set apart."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aggregator.collectors.fetch import Fetcher, FetchResponse, collect_list, decode_json
from aggregator.collectors.fields import text as _text
from aggregator.errors import ParseError
from aggregator.models import Collected, RawItem, SourceState
from aggregator.settings import SourceSettings

# platform=wise is the mobile board: the same 50 rows as the PC page, without HTML.
DEFAULT_URL = "https://top.baidu.com/api/board?platform=wise&tab=realtime"
SEARCH_URL = "https://www.baidu.com/s?wd="
HEADERS = {"Accept": "application/json, text/plain, */*", "Referer": "https://top.baidu.com/board?tab=realtime"}

# hotTag is a string code with its badge only as an image (hotTagImg). "1" and "3" are
# read as 新 and 热 by most other projects; "5" and anything else is left unlabelled
# rather than guessed.
HOT_TAGS = {"1": "新", "3": "热"}


def _http(value: Any) -> str | None:
    text = _text(value)
    return text if text and text.startswith(("https://", "http://")) else None


def _heat(value: Any) -> str | int | None:
    if isinstance(value, bool):
        return None
    return value if isinstance(value, int) else _text(value)


def _board(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ParseError("Baidu response is not a JSON object", kind="schema")
    error = data.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    if data.get("success") is False or code not in (None, 0):
        message = error.get("message", "") if isinstance(error, dict) else ""
        raise ParseError(
            f"Baidu answered success={data.get('success')!r} code={code!r} {message}".strip(), kind="schema"
        )
    body = data.get("data")
    cards = body.get("cards") if isinstance(body, dict) else None
    if not isinstance(cards, list):
        raise ParseError("Baidu field 'data.cards' is missing or not a list", kind="schema")
    boards = [c for c in cards if isinstance(c, dict)]
    if not boards:
        raise ParseError("Baidu 'data.cards' is empty", kind="empty")
    return next((c for c in boards if c.get("component") == "hotList"), boards[0])


def parse(response: FetchResponse) -> tuple[list[RawItem], int]:
    """A Baidu board → (the ranked `content` rows, count of pinned `topContent` and malformed rows)."""
    board = _board(decode_json(response, "Baidu"))
    entries = board.get("content")
    if not isinstance(entries, list):
        raise ParseError("Baidu field 'data.cards[0].content' is missing or not a list", kind="schema")
    if not entries:
        raise ParseError("Baidu 'data.cards[0].content' is empty", kind="empty")
    # The pinned row lives in topContent, above the list and without a rank of its own.
    pinned = board.get("topContent")
    dropped = len(pinned) if isinstance(pinned, list) else 0
    items: list[RawItem] = []
    for position, entry in enumerate(entries, 1):
        word = (_text(entry.get("word")) or _text(entry.get("query"))) if isinstance(entry, dict) else None
        # isTop: a pinned row inside `content`, as the PC page's embedded JSON marks it.
        if word is None or entry.get("isTop") is True:
            dropped += 1
            continue
        query = _text(entry.get("query")) or word
        index = entry.get("index")
        rank = index + 1 if isinstance(index, int) and not isinstance(index, bool) and index >= 0 else position
        url = _http(entry.get("url")) or _http(entry.get("rawUrl")) or _http(entry.get("appUrl"))
        items.append(
            RawItem(
                title=word,
                url=url or SEARCH_URL + quote(query, safe=""),
                rank=rank,
                heat_raw=_heat(entry.get("hotScore")),
                native_id=query,
                label=HOT_TAGS.get(str(entry.get("hotTag"))),
                summary=_text(entry.get("desc")),
            )
        )
    if not items:
        raise ParseError(f"none of the {len(entries)} Baidu rows has a word", kind="schema")
    return items, dropped


async def collect(fetcher: Fetcher, source: SourceSettings, state: SourceState) -> Collected:
    return await collect_list(fetcher, source, state, parse, url=source.url or DEFAULT_URL, headers=HEADERS)
