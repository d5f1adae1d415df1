"""The store on a real SQLite file and on the local PostgreSQL server."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from aggregator.errors import StoreError
from aggregator.models import RawItem
from aggregator.normalize import normalize_items
from aggregator.score import score_all
from aggregator.settings import ScoreSettings, SourceSettings
from aggregator.store import SCORE_FLOOR, PollWrite, SourceUpdate, Store
from aggregator.store.schema import metadata

T0 = datetime(2026, 12, 1, 8, 0, 0, tzinfo=UTC)
SOURCES = [
    SourceSettings(id="weibo", kind="newsnow", name="微博", interval="2m", url="http://x/weibo"),
    SourceSettings(id="zhihu", kind="newsnow", name="知乎", interval="10m", url="http://x/zhihu"),
]


def poll_write(source_id: str, titles: list[str], at: datetime, heats: list[str | None] | None = None) -> PollWrite:
    raw = [
        RawItem(title=t, url=f"https://e.example/{source_id}/{t}", heat_raw=(heats or [None] * len(titles))[i])
        for i, t in enumerate(titles)
    ]
    items, dropped = normalize_items(source_id, raw)
    return PollWrite(
        source_id,
        at - timedelta(seconds=1),
        at,
        "ok",
        200,
        items,
        [i.item_id for i in items],
        [True] * len(items),
        dropped,
    )


async def open_store(url: str) -> Store:
    store = await Store.open(url)
    await store.sync_sources(SOURCES, T0)
    return store


async def test_migrations_match_models(store_url: str) -> None:
    store = await Store.open(store_url)
    try:
        async with store.engine.connect() as conn:

            def diff(sync_conn: sa.Connection) -> list[object]:
                ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
                return list(compare_metadata(ctx, metadata))

            assert await conn.run_sync(diff) == []
            views = await conn.run_sync(lambda c: set(sa.inspect(c).get_view_names()))
            assert {"ranked_items", "latest_lists"} <= views
    finally:
        await store.close()


async def test_second_poll_adds_observations_not_items(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        one = await store.record_poll(poll_write("weibo", ["甲", "乙", "丙"], T0))
        # The pipeline knows these items now; even one it did not know is recognised as old.
        w2 = poll_write("weibo", ["丙", "甲", "乙"], T0 + timedelta(minutes=2))
        two = await store.record_poll(dataclasses.replace(w2, upsert=[True, False, False]))
        first, second = one.poll_id, two.poll_id
        assert (one.new_count, two.new_count) == (3, 0)
        await store.rescore(T0 + timedelta(minutes=3), ScoreSettings())
        async with store.engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT count(*) FROM items"))).scalar_one() == 3
            assert (await conn.execute(sa.text("SELECT count(*) FROM observations"))).scalar_one() == 6
            assert (await conn.execute(sa.text("SELECT count(*) FROM stories"))).scalar_one() == 3
            rows = (
                await conn.execute(
                    sa.text("SELECT rank, title, poll_id FROM latest_lists WHERE source_id = 'weibo' ORDER BY rank")
                )
            ).all()
            assert [(r.rank, r.title) for r in rows] == [(1, "丙"), (2, "甲"), (3, "乙")]
            assert {r.poll_id for r in rows} == {second}
            best = (await conn.execute(sa.text("SELECT title, best_rank, last_rank FROM items ORDER BY title"))).all()
            assert {(r.title, r.best_rank, r.last_rank) for r in best} == {("丙", 1, 1), ("甲", 1, 2), ("乙", 2, 3)}
            src = (
                await conn.execute(sa.text("SELECT consecutive_failures, last_error FROM sources WHERE id = 'weibo'"))
            ).one()
            assert src.consecutive_failures == 0 and src.last_error is None
        assert first < second
    finally:
        await store.close()


async def test_a_batch_of_new_and_stored_items_keeps_the_stored_story(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        one = await store.record_poll(poll_write("weibo", ["甲", "乙"], T0))
        # After a restart the pipeline knows neither 乙 nor 丁 and proposes stories for both:
        # 乙 is stored already and keeps its story, 丁 is new.
        w2 = poll_write("weibo", ["乙", "丁"], T0 + timedelta(minutes=2))
        proposed = [w2.items[1].item_id, w2.items[1].item_id]  # both into 丁's new story
        two = await store.record_poll(dataclasses.replace(w2, story_ids=proposed))
        stored_b = one.stories[w2.items[0].item_id]
        assert stored_b == w2.items[0].item_id
        assert two.new_count == 1
        assert two.stories == {w2.items[0].item_id: stored_b, w2.items[1].item_id: w2.items[1].item_id}
        async with store.engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT title, story_id FROM items ORDER BY title"))).all()
            by_title = {r.title: r.story_id for r in rows}
            assert by_title["乙"] == stored_b and by_title["丁"] == w2.items[1].item_id
            assert (await conn.execute(sa.text("SELECT count(*) FROM items"))).scalar_one() == 3
            polls = (await conn.execute(sa.text("SELECT id, new_count FROM polls ORDER BY id"))).all()
            assert [(p.id, p.new_count) for p in polls] == [(one.poll_id, 2), (two.poll_id, 1)]
    finally:
        await store.close()


async def test_failed_poll_keeps_the_previous_list(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        good = (await store.record_poll(poll_write("zhihu", ["问一", "问二"], T0))).poll_id
        at = T0 + timedelta(minutes=10)
        bad = PollWrite(
            "zhihu",
            at,
            at,
            "error",
            500,
            error_kind="http_5xx",
            error="HTTP 500 Internal Server Error",
            source_update=SourceUpdate(
                consecutive_failures=1, error_kind="http_5xx", error="HTTP 500 Internal Server Error", failed_at=at
            ),
        )
        await store.record_poll(bad)
        async with store.engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT poll_id FROM latest_lists WHERE source_id='zhihu'"))).all()
            assert {r.poll_id for r in rows} == {good}
            src = (
                await conn.execute(
                    sa.text("SELECT consecutive_failures, last_error_kind, last_error FROM sources WHERE id='zhihu'")
                )
            ).one()
            assert tuple(src) == (1, "http_5xx", "HTTP 500 Internal Server Error")
    finally:
        await store.close()


async def test_a_source_whose_url_changed_starts_afresh(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        at = T0 + timedelta(minutes=2)
        for source_id in ("weibo", "zhihu"):
            failed = PollWrite(
                source_id,
                at,
                at,
                "error",
                503,
                error_kind="http_5xx",
                error="HTTP 503",
                source_update=SourceUpdate(
                    consecutive_failures=3,
                    next_attempt_at=at + timedelta(hours=1),
                    conditional=('"v1"', "Tue, 01 Dec 2026 08:00:00 GMT"),
                    cookies={"sid": "old-site"},
                ),
            )
            await store.record_poll(failed)
            assert await store.claim_source(source_id, "vm:1", at, at + timedelta(minutes=1))
        # zhihu moves to another address; weibo's row is written again as it is.
        moved = [SOURCES[0], dataclasses.replace(SOURCES[1], url="http://mirror/zhihu")]
        assert await store.sync_sources(moved, at) == ["zhihu"]
        states = await store.source_states()
        assert states["weibo"][0].etag == '"v1"' and states["weibo"][0].cookies == {"sid": "old-site"}
        assert states["weibo"][2] == 3
        zhihu, _last, failures = states["zhihu"]
        assert (zhihu.etag, zhihu.last_modified, zhihu.cookies, failures) == (None, None, {}, 0)
        async with store.engine.connect() as conn:
            rows = (
                await conn.execute(sa.text("SELECT id, url, next_attempt_at, lease_until FROM sources ORDER BY id"))
            ).all()
        assert [(r.id, r.url, r.next_attempt_at is None, r.lease_until is None) for r in rows] == [
            ("weibo", "http://x/weibo", False, False),
            ("zhihu", "http://mirror/zhihu", True, True),
        ]
    finally:
        await store.close()


async def test_rescore_stores_the_heats_and_scores_explain_computes(store_url: str) -> None:
    """`rescore` scores story by story as it reads; `explain` holds every story's terms. They agree."""
    store = await open_store(store_url)
    try:
        weibo = poll_write("weibo", ["甲", "乙", "丙", "丁"], T0, heats=["500万", "90万", None, "3万"])
        await store.record_poll(weibo)
        shared = weibo.items[0].item_id  # zhihu's first item joins weibo's 甲
        zhihu = poll_write("zhihu", ["甲的后续", "戊"], T0, heats=["800万", "1万"])
        await store.record_poll(dataclasses.replace(zhihu, story_ids=[shared, zhihu.items[1].item_id]))
        await store.record_poll(poll_write("weibo", ["乙", "甲", "己"], T0 + timedelta(minutes=2)))
        # Three minutes on: 甲 is on both lists, 丙 and 丁 are off. Thirty hours on: every list is stale.
        for now, listed in ((T0 + timedelta(minutes=3), 4), (T0 + timedelta(hours=30), 0)):
            heats = await store.story_heats(now, ScoreSettings())
            assert sum(h.on_list for h in heats.values()) == listed
            if listed:
                assert [t.source_id for t in heats[shared].terms] == ["zhihu", "weibo"]
            expected = score_all(heats).scores
            for sid, h in heats.items():
                if not h.on_list and expected[sid] < SCORE_FLOOR:
                    expected[sid] = 0.0
            assert await store.rescore(now, ScoreSettings()) == len(heats) == 6
            async with store.engine.connect() as conn:
                rows = (await conn.execute(sa.text("SELECT id, heat, score FROM stories"))).all()
            stored = {r.id: (r.heat, r.score) for r in rows}
            assert stored == {sid: (pytest.approx(h.heat, rel=1e-12), expected[sid]) for sid, h in heats.items()}
            assert max(score for _, score in stored.values()) == 100.0
    finally:
        await store.close()


