"""Collectors: one module per kind, each an `async def collect(fetcher, source, state)`.

A collector fetches through `fetch.fetch` and returns `Collected` (RawItems in list
order), or raises FetchError / ParseError. COLLECTORS maps a source's `kind` to it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aggregator.collectors import baidu, bilibili, douyin, feed, json_list, newsnow, toutiao, weibo, zhihu
from aggregator.models import Collected, SourceState
from aggregator.settings import Settings, SourceSettings

from .fetch import Fetcher

Collector = Callable[[Fetcher, SourceSettings, SourceState], Awaitable[Collected]]

COLLECTORS: dict[str, Collector] = {
    "newsnow": newsnow.collect,
    "feed": feed.collect,
    "json": json_list.collect,
    "weibo": weibo.collect,
    "zhihu": zhihu.collect,
    "baidu": baidu.collect,
    "toutiao": toutiao.collect,
    "douyin": douyin.collect,
    "bilibili": bilibili.collect,
}


def validate_sources(settings: Settings) -> None:
    """Kind-specific checks of the settings that need a collector's knowledge (ConfigError)."""
    for index, source in enumerate(settings.sources):
        if source.kind == "json":
            json_list.validate_mapping(source, index)
