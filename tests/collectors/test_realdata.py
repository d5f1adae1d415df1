"""The native parsers over every real payload in ../shared/realdata: counts, ranks, heats, refusals."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from aggregator.collectors import baidu, weibo, zhihu
from aggregator.collectors.fetch import FetchResponse
from aggregator.errors import ParseError
from aggregator.models import RawItem
from aggregator.normalize import parse_heat

REALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"
if not REALDATA.is_dir():
    pytest.skip(
        f"no real payloads at {REALDATA} (the shared realdata folder is not checked out)", allow_module_level=True
    )

Parse = Callable[[FetchResponse], tuple[list[RawItem], int]]
PARSERS: dict[str, Parse] = {"weibo_hotsearch": weibo.parse, "zhihu": zhihu.parse, "baidu": baidu.parse}
LABELS = {None, "新", "热", "沸", "爆", "暖"}

# file → (items, dropped, first title, first heat as parse_heat reads it)
PARSED = {
    # card 0: 1 pinned + 50 ranked + 1 ad; the later cards (上升热点, 文娱…) are other lists.
    "weibo_hotsearch/m-weibo-cn-container-realtimehot-2024-05-14.json": (50, 2, "青岛一女童发热输液后死亡", 1128585.0),
    # 1 pinned + 50 + 2 ads, and the ads share band_rank with their neighbours.
    "weibo_hotsearch/m-weibo-cn-container-realtimehot-2025-03-28.json": (50, 3, "王者荣耀崩了", 5246423.0),
    # The ad here keeps its rank number (3) and is dropped: 49 organic rows, rank 3 missing.
    "weibo_hotsearch/s-weibo-top-summary-h5-2021-03-08.html": (49, 2, "最高检报告点名辣笔小球", 1266701.0),
    # Pinned, one topic_ad=1 row, and "马扎儿广播": a "•" row with no rank, no heat and no ad mark.
    "weibo_hotsearch/s-weibo-top-summary-h5-2021-07-26.html": (50, 3, "许昕刘诗雯获混双银牌", 11024661.0),
    # Topic band: the heat is "18.7万讨论 4.8亿阅读"; parse_heat reads the first number.
    "weibo_hotsearch/s-weibo-top-summary-topicband-h5-2021-03-08.html": (50, 0, "#女性的力量值得被看见#", 187000.0),
    # Named "oldformat", but the archiver already got the title_area/metrics_area shape that day.
    "zhihu/hot-lists-total-oldformat-2021-03-01.json": (
        50,
        0,
        "2021 年 3 月 1 日禁止台湾菠萝入境，对台湾的影响究竟有多大？",
        38650000.0,
    ),
    "zhihu/hot-lists-total-2022-06-01.json": (
        50,
        0,
        "6 月 1 日四川雅安芦山发生 6.1 级地震，已致 4 死 14 伤，目前当地情况如何？",
        12150000.0,
    ),
    "zhihu/hot-lists-total-2024-06-01.json": (
        50,
        0,
        "拜登公布停火新提案，实现「重大让步」，哈马斯初步回应积极，巴以冲突是否迎来了转机？未来局势将如何发展？",
        4170000.0,
    ),
    "zhihu/hot-lists-total-2025-05-01.json": (
        30,
        0,
        "国家卫健委对近日肖某引发舆情问题开展调查，肖某、董某及有关机构可能会承担哪些责任？",
        14980000.0,
    ),
    # The hot-video list has the same envelope and parses the same way.
    "zhihu/hot-video-2025-05-06.json": (
        30,
        0,
        "贵州游船侧翻事故中，另一船人全员获救，船长的哪些操作很关键？",
        18800000.0,
    ),
    # topContent (the pinned row) is dropped, never rank 1.
    "baidu/board-realtime-2024-01-13.json": (50, 1, "国台办评论台湾地区选举结果", 4915490.0),
    "baidu/board-realtime-2025-01-01.json": (50, 1, "赵露思经纪公司致歉", 7947956.0),
    "baidu/board-realtime-2025-08-15.json": (50, 1, "中方向日方提出严正交涉", 7808967.0),
    "baidu/board-realtime-2026-03-16.json": (50, 1, "315晚会", 7809452.0),
}
# file → (error kind, text in the message): payloads that are not a hot list must not pass for one.
REFUSED = {
    "weibo_hotsearch/sina-visitor-system-instead-of-hotlist-2022-06-01.html": ("blocked", "Sina Visitor System"),
    "weibo_hotsearch/m-weibo-cn-container-topicband-empty-ok0-2025-04-02.json": ("empty", "ok=0"),
    # Other Zhihu endpoints kept in the folder: the 热搜 words (no `data`) and the 热搜 web page.
    "zhihu/topsearch-words-2021-01-08.json": ("schema", "'data'"),
    "zhihu/zhihu-topsearch-page-2026-08-22.html": ("blocked", "where Zhihu JSON was expected"),
}


def response_of(relative: str) -> FetchResponse:
    path = REALDATA / relative
    content_type = "text/html" if path.suffix == ".html" else "application/json"
    return FetchResponse(200, f"https://example.invalid/{path.name}", {"content-type": content_type}, path.read_bytes())


def parser_of(relative: str) -> Parse:
    return PARSERS[relative.split("/")[0]]


def test_every_real_payload_is_covered() -> None:
    present = {
        f"{folder}/{path.name}"
        for folder in PARSERS
        for path in (REALDATA / folder).iterdir()
        if path.suffix in (".json", ".html")
    }
    assert present == set(PARSED) | set(REFUSED)


@pytest.mark.parametrize("relative", sorted(PARSED))
def test_real_payload_parses_with_plausible_values(relative: str) -> None:
    count, dropped, first_title, first_heat = PARSED[relative]
    items, dropped_count = parser_of(relative)(response_of(relative))
    assert (len(items), dropped_count) == (count, dropped)
    assert (items[0].title, parse_heat(items[0].heat_raw)) == (first_title, first_heat)
    ranks = [item.rank or 0 for item in items]  # every item has its platform rank: none is 0
    assert ranks == sorted(set(ranks)) and ranks[0] == 1 and ranks[-1] <= 50
    heats = [parse_heat(item.heat_raw) for item in items]
    assert all(heat is not None and heat > 0 for heat in heats)
    if "topicband" not in relative:  # topic-band heats are discussion counts in 万, not ordered
        assert all(a is not None and b is not None and a >= b for a, b in itertools.pairwise(heats))
    assert all(item.url and item.url.startswith("https://") for item in items)
    assert all(item.title.strip() and item.native_id for item in items)
    assert len({item.native_id for item in items}) == len(items)
    assert {item.label for item in items} <= LABELS


@pytest.mark.parametrize("relative", sorted(REFUSED))
def test_real_non_list_payload_is_refused(relative: str) -> None:
    kind, fragment = REFUSED[relative]
    with pytest.raises(ParseError) as caught:
        parser_of(relative)(response_of(relative))
    assert caught.value.kind == kind
    assert fragment in str(caught.value)


def test_real_zhihu_ids_of_19_digits_stay_exact() -> None:
    items, _ = zhihu.parse(response_of("zhihu/hot-lists-total-2025-05-01.json"))
    assert items[0].native_id == "1901192719428182699"
    assert items[0].url == "https://www.zhihu.com/question/1901192719428182699"


def test_real_weibo_labels_come_from_the_flag_icons() -> None:
    items, _ = weibo.parse(response_of("weibo_hotsearch/m-weibo-cn-container-realtimehot-2024-05-14.json"))
    by_title = {item.title: item for item in items}
    assert by_title["青岛一女童发热输液后死亡"].label == "新"  # flags/1_0.png
    assert by_title["雨霖铃 杨洋"].label == "热"  # flags/2_0.png
    assert by_title["奸淫幼女小学老师死刑上诉被驳回"].label == "沸"  # flags/16_0.png
    assert by_title["救援现场猫猫拳对决消防咏春"].label == "暖"  # flags/32768_0.png
    assert by_title["雨霖铃 杨洋"].heat_raw == "剧集 933029"
    assert "从北下关到寻找王医生" not in by_title  # the promotion row
    assert "加快陆海新通道空中丝绸之路建设" not in by_title  # the pinned row