async def test_ranked_items_ordered_with_top_100(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        await store.record_poll(poll_write("weibo", ["一", "二", "三", "四"], T0))
        await store.record_poll(poll_write("zhihu", ["五", "六"], T0, heats=["900万", "10万"]))
        assert await store.rescore(T0 + timedelta(seconds=30), ScoreSettings()) == 6
        rows = await store.top(10)
        scores = [r["score"] for r in rows]
        assert scores[0] == 100.0
        assert scores == sorted(scores, reverse=True)
        assert [r["position"] for r in rows] == list(range(1, len(rows) + 1))
        assert all(0 < s <= 100 for s in scores)
        by_title = {r["title"]: r for r in rows}
        assert by_title["一"]["score"] > by_title["四"]["score"]
        assert by_title["一"]["source"] == "NewsNow 微博" and by_title["一"]["sources"] == "NewsNow 微博"
        assert by_title["一"]["source_count"] == 1
        only_zhihu = await store.top(10, "zhihu")
        assert {r["title"] for r in only_zhihu} == {"五", "六"}
    finally:
        await store.close()


async def test_the_top_rows_are_the_leading_positions_whichever_query_gives_them(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aggregator.store import _leading_positions

    store = await open_store(store_url)
    try:
        await store.record_poll(poll_write("weibo", [f"标题{n}" for n in range(12)], T0))
        await store.record_poll(poll_write("zhihu", ["甲", "乙"], T0, heats=["900万", "10万"]))
        await store.rescore(T0 + timedelta(seconds=30), ScoreSettings())
        async with store.engine.connect() as conn:
            view = (await conn.execute(sa.text("SELECT story_id, position FROM ranked_items"))).all()
            # Rows that cannot be the leading ones (position 1 filtered out) take the ordered query.
            rest = await _leading_positions(conn, "SELECT * FROM ({ranked}) r WHERE r.position > 1", 5)
        expected = sorted(view, key=lambda r: r.position)
        assert [r.position for r in rest] == [2, 3, 4, 5]
        top = await store.top(5)
        assert [(r["story_id"], r["position"]) for r in top] == [tuple(r) for r in expected[:5]]
        assert [r["story_id"] for r in await store.top(100)] == [r.story_id for r in expected]
        exported = await store.export_rows(3)
        assert [r["story_id"] for r in exported] == [r.story_id for r in expected[:3]]
        # One source's stories: from the first positions when they hold the answer, else
        # from the whole view; the same rows either way.
        import aggregator.store as store_module

        async with store.engine.connect() as conn:
            weibo = {r[0] for r in await conn.execute(sa.text("SELECT story_id FROM items WHERE source_id = 'weibo'"))}
        want = [r.story_id for r in expected if r.story_id in weibo]
        for prefix in (1000, 3, 1):
            monkeypatch.setattr(store_module, "RANKED_PREFIX", prefix)
            for limit in (1, 5, 20):
                assert [r["story_id"] for r in await store.top(limit, "weibo")] == want[:limit], (prefix, limit)
    finally:
        await store.close()


async def test_search_finds_every_word_literally_and_newest_first(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store(store_url)
    try:
        await store.record_poll(poll_write("weibo", ["iPhone 18 发布", "100% 中签", "暴雨 北京"], T0))
        await store.record_poll(poll_write("zhihu", ["北京 暴雨 预警", "1000 中签"], T0 + timedelta(minutes=1)))
        await store.rescore(T0 + timedelta(minutes=2), ScoreSettings())
        found = await store.search([["暴雨"], ["北京"]], 10)
        # Both wordings, newest story first; every word must be in the same title.
        assert [r["title"] for r in found] == ["北京 暴雨 预警", "暴雨 北京"]
        assert found[0]["sources"] == [{"source_id": "zhihu", "best_rank": 1}]
        assert found[1]["sources"] == [{"source_id": "weibo", "best_rank": 3}]
        assert all(isinstance(r["position"], int) for r in found)
        assert found[0]["url"] == "https://e.example/zhihu/北京 暴雨 预警"
        assert [r["title"] for r in await store.search([["暴雨"], ["上海"]], 10)] == []
        # Case-insensitive for ASCII; % is a character, not a wildcard.
        assert [r["title"] for r in await store.search([["IPHONE"]], 10)] == ["iPhone 18 发布"]
        assert [r["title"] for r in await store.search([["0%"]], 10)] == ["100% 中签"]
        assert [r["title"] for r in await store.search([["中签"]], 1)] == ["1000 中签"]
        assert [r["title"] for r in await store.search([["暴雨"]], 10, "weibo")] == ["暴雨 北京"]
        # Any spelling of a term matches.
        assert len(await store.search([["nothing", "暴雨"]], 10)) == 2
        # Positions come from the first rows of the view, or from the view by id when the
        # story is further down: the same either way.
        import aggregator.store as store_module

        first = {r["story_id"]: r["position"] for r in await store.search([["中签"]], 10)}
        assert len(first) == 2 and max(first.values()) > 1  # so one read of 1 row cannot hold both
        monkeypatch.setattr(store_module, "RANKED_PREFIX", 1)
        assert {r["story_id"]: r["position"] for r in await store.search([["中签"]], 10)} == first
    finally:
        await store.close()


async def test_positions_by_id_are_the_views_positions(store_url: str) -> None:
    """search's positions (store._positions) number the stories as ranked_items does: the
    same order, ties included, and the same rows (a story whose item is gone is not ranked)."""
    from aggregator.store import _positions

    store = await open_store(store_url)
    try:
        await store.record_poll(poll_write("weibo", [f"微博 {i}" for i in range(30)], T0))
        await store.record_poll(poll_write("zhihu", [f"知乎 {i}" for i in range(30)], T0))
        await store.rescore(T0 + timedelta(minutes=1), ScoreSettings())
        async with store.engine.begin() as conn:
            # Ties on score and heat (the id decides), and a story whose item no longer exists.
            ids = [r[0] for r in await conn.execute(sa.text("SELECT id FROM stories ORDER BY id LIMIT 6"))]
            await conn.execute(
                sa.text("UPDATE stories SET score = 50.0, heat = 1.0 WHERE id IN :ids").bindparams(
                    sa.bindparam("ids", expanding=True)
                ),
                {"ids": ids[:5]},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO stories (id, title, item_id, first_seen_at, last_seen_at, source_count, heat, score) "
                    "SELECT 1, 'orphan', -1, first_seen_at, last_seen_at, 1, 99.0, 99.0 FROM stories WHERE id = :id"
                ),
                {"id": ids[5]},
            )
        async with store.engine.connect() as conn:
            view = {
                int(r.story_id): int(r.position)
                for r in await conn.execute(sa.text("SELECT story_id, position FROM ranked_items"))
            }
            every = [r[0] for r in await conn.execute(sa.text("SELECT id FROM stories"))]
            assert 1 in every and 1 not in view and len(view) == 60
            assert await _positions(conn, every) == view
            assert await _positions(conn, ids[:2]) == {i: view[i] for i in ids[:2]}
    finally:
        await store.close()


async def test_rescore_reads_from_the_latest_lists_not_from_every_item(tmp_path: Path) -> None:
    """SQLite's plan for rescore's read: the latest lists first, sorted afterwards. Ordered by
    the story column as it is, SQLite walks every item by its story index and looks up the
    lists for each (5.6 s instead of 0.08 s on the ingest benchmark's database)."""
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    try:
        await store.record_poll(poll_write("weibo", ["一", "二"], T0))
        _, rows = store._current_queries(T0)
        sql = str(rows.compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True}))
    finally:
        await store.close()
    plan = [r[3] for r in sqlite3.connect(tmp_path / "a.db").execute(f"EXPLAIN QUERY PLAN {sql}")]
    assert plan[0] == "SCAN sources", plan
    assert not any(step.startswith("SCAN items") for step in plan), plan
    assert "USE TEMP B-TREE FOR ORDER BY" in plan


