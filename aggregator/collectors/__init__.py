"""Collectors: one module per kind, each an `async def collect(fetcher, source, state)`.

A collector fetches through `fetch.fetch` and returns `Collected` (RawItems in list
order), or raises FetchError / ParseError. COLLECTORS maps a source's `kind` to it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aggregator.collectors import feed, newsnow
from aggregator.models import Collected, SourceState
from aggregator.settings import SourceSettings

from .fetch import Fetcher

Collector = Callable[[Fetcher, SourceSettings, SourceState], Awaitable[Collected]]

COLLECTORS: dict[str, Collector] = {
    "newsnow": newsnow.collect,
    "feed": feed.collect,
}
