"""One poll's writes: every table right on SQLite and PostgreSQL, two statements on SQLite."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from aggregator.store import SourceUpdate, Store, poll_sqlite
from tests.test_store import T0, open_store, poll_write


class Statements:
    """The statements that reach the database driver (BEGIN and COMMIT are the transaction)."""

    def __init__(self, store: Store) -> None:
        self.sql: list[str] = []
        for engine in store.sync_engines:
            event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, sql: str, *_a: Any) -> None:
        if not sql.startswith("BEGIN"):
            self.sql.append(sql)

    def take(self) -> list[str]:
        out, self.sql = self.sql, []
        return out


async def test_a_poll_writes_each_table_and_sqlite_takes_two_statements(store_url: str) -> None:
    is_sqlite = store_url.startswith("sqlite")
    store = await open_store(store_url)
    try:
        seen = Statements(store)
        first = poll_write("weibo", ["甲", "乙", "丙"], T0)
        one = await store.record_poll(first)
        first_sql = seen.take()
        # zhihu: one new item that joins weibo's 甲, one of its own, and a new ETag, cookies
        # and a failure count reset, all in the same poll.
        at = T0 + timedelta(minutes=2)
        second = poll_write("zhihu", ["甲的后续", "丁"], at)
        joined = first.items[0].item_id
        update = SourceUpdate(
            consecutive_failures=0,
            next_attempt_at=at + timedelta(minutes=10),
            conditional=('"v2"', "Tue, 01 Dec 2026 08:02:00 GMT"),
            cookies={"sid": "1"},
        )
        two = await store.record_poll(
            dataclasses.replace(second, story_ids=[joined, second.items[1].item_id], source_update=update)
        )
        second_sql = seen.take()
        # weibo again: 乙 and 甲 known to the pipeline (not written), 戊 new.
        third = poll_write("weibo", ["乙", "甲", "戊"], at)
        three = await store.record_poll(dataclasses.replace(third, upsert=[False, False, True]))
        third_sql = seen.take()
        if is_sqlite:
            for sql in (first_sql, second_sql, third_sql):
                assert len(sql) == 2, sql
                assert sql[0].startswith("INSERT INTO poll_results") and sql[1].startswith("INSERT INTO poll_entries")
        assert (one.new_count, two.new_count, three.new_count) == (3, 2, 1)
        assert two.stories == {second.items[0].item_id: joined, second.items[1].item_id: second.items[1].item_id}
        async with store.engine.connect() as conn:
            polls = (
                await conn.execute(sa.text("SELECT id, source_id, item_count, new_count FROM polls ORDER BY id"))
            ).all()
            assert [tuple(p) for p in polls] == [
                (one.poll_id, "weibo", 3, 3),
                (two.poll_id, "zhihu", 2, 2),
                (three.poll_id, "weibo", 3, 1),
            ]
            obs = (
                await conn.execute(
                    sa.text(
                        "SELECT poll_id, i.title, rank FROM observations o JOIN items i ON i.id = o.item_id"
                        " ORDER BY poll_id, rank"
                    )
                )
            ).all()
            assert [tuple(o) for o in obs] == [
                (one.poll_id, "甲", 1),
                (one.poll_id, "乙", 2),
                (one.poll_id, "丙", 3),
                (two.poll_id, "甲的后续", 1),
                (two.poll_id, "丁", 2),
                (three.poll_id, "乙", 1),
                (three.poll_id, "甲", 2),
                (three.poll_id, "戊", 3),
            ]
            assert (await conn.execute(sa.text("SELECT count(*) FROM items"))).scalar_one() == 6
            story = (
                await conn.execute(sa.text("SELECT source_count, title FROM stories WHERE id = :id"), {"id": joined})
            ).one()
            assert tuple(story) == (2, "甲")
            assert (await conn.execute(sa.text("SELECT count(*) FROM stories"))).scalar_one() == 5
            src = (
                await conn.execute(
                    sa.text("SELECT etag, last_modified, cookies, consecutive_failures FROM sources WHERE id = 'zhihu'")
                )
            ).one()
            assert tuple(src) == ('"v2"', "Tue, 01 Dec 2026 08:02:00 GMT", '{"sid": "1"}', 0)
            untouched = (await conn.execute(sa.text("SELECT etag, cookies FROM sources WHERE id = 'weibo'"))).one()
            assert tuple(untouched) == (None, None)
    finally:
        await store.close()


async def test_an_item_stored_before_keeps_its_story_and_is_not_counted_new(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        first = poll_write("weibo", ["甲", "乙"], T0)
        await store.record_poll(first)
        # The pipeline lost its memory (a restart past the window): it proposes 乙 into 丙's story.
        again = poll_write("weibo", ["乙", "丙"], T0 + timedelta(minutes=2))
        c_story = again.items[1].item_id
        written = await store.record_poll(dataclasses.replace(again, story_ids=[c_story, c_story]))
        b = again.items[0].item_id
        assert written.new_count == 1
        assert written.stories == {b: b, c_story: c_story}
        async with store.engine.connect() as conn:
            new_count = (
                await conn.execute(sa.text("SELECT new_count FROM polls WHERE id = :id"), {"id": written.poll_id})
            ).scalar_one()
            assert new_count == 1
            b_story = (await conn.execute(sa.text("SELECT story_id FROM items WHERE id = :id"), {"id": b})).scalar_one()
            assert b_story == b
    finally:
        await store.close()


async def test_a_long_poll_spans_several_entry_statements(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(poll_sqlite, "ENTRIES_PER_STATEMENT", 4)
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'aggregator.db'}")
    try:
        seen = Statements(store)
        titles = [f"条目{i}" for i in range(10)]
        written = await store.record_poll(poll_write("weibo", titles, T0))
        assert [s.split(" (")[0] for s in seen.take()] == ["INSERT INTO poll_results"] + [
            "INSERT INTO poll_entries"
        ] * 3
        assert written.new_count == 10
        async with store.engine.connect() as conn:
            ranks = (await conn.execute(sa.text("SELECT rank FROM observations ORDER BY rank"))).scalars().all()
            assert ranks == list(range(1, 11))
    finally:
        await store.close()


async def test_the_write_views_are_the_writer_connection_s_own(tmp_path: Any) -> None:
    """Nothing of them is in the file: a user's sqlite3 and the migrations never see them."""
    path = tmp_path / "aggregator.db"
    store = await open_store(f"sqlite+aiosqlite:///{path}")
    try:
        await store.record_poll(poll_write("weibo", ["甲"], T0))
        con = sqlite3.connect(path)
        try:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
            assert "poll_entries" not in names and "poll_results" not in names
            assert {"polls", "items", "observations"} <= names
            with pytest.raises(sqlite3.OperationalError, match="no such table: poll_entries"):
                con.execute("INSERT INTO poll_entries (poll_id) VALUES (1)")
        finally:
            con.close()
    finally:
        await store.close()
