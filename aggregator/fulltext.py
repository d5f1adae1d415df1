"""Full text of the top stories: fetch the linked page safely, extract Markdown, store it.

Runs as its own job (never inside a poll): the pages of the top `fulltext.top` stories'
representative items are fetched through the guarded fetch path plus an SSRF guard
(only http/https; the host's addresses and the address actually connected must be
public, unless `fulltext.allow_private` names them; checked on every redirect hop).
A failure is recorded on the item and retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from aggregator import ssrf
from aggregator.collectors.fetch import Fetcher, PeerCheck, UrlCheck, fetch
from aggregator.errors import CollectError, FetchError
from aggregator.extract import extract_markdown
from aggregator.settings import FulltextSettings
from aggregator.store import Store

log = logging.getLogger("aggregator.fulltext")

# Backoff of failed pages never grows beyond a day: articles rarely come back later.
MAX_RETRY_S = 86400.0


def url_guard(allow: Sequence[str]) -> tuple[UrlCheck, PeerCheck]:
    """The (check_url, check_peer) pair the fetch path calls on every hop."""

    async def check_url(url: str) -> None:
        ssrf.check_url(url, allow)
        host = urlsplit(url).hostname or ""
        if ssrf.parse_host_literal(host) is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise FetchError(f"DNS lookup of {host} failed: {exc}", kind="dns") from None
        for info in infos:
            ssrf.check_resolved(host, str(info[4][0]), allow)

    def check_peer(host: str, ip: str) -> None:
        ssrf.check_resolved(host, ip, allow)

    return check_url, check_peer


async def fetch_page(fetcher: Fetcher, url: str, settings: FulltextSettings) -> str | None:
    """Markdown of the page at `url`, or None when it has no extractable text."""
    check_url, check_peer = url_guard(settings.allow_private)
    response = await fetch(
        fetcher,
        url,
        headers={"Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5"},
        check_url=check_url,
        check_peer=check_peer,
        max_bytes=settings.max_bytes,
    )
    return await asyncio.to_thread(
        extract_markdown, response.body, url=response.url, content_type=response.headers.get("content-type")
    )


async def run_fulltext(
    store: Store, fetcher: Fetcher, settings: FulltextSettings, now: datetime, source_ids: Sequence[str]
) -> tuple[int, int]:
    """Fetch what is due among the top stories; returns (pages stored, failures)."""
    if not settings.enabled or settings.top <= 0 or not source_ids:
        return 0, 0
    due = await store.fulltext_due(now, settings.top, source_ids, settings.max_attempts)
    gate = asyncio.Semaphore(settings.concurrency)
    done = failed = 0

    async def one(item_id: int, url: str, attempts: int) -> None:
        nonlocal done, failed
        async with gate:
            try:
                content = await fetch_page(fetcher, url, settings)
            except CollectError as exc:
                failed += 1
                delay = min(settings.retry * 2**attempts, MAX_RETRY_S)
                await store.record_content(
                    item_id, "error", None, f"{exc.kind}: {exc}", now, now + timedelta(seconds=delay)
                )
                log.warning("full text of item %d failed (%s): %s: %s", item_id, url[:200], exc.kind, exc)
                return
            status = "ok" if content else "empty"
            await store.record_content(item_id, status, content, None, now, None)
            done += 1

    await asyncio.gather(*(one(item_id, url, attempts) for item_id, url, attempts in due))
    if due:
        log.info("full text: %d pages stored, %d failed", done, failed)
    return done, failed
