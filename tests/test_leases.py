"""Source and job leases in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aggregator.settings import SourceSettings
from aggregator.store import Store

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


async def store_with_source(store_url: str, interval: str) -> Store:
    """A store whose one source, "s", is polled every `interval`."""
    store = await Store.open(store_url)
    await store.sync_sources([SourceSettings(id="s", kind="newsnow", url="http://x", interval=interval)], T0)
    return store


async def lease_of_s(store: Store) -> dict[str, object]:
    return next(r for r in await store.sources_status() if r["id"] == "s")


async def test_one_instance_per_interval_and_leases_lapse(store_url: str) -> None:
    store = await store_with_source(store_url, "1m")
    try:
        due = T0 + timedelta(seconds=54)
        assert await store.claim_source("s", "a", T0, due) is True
        assert await store.claim_source("s", "b", T0 + timedelta(seconds=1), due) is False
        assert await store.claim_source("s", "a", T0 + timedelta(seconds=2), due) is False  # not due for a either
        assert await store.claim_source("s", "b", due, due + timedelta(seconds=54)) is True  # lapsed: b takes it
        await store.hold_source("s", "a", T0)  # a no longer holds it: nothing changes
        row = await lease_of_s(store)
        assert row["lease_owner"] == "b" and row["lease_until"] == due + timedelta(seconds=54)
    finally:
        await store.close()


async def test_a_shorter_interval_shortens_the_lease_never_lengthens_it(store_url: str) -> None:
    store = await store_with_source(store_url, "1h")
    try:
        held = T0 + timedelta(minutes=54)
        assert await store.claim_source("s", "a", T0, held) is True
        await store.shorten_lease("s", T0 + timedelta(hours=2))  # longer: left alone
        assert (await lease_of_s(store))["lease_until"] == held
        short = T0 + timedelta(seconds=2)
        await store.shorten_lease("s", short)
        assert (await lease_of_s(store))["lease_until"] == short
        # Whoever held it, the source is due again under the new interval.
        assert await store.claim_source("s", "b", short, short + timedelta(seconds=2)) is True
    finally:
        await store.close()


async def test_job_lease(store_url: str) -> None:
    store = await Store.open(store_url)
    try:
        until = T0 + timedelta(seconds=50)
        assert await store.claim_job("rescore", "a", T0, until) is True
        assert await store.claim_job("rescore", "b", T0 + timedelta(seconds=10), until) is False
        assert await store.claim_job("rescore", "a", T0 + timedelta(seconds=10), until) is True  # its own
        assert await store.claim_job("export", "b", T0, until) is True  # another job
        assert await store.claim_job("rescore", "b", until, until + timedelta(seconds=50)) is True
    finally:
        await store.close()
