"""The `aggregator` command line: run, sources, top, search, explain, history, export, health, serve, db."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import os
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from aggregator import __version__
from aggregator.collectors import validate_sources
from aggregator.entry import HeldSignals, acting_on
from aggregator.errors import ConfigError, StoreError
from aggregator.export import FORMATS
from aggregator.logs import setup_logging
from aggregator.render import explain_lines, history_lines, json_text, pad, source_report, unknown_source
from aggregator.settings import Settings, load_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aggregator", description="Hot-topic feed aggregator daemon.")
    p.add_argument("--config", metavar="PATH", help="settings file (default: $AGGREGATOR_CONFIG, ./settings.toml)")
    p.add_argument("--log-format", choices=("text", "json"), help="override [log] format")
    p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="override [log] level")
    p.add_argument("--version", action="version", version=f"aggregator {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the daemon (or poll once with --once)",
        description="Run the daemon until SIGTERM or SIGINT. SIGHUP re-reads the settings: the sources, "
        "[score] and log.level change at once, the rest at the next restart.",
    )
    run.add_argument("--once", action="store_true", help="poll each enabled source once and exit")
    run.add_argument("--source", action="append", metavar="ID", help="only this source (repeatable)")

    sources = sub.add_parser("sources", help="each source with its last success, last error and next due time")
    sources.add_argument("--json", action="store_true", help="JSON for scripts")
    sources.add_argument(
        "--catalog",
        action="store_true",
        help="the known NewsNow ids and native kinds a [[sources]] entry can name with nothing else",
    )

    top = sub.add_parser("top", help="the current top stories")
    top.add_argument("--limit", type=int, default=20, metavar="N")
    top.add_argument("--source", metavar="ID", help="only stories listed by this source")
    top.add_argument("--json", action="store_true", help="JSON for scripts")

    search = sub.add_parser("search", help="stories whose titles hold every word of TEXT, newest first")
    search.add_argument("text", nargs="+", metavar="TEXT", help="words to find (substrings, case-insensitive)")
    search.add_argument("--limit", type=int, default=20, metavar="N")
    search.add_argument("--source", metavar="ID", help="only items listed by this source")
    search.add_argument("--json", action="store_true", help="JSON for scripts")

    explain = sub.add_parser("explain", help="every term of a story's 热度")
    explain.add_argument("story", metavar="STORY", help="story id, item id or item key")
    history = sub.add_parser("history", help="rank per source and 热度 over time")
    history.add_argument("ref", metavar="ITEM_OR_STORY", help="story id, item id or item key")

    export = sub.add_parser("export", help="write the top stories as documents (seed format), JSON, CSV or Atom")
    export.add_argument("--top", type=int, metavar="N", help="how many stories (default [export] top)")
    export.add_argument("--out", metavar="DIR", help="directory to write (default [export] dir)")
    export.add_argument("--format", choices=FORMATS, help="default [export] format")
    export.add_argument("--fetch", action="store_true", help="fetch the full text of due pages first")

    health = sub.add_parser("health", help="exit 0 when the daemon's heartbeat is fresh, else 1 with the reason")
    health.add_argument("--instance", metavar="NAME", help="judge this instance (default [daemon] instance_id or host)")

    serve = sub.add_parser("serve", help="top stories as JSON and an Atom feed, search and health over HTTP")
    serve.add_argument("--host", metavar="HOST", help="address to listen on (default [serve] host)")
    serve.add_argument("--port", type=int, metavar="PORT", help="port (default [serve] port; 0 picks a free one)")

    sub.add_parser(
        "config",
        help="the settings run would use, as TOML: file, environment and catalog merged, checked",
        description="Print the effective settings as a settings file: every key of every section, each "
        "source's keys that differ from the defaults, secrets as ***. Exit 2 with the key named when the "
        "settings are wrong, as every command: `aggregator config >/dev/null && systemctl reload aggregator`.",
    )

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser("upgrade", help="apply pending migrations")
    backup = db_sub.add_parser("backup", help="a consistent copy of the live SQLite store, checked")
    backup.add_argument("path", metavar="PATH", help="file to write, or a directory for a dated file")
    backup.add_argument("--force", action="store_true", help="replace PATH when it exists")
    check = db_sub.add_parser("check", help="integrity check and schema version (read-only)")
    check.add_argument("--quick", action="store_true", help="PRAGMA quick_check instead of integrity_check")
    return p


def _local(when: datetime | None, zone: ZoneInfo) -> str:
    if when is None:
        return "-"
    return when.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


async def _cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from aggregator.daemon import Daemon, run_once

    if args.once:
        # SIGTERM (a cron job's `timeout`, say) or SIGINT: the polls under way finish or are
        # cut off within daemon.shutdown_grace, the summary is printed, exit status 1.
        # SIGHUP has no action here: ignored.
        stop = asyncio.Event()
        stopping = functools.partial(_stop_once, stop)
        with acting_on({signal.SIGTERM: stopping, signal.SIGINT: stopping}, args.early_signals):
            results, interrupted = await run_once(settings, args.source, stop)
        failed = 0
        for r in results:
            if r.status == "error":
                failed += 1
                print(f"{r.source_id:<24} error  {r.error_kind}: {r.error}  ({r.duration_s:.2f}s)")
            elif r.status == "not_modified":
                print(f"{r.source_id:<24} ok     not modified  ({r.duration_s:.2f}s)")
            else:
                print(
                    f"{r.source_id:<24} ok     {r.item_count} items ({r.new_count} new, "
                    f"{r.dropped_count} dropped)  ({r.duration_s:.2f}s)"
                )
        for source_id in interrupted:
            print(f"{source_id:<24} stopped  not polled, or cut off by the stop")
        print(f"{len(results) - failed} of {len(results) + len(interrupted)} sources ok")
        return EXIT_FAILED if failed or interrupted else EXIT_OK
    daemon = Daemon(settings, reload=lambda: load_checked(args.config, args), early_signals=args.early_signals)
    return await daemon.run(args.source)


def _stop_once(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        print(f"aggregator: {sig.name} received: stopping", file=sys.stderr, flush=True)
        stop.set()


async def _open_store(settings: Settings) -> Any:
    from aggregator.store import Store

    return await Store.from_settings(settings.store)


def _every(interval_s: float) -> str:
    return f"{int(interval_s // 60)}m" if interval_s >= 60 else f"{int(interval_s)}s"


def _print_catalog(settings: Settings, as_json: bool) -> int:
    from aggregator.settings import catalog_entries

    rows = catalog_entries(settings)
    if as_json:
        _print_json(rows)
        return EXIT_OK
    print('# [[sources]] with id = "<id>" and kind = "newsnow" (or kind = "<kind>" for a native one) take these')
    print(
        f"{'kind':<9} {'id':<22} {'every':>5}  {'type':<9} {'category':<10} {'full text':<9}  {'in settings':<11}  name"
    )
    for r in rows:
        print(
            f"{r['kind']:<9} {r['id']:<22} {_every(r['interval_s']):>5}  {r['type']:<9} {r['category']:<10} "
            f"{'yes' if r['fulltext'] else 'no':<9}  {'yes' if r['in_settings'] else '-':<11}  {r['name']}"
        )
    return EXIT_OK


def _source_health(report: dict[str, Any], zone: ZoneInfo) -> str:
    """ok / failing since T / backing off until T, from a source_report."""
    state = str(report["state"])
    if state == "backing_off":
        return f"backing off until {_local(report['next_due'], zone)}"
    if state == "failing":
        return f"failing since {_local(report['failing_since'], zone)}"
    return {"not_polled": "not polled yet"}.get(state, state)


def _one_line(text: str, limit: int) -> str:
    # Upstream text (a reason phrase, a parser message) must not break the table or the terminal.
    flat = "".join(ch if ch.isprintable() else " " for ch in text)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


async def _cmd_sources(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC

    if args.catalog:
        return _print_catalog(settings, as_json=args.json)
    store = await _open_store(settings)
    try:
        rows = await store.sources_status()
    finally:
        await store.close()
    now = datetime.now(UTC)
    configured = {s.id for s in settings.sources}
    reports = [source_report(r, now) for r in rows if r["id"] in configured]
    if args.json:
        _print_json(reports)
        return EXIT_OK
    zone = settings.display.zone
    print(
        f"{'id':<22} {'kind':<8} {'every':>6}  {'health':<37}  {'last success':<19}  {'next due':<19}  "
        f"{'held by':<16}  last error"
    )
    for r in reports:
        every = _every(r["interval_s"])
        error = "-"
        if r["last_error_kind"] is not None:
            error = (
                f"{r['last_error_kind']}: {_one_line(r['last_error'] or '', 200)} "
                f"(x{r['consecutive_failures']} since {_local(r['failing_since'], zone)})"
            )
        print(
            f"{r['id']:<22} {r['kind']:<8} {every:>6}  {_source_health(r, zone):<37}  "
            f"{_local(r['last_success_at'], zone):<19}  {_local(r['next_due'], zone):<19}  "
            f"{pad(r['held_by'] or '-', 16)}  {error}"
        )
    return EXIT_OK


async def _check_source(store: Any, settings: Settings, source_id: str) -> None:
    problem = await unknown_source(store, settings, source_id)
    if problem:
        raise ConfigError("--source", problem)


def _print_json(rows: Sequence[dict[str, Any]]) -> None:
    print(json_text(list(rows)))


async def _cmd_top(settings: Settings, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ConfigError("--limit", "must be at least 1")
    store = await _open_store(settings)
    try:
        rows = await store.top(args.limit, args.source)
        if args.source and not rows:
            await _check_source(store, settings, args.source)
    finally:
        await store.close()
    zone = settings.display.zone
    if args.json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        where = f" from {args.source}" if args.source else ""
        print(f"no stories{where} yet: run `aggregator run --once` or start the daemon")
        return EXIT_OK
    print(f"{'#':>3} {'热度':>6}    {pad('title', 50)}  {pad('platforms', 30)} {'seen':<11}")
    for r in rows:
        seen = r["collected_at"]
        seen_text = seen.astimezone(zone).strftime("%m-%d %H:%M") if seen else "-"
        marker = "↑" if r.get("rising") else " "
        platforms = (
            ",".join(f"{x['source_id']}#{x['rank']}" for x in r.get("ranks", []) if x["rank"] is not None)
            or r["source"]
        )
        print(
            f"{r['position']:>3} {r['score']:>6.1f} {marker}  {pad(r['title'], 50)}  {pad(platforms, 30)} {seen_text}"
        )
    return EXIT_OK


async def _cmd_search(settings: Settings, args: argparse.Namespace) -> int:
    from aggregator.normalize import search_terms

    if args.limit < 1:
        raise ConfigError("--limit", "must be at least 1")
    terms = search_terms(args.text, "TEXT")
    store = await _open_store(settings)
    try:
        rows = await store.search(terms, args.limit, args.source)
        if args.source and not rows:
            await _check_source(store, settings, args.source)
    finally:
        await store.close()
    if args.json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        print(f"no story has a title with {' '.join(t[0] for t in terms)!r}")
        return EXIT_OK
    zone = settings.display.zone
    header = f"{'story':>20} {'热度':>6} {'now':>6}  {pad('title', 50)}  {pad('platforms (best rank)', 30)}"
    print(f"{header} last seen")
    for r in rows:
        platforms = ",".join(
            s["source_id"] + (f"#{s['best_rank']}" if s["best_rank"] is not None else "") for s in r["sources"]
        )
        now = f"#{r['position']}" if r["position"] is not None else "-"
        seen = r["last_seen_at"].astimezone(zone).strftime("%m-%d %H:%M")
        print(f"{r['story_id']:>20} {r['score']:>6.1f} {now:>6}  {pad(r['title'], 50)}  {pad(platforms, 30)} {seen}")
    return EXIT_OK


async def _story_or_exit(store: Any, ref: str) -> int:
    story_id = await store.resolve_story(ref)
    if story_id is None:
        raise ConfigError("STORY", f"no story or item {ref!r} (give a story id, an item id or an item key)")
    return int(story_id)


async def _cmd_explain(settings: Settings, args: argparse.Namespace) -> int:
    from aggregator.daemon import utc_now
    from aggregator.score import unlisted_heat

    store = await _open_store(settings)
    try:
        story_id = await _story_or_exit(store, args.story)
        story = await store.story(story_id)
        now = utc_now()
        heats = await store.story_heats(now, settings.score)
    finally:
        await store.close()
    assert story is not None
    heat = heats.get(story_id) or unlisted_heat(
        story_id, story["base_heat"], story["last_seen_at"], now, settings.score
    )
    top_story = max(heats, key=lambda sid: heats[sid].heat) if heats else None
    top_heat = heats[top_story].heat if top_story is not None else 0.0
    for line in explain_lines(story, heat, top_heat, top_story, settings.score.half_life, settings.display.zone):
        print(line)
    return EXIT_OK


async def _cmd_history(settings: Settings, args: argparse.Namespace) -> int:
    store = await _open_store(settings)
    try:
        story_id = await _story_or_exit(store, args.ref)
        story = await store.story(story_id)
        observations, scores = await store.story_history(story_id)
    finally:
        await store.close()
    assert story is not None
    for line in history_lines(story, observations, scores, settings.display.zone):
        print(line)
    return EXIT_OK


async def _cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    if args.db_command == "backup":
        return await _cmd_db_backup(settings, args)
    if args.db_command == "check":
        return await _cmd_db_check(settings, args)
    from aggregator.store.engine import head_revision

    store = await _open_store(settings)
    await store.close()
    print(f"database is at schema revision {head_revision()}")
    return EXIT_OK


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


async def _cmd_health(settings: Settings, args: argparse.Namespace) -> int:
    from aggregator.health import check_health

    ok, reason = await check_health(settings, args.instance)
    print(reason if ok else f"unhealthy: {reason}")
    return EXIT_OK if ok else EXIT_FAILED


async def _cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    from aggregator.config_text import settings_toml

    sys.stdout.write(settings_toml(settings, os.environ))
    return EXIT_OK


async def _cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from aggregator.serve import serve

    port = settings.serve.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise ConfigError("--port", f"must be from 0 to 65535, not {port}")
    return await serve(settings, args.host or settings.serve.host, port, early_signals=args.early_signals)


async def _cmd_db_backup(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC
    from pathlib import Path

    from aggregator.store.engine import sqlite_path
    from aggregator.store.maintenance import backup_sqlite, backup_target

    live = sqlite_path(settings.store.effective_url)
    if live is None:
        raise ConfigError("store.url", "db backup copies a SQLite store; back up PostgreSQL with pg_dump")
    dest = backup_target(Path(args.path), datetime.now(UTC))
    report = await asyncio.to_thread(
        backup_sqlite, live, dest, overwrite=args.force, busy_timeout_s=settings.store.busy_timeout
    )
    if not report.ok:
        print(f"aggregator: the copy of {live} failed quick_check and was removed: {'; '.join(report.problems[:3])}")
        return EXIT_FAILED
    print(
        f"backup of {live} written to {report.path}: {_mib(report.size_bytes)}, schema revision {report.revision}, "
        f"{report.poll_count} polls (last id {report.last_poll_id}), quick_check ok, {report.seconds:.1f}s"
    )
    return EXIT_OK


async def _cmd_db_check(settings: Settings, args: argparse.Namespace) -> int:
    from aggregator.store.maintenance import check_database

    report = await check_database(
        settings.store.effective_url, quick=args.quick, busy_timeout_s=settings.store.busy_timeout
    )
    if report.path is not None:
        print(f"database: {report.path} ({_mib(report.size_bytes)}, WAL {_mib(report.wal_bytes)})")
    if report.revision == report.head:
        state = "up to date"
    elif report.revision is None:
        state = "empty: `aggregator db upgrade` creates the schema"
    else:
        state = "older: `aggregator db upgrade` (or `run`) migrates it"
    print(f"schema revision: {report.revision or '-'} (this aggregator's head: {report.head}, {state})")
    if not report.check:
        print("integrity check: not available on PostgreSQL (use amcheck or pg_dump)")
        return EXIT_OK
    print(f"{report.check}: {'ok' if not report.problems else report.problems[0]}")
    for problem in report.problems[1:10]:
        print(f"  {problem}")
    if report.check == "integrity_check":
        violations = report.foreign_key_violations
        print(f"foreign_key_check: {'ok' if not violations else f'{violations} rows refer to missing rows'}")
    return EXIT_OK if report.ok else EXIT_FAILED


async def _cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from aggregator.pipeline import export_top

    top = args.top if args.top is not None else settings.export.top
    if top < 1:
        raise ConfigError("--top", "must be at least 1")
    out = Path(args.out or settings.export.dir)
    store = await _open_store(settings)
    try:
        if args.fetch:
            from aggregator.collectors.fetch import make_fetcher
            from aggregator.daemon import fulltext_sources, utc_now
            from aggregator.fulltext import run_fulltext

            fetcher = make_fetcher(settings.http)
            try:
                await run_fulltext(store, fetcher, settings.fulltext, utc_now(), fulltext_sources(settings))
            finally:
                await fetcher.aclose()
        written = await export_top(store, settings, top, out, args.format or settings.export.format)
    finally:
        await store.close()
    print(f"wrote {len(written)} file(s) to {out}")
    return EXIT_OK


COMMANDS = {
    "run": _cmd_run,
    "sources": _cmd_sources,
    "top": _cmd_top,
    "search": _cmd_search,
    "explain": _cmd_explain,
    "history": _cmd_history,
    "export": _cmd_export,
    "db": _cmd_db,
    "health": _cmd_health,
    "serve": _cmd_serve,
    "config": _cmd_config,
}


def load_checked(config: str | None, args: argparse.Namespace | None = None) -> Settings:
    """The settings as `--config`, the environment and the lookup order give them, checked
    as a whole (ConfigError names the key); `--log-level` / `--log-format` in `args` win."""
    settings = load_settings(config)
    validate_sources(settings)
    forced = {} if args is None else {"level": args.log_level, "format": args.log_format}
    forced = {key: value for key, value in forced.items() if value}
    if forced:
        settings = dataclasses.replace(settings, log=dataclasses.replace(settings.log, **forced))
    return settings


def main(argv: Sequence[str] | None = None, held: HeldSignals | None = None) -> int:
    """The command `argv` (default: sys.argv); `held` are the signals the entry point holds
    since the process began (see `aggregator.entry`)."""
    args = _parser().parse_args(argv)
    # Those that poll or serve act on the signals themselves, from their first moment.
    daemon = args.command in ("run", "serve")
    if held is None and daemon:
        held = HeldSignals()
    elif held is not None and not daemon:
        held.release(deliver=True)
        held = None
    args.early_signals = held.received if held is not None else []
    try:
        return _main(args)
    finally:
        if held is not None:
            held.release(deliver=False)  # the daemon (or serve) has acted on them


def _main(args: argparse.Namespace) -> int:
    try:
        settings = load_checked(args.config, args)
    except ConfigError as exc:
        print(f"aggregator: settings error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    instance = settings.daemon.instance_id
    if args.command == "run":
        from aggregator.daemon import instance_id

        instance = instance_id(settings)
    setup_logging(settings.log.level, settings.log.format, instance)
    try:
        return asyncio.run(COMMANDS[args.command](settings, args))
    except ConfigError as exc:
        print(f"aggregator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        print(f"aggregator: store error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED
    except BrokenPipeError:
        # `aggregator top | head`: the reader left. No traceback, and none at exit either
        # when Python flushes what is left for it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
