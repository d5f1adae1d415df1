"""Kind `json`: a declarative mapping in settings, served by the loopback server."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.collectors import json_list, validate_sources
from aggregator.collectors.fetch import make_fetcher
from aggregator.errors import ConfigError, ParseError
from aggregator.models import SourceState
from aggregator.normalize import normalize_items
from aggregator.settings import HttpSettings, SourceSettings, validate
from tests.conftest import LoopbackServer


def mapping(url: str, **extra: str) -> SourceSettings:
    fields = dict(
        items_path="data.list",
        title_field="title",
        url_field="link",
        heat_field="stats.hot",
        id_field="id",
        label_field="tag",
        url_template="https://example.org/t/{id}",
    )
    fields.update(extra)
    return SourceSettings(id="j", kind="json", url=url, interval="5m", **fields)  # type: ignore[arg-type]


async def test_mapping_reads_fields_and_builds_urls(http_server: LoopbackServer) -> None:
    url = http_server.serve_file("/hot", "json/hot.json")
    fetcher = make_fetcher(HttpSettings())
    try:
        got = await json_list.collect(fetcher, mapping(url), SourceState())
    finally:
        await fetcher.aclose()
    assert got.dropped_count == 1  # the entry without a title
    items, _ = normalize_items("j", got.items)
    assert [(i.rank, i.title, i.url, i.heat, i.native_id, i.label) for i in items] == [
        (1, "第一条 & 热点", "https://example.org/t/101", 125_000.0, "101", "热"),
        (2, "第二条", "https://example.org/p/102?from=hot", 9800.0, "102", None),
        (3, "第四条", "https://example.org/t/a%20b", None, "a b", None),
    ]


async def test_renamed_items_path_fails_naming_it(http_server: LoopbackServer) -> None:
    url = http_server.serve_file("/hot", "json/hot.json")
    fetcher = make_fetcher(HttpSettings())
    try:
        with pytest.raises(ParseError, match=r"'data\.items' \(items_path\) is missing"):
            await json_list.collect(fetcher, mapping(url, items_path="data.items"), SourceState())
    finally:
        await fetcher.aclose()


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"items_path": ""}, "items_path"),
        ({"title_field": ""}, "title_field"),
        ({"heat_field": "stats..hot"}, "heat_field"),
        ({"url_template": "https://x/{"}, "url_template"),
        ({"url_template": "https://x/static"}, "url_template"),
    ],
)
def test_invalid_mappings_are_reported_at_startup(extra: dict[str, str], key: str) -> None:
    source = {"id": "j", "kind": "json", "url": "http://x", "items_path": "data.list", "title_field": "t", **extra}
    settings = validate({"sources": [source]})
    with pytest.raises(ConfigError) as info:
        validate_sources(settings)
    assert info.value.key == f"sources[0](id=j).{key}"


def test_mapping_keys_only_for_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="items_path only apply to kind"):
        validate({"sources": [{"id": "n", "kind": "newsnow", "items_path": "x"}]})
