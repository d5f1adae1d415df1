"""Weibo hot search: the m.weibo.cn container API, weibo.com's ajax list and the s.weibo.com summary page."""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, quote, urljoin, urlsplit

from aggregator.collectors.fetch import Fetcher, FetchResponse, collect_list, decode_json, looks_blocked
from aggregator.collectors.fields import text as _text
from aggregator.errors import ParseError
from aggregator.models import Collected, RawItem, SourceState
from aggregator.settings import SourceSettings

# The realtime hot list of the m.weibo.cn app API: JSON, answers without login, and is
# not behind the Sina Visitor System wall that s.weibo.com puts up for scripts since 2021-09.
DEFAULT_URL = (
    "https://m.weibo.cn/api/container/getIndex"
    "?containerid=106003type%3D25%26t%3D3%26disable_hot%3D1%26filter_type%3Drealtimehot"
)
# Relative links of the summary page and links we build point at Weibo's own search,
# even when the page was fetched from a mirror or a local test server.
SITE = "https://s.weibo.com"
SEARCH_URL = "https://s.weibo.com/weibo?q="
# collect adds a Referer of the requested site: weibo.com/ajax answers 403 without one.
HEADERS = {"Accept": "application/json, text/plain, */*", "X-Requested-With": "XMLHttpRequest"}

# Badge images `moter/flags/<N>_0.png` (container API) and ajax `flag`: 1, 2 and 16 are in
# the captures; 4 and 32768 are from other projects' code. Other numbers give no label.
FLAG_LABELS = {1: "新", 2: "热", 4: "爆", 16: "沸", 32768: "暖"}
# The summary page marks rows with icon classes; icon_recommend (荐) is a paid placement.
ICON_LABELS = {"icon_new": "新", "icon_hot": "热", "icon_boil": "沸", "icon_boom": "爆", "icon_warm": "暖"}
TEXT_LABELS = frozenset(FLAG_LABELS.values())
PROMOTED_LABELS = frozenset({"荐", "商"})  # 荐 = recommended (an ad), 商 = commercial placement
PINNED_ICONS = frozenset({"icon_pinned", "icon_top", "icon-top"})
PROMOTED_ICONS = frozenset({"icon_recommend", "icon-txt-recommend"})

_FLAG_ICON = re.compile(r"/flags/(\d+)_\d+\.png")
_REALPOS = re.compile(r"(?:^|\|)realpos:(\d+)(?:\||$)")
_AD_MARKS = re.compile(r"(?:^|\|)(?:adid:|ads_word:|is_ad_pos:1)")
_META_CHARSET = re.compile(rb"<meta[^>]+charset=[\"']?([\w-]+)", re.I)
# GB2312/GBK pages use characters outside those sets; GB18030 is their superset.
_CHARSET_ALIASES = {"gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030"}
# The summary page nests about 12 deep; past this, elements are kept flat so a hostile
# page of endless open tags cannot exhaust the recursion of the tree walk.
MAX_HTML_DEPTH = 200


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _heat(value: Any) -> str | int | None:
    """desc_extr / num as served: an int, a "<category> <int>" string; '' (ads) is None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return _text(value)


def search_url(query: str) -> str:
    """The s.weibo.com search link for a word, as the hot list page itself links it."""
    return SEARCH_URL + quote(query, safe="")


def _query_of(scheme: str) -> str | None:
    """The search word inside an m.weibo.cn scheme: containerid=100103type=1&t=10&q=#WORD#."""
    try:
        outer = parse_qs(urlsplit(scheme).query)
    except ValueError:
        return None
    for containerid in outer.get("containerid", []):
        for q in parse_qs(containerid).get("q", []):
            if q.strip():
                return q
    return None


def _extparam(scheme: str) -> dict[str, list[str]]:
    try:
        outer = parse_qs(urlsplit(scheme).query)
    except ValueError:
        return {}
    params = outer.get("extparam", [])
    return parse_qs(params[0]) if params else {}


# --- m.weibo.cn container API --------------------------------------------------------


