"""`aggregator config`: the effective settings as a settings file, secrets masked."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aggregator.config_text import MASK, _duration
from aggregator.settings import load_settings, parse_duration, validate

SETTINGS = """
[store]
url = "postgresql://feeds:pg-s3cret@db.internal:5432/aggregator"
busy_timeout = "1m30s"

[http]
proxy = "http://me:proxy-s3cret@proxy.internal:3128"
timeout = 12.5

[serve]
token = "serve-s3cret-of-20-chars"

[score]
half_life = "3h"

[[sources]]
id = "zhihu"
kind = "newsnow"

[[sources]]
id = "mine"
kind = "feed"
name = "我的 \\"feed\\""
url = "https://example.org/feed.xml"
interval = "1h30m"
headers = { Authorization = "Bearer header-s3cret", "X-Client" = "aggregator" }
cookies = { sid = "cookie-s3cret" }
weight = 2.5
"""
ENV = {"AGGREGATOR_LOG__LEVEL": "DEBUG", "AGGREGATOR_DEDUPE__THRESHOLD": "0.6"}


def run_config(config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")} | ENV
    return subprocess.run(
        [sys.executable, "-m", "aggregator", "--config", str(config), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def masked(dump: dict[str, Any]) -> dict[str, Any]:
    dump["store"]["url"] = "postgresql://feeds:***@db.internal:5432/aggregator"
    dump["http"]["proxy"] = "http://me:***@proxy.internal:3128"
    dump["serve"]["token"] = MASK
    for source in dump["sources"]:
        source["headers"] = {k: MASK for k in source["headers"]}
        source["cookies"] = {k: MASK for k in source["cookies"]}
    dump.pop("config_path")
    return dump


def test_the_output_is_the_effective_settings_read_back_with_the_secrets_masked(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(SETTINGS, encoding="utf-8")
    done = run_config(config)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "s3cret" not in out
    assert f"from {config}" in out.splitlines()[0]
    assert out.splitlines()[1] == "# environment overrides: AGGREGATOR_DEDUPE__THRESHOLD, AGGREGATOR_LOG__LEVEL"
    assert out.splitlines()[2] == "# store: postgresql://feeds:***@db.internal:5432/aggregator"
    assert 'busy_timeout = "1m30s"' in out and 'interval = "1h30m"' in out and 'half_life = "3h"' in out
    # The catalog's defaults for zhihu are there, spelled out.
    zhihu = tomllib.loads(out)["sources"][0]
    assert zhihu["url"].endswith("/api/s?id=zhihu&latest") and zhihu["name"] == "知乎"

    effective = load_settings(str(config), environ=ENV)
    parsed = tomllib.loads(out)
    assert parsed["serve"]["token"] == MASK  # refused as it is: filled in again to read it back
    parsed["serve"]["token"] = "filled-in-again-0123456789"
    again = validate(parsed)
    assert again.log.level == "DEBUG" and again.dedupe.threshold == 0.6
    assert masked(dataclasses.asdict(again)) == masked(dataclasses.asdict(effective))


def test_the_header_says_where_a_sqlite_store_is(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('[store]\ndata_dir = "somewhere/data"\n', encoding="utf-8")
    done = run_config(config)  # in the test's working directory, which the relative path is under
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2] == f"# store: {Path.cwd() / 'somewhere/data/aggregator.db'} (SQLite)"


def test_wrong_settings_are_the_usual_exit_2_with_the_key(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('[daemon]\njitter = "soon"\n', encoding="utf-8")
    done = run_config(config)
    assert done.returncode == 2 and "daemon.jitter" in done.stderr and done.stdout == ""


@given(st.one_of(st.integers(0, 10**9).map(float), st.floats(0.001, 1e9, allow_nan=False)))
def test_a_duration_is_written_as_parse_duration_reads_it(seconds: float) -> None:
    assert parse_duration(_duration(seconds)) == seconds


def test_durations_read_as_people_write_them() -> None:
    assert [_duration(s) for s in (0.0, 30.0, 90.0, 5400.0, 86400.0, 93784.0, 0.5)] == [
        "0s",
        "30s",
        "1m30s",
        "1h30m",
        "1d",
        "1d2h3m4s",
        "0.5s",
    ]


def test_the_catalog_lists_every_known_entry_and_marks_those_configured(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(
        f'[store]\ndata_dir = "{tmp_path / "data"}"\n\n'
        '[[sources]]\nid = "zhihu-mirror"\nkind = "newsnow"\nnewsnow_id = "zhihu"\n\n'
        '[[sources]]\nid = "bili"\nkind = "bilibili"\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")}
    argv = [sys.executable, "-m", "aggregator", "--config", str(config), "sources", "--catalog"]
    table = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=True).stdout
    rows = json.loads(subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=60, env=env).stdout)
    catalog = tomllib.loads((Path(__file__).parents[1] / "seeds" / "sources.toml").read_text(encoding="utf-8"))
    assert [(r["kind"], r["id"]) for r in rows] == [("newsnow", k) for k in catalog["newsnow"]] + [
        (k, k) for k in catalog["native"]
    ]
    assert {(r["kind"], r["id"]) for r in rows if r["in_settings"]} == {("newsnow", "zhihu"), ("bilibili", "bilibili")}
    [weibo] = [r for r in rows if (r["kind"], r["id"]) == ("newsnow", "weibo")]
    assert weibo["interval_s"] == 120.0 and weibo["fulltext"] is False and weibo["name"] == "微博"
    assert len(table.splitlines()) == len(rows) + 2  # a note and the column names
    assert not (tmp_path / "data").exists()  # the store is not opened, let alone created
