"""Settings: settings.toml, environment overrides and validation into frozen models.

Lookup order: `--config PATH`, `$AGGREGATOR_CONFIG`, `./settings.toml`, built-in
defaults. `AGGREGATOR_<SECTION>__<KEY>=value` overrides one key (the value is read as a
TOML literal when it is one, else as a string). Every problem is a ConfigError naming
the key; nothing is written before settings are valid.

Each section is a frozen dataclass checked as it is built (`aggregator.checked`): every
bad key is reported with its location, unknown keys are refused, types are converted.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aggregator.checked import Bound, Parse, Problems, Section
from aggregator.errors import ConfigError
from aggregator.resources import seeds_dir

ENV_PREFIX = "AGGREGATOR_"
CONFIG_ENV = "AGGREGATOR_CONFIG"

KINDS = ("newsnow", "feed", "json", "weibo", "zhihu", "baidu", "toutiao", "douyin", "bilibili")
NATIVE_KINDS = ("weibo", "zhihu", "baidu", "toutiao", "douyin", "bilibili")
JSON_MAPPING_KEYS = ("items_path", "title_field", "url_field", "heat_field", "id_field", "label_field", "url_template")

# Per-kind interval when neither the entry nor the catalog gives one: hot lists move in
# minutes, feeds in tens of minutes.
DEFAULT_INTERVAL_S = {"newsnow": 600.0, "feed": 1800.0, "json": 600.0}
NATIVE_DEFAULT_INTERVAL_S = 600.0

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: object) -> float:
    """'90s', '2m', '1h30m', '7d' or a number of seconds → seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '90s', '10m', '6h' or '7d'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if not text:
            raise ValueError("empty duration")
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_S[match.group(2)]
            pos = match.end()
        if pos != len(text):
            raise ValueError(f"{value!r} is not a duration such as '90s', '10m', '6h' or '7d'")
    else:
        raise ValueError("expected a duration such as '90s', '10m', '6h' or '7d'")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, Parse(parse_duration)]