def _hot_card(cards: list[Any]) -> list[Any] | None:
    groups = [c for c in cards if isinstance(c, dict) and isinstance(c.get("card_group"), list)]
    for card in groups:
        if card.get("itemid") == "hotword" or "实时热点" in str(card.get("title", "")):
            group: list[Any] = card["card_group"]
            return group
    return groups[0]["card_group"] if groups else None


def _container_rank(row: dict[str, Any], ext: str, scheme: str) -> int | None:
    for marks in (str(row.get("itemid", "")), ext):
        match = _REALPOS.search(marks)
        if match:
            return int(match.group(1))
    realpos = _extparam(scheme).get("realpos", [])
    return _int(realpos[0]) if realpos else None


def _is_container_ad(row: dict[str, Any], ext: str, scheme: str) -> bool:
    if "promotion" in row or _AD_MARKS.search(str(row.get("itemid", ""))) or _AD_MARKS.search(ext):
        return True
    return _extparam(scheme).get("topic_ad", [""])[0] == "1"


def _flag_label(icon: Any) -> str | None:
    match = _FLAG_ICON.search(icon) if isinstance(icon, str) else None
    return FLAG_LABELS.get(int(match.group(1))) if match else None


def _parse_container(cards: list[Any]) -> tuple[list[RawItem], int]:
    rows = _hot_card(cards)
    if rows is None:
        raise ParseError("Weibo field 'data.cards[].card_group' is missing: no hot-list card", kind="schema")
    if not rows:
        raise ParseError("Weibo hot-list card has no rows", kind="empty")
    items: list[RawItem] = []
    dropped = 0
    for row in rows:
        word = _text(row.get("desc")) if isinstance(row, dict) else None
        if word is None:
            dropped += 1
            continue
        actionlog = row.get("actionlog")
        ext = str(actionlog.get("ext", "")) if isinstance(actionlog, dict) else ""
        scheme = row.get("scheme") if isinstance(row.get("scheme"), str) else ""
        rank = _container_rank(row, ext, scheme)
        # Ads sit between ranked rows; the pinned row (cate:5000, stick icon) has no realpos.
        if _is_container_ad(row, ext, scheme) or rank is None:
            dropped += 1
            continue
        items.append(
            RawItem(
                title=word,
                url=search_url(_query_of(scheme) or f"#{word}#"),
                rank=rank,
                heat_raw=_heat(row.get("desc_extr")),
                native_id=word,
                label=_flag_label(row.get("icon")),
            )
        )
    if not items:
        raise ParseError(f"none of the {len(rows)} Weibo rows is a ranked hot-search entry", kind="schema")
    return items, dropped


# --- weibo.com/ajax/side/hotSearch ---------------------------------------------------


def _parse_ajax(data: dict[str, Any]) -> tuple[list[RawItem], int]:
    rows = data.get("realtime")
    if not isinstance(rows, list):
        raise ParseError("Weibo field 'data.realtime' is missing or not a list", kind="schema")
    if not rows:
        raise ParseError("Weibo 'data.realtime' is empty", kind="empty")
    # hotgov(s): pinned government rows above the list, not ranked.
    hotgovs = data.get("hotgovs")
    dropped = len(hotgovs) if isinstance(hotgovs, list) else int(isinstance(data.get("hotgov"), dict))
    items: list[RawItem] = []
    for position, row in enumerate(rows, 1):
        word = _text(row.get("word")) if isinstance(row, dict) else None
        if word is None:
            dropped += 1
            continue
        label = _text(row.get("label_name")) or _text(row.get("icon_desc")) or _text(row.get("small_icon_desc"))
        if row.get("is_ad") or label in PROMOTED_LABELS:
            dropped += 1
            continue
        flag = _int(row.get("flag"))
        if label not in TEXT_LABELS:
            label = FLAG_LABELS.get(flag) if flag is not None else None
        realpos, rank0 = _int(row.get("realpos")), _int(row.get("rank"))
        rank = realpos if realpos else (rank0 + 1 if rank0 is not None else position)
        items.append(
            RawItem(
                title=word,
                url=search_url(_text(row.get("word_scheme")) or word),
                rank=rank,
                heat_raw=_heat(row.get("num")),
                native_id=word,
                label=label,
                summary=_text(row.get("note")) if row.get("note") != word else None,
            )
        )
    if not items:
        raise ParseError(f"none of the {len(rows)} Weibo realtime rows has a word", kind="schema")
    return items, dropped


