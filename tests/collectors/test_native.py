"""Native hot-list collectors, run for real against fixtures served on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from aggregator.collectors import baidu, bilibili, collectors, douyin, toutiao, weibo, zhihu
from aggregator.collectors.fetch import Fetcher, make_fetcher
from aggregator.errors import ParseError
from aggregator.models import Collected, SourceState
from aggregator.normalize import parse_heat
from aggregator.settings import HttpSettings, SourceSettings
from tests.conftest import DATA, LoopbackServer

JSON = "application/json; charset=utf-8"
HTML = "text/html; charset=utf-8"
WB = "https://s.weibo.com/weibo?q="
BD = "https://www.baidu.com/s?wd="
TT = "https://www.toutiao.com/trending/"
LOG_FROM = "log_from=a2c6f6e8d4e4a8_1704098100516"

# (rank, title, url, heat_raw, parse_heat(heat_raw), label, native_id) per item, in order.
Row = tuple[int | None, str, str | None, str | int | float | None, float | None, str | None, str | None]

WEIBO_CONTAINER: list[Row] = [
    (
        1,
        "王者荣耀崩了",
        WB + "%23%E7%8E%8B%E8%80%85%E8%8D%A3%E8%80%80%E5%B4%A9%E4%BA%86%23",
        5246423,
        5246423.0,
        "热",
        "王者荣耀崩了",
    ),
    (
        2,
        "雨霖铃 杨洋",
        WB + "%E9%9B%A8%E9%9C%96%E9%93%83%20%E6%9D%A8%E6%B4%8B",
        "剧集 933029",
        933029.0,
        "新",
        "雨霖铃 杨洋",
    ),
    (
        3,
        "缅甸7.9级地震",
        WB + "%23%E7%BC%85%E7%94%B87.9%E7%BA%A7%E5%9C%B0%E9%9C%87%23",
        983757,
        983757.0,
        "沸",
        "缅甸7.9级地震",
    ),
    # Entities stay as served: normalize.clean_text unescapes titles later in the pipeline.
    (
        4,
        "Tom &amp; Jerry 重映",
        WB + "Tom%20%26%20Jerry%20%E9%87%8D%E6%98%A0",
        "电影 630839",
        630839.0,
        "暖",
        "Tom &amp; Jerry 重映",
    ),
    (5, "成果发视频", WB + "%E6%88%90%E6%9E%9C%E5%8F%91%E8%A7%86%E9%A2%91", None, None, None, "成果发视频"),
    # realpos 6 is the malformed row; this one carries its rank only in the scheme's extparam.
    (
        7,
        "医生说少吃水果能少生很多病",
        WB
        + "%E5%8C%BB%E7%94%9F%E8%AF%B4%E5%B0%91%E5%90%83%E6%B0%B4%E6%9E%9C%E8%83%BD%E5%B0%91%E7%94%9F%E5%BE%88%E5%A4%9A"
        "%E7%97%85",
        340429,
        340429.0,
        None,
        "医生说少吃水果能少生很多病",
    ),
]
WEIBO_AJAX: list[Row] = [
    (
        1,
        "神舟二十号发射成功",
        WB + "%23%E7%A5%9E%E8%88%9F%E4%BA%8C%E5%8D%81%E5%8F%B7%E5%8F%91%E5%B0%84%E6%88%90%E5%8A%9F%23",
        1923456,
        1923456.0,
        "热",
        "神舟二十号发射成功",
    ),
    (3, "暴雨预警", WB + "%E6%9A%B4%E9%9B%A8%E9%A2%84%E8%AD%A6", 856102, 856102.0, "新", "暴雨预警"),
    (4, "新歌首发", WB + "%23%E6%96%B0%E6%AD%8C%E9%A6%96%E5%8F%91%23", 123456, 123456.0, "新", "新歌首发"),
]
WEIBO_SUMMARY: list[Row] = [
    (
        1,
        "许昕刘诗雯获混双银牌",
        WB + "%23%E8%AE%B8%E6%98%95%E5%88%98%E8%AF%97%E9%9B%AF%E8%8E%B7%E6%B7%B7%E5%8F%8C%E9%93%B6"
        "%E7%89%8C%23&Refer=top",
        "11024661",
        11024661.0,
        "爆",
        "许昕刘诗雯获混双银牌",
    ),
    (
        2,
        "水谷隼吹球",
        WB + "%23%E6%B0%B4%E8%B0%B7%E9%9A%BC%E5%90%B9%E7%90%83%23&Refer=top",
        "4794243",
        4794243.0,
        "沸",
        "水谷隼吹球",
    ),
    (
        3,
        "Tom & Jerry 重映",
        WB + "%23Tom%20%26%20Jerry%20%E9%87%8D%E6%98%A0%23&Refer=top",
        "3802730",
        3802730.0,
        "新",
        "Tom & Jerry 重映",
    ),
    (
        4,
        "刘国梁和马琳的掌声",
        WB + "%E5%88%98%E5%9B%BD%E6%A2%81%E5%92%8C%E9%A9%AC%E7%90%B3%E7%9A%84%E6%8E%8C%E5%A3%B0&Refer=top",
        None,
        None,
        None,
        "刘国梁和马琳的掌声",
    ),
    (
        5,
        "故宫里的解说员有多牛",
        WB + "%23%E6%95%85%E5%AE%AB%E9%87%8C%E7%9A%84%E8%A7%A3%E8%AF%B4%E5%91%98%E6%9C%89%E5%A4%9A"
        "%E7%89%9B%23&Refer=top",
        "464351",
        464351.0,
        "热",
        "故宫里的解说员有多牛",
    ),
]
WEIBO_SUMMARY_PC: list[Row] = [
    (
        1,
        "王者荣耀崩了",
        WB + "%23%E7%8E%8B%E8%80%85%E8%8D%A3%E8%80%80%E5%B4%A9%E4%BA%86%23&t=31&band_rank=1&Refer=top",
        "5246423",
        5246423.0,
        "热",
        "王者荣耀崩了",
    ),
    (
        2,
        "门童曼谷场取消",
        WB + "%E9%97%A8%E7%AB%A5%E6%9B%BC%E8%B0%B7%E5%9C%BA%E5%8F%96%E6%B6%88&t=31&band_rank=2&Refer=top",
        "演出 1276056",
        1276056.0,
        "新",
        "门童曼谷场取消",
    ),
    (
        3,
        "这样的西藏你见过吗",
        WB + "%23%E8%BF%99%E6%A0%B7%E7%9A%84%E8%A5%BF%E8%97%8F%E4%BD%A0%E8%A7%81%E8%BF%87%E5%90%97%23"
        "&t=31&band_rank=3&Refer=top",
        "1121387",
        1121387.0,
        None,
        "这样的西藏你见过吗",
    ),
]
WEIBO_TOPICBAND: list[Row] = [
    (
        1,
        "#女性的力量值得被看见#",
        WB + "%23%E5%A5%B3%E6%80%A7%E7%9A%84%E5%8A%9B%E9%87%8F%E5%80%BC%E5%BE%97%E8%A2%AB%E7%9C%8B%E8%A7%81%23",
        "18.7万讨论 4.8亿阅读",
        187000.0,
        None,
        "女性的力量值得被看见",
    ),
    (
        2,
        "#公务员考试该不该取消35岁上限#",
        WB + "%23%E5%85%AC%E5%8A%A1%E5%91%98%E8%80%83%E8%AF%95%E8%AF%A5%E4%B8%8D%E8%AF"
        "%A5%E5%8F%96%E6%B6%8835%E5%B2%81%E4%B8%8A%E9%99%90%23",
        "2766讨论 8099.8万阅读",
        2766.0,
        None,
        "公务员考试该不该取消35岁上限",
    ),
]
ZHIHU_NEW: list[Row] = [
    (
        1,
        "国家卫健委对近日肖某引发舆情问题开展调查，可能会承担哪些责任？",
        "https://www.zhihu.com/question/1901192719428182699",
        "1498 万热度",
        14980000.0,
        "热",
        "1901192719428182699",
    ),
    (
        2,
        "如何看待「A&amp;B」联名款上线即售罄？",
        "https://www.zhihu.com/question/657836781",
        "417 万热度",
        4170000.0,
        "新",
        "657836781",
    ),
    (
        3,
        "五一假期第一天，你在哪里？",
        "https://www.zhihu.com/question/1900841520317482963",
        None,
        None,
        None,
        "1900841520317482963",
    ),
    # rank 4 is the entry whose target is not an object: skipped, but it held its place.
    (
        5,
        "6 月 1 日四川雅安芦山发生 6.1 级地震，目前当地情况如何？",
        "https://www.zhihu.com/question/535621535",
        "1215 万热度",
        12150000.0,
        None,
        "535621535",
    ),
]
ZHIHU_OLD: list[Row] = [
    (
        1,
        "2021 年 3 月 1 日禁止台湾菠萝入境，影响究竟有多大？",
        "https://www.zhihu.com/question/446790267",
        "4723 万热度",
        47230000.0,
        None,
        "446790267",
    ),
    (
        2,
        "如何看待中科大 26 岁教授攻克世界难题？",
        "https://www.zhihu.com/question/446619006",
        "2088 万热度",
        20880000.0,
        "新",
        "446619006",
    ),
    (3, "没有热度的问题", "https://www.zhihu.com/question/446755519", None, None, None, "446755519"),
]
BAIDU: list[Row] = [
    (1, "315晚会", BD + "315%E6%99%9A%E4%BC%9A&sa=fyb_news&rsv_dl=fyb_news", "7809452", 7809452.0, "热", "315晚会"),
    (
        2,
        "315曝光的鸡爪公司股东也在看晚会",
        BD + "315%E6%9B%9D%E5%85%89%E7%9A%84%E9%B8%A1%E7%88%AA%E5%85%AC%E5%8F%B8"
        "%E8%82%A1%E4%B8%9C%E4%B9%9F%E5%9C%A8%E7%9C%8B%E6%99%9A%E4%BC%9A&sa=fyb_news&rsv_dl=fyb_news",
        "7713218",
        7713218.0,
        "新",
        "315曝光的鸡爪公司股东也在看晚会",
    ),
    (
        3,
        "中方向日方提出严正交涉",
        BD + "%E4%B8%AD%E6%96%B9%E5%90%91%E6%97%A5%E6%96%B9%E6%8F%90%E5%87%BA%E4%B8%A5%E6%AD"
        "%A3%E4%BA%A4%E6%B6%89&sa=fyb_news&rsv_dl=fyb_news",
        "7608967",
        7608967.0,
        None,
        "中方向日方提出严正交涉",
    ),
    # hotTag "5" is a badge nobody has named yet: no label rather than a guess.
    (
        4,
        "315晚会曝光完整名单",
        BD + "315%E6%99%9A%E4%BC%9A%E6%9B%9D%E5%85%89%E5%AE%8C%E6%95%B4%E5%90%8D%E5%8D%95&sa=fyb_news&rsv_dl=fyb_news",
        "7523496",
        7523496.0,
        None,
        "315晚会曝光完整名单",
    ),
    (
        6,
        "“两山”理念的科学路径",
        BD + "%E2%80%9C%E4%B8%A4%E5%B1%B1%E2%80%9D%E7%90%86%E5%BF%B5%E7%9A%84%E7%A7%91%E5%AD%A6"
        "%E8%B7%AF%E5%BE%84&sa=fyb_news&rsv_dl=fyb_news",
        None,
        None,
        None,
        "“两山”理念的科学路径",
    ),
]
TOUTIAO: list[Row] = [
    (
        1,
        "2024年新年贺词",
        f"{TT}7318906715125547035/?rank=1&{LOG_FROM}",
        "32569041",
        32569041.0,
        "热",
        "7318906715125547035",
    ),
    (
        2,
        "多地迎来2024年第一场雪",
        f"{TT}7318899124539211811/?rank=2&{LOG_FROM}",
        "28773104",
        28773104.0,
        "新",
        "7318899124539211811",
    ),
    (
        3,
        "网传&quot;元旦放假调休&quot;为谣言",
        f"{TT}7318870124389232690/?rank=3&{LOG_FROM}",
        "19001287",
        19001287.0,
        "辟谣",
        "7318870124389232690",
    ),
    (
        4,
        "元旦假期全国出游人次创新高",
        f"{TT}7318910042713657395/?rank=4&{LOG_FROM}",
        None,
        None,
        None,
        "7318910042713657395",
    ),
    (
        5,
        "独家：某品牌发布新车",
        f"{TT}7318911237490868249/?rank=5&{LOG_FROM}",
        "9864310",
        9864310.0,
        "dujia",
        "7318911237490868249",
    ),
    (7, "冰雪旅游持续升温", f"{TT}7318912338802393129/", "8765432", 8765432.0, None, "7318912338802393129"),
]
DOUYIN: list[Row] = [
    (1, "新年第一天", "https://www.douyin.com/hot/1481", 11921357, 11921357.0, "热", "1481"),
    (2, "多地迎来2024年第一场雪", "https://www.douyin.com/hot/1479", 11002231, 11002231.0, "新", "1479"),
    (4, "元旦假期出游人次", "https://www.douyin.com/hot/1490", 9512306, 9512306.0, None, "1490"),
    (
        6,
        "冰雪大世界开园",
        "https://www.douyin.com/search/%E5%86%B0%E9%9B%AA%E5%A4%A7%E4%B8%96%E7%95%8C%E5%BC%80%E5%9B%AD",
        None,
        None,
        None,
        "7318911111111111111",
    ),
    (7, "跨年晚会名场面", "https://www.douyin.com/hot/1473", 8843102, 8843102.0, None, "1473"),
]
BILIBILI: list[Row] = [
    (
        1,
        "【年度总结】2023 我的游戏时间",
        "https://www.bilibili.com/video/BV1GJ411x7h7",
        5203112,
        5203112.0,
        "百万播放",
        "BV1GJ411x7h7",
    ),
    (
        2,
        "猫猫 &amp; 狗狗 的第一场雪",
        "https://www.bilibili.com/video/BV1Wu4y1x7Yb",
        1883021,
        1883021.0,
        "很多人点赞",
        "BV1Wu4y1x7Yb",
    ),
    (3, "跨年夜的城市延时摄影", "https://www.bilibili.com/video/BV1ab4y1m7Cd", 920331, 920331.0, None, "BV1ab4y1m7Cd"),
    (5, "一个没有统计数据的视频", "https://www.bilibili.com/video/BV1Zz421q7Yn", None, None, None, "BV1Zz421q7Yn"),
]


@pytest.fixture
async def fetcher() -> AsyncIterator[Fetcher]:
    client = make_fetcher(HttpSettings())
    try:
        yield client
    finally:
        await client.aclose()


async def collect_file(
    server: LoopbackServer,
    fetcher: Fetcher,
    kind: str,
    name: str,
    content_type: str = JSON,
    state: SourceState | None = None,
    **source: Any,
) -> Collected:
    url = server.serve_file(f"/{name}", name, content_type)
    settings = SourceSettings(id="x", kind=kind, url=url, **source)
    return await collectors()[kind](fetcher, settings, state or SourceState())


async def collect_body(server: LoopbackServer, fetcher: Fetcher, kind: str, body: str | bytes) -> Collected:
    url = server.route(f"/{kind}/edited.json", body)
    return await collectors()[kind](fetcher, SourceSettings(id="x", kind=kind, url=url), SourceState())


def rows_of(collected: Collected) -> list[Row]:
    return [(i.rank, i.title, i.url, i.heat_raw, parse_heat(i.heat_raw), i.label, i.native_id) for i in collected.items]


@pytest.mark.parametrize(
    ("kind", "name", "content_type", "expected", "dropped"),
    [
        # dropped: the pinned row, the ad (promotion / topic_ad=1), the row whose desc is a number.
        pytest.param("weibo", "weibo/container.json", JSON, WEIBO_CONTAINER, 3, id="weibo-container"),
        # dropped: the hotgovs row and the is_ad 荐 row.
        pytest.param("weibo", "weibo/ajax.json", JSON, WEIBO_AJAX, 2, id="weibo-ajax"),
        # dropped: the icon_pinned row, the topic_ad=1 row, the row without a link.
        pytest.param("weibo", "weibo/summary.html", HTML, WEIBO_SUMMARY, 3, id="weibo-summary-h5"),
        # dropped: the icon-top row and the javascript:void(0) 荐 row; the header row is not a row.
        pytest.param("weibo", "weibo/summary-pc.html", HTML, WEIBO_SUMMARY_PC, 2, id="weibo-summary-pc"),
        pytest.param("weibo", "weibo/topicband.html", HTML, WEIBO_TOPICBAND, 0, id="weibo-topicband"),
        # dropped: the promotion_extra entry and the entry whose target is a string.
        pytest.param("zhihu", "zhihu/hot-lists.json", JSON, ZHIHU_NEW, 2, id="zhihu-new"),
        pytest.param("zhihu", "zhihu/hot-lists-old.json", JSON, ZHIHU_OLD, 0, id="zhihu-old"),
        # dropped: the topContent row (not rank 1) and the row whose word is null.
        pytest.param("baidu", "baidu/board.json", JSON, BAIDU, 2, id="baidu"),
        # dropped: the fixed_top_data row and the entry whose Title is a number.
        pytest.param("toutiao", "toutiao/hot-board.json", JSON, TOUTIAO, 2, id="toutiao"),
        # dropped: the 商 (label 2) word and the word that is null; trending_list is another list.
        pytest.param("douyin", "douyin/hot-search.json", JSON, DOUYIN, 2, id="douyin"),
        # dropped: the entry with neither bvid nor aid.
        pytest.param("bilibili", "bilibili/popular.json", JSON, BILIBILI, 1, id="bilibili"),
    ],
)
async def test_collect_gives_the_exact_ranked_list(
    http_server: LoopbackServer,
    fetcher: Fetcher,
    kind: str,
    name: str,
    content_type: str,
    expected: list[Row],
    dropped: int,
) -> None:
    collected = await collect_file(http_server, fetcher, kind, name, content_type)
    assert rows_of(collected) == expected
    assert collected.dropped_count == dropped
    assert collected.http_status == 200
    assert collected.cookies is None


async def test_summaries_and_dates_are_kept(http_server: LoopbackServer, fetcher: Fetcher) -> None:
    zhihu_items = (await collect_file(http_server, fetcher, "zhihu", "zhihu/hot-lists.json")).items
    assert [i.summary for i in zhihu_items] == [
        "国家卫生健康委新闻发言人表示，已成立调查组。",
        None,
        "假期出行情况如何？",
        "最新进展：",
    ]
    baidu_items = (await collect_file(http_server, fetcher, "baidu", "baidu/board.json")).items
    assert [i.summary for i in baidu_items] == [None, "总台“3·15”晚会曝光多家企业。", None, None, None]
    videos = (await collect_file(http_server, fetcher, "bilibili", "bilibili/popular.json")).items
    assert videos[0].published_at == datetime(2023, 12, 31, 16, 0, tzinfo=UTC)
    assert [v.summary for v in videos] == ["一年又过去了", None, None, None]  # "-" is no description
    topics = (await collect_file(http_server, fetcher, "weibo", "weibo/topicband.html", HTML)).items
    assert topics[0].summary == "她们奋斗在各行各业，致敬每一个了不起的“她”！"


@pytest.mark.parametrize(
    ("kind", "name", "content_type", "error_kind", "fragment"),
    [
        pytest.param(
            "weibo",
            "weibo/visitor.html",
            "text/html; charset=gb2312",
            "blocked",
            "Sina Visitor System",
            id="weibo-visitor-page",
        ),
        pytest.param("weibo", "weibo/ok0.json", JSON, "empty", "ok=0 这里还没有内容", id="weibo-ok0"),
        pytest.param(
            "bilibili", "bilibili/risk-352.json", JSON, "blocked", "code -352 风控校验失败", id="bilibili-352"
        ),
        pytest.param(
            "douyin", "weibo/visitor.html", "text/html; charset=gb2312", "blocked", "anti-bot", id="douyin-wall"
        ),
        pytest.param("zhihu", "zhihu/renamed.json", JSON, "schema", "'data'", id="zhihu-data-renamed"),
        pytest.param("baidu", "baidu/renamed.json", JSON, "schema", "'data.cards'", id="baidu-cards-renamed"),
    ],
)
async def test_refusals_raise_parse_error(
    http_server: LoopbackServer,
    fetcher: Fetcher,
    kind: str,
    name: str,
    content_type: str,
    error_kind: str,
    fragment: str,
) -> None:
    with pytest.raises(ParseError) as caught:
        await collect_file(http_server, fetcher, kind, name, content_type)
    assert caught.value.kind == error_kind
    assert fragment in str(caught.value)
    assert caught.value.http_status == 200


@pytest.mark.parametrize("kind", ["zhihu", "baidu", "toutiao", "douyin", "bilibili"])
async def test_html_instead_of_json_is_a_parse_error(http_server: LoopbackServer, fetcher: Fetcher, kind: str) -> None:
    with pytest.raises(ParseError, match=r"an HTML page \('百度热搜'\) where .* JSON was expected") as caught:
        await collect_file(http_server, fetcher, kind, "baidu/not-json.html", HTML)
    assert caught.value.kind == "parse"


async def test_weibo_html_without_a_list_names_what_it_looked_for(
    http_server: LoopbackServer, fetcher: Fetcher
) -> None:
    with pytest.raises(ParseError, match="'百度热搜' has no Weibo hot-list rows") as caught:
        await collect_file(http_server, fetcher, "weibo", "baidu/not-json.html", HTML)
    assert caught.value.kind == "schema"


def renamed(name: str, path: list[str | int], new_key: str) -> str:
    """The fixture with the key at `path` renamed, as a changed payload would come."""
    data = json.loads((DATA / name).read_bytes())
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    parent[new_key] = parent.pop(path[-1])
    return json.dumps(data, ensure_ascii=False)


@pytest.mark.parametrize(
    ("kind", "name", "path", "field"),
    [
        ("weibo", "weibo/container.json", ["data", "cards"], "'data.cards'"),
        ("weibo", "weibo/ajax.json", ["data", "realtime"], "'data.cards' (or 'data.realtime')"),
        ("zhihu", "zhihu/hot-lists-old.json", ["data"], "'data'"),
        ("baidu", "baidu/board.json", ["data", "cards", 0, "content"], "'data.cards[0].content'"),
        ("toutiao", "toutiao/hot-board.json", ["data"], "'data'"),
        ("douyin", "douyin/hot-search.json", ["data", "word_list"], "'data.word_list'"),
        ("bilibili", "bilibili/popular.json", ["data", "list"], "'data.list'"),
    ],
)
async def test_a_renamed_field_is_a_schema_error_naming_it(
    http_server: LoopbackServer, fetcher: Fetcher, kind: str, name: str, path: list[str | int], field: str
) -> None:
    body = renamed(name, path, "renamed_by_the_platform")
    with pytest.raises(ParseError) as caught:
        await collect_body(http_server, fetcher, kind, body)
    assert caught.value.kind == "schema"
    assert field in str(caught.value)


@pytest.mark.parametrize(
    ("kind", "body", "error_kind", "fragment"),
    [
        ("weibo", {"ok": 1, "data": {"cards": [{"card_group": [{"desc": 1}, "x"]}]}}, "schema", "none of the 2"),
        ("weibo", {"ok": 1, "data": {"cards": [{"card_group": []}]}}, "empty", "no rows"),
        ("weibo", {"ok": -100, "url": "https://passport.weibo.cn/signin/welcome"}, "blocked", "login"),
        ("zhihu", {"data": [{"target": 3}, 5]}, "schema", "none of the 2"),
        ("zhihu", {"data": []}, "empty", "empty"),
        ("baidu", {"success": True, "data": {"cards": [{"content": [1, {"word": 2}]}]}}, "schema", "none of the 2"),
        ("baidu", {"success": False, "error": {"code": 1, "message": "bad tab"}}, "schema", "bad tab"),
        ("toutiao", {"data": [{"Title": "x"}], "status": "success"}, "schema", "none of the 1"),
        ("toutiao", {"data": [], "status": "success"}, "empty", "empty"),
        ("douyin", {"status_code": 0, "data": {"word_list": []}}, "empty", "empty"),
        ("douyin", {"status_code": 8, "status_msg": "need login"}, "schema", "status_code 8 need login"),
        ("bilibili", {"code": 0, "data": {"list": [{"title": "no id"}]}}, "schema", "none of the 1"),
        ("bilibili", {"code": -400, "message": "请求错误"}, "schema", "code -400"),
    ],
)
async def test_nothing_usable_is_an_error_never_an_empty_list(
    http_server: LoopbackServer, fetcher: Fetcher, kind: str, body: Any, error_kind: str, fragment: str
) -> None:
    with pytest.raises(ParseError) as caught:
        await collect_body(http_server, fetcher, kind, json.dumps(body))
    assert caught.value.kind == error_kind
    assert fragment in str(caught.value)


async def test_weibo_sends_referer_and_merged_cookies_and_keeps_new_ones(
    http_server: LoopbackServer, fetcher: Fetcher
) -> None:
    url = http_server.route(
        "/weibo/cookies.json",
        (DATA / "weibo/container.json").read_bytes(),
        headers={"Set-Cookie": "XSRF-TOKEN=abc123; Path=/; HttpOnly"},
    )
    source = SourceSettings(id="x", kind="weibo", url=url, cookies={"SUB": "from-settings"})
    state = SourceState(cookies={"SUB": "stale", "_T_WM": "kept-from-last-poll"})
    collected = await weibo.collect(fetcher, source, state)
    _, headers = http_server.requests[-1]
    assert headers["referer"] == f"http://127.0.0.1:{http_server.port}/"
    assert headers["x-requested-with"] == "XMLHttpRequest"
    assert sorted(headers["cookie"].split("; ")) == ["SUB=from-settings", "_T_WM=kept-from-last-poll"]
    assert collected.cookies == {"XSRF-TOKEN": "abc123"}


@pytest.mark.parametrize(
    ("kind", "referer"),
    [
        ("zhihu", "https://www.zhihu.com/hot"),
        ("baidu", "https://top.baidu.com/board?tab=realtime"),
        ("toutiao", "https://www.toutiao.com/"),
        ("douyin", "https://www.douyin.com/"),
        ("bilibili", "https://www.bilibili.com/"),
    ],
)
async def test_json_kinds_send_their_site_referer_and_settings_headers_win(
    http_server: LoopbackServer, fetcher: Fetcher, kind: str, referer: str
) -> None:
    name = {
        "zhihu": "zhihu/hot-lists.json",
        "baidu": "baidu/board.json",
        "toutiao": "toutiao/hot-board.json",
        "douyin": "douyin/hot-search.json",
        "bilibili": "bilibili/popular.json",
    }[kind]
    await collect_file(http_server, fetcher, kind, name)
    assert http_server.requests[-1][1]["referer"] == referer
    await collect_file(
        http_server, fetcher, kind, name, headers={"Referer": "https://mirror.example/"}, cookies={"ttwid": "1%7Cabc"}
    )
    _, headers = http_server.requests[-1]
    assert headers["referer"] == "https://mirror.example/"
    assert headers["cookie"] == "ttwid=1%7Cabc"


def test_default_urls_are_the_public_endpoints() -> None:
    assert weibo.DEFAULT_URL.startswith("https://m.weibo.cn/api/container/getIndex?containerid=106003type%3D25")
    assert zhihu.DEFAULT_URL.startswith("https://www.zhihu.com/api/v3/feed/topstory/hot-lists/total?limit=50")
    assert baidu.DEFAULT_URL == "https://top.baidu.com/api/board?platform=wise&tab=realtime"
    assert toutiao.DEFAULT_URL == "https://www.toutiao.com/hot-event/hot-board/?origin=toutiao_pc"
    assert douyin.DEFAULT_URL.startswith("https://www.douyin.com/aweme/v1/web/hot/search/list/?")
    assert bilibili.DEFAULT_URL.startswith("https://api.bilibili.com/x/web-interface/popular?")
