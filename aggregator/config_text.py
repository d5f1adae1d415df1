"""The effective settings as a TOML document, for `aggregator config`.

What `run` would use: the settings file, the AGGREGATOR_<SECTION>__<KEY> variables and
the catalog's defaults for each source, every key of every section, and each source's
keys that differ from a source's defaults. Durations are written as durations ("10m").
Secrets are shown as "***": serve.token, a password in store.url or http.proxy, the
values of a source's headers and cookies. Read back as a settings file, the document
gives the same settings once the secrets are filled in again (until then the masked
serve.token is refused as too short, with the key named).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aggregator.checked import Section, is_marked
from aggregator.settings import CONFIG_ENV, ENV_PREFIX, Settings, parse_duration
from aggregator.store.engine import shown_url, sqlite_path

MASK = "***"
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_UNITS = (("d", 86400), ("h", 3600), ("m", 60))


def settings_toml(settings: Settings, environ: Mapping[str, str]) -> str:
    overrides = sorted(n for n in environ if n.startswith(ENV_PREFIX) and n != CONFIG_ENV and "__" in n)
    lines = [
        "# The settings `aggregator run` would use, from "
        + (settings.config_path or "the built-in defaults (no settings file found)"),
        "# environment overrides: " + (", ".join(overrides) or "none"),
        "# store: " + _store_place(settings.store.effective_url),
        f"# secrets are shown as {MASK}: serve.token, passwords in URLs, source headers and cookies",
    ]
    for name in Settings.hints():
        section = getattr(settings, name)
        if isinstance(section, Section):
            lines += ["", f"[{name}]"]
            lines += [f"{_key(k)} = {v}" for k, v in _values(name, section, everything=True)]
    for source in settings.sources:
        lines += ["", "[[sources]]"]
        lines += [f"{_key(k)} = {v}" for k, v in _values("sources", source, everything=False)]
    return "\n".join(lines) + "\n"


def _values(section: str, model: Section, everything: bool) -> list[tuple[str, str]]:
    """(key, TOML value) of `model`: all of them, or (a source) those not at their default."""
    out = []
    hints = model.hints()
    for field in dataclasses.fields(model):  # type: ignore[arg-type]
        key, value = field.name, getattr(model, field.name)
        if not everything and key not in ("id", "kind") and _same_as_default(field, value):
            continue
        out.append((key, _toml(_masked(section, key, value), is_marked(hints[key], parse_duration))))
    return out


def _same_as_default(field: dataclasses.Field[Any], value: object) -> bool:
    if field.default_factory is not dataclasses.MISSING:
        return bool(field.default_factory() == value)
    return field.default is not dataclasses.MISSING and bool(field.default == value)


def _masked(section: str, key: str, value: Any) -> Any:
    if section == "serve" and key == "token" and value:
        return MASK
    if section == "store" and key == "url" and value:
        return shown_url(value)
    if section == "http" and key == "proxy" and value:
        return _without_password(value)
    if section == "sources" and key in ("headers", "cookies"):
        return {k: MASK for k in value}
    return value


def _store_place(url: str) -> str:
    """Where the store is: a SQLite file's absolute path (relative ones are the working
    directory's), else the URL without its password."""
    path = sqlite_path(url)
    return f"{path.resolve()} (SQLite)" if path is not None else shown_url(url)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))


def _toml(value: Any, duration: bool = False) -> str:
    if duration and isinstance(value, float):
        return _string(_duration(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {type(value).__name__}")


def _string(text: str) -> str:
    # JSON's escapes are TOML's, but TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _duration(seconds: float) -> str:
    """90.0 → "90s", 5400.0 → "1h30m", 172800.0 → "2d", 0.5 → "0.5s" (parse_duration reads each back)."""
    if seconds == 0:
        return "0s"
    whole = int(seconds)
    parts = []
    rest: float = seconds
    if whole == seconds:
        for unit, size in _UNITS:
            if whole >= size:
                parts.append(f"{whole // size}{unit}")
                whole %= size
        rest = whole
    if rest:
        text = repr(rest)
        if "e" in text:  # parse_duration reads no exponent
            text = f"{rest:.20f}".rstrip("0").rstrip(".")
        parts.append(f"{text}s")
    return "".join(parts)