# --- s.weibo.com/top/summary HTML ----------------------------------------------------


@dataclass(slots=True)
class _Node:
    tag: str
    attrs: dict[str, str]
    children: list[_Node | str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def own_text(self) -> str:
        return "".join(c for c in self.children if isinstance(c, str))

    def iter(self, tag: str, cls: str | None = None) -> Iterator[_Node]:
        for child in self.children:
            if isinstance(child, _Node):
                if child.tag == tag and (cls is None or cls in child.classes):
                    yield child
                yield from child.iter(tag, cls)

    def find(self, tag: str, cls: str | None = None) -> _Node | None:
        return next(self.iter(tag, cls), None)

    def kids(self, tag: str) -> list[_Node]:
        return [c for c in self.children if isinstance(c, _Node) and c.tag == tag]


class _TreeBuilder(HTMLParser):
    """A forgiving element tree: void tags never open, a stray end tag closes up to its match."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Node("#root", {})
        self._stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = _Node(tag, {k: v or "" for k, v in attrs})
        self._stack[-1].children.append(node)
        if tag not in self.VOID and len(self._stack) < MAX_HTML_DEPTH:
            self._stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._stack[-1].children.append(_Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self._stack) - 1, 0, -1):
            if self._stack[depth].tag == tag:
                del self._stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self._stack[-1].children.append(data)


def _decode_html(response: FetchResponse) -> str:
    charset = response.charset
    if charset is None:
        match = _META_CHARSET.search(response.body[:4096])
        charset = match.group(1).decode("ascii").lower() if match else "utf-8"
    charset = _CHARSET_ALIASES.get(charset, charset)
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    return response.body.decode(charset, "replace")


def _icons(row: _Node) -> set[str]:
    found: set[str] = set()
    for icon in row.iter("i"):
        found |= icon.classes
    return found


def _h5_row(li: _Node) -> RawItem | None:
    """`<a href="/weibo?q=…"><strong class="hot">N</strong><span>WORD<em>HOT</em></span><i class="icon …">`."""
    link, span = li.find("a"), li.find("span")
    icons = _icons(li)
    if link is None or span is None or icons & PINNED_ICONS:
        return None
    href = link.attrs.get("href", "")
    strong = link.find("strong")
    rank = _int(strong.text()) if strong is not None else None
    title = span.own_text().strip()
    if "topic_ad=1" in href or icons & PROMOTED_ICONS or rank is None or not title or not href:
        return None
    em = span.find("em")
    label = next((ICON_LABELS[c] for c in sorted(icons) if c in ICON_LABELS), None)
    return RawItem(
        title=title,
        url=urljoin(SITE, href),
        rank=rank,
        heat_raw=_text(em.text()) if em else None,
        native_id=title,
        label=label,
    )


def _topic_row(li: _Node) -> RawItem | None:
    """Topic band: `<a href><div><img><em>N</em></div><article><h2>#话题#</h2><p>…</p><span>x讨论 y阅读</span>`."""
    link, heading = li.find("a"), li.find("h2")
    box = li.find("div")
    em = box.find("em") if box is not None else None
    rank = _int(em.text()) if em is not None else None
    title = heading.text().strip() if heading is not None else ""
    href = link.attrs.get("href", "") if link is not None else ""
    if not title or rank is None or not href or "topic_ad=1" in href:
        return None
    article = li.find("article")
    summary, metrics = (article.find("p"), article.find("span")) if article is not None else (None, None)
    return RawItem(
        title=title,
        url=urljoin(SITE, href),
        rank=rank,
        heat_raw=_text(metrics.text()) if metrics else None,
        native_id=title.strip("#") or title,
        summary=_text(summary.text()) if summary else None,
    )


def _pc_row(tr: _Node) -> RawItem | None:
    """Desktop table: `<td class="td-01">N</td><td class="td-02"><a>WORD</a><span>HOT</span></td><td class="td-03">`."""
    cell_rank, cell_word, cell_flag = tr.find("td", "td-01"), tr.find("td", "td-02"), tr.find("td", "td-03")
    link = cell_word.find("a") if cell_word is not None else None
    if cell_word is None or link is None:
        return None
    href = link.attrs.get("href", "")
    if href.startswith("javascript"):
        href = link.attrs.get("href_to", "")  # ads hide the real link there
    flag = cell_flag.text().strip() if cell_flag is not None else ""
    rank = _int(cell_rank.text()) if cell_rank is not None else None
    title = link.text().strip()
    if "topic_ad=1" in href or flag in PROMOTED_LABELS or _icons(tr) & PROMOTED_ICONS:
        return None
    if rank is None or not title or not href:
        return None  # the pinned row shows an icon where the rank would be
    heat = cell_word.find("span")
    return RawItem(
        title=title,
        url=urljoin(SITE, href),
        rank=rank,
        heat_raw=_text(heat.text()) if heat else None,
        native_id=title,
        label=flag if flag in TEXT_LABELS else None,
    )


def _parse_html(response: FetchResponse) -> tuple[list[RawItem], int]:
    if looks_blocked(response.body):
        raise ParseError(
            "the Sina Visitor System (anti-bot) page where the Weibo hot list was expected", kind="blocked"
        )
    builder = _TreeBuilder()
    builder.feed(_decode_html(response))
    builder.close()
    root = builder.root
    layouts = (
        ([li for ul in root.iter("ul", "list_a") for li in ul.kids("li")], _h5_row),
        ([li for ul in root.iter("ul", "list_b") for li in ul.kids("li")], _topic_row),
        ([tr for tr in root.iter("tr") if tr.find("td", "td-02") is not None], _pc_row),
    )
    for rows, parse_row in layouts:
        if rows:
            items = [item for item in map(parse_row, rows) if item is not None]
            if not items:
                raise ParseError(f"none of the {len(rows)} rows of the Weibo summary page is ranked", kind="schema")
            return items, len(rows) - len(items)
    title = root.find("title")
    shown = title.text().strip()[:80] if title is not None else "untitled"
    raise ParseError(
        f"the HTML page {shown!r} has no Weibo hot-list rows (ul.list_a, ul.list_b or td.td-02)", kind="schema"
    )


# --- entry points --------------------------------------------------------------------


def parse(response: FetchResponse) -> tuple[list[RawItem], int]:
    """A Weibo hot list in any of its three shapes → (ranked items, count of dropped rows)."""
    if response.body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<":
        return _parse_html(response)
    data = decode_json(response, "Weibo")
    if not isinstance(data, dict):
        raise ParseError("Weibo response is not a JSON object", kind="schema")
    body = data.get("data")
    if data.get("ok") != 1:
        message = _text(data.get("msg")) or _text(data.get("message")) or _text(data.get("error")) or ""
        redirect = str(data.get("url", ""))
        if "passport" in redirect or "login" in redirect:
            raise ParseError(f"Weibo answered ok={data.get('ok')!r} and a login page", kind="blocked")
        cards = body.get("cards") if isinstance(body, dict) else None
        kind = "empty" if data.get("ok") == 0 and not cards else "schema"
        raise ParseError(f"Weibo answered ok={data.get('ok')!r} {message}".strip(), kind=kind)
    if not isinstance(body, dict):
        raise ParseError("Weibo field 'data' is missing or not an object", kind="schema")
    if isinstance(body.get("cards"), list):
        return _parse_container(body["cards"])
    if "realtime" in body:
        return _parse_ajax(body)
    raise ParseError("Weibo field 'data.cards' (or 'data.realtime') is missing or not a list", kind="schema")


def _referer(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/"


async def collect(fetcher: Fetcher, source: SourceSettings, state: SourceState) -> Collected:
    url = source.url or DEFAULT_URL
    return await collect_list(fetcher, source, state, parse, url=url, headers={**HEADERS, "Referer": _referer(url)})
