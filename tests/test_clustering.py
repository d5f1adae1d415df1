"""The same event on several sources becomes one story, end to end through the daemon."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import LoopbackServer
from tests.test_daemon import cli, query


def test_same_event_on_three_sources_is_one_story(tmp_path: Path, http_server: LoopbackServer) -> None:
    entries = []
    for name in ("weibo", "baidu", "toutiao"):
        http_server.serve_file(f"/api/s?id={name}&latest", f"cluster/{name}.json")
        entries.append(
            f'[[sources]]\nid = "{name}"\nkind = "newsnow"\nurl = "{http_server.url(f"/api/s?id={name}&latest")}"\n'
        )
    config = tmp_path / "settings.toml"
    config.write_text(f'[store]\ndata_dir = "{tmp_path / "data"}"\n' + "\n".join(entries), encoding="utf-8")
    done = cli("run", "--once", config=config)
    assert done.returncode == 0, done.stderr
    stories = query(
        tmp_path,
        "SELECT s.title, s.source_count, count(i.id) FROM stories s JOIN items i ON i.story_id = s.id "
        "GROUP BY s.id ORDER BY s.source_count DESC, s.title",
    )
    # Whichever source's poll committed first founded the story and gave it its title.
    assert stories[0][1:] == (3, 3)
    assert "某地暴雨致多条道路积水" in stories[0][0]
    # Hard negatives stay apart: another subject in the same template, another match result.
    assert all(count == 1 for _, count, _ in stories[1:])
    assert len(stories) == 6
    top = query(tmp_path, "SELECT position, score, source_count, sources FROM ranked_items ORDER BY position")
    assert top[0][1:] == (100.0, 3, "NewsNow 今日头条, NewsNow 微博, NewsNow 百度热搜")
    # Every item-story link agrees with source_count.
    check = query(
        tmp_path,
        "SELECT s.id FROM stories s WHERE s.source_count != "
        "(SELECT count(DISTINCT source_id) FROM items WHERE story_id = s.id)",
    )
    assert check == []
