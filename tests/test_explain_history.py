"""`explain`, `history` and the trend signals of `top`, on stories collected through the daemon."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import DATA, LoopbackServer
from tests.test_daemon import cli, query

pytestmark = pytest.mark.usefixtures("premigrated")


def three_sources(tmp_path: Path, server: LoopbackServer) -> Path:
    entries = []
    for name in ("weibo", "baidu", "toutiao"):
        server.serve_file(f"/api/s?id={name}&latest", f"cluster/{name}.json")
        url = server.url(f"/api/s?id={name}&latest")
        entries.append(f'[[sources]]\nid = "{name}"\nkind = "newsnow"\nurl = "{url}"\n')
    config = tmp_path / "settings.toml"
    config.write_text(f'[store]\ndata_dir = "{tmp_path / "data"}"\n' + "\n".join(entries), encoding="utf-8")
    return config


def test_explain_terms_add_up_to_the_score(tmp_path: Path, http_server: LoopbackServer) -> None:
    config = three_sources(tmp_path, http_server)
    assert cli("run", "--once", config=config).returncode == 0
    for story_id, score in query(tmp_path, "SELECT story_id, score FROM ranked_items"):
        done = cli("explain", str(story_id), config=config)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        terms = [float(line.split()[-1]) for line in lines[2:] if re.match(r"\s+\S+\s+\d+\s+\d+\s", line)]
        bonus = float(next(line for line in lines if "persistence bonus" in line).split()[-1])
        heat = float(next(line for line in lines if line.strip().startswith("heat ")).split()[-1])
        assert abs(sum(terms) + bonus - heat) < 0.002
        shown = float(lines[-1].rsplit("=", 1)[1])
        assert shown == score


def test_explain_accepts_an_item_key_and_refuses_unknown(tmp_path: Path, http_server: LoopbackServer) -> None:
    config = three_sources(tmp_path, http_server)
    assert cli("run", "--once", config=config).returncode == 0
    ((key, story_id),) = query(tmp_path, "SELECT item_key, story_id FROM ranked_items WHERE position = 1")
    done = cli("explain", key, config=config)
    assert done.returncode == 0 and f"story {story_id}:" in done.stdout
    missing = cli("explain", "999", config=config)
    assert missing.returncode == 2 and "no story or item '999'" in missing.stderr


def test_history_and_rising_marker(tmp_path: Path, http_server: LoopbackServer) -> None:
    config = three_sources(tmp_path, http_server)
    assert cli("run", "--once", config=config).returncode == 0
    payload = json.loads((DATA / "cluster/weibo.json").read_text(encoding="utf-8"))
    payload["items"] = [payload["items"][i] for i in (2, 0, 1)]  # 国足 climbs from 3 to 1
    http_server.route("/api/s?id=weibo&latest", json.dumps(payload, ensure_ascii=False))
    assert cli("run", "--once", "--source", "weibo", config=config).returncode == 0
    ((story_id,),) = query(tmp_path, "SELECT story_id FROM items WHERE title = '国足1比0战胜对手'")
    done = cli("history", str(story_id), config=config)
    assert done.returncode == 0, done.stderr
    assert re.search(r"weibo\s+2 polls\s+best\s+1\s+now\s+1", done.stdout)
    # One history row per story per second: two runs within a second keep the first.
    assert re.search(r"热度 over time \([12] rescorings", done.stdout)
    top = json.loads(cli("top", "--json", config=config).stdout)
    row = next(r for r in top if r["story_id"] == story_id)
    assert row["ranks"] == [
        {"source_id": "weibo", "source": "NewsNow 微博", "rank": 1, "previous_rank": 3, "best_rank": 1}
    ]
    assert row["rising"] is True and row["velocity"] > 0
    fallen = next(r for r in top if r["title"] == "故宫回应门票涨价传闻")
    assert fallen["rising"] is False
    table = cli("top", config=config).stdout
    assert re.search(r"↑\s+国足1比0战胜对手\s+weibo#1", table)


def test_search_shows_stories_across_platforms(tmp_path: Path, http_server: LoopbackServer) -> None:
    config = three_sources(tmp_path, http_server)
    assert cli("run", "--once", config=config).returncode == 0
    found = json.loads(cli("search", "暴雨", "积水", "--json", config=config).stdout)
    ((story_id,),) = query(tmp_path, "SELECT DISTINCT story_id FROM items WHERE title LIKE '%暴雨%'")
    assert [r["story_id"] for r in found] == [story_id]
    assert sorted(s["source_id"] for s in found[0]["sources"]) == ["baidu", "toutiao", "weibo"]
    assert found[0]["last_seen_at"].endswith("+00:00") and found[0]["position"] >= 1
    table = cli("search", "国足", config=config)
    assert table.returncode == 0
    assert re.search(r"国足1比0战胜对手\s+weibo#3", table.stdout) and "国足0比2不敌对手" in table.stdout
    # Full-width digits as typed find the ASCII ones stored.
    wide = json.loads(cli("search", "国足１比０", "--json", config=config).stdout)
    assert [r["title"] for r in wide] == ["国足1比0战胜对手"]
    assert "no story has a title with '火星'" in cli("search", "火星", config=config).stdout
    typo = cli("search", "国足", "--source", "weibo2", config=config)
    assert typo.returncode == 2 and "no source 'weibo2'" in typo.stderr
    empty = cli("search", " ", config=config)
    assert empty.returncode == 2 and "TEXT" in empty.stderr
