"""Collectors: one module per kind, each an `async def collect(fetcher, source, state)`.

A collector fetches through `fetch.fetch` and returns `Collected` (RawItems in list
order), or raises FetchError / ParseError. `collectors()` maps a source's `kind` to it.

The modules are imported when first asked for: the commands that only read the store
(`top`, `search`, `explain`, `serve`...) never load the HTTP clients and feedparser.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aggregator.models import Collected, SourceState
from aggregator.settings import Settings, SourceSettings

if TYPE_CHECKING:
    from .fetch import Fetcher

Collector = Callable[["Fetcher", SourceSettings, SourceState], Awaitable[Collected]]


@functools.cache
def collectors() -> dict[str, Collector]:
    """Each kind's collector."""
    from aggregator.collectors import baidu, bilibili, douyin, feed, json_list, newsnow, toutiao, weibo, zhihu

    return {
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
            from aggregator.collectors import json_list

            json_list.validate_mapping(source, index)