async def test_sqlite_times_are_datetime_text(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    store = await open_store(url)
    try:
        await store.record_poll(poll_write("weibo", ["一"], T0))
    finally:
        await store.close()
    db = sqlite3.connect(tmp_path / "a.db")
    row = db.execute(
        "SELECT collected_at, datetime(collected_at), collected_at > datetime('2026-12-01 07:59:59') FROM observations"
    ).fetchone()
    assert row == ("2026-12-01 08:00:00", "2026-12-01 08:00:00", 1)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_refuses_a_database_that_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not an aggregator database"):
        await Store.open(f"sqlite+aiosqlite:///{path}")
    assert path.read_bytes() == before


async def test_refuses_a_newer_database(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    store = await Store.open(url)
    await store.close()
    db = sqlite3.connect(tmp_path / "a.db")
    db.execute("UPDATE alembic_version SET version_num = '9999'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer version"):
        await Store.open(url)


def test_logs_show_store_urls_without_their_password() -> None:
    from aggregator.store.engine import shown_url

    shown = shown_url("postgresql+asyncpg://feeds:s3cret@db.internal:5432/aggregator")
    assert shown == "postgresql+asyncpg://feeds:***@db.internal:5432/aggregator"
    assert shown_url("sqlite+aiosqlite:////data/aggregator.db") == "sqlite+aiosqlite:////data/aggregator.db"