def _zone(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a time zone name such as 'Asia/Shanghai'")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value


def _store_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a database URL such as 'postgresql://user@host/db'")
    if not value:
        return value
    from sqlalchemy.engine import make_url  # a settings error, before any store code runs
    from sqlalchemy.exc import ArgumentError

    from aggregator.store.engine import ASYNC_DRIVERS

    try:
        scheme = make_url(value).drivername
    except (ArgumentError, ValueError):
        # Not echoed: the URL may hold a password.
        raise ValueError(
            "not a database URL: expected 'sqlite:///path/to/file.db' or 'postgresql://user@host/db'"
        ) from None
    if scheme not in ASYNC_DRIVERS:
        raise ValueError(
            f"unsupported database {scheme!r}: aggregator stores to SQLite ('sqlite:///path/to/file.db') "
            "or PostgreSQL ('postgresql://user@host/db')"
        )
    return value


def _token(token: object) -> object:
    if isinstance(token, str) and token and not re.fullmatch(r"[\x21-\x7e]{16,256}", token):
        raise ValueError("must be empty (no authentication) or 16 to 256 printable ASCII characters, no spaces")
    return token


@dataclass(frozen=True, slots=True)
class StoreSettings(Section):
    data_dir: str = "./data"
    # a SQLite or PostgreSQL URL (store.engine.ASYNC_DRIVERS); empty means {data_dir}/aggregator.db
    url: Annotated[str, Parse(_store_url)] = ""
    busy_timeout: Duration = 10.0
    pool_size: Annotated[int, Bound(ge=1, le=100)] = 5
    max_overflow: Annotated[int, Bound(ge=0, le=100)] = 5

    @property
    def effective_url(self) -> str:
        if self.url:
            return self.url
        return f"sqlite:///{Path(self.data_dir) / 'aggregator.db'}"


@dataclass(frozen=True, slots=True)
class NewsNowSettings(Section):
    base_url: str = "https://newsnow.busiyi.world"


@dataclass(frozen=True, slots=True)
class HttpSettings(Section):
    timeout: Duration = 20.0  # total deadline of one request, body included
    connect_timeout: Duration = 5.0
    max_bytes: Annotated[int, Bound(ge=1024)] = 8 * 1024 * 1024
    user_agent: str = (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0 Safari/537.36 aggregator/0.1"
    )
    per_host_limit: Annotated[int, Bound(ge=1, le=64)] = 4
    proxy: str = ""


@dataclass(frozen=True, slots=True)
class DaemonSettings(Section):
    jitter: Duration = 10.0  # each source's runs are spread by up to this much
    misfire_fraction: Annotated[float, Bound(gt=0, le=1)] = 0.5
    poll_deadline_fraction: Annotated[float, Bound(gt=0, le=1)] = 0.8
    rescore_every: Duration = 60.0
    startup_spread: Duration = 30.0  # sources due at start are spread over this long
    shutdown_grace: Duration = 10.0
    instance_id: str = ""
    # Claim each source in the database before polling it, so several daemons sharing one
    # database (PostgreSQL, or SQLite where the file lock cannot hold) poll it once per interval.
    leases: bool = True


@dataclass(frozen=True, slots=True)
class ScoreSettings(Section):
    half_life: Duration = 6 * 3600.0
    heat_weight: Annotated[float, Bound(ge=0, le=1)] = 0.5  # share of native heat in the signal
    persistence_bonus: Annotated[float, Bound(ge=0, le=1)] = 0.1  # at most this much heat per story
    persistence_full: Duration = 6 * 3600.0  # on a list this long earns the full bonus
    active_window: Duration = 48 * 3600.0  # stories seen within it are rescored


@dataclass(frozen=True, slots=True)
class DedupeSettings(Section):
    window: Duration = 48 * 3600.0
    threshold: Annotated[float, Bound(gt=0, le=1)] = 0.5
    # Stories the daemon keeps in memory for matching; past it the least recently seen go
    # before `window` ends (0: no cap, the window alone bounds them).
    max_stories: Annotated[int, Bound(ge=0)] = 100_000


@dataclass(frozen=True, slots=True)
class DisplaySettings(Section):
    timezone: Annotated[str, Parse(_zone)] = "Asia/Shanghai"
    timezone_label: str = ""  # empty: 北京时间 for Asia/Shanghai, else the zone name

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def zone_label(self) -> str:
        if self.timezone_label:
            return self.timezone_label
        return "北京时间" if self.timezone in ("Asia/Shanghai", "PRC", "Asia/Chongqing") else self.timezone


@dataclass(frozen=True, slots=True)
class FulltextSettings(Section):
    enabled: bool = True
    every: Duration = 300.0  # how often the top stories' pages are fetched
    top: Annotated[int, Bound(ge=0, le=1000)] = 20  # how many top stories get their full text
    concurrency: Annotated[int, Bound(ge=1, le=32)] = 4
    max_bytes: Annotated[int, Bound(ge=1024)] = 5 * 1024 * 1024
    retry: Duration = 1800.0  # first retry after a failure; doubles up to a day
    max_attempts: Annotated[int, Bound(ge=1, le=100)] = 5
    # Hosts, IPs or CIDRs that may be fetched although private (tests, intranet mirrors).
    allow_private: tuple[str, ...] = ()

    def check(self) -> None:
        from aggregator.ssrf import check_url

        for entry in self.allow_private:
            try:
                check_url("http://example.com/", [entry])
            except ValueError as exc:
                raise ValueError(f"allow_private entry {entry!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class ExportSettings(Section):
    every: Duration = 0.0  # 0: no periodic export from the daemon
    top: Annotated[int, Bound(ge=1, le=1000)] = 20
    dir: str = "./export"
    format: Literal["seed", "json", "csv", "atom"] = "seed"


@dataclass(frozen=True, slots=True)
class RetentionSettings(Section):
    """How long the bulk rows are kept; 0 keeps them forever. Stories and items are never pruned."""

    observations: Duration = 90 * 86400.0
    polls: Duration = 90 * 86400.0  # a poll goes only once its observations are gone
    content: Duration = 30 * 86400.0  # full text of items not seen for this long
    scores: Duration = 30 * 86400.0  # story_scores history
    every: Duration = 86400.0  # how often the retention job runs; 0: never
    batch: Annotated[int, Bound(ge=100, le=100_000)] = 5000  # rows per transaction, so polls are never held up


@dataclass(frozen=True, slots=True)
class HealthSettings(Section):
    stale_after: Duration = 300.0  # `aggregator health` fails when the heartbeat is older
    heartbeat_every: Duration = 30.0

    def check(self) -> None:
        if self.heartbeat_every < 1:
            raise ValueError("heartbeat_every must be at least 1s")
        # Two beats per window: one late or lost write must not make a healthy daemon look dead.
        if self.stale_after < 2 * self.heartbeat_every:
            raise ValueError("stale_after must be at least twice heartbeat_every")


@dataclass(frozen=True, slots=True)
class ServeSettings(Section):
    host: str = "127.0.0.1"  # only this machine; "0.0.0.0" in a container that publishes the port
    port: Annotated[int, Bound(ge=0, le=65535)] = 8080
    top: Annotated[int, Bound(ge=1, le=1000)] = 50  # stories in /top.json and /feed.atom without ?limit=
    max_limit: Annotated[int, Bound(ge=1, le=10_000)] = 500  # the most ?limit= may ask for
    # when set, every path but /health needs it (Authorization: Bearer, or ?token=)
    token: Annotated[str, Parse(_token)] = ""


@dataclass(frozen=True, slots=True)
class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True, slots=True)
class SourceSettings(Section):
    id: Annotated[str, Bound(pattern=r"^[a-z0-9-]+$", max_length=64)]
    kind: Literal[KINDS]  # type: ignore[valid-type]
    name: str = ""
    display_name: str = ""  # as shown in exports; default "NewsNow 微博" for NewsNow sources
    interval: Duration | None = None
    enabled: bool = True
    weight: Annotated[float, Bound(ge=0, le=100)] = 1.0
    url: str = ""
    base_url: str = ""  # newsnow: overrides [newsnow] base_url
    newsnow_id: str = ""  # newsnow: the id on the NewsNow side, default `id`
    headers: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    category: str = ""
    # Fetch the linked pages' full text; None: the catalog's default (off for lists whose
    # links are search pages, such as Weibo hot words), else on.
    fulltext: bool | None = None
    # kind = "json": a declarative mapping of a JSON hot list.
    items_path: str = ""
    title_field: str = ""
    url_field: str = ""
    heat_field: str = ""
    id_field: str = ""
    label_field: str = ""
    url_template: str = ""

    def check(self) -> None:
        if self.kind in ("feed", "json") and not self.url:
            raise ValueError(f"a {self.kind} source needs `url`")
        if self.kind != "json":
            stray = [k for k in JSON_MAPPING_KEYS if getattr(self, k)]
            if stray:
                raise ValueError(f'{", ".join(stray)} only apply to kind = "json"')
        if self.kind != "newsnow" and (self.base_url or self.newsnow_id):
            raise ValueError('base_url and newsnow_id only apply to kind = "newsnow"')
        if self.interval is not None and self.interval < 1:
            raise ValueError("interval must be at least 1s")

    @property
    def interval_s(self) -> float:
        assert self.interval is not None  # filled from the catalog in load_settings
        return self.interval


@dataclass(frozen=True, slots=True)
class Settings(Section):
    store: StoreSettings = StoreSettings()
    newsnow: NewsNowSettings = NewsNowSettings()
    http: HttpSettings = HttpSettings()
    daemon: DaemonSettings = DaemonSettings()
    score: ScoreSettings = ScoreSettings()
    dedupe: DedupeSettings = DedupeSettings()
    display: DisplaySettings = DisplaySettings()
    fulltext: FulltextSettings = FulltextSettings()
    export: ExportSettings = ExportSettings()
    log: LogSettings = LogSettings()
    retention: RetentionSettings = RetentionSettings()
    health: HealthSettings = HealthSettings()
    serve: ServeSettings = ServeSettings()
    sources: tuple[SourceSettings, ...] = ()
    config_path: str = ""  # where these settings came from ("" = built-in defaults)

    def source(self, source_id: str) -> SourceSettings:
        for source in self.sources:
            if source.id == source_id:
                return source
        raise KeyError(source_id)

    @property
    def enabled_sources(self) -> tuple[SourceSettings, ...]:
        return tuple(s for s in self.sources if s.enabled)


def load_catalog() -> dict[str, dict[str, dict[str, Any]]]:
    """The seed catalog: {"newsnow": {id: entry}, "native": {kind: entry}}."""
    with (seeds_dir() / "sources.toml").open("rb") as fh:
        return tomllib.load(fh)


def catalog_entries(settings: Settings) -> list[dict[str, Any]]:
    """The catalog as rows, NewsNow ids first, then the native kinds, with what a source
    taking the entry gets (name, interval in seconds, type, category, fulltext) and whether
    the settings have one (`in_settings`)."""
    catalog = load_catalog()
    newsnow_ids = {s.newsnow_id or s.id for s in settings.sources if s.kind == "newsnow"}
    native_kinds = {s.kind for s in settings.sources}
    rows = []
    for kind, section, used in (("newsnow", "newsnow", newsnow_ids), (None, "native", native_kinds)):
        for key, entry in catalog.get(section, {}).items():
            name = f"{entry['name']} {entry['title']}" if entry.get("title") else entry["name"]
            rows.append(
                {
                    "kind": kind or key,
                    "id": key,
                    "name": name,
                    "interval_s": parse_duration(entry["interval"]),
                    "type": entry.get("type", ""),
                    "category": entry.get("category", ""),
                    "fulltext": bool(entry.get("fulltext", True)),
                    "in_settings": key in used,
                }
            )
    return rows


def find_config(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError("--config", f"no such file: {explicit}")
        return path
    from_env = environ.get(CONFIG_ENV)
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            raise ConfigError(CONFIG_ENV, f"no such file: {from_env}")
        return path
    local = Path("settings.toml")
    return local if local.is_file() else None


def _env_value(text: str) -> object:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Fold AGGREGATOR_<SECTION>__<KEY> variables into the raw settings dict."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(name, "expected AGGREGATOR_<SECTION>__<KEY>, e.g. AGGREGATOR_STORE__URL")
        section, key = parts
        if section == "sources" or section not in Settings.hints() or section == "config_path":
            raise ConfigError(name, f"no settings section [{section}] can be set from the environment")
        merged.setdefault(section, {})
        merged[section][key] = _env_value(value)
    return merged


def _key_of(loc: tuple[int | str, ...], raw: Mapping[str, Any]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            if i == 1 and loc[0] == "sources":
                entries = raw.get("sources")
                if isinstance(entries, list) and part < len(entries) and isinstance(entries[part], dict):
                    source_id = entries[part].get("id")
                    if source_id:
                        out += f"(id={source_id})"
        else:
            out += ("." if out else "") + str(part)
    return out or "settings"


def validate(raw: dict[str, Any], config_path: str = "") -> Settings:
    """Raw dict (TOML + env) → Settings, with catalog defaults filled in."""
    sources = raw.get("sources", [])
    if not isinstance(sources, list):
        raise ConfigError("sources", "expected an array of [[sources]] tables")
    try:
        settings = Settings.from_mapping({**raw, "config_path": config_path})
    except Problems as exc:
        problems = [f"{_key_of(loc, raw)}: {message}" for loc, message in exc.problems]
        first_key = _key_of(exc.problems[0][0], raw)
        raise ConfigError(first_key, "; ".join(problems).removeprefix(f"{first_key}: ")) from None
    seen: dict[str, int] = {}
    for index, source in enumerate(settings.sources):
        if source.id in seen:
            raise ConfigError(
                f"sources[{index}].id", f"duplicate source id {source.id!r} (also sources[{seen[source.id]}])"
            )
        seen[source.id] = index
    catalog = load_catalog()
    filled = tuple(_with_catalog(s, catalog, settings.newsnow.base_url) for s in settings.sources)
    return replace(settings, sources=filled)


def _with_catalog(
    source: SourceSettings, catalog: dict[str, dict[str, dict[str, Any]]], newsnow_base: str
) -> SourceSettings:
    update: dict[str, Any] = {}
    if source.kind == "newsnow":
        if not source.url:
            base = (source.base_url or newsnow_base).rstrip("/")
            update["url"] = f"{base}/api/s?id={quote(source.newsnow_id or source.id)}&latest"
        entry = catalog.get("newsnow", {}).get(source.newsnow_id or source.id, {})
        default_interval = DEFAULT_INTERVAL_S["newsnow"]
    elif source.kind in NATIVE_KINDS:
        entry = catalog.get("native", {}).get(source.kind, {})
        default_interval = NATIVE_DEFAULT_INTERVAL_S
    else:
        entry, default_interval = {}, DEFAULT_INTERVAL_S[source.kind]
    if source.interval is None:
        update["interval"] = parse_duration(entry["interval"]) if "interval" in entry else default_interval
    if not source.name:
        base = entry.get("name", source.id)
        update["name"] = f"{base} {entry['title']}" if entry.get("title") and source.kind == "newsnow" else base
    if not source.category and entry.get("category"):
        update["category"] = entry["category"]
    if source.fulltext is None:
        update["fulltext"] = bool(entry.get("fulltext", True))
    return replace(source, **update) if update else source


def load_settings(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    path = find_config(explicit, env)
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), f"not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    raw = apply_env(raw, env)
    return validate(raw, str(path) if path else "")


def display_name(source: SourceSettings) -> str:
    """The name shown in exports and views: 'NewsNow 微博' for a NewsNow source."""
    if source.display_name:
        return source.display_name
    if source.kind == "newsnow":
        return f"NewsNow {source.name}"
    return source.name
