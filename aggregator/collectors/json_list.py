"""Kind `json`: a hot list described in settings (items path, fields, URL template), no code.

[[sources]]
id = "example-hot"
kind = "json"
url = "https://example.com/api/hot"
items_path = "data.list"        # dots walk objects; a number indexes a list
title_field = "title"
url_field = "link"              # or url_template = "https://example.com/t/{id}"
heat_field = "stats.hot"
id_field = "id"
label_field = "tag"
"""

from __future__ import annotations

import string
from typing import Any

from aggregator.collectors.fetch import Fetcher, FetchResponse, collect_list, decode_json
from aggregator.errors import ConfigError, ParseError
from aggregator.models import Collected, RawItem, SourceState
from aggregator.settings import SourceSettings

_MISSING = object()


def _walk(value: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool) or value is _MISSING or value is None:
        return None
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def validate_mapping(source: SourceSettings, index: int) -> None:
    """Report a broken mapping at startup, naming the key."""
    where = f"sources[{index}](id={source.id})"
    if not source.items_path:
        raise ConfigError(f"{where}.items_path", "a json source needs items_path (e.g. 'data.list')")
    if not source.title_field:
        raise ConfigError(f"{where}.title_field", "a json source needs title_field")
    for key in ("items_path", "title_field", "url_field", "heat_field", "id_field", "label_field"):
        path = getattr(source, key)
        if path and any(not part for part in path.split(".")):
            raise ConfigError(f"{where}.{key}", f"{path!r} has an empty segment")
    if source.url_template:
        try:
            names = template_fields(source.url_template)
        except ValueError as exc:
            raise ConfigError(f"{where}.url_template", f"not a valid template: {exc}") from None
        if not names:
            raise ConfigError(f"{where}.url_template", "has no {field} placeholder")
        if any(not name or any(not p for p in name.split(".")) for name in names):
            raise ConfigError(f"{where}.url_template", "placeholders must be field paths such as {id}")


def parse(response: FetchResponse, source: SourceSettings) -> tuple[list[RawItem], int]:
    data = decode_json(response, f"the {source.id} JSON list")
    entries = _walk(data, source.items_path)
    if entries is _MISSING:
        raise ParseError(f"field {source.items_path!r} (items_path) is missing", kind="schema")
    if not isinstance(entries, list):
        raise ParseError(f"field {source.items_path!r} (items_path) is not a list", kind="schema")
    items: list[RawItem] = []
    dropped = 0
    for entry in entries:
        title = _scalar(_walk(entry, source.title_field))
        if not title:
            dropped += 1
            continue
        url = _scalar(_walk(entry, source.url_field)) if source.url_field else None
        if url is None and source.url_template:
            values = {name: _scalar(_walk(entry, name)) for name in template_fields(source.url_template)}
            if all(v is not None for v in values.values()):
                url = _format(source.url_template, values)
        heat = _walk(entry, source.heat_field) if source.heat_field else None
        items.append(
            RawItem(
                title=title,
                url=url,
                heat_raw=heat if isinstance(heat, (str, int, float)) and not isinstance(heat, bool) else None,
                native_id=_scalar(_walk(entry, source.id_field)) if source.id_field else None,
                label=_scalar(_walk(entry, source.label_field)) if source.label_field else None,
            )
        )
    if entries and not items:
        raise ParseError(f"none of the {len(entries)} entries has {source.title_field!r} (title_field)", kind="schema")
    return items, dropped


def _format(template: str, values: dict[str, str | None]) -> str:
    from urllib.parse import quote

    out = []
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        out.append(literal)
        if name is not None:
            out.append(quote(values[name] or "", safe=""))
    return "".join(out)


async def collect(fetcher: Fetcher, source: SourceSettings, state: SourceState) -> Collected:
    return await collect_list(
        fetcher,
        source,
        state,
        lambda response: parse(response, source),
        url=source.url,
        headers={"Accept": "application/json"},
    )
