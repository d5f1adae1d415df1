"""`aggregator serve`: the store read over HTTP: top stories as JSON and as an Atom feed,
search, the sources' state as JSON and Prometheus metrics, and the daemon's health.
Read-only; it runs beside the daemon (or on a copy of the database) and never writes.

aiohttp's server is already here with its client (the fetch transport), so serving needs
no other package.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import ipaddress
import logging
import signal
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aggregator.entry import acting_on
from aggregator.errors import ConfigError, StoreError
from aggregator.export import ExportDoc, is_http_url, render_atom
from aggregator.normalize import search_terms
from aggregator.render import json_text, source_report, unknown_source

if TYPE_CHECKING:
    from aiohttp import web

    from aggregator.settings import Settings
    from aggregator.store import Store

log = logging.getLogger("aggregator.serve")
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _limit(request: web.Request, default: int, most: int) -> int:
    text = request.query.get("limit", "")
    if not text:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 6 and 1 <= int(text) <= most):
        raise ConfigError("limit", f"must be a whole number from 1 to {most}, not {text[:20]!r}")
    return int(text)


def prometheus_text(reports: list[dict[str, Any]], healthy: bool) -> str:
    """Per-source gauges and the daemon's health in Prometheus' text format (version 0.0.4)."""
    gauges: list[tuple[str, str, Callable[[dict[str, Any]], float | None]]] = [
        ("aggregator_source_up", "1 when the source's newest poll succeeded", lambda r: float(r["state"] == "ok")),
        (
            "aggregator_source_consecutive_failures",
            "failed polls since the last good one",
            lambda r: float(r["consecutive_failures"]),
        ),
        (
            "aggregator_source_last_success_timestamp_seconds",
            "when the source's last good poll ended (Unix time)",
            lambda r: r["last_success_at"].timestamp() if r["last_success_at"] else None,
        ),
        (
            "aggregator_source_next_due_timestamp_seconds",
            "when the source is polled next (Unix time)",
            lambda r: r["next_due"].timestamp() if r["next_due"] else None,
        ),
        ("aggregator_source_interval_seconds", "the source's polling interval", lambda r: float(r["interval_s"])),
    ]
    lines = []
    for name, help_text, value in gauges:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for r in reports:
            if r["enabled"] and (v := value(r)) is not None:
                lines.append(f'{name}{{source="{r["id"]}",kind="{r["kind"]}"}} {v:.17g}')
    lines += [
        "# HELP aggregator_healthy 1 when `aggregator health` would exit 0",
        "# TYPE aggregator_healthy gauge",
        f"aggregator_healthy {int(healthy)}",
    ]
    return "\n".join(lines) + "\n"


def _index_page(rows: list[dict[str, Any]], token: str = "") -> str:
    """The top stories as HTML; `token` (as the page was asked with ?token=) is kept in its links."""
    with_token = urlencode({"token": token}) if token else ""

    def link(path: str) -> str:
        href = f"{path}{'&' if '?' in path else '?'}{with_token}" if with_token else path
        return f'<a href="{html.escape(href)}">{html.escape(path.lstrip("/"))}</a>'

    paths = ("/top.json", "/feed.atom", "/search.json?q=", "/sources.json", "/metrics", "/health")
    lines = [
        "<!doctype html><meta charset=utf-8><title>aggregator</title>",
        "<h1>aggregator: top stories</h1>",
        f"<p>{' · '.join(link(p) for p in paths)}</p><ol>",
    ]
    for r in rows:
        title = html.escape(r["title"])
        url = r.get("url") or ""
        shown = f'<a href="{html.escape(url)}" rel="noreferrer">{title}</a>' if is_http_url(url) else title
        lines.append(f"<li>{shown} <small>热度 {r['score']:.1f} · {html.escape(str(r.get('sources') or ''))}</small>")
    lines.append("</ol>")
    return "\n".join(lines)


def make_app(store: Store, settings: Settings) -> web.Application:
    from aiohttp import web

    top_default, most = settings.serve.top, settings.serve.max_limit
    token = settings.serve.token

    def json_response(payload: Any, status: int = 200) -> web.Response:
        return web.Response(text=json_text(payload), status=status, content_type="application/json", charset="utf-8")

    @web.middleware
    async def authorize(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        """With serve.token set, every path but /health (a container's probe) needs the token."""
        if token and request.path != "/health" and not _has_token(request, token):
            response = json_response({"error": "this server needs serve.token: Authorization: Bearer, or ?token="}, 401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="aggregator"'
            return response
        answer: web.StreamResponse = await handler(request)
        return answer

    @web.middleware
    async def errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except ConfigError as exc:
            return json_response({"error": str(exc)}, 404 if exc.key == "source" else 400)
        except StoreError as exc:
            log.warning("cannot answer %s: %s", request.path, exc)
            return json_response({"error": f"store error: {exc}"}, 503)

    @web.middleware
    async def revalidate(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        """An ETag on every answer, and 304 when the client has it: feed readers poll often."""
        response: web.StreamResponse = await handler(request)
        if response.status != 200 or not isinstance(response, web.Response) or not isinstance(response.body, bytes):
            return response
        etag = hashlib.blake2b(response.body, digest_size=8).hexdigest()
        response.etag = etag
        response.headers["Cache-Control"] = "no-cache"  # may be kept, but asked again each time
        if request.if_none_match and any(e.value == etag for e in request.if_none_match):
            return web.Response(status=304, headers={"ETag": f'"{etag}"', "Cache-Control": "no-cache"})
        return response

    async def known_source(source: str | None, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if source and not rows:
            problem = await unknown_source(store, settings, source)
            if problem:
                raise ConfigError("source", problem)
        return rows

    async def top_rows(request: web.Request) -> list[dict[str, Any]]:
        source = request.query.get("source") or None
        return await known_source(source, await store.top(_limit(request, top_default, most), source))

    async def index(request: web.Request) -> web.Response:
        page = _index_page(await store.top(top_default), request.query.get("token", "") if token else "")
        return web.Response(text=page, content_type="text/html", charset="utf-8")

    async def top_json(request: web.Request) -> web.Response:
        return json_response(await top_rows(request))

    async def feed(request: web.Request) -> web.Response:
        docs = [ExportDoc.from_row(i, r) for i, r in enumerate(await top_rows(request))]
        body = render_atom(docs, datetime.now(UTC), str(request.url.without_query_params("token")))
        return web.Response(body=body, content_type="application/atom+xml", charset="utf-8")

    async def search(request: web.Request) -> web.Response:
        terms = search_terms([request.query.get("q", "")], "q")
        source = request.query.get("source") or None
        return json_response(
            await known_source(source, await store.search(terms, _limit(request, top_default, most), source))
        )

    async def sources_json(request: web.Request) -> web.Response:
        return json_response(await source_reports())

    async def source_reports() -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        configured = {s.id for s in settings.sources}
        return [source_report(r, now) for r in await store.sources_status() if r["id"] in configured]

    async def metrics(request: web.Request) -> web.Response:
        from aggregator.health import check_health

        healthy, _ = await check_health(settings, request.query.get("instance"))
        text = prometheus_text(await source_reports(), healthy)
        return web.Response(
            body=text.encode("utf-8"), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    async def health(request: web.Request) -> web.Response:
        from aggregator.health import check_health

        ok, reason = await check_health(settings, request.query.get("instance"))
        return web.Response(text=reason if ok else f"unhealthy: {reason}", status=200 if ok else 503)

    app = web.Application(middlewares=[authorize, errors, revalidate])
    app.router.add_get("/", index)
    app.router.add_get("/top.json", top_json)
    app.router.add_get("/feed.atom", feed)
    app.router.add_get("/search.json", search)
    app.router.add_get("/sources.json", sources_json)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    return app


def _has_token(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else request.query.get("token", "")
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _open_read_only(settings: Settings) -> Store:
    """The store as the daemon left it: never created or migrated here (StoreError instead)."""
    from aggregator.store import Store
    from aggregator.store.engine import check_version, head_revision, sqlite_path

    path = sqlite_path(settings.store.effective_url)
    if path is not None and not path.is_file():
        raise StoreError(f"no database at {path}: start the daemon (`aggregator run`) first")
    store = await Store.from_settings(settings.store, upgrade=False)
    revision = await check_version(store.engine)
    if revision != head_revision():
        await store.close()
        raise StoreError(
            f"the database is at schema revision {revision or '(none)'}, this aggregator's is {head_revision()}: "
            "run `aggregator db upgrade` (or restart the daemon, which migrates it)"
        )
    return store


class _MalformedRequests(logging.Filter):
    """aiohttp's server logs a request it cannot parse as an ERROR with a traceback; make it one line.

    Such requests (a scanner, TLS sent to the plain port, an overlong line) are the client's
    fault and already answered 400 and written to the access log: an INFO line with the
    parser's reason says what happened without an operator's alert. Other errors keep their
    traceback (they are bugs).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = " ".join(str(exc.message).split())[:200]
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "malformed request from %s: %s: %s"
            record.args = (remote, type(exc).__name__, reason)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


MALFORMED_REQUESTS = _MalformedRequests()


async def serve(settings: Settings, host: str, port: int, early_signals: Sequence[int] = ()) -> int:
    """Serve until SIGTERM or SIGINT (SIGHUP is logged and ignored); exit status 0 after a clean stop.

    `early_signals` came before (see `aggregator.entry`): a stop among them ends serve
    right after its start, as one during the start does."""
    stop = asyncio.Event()
    # The daemon's reload signal must not stop serve when both get it (a whole compose
    # project, a process group): serve reads its settings when it starts.
    ignored = "SIGHUP received: serve reads its settings when it starts; restart it to change them"
    actions: dict[signal.Signals, Callable[[signal.Signals], object]] = {
        signal.SIGTERM: lambda _sig: stop.set(),
        signal.SIGINT: lambda _sig: stop.set(),
        signal.SIGHUP: lambda _sig: log.info(ignored),
    }
    with acting_on(actions, early_signals):
        await _serve_until(stop, settings, host, port)
    log.info("serve stopped")
    return 0


async def _serve_until(stop: asyncio.Event, settings: Settings, host: str, port: int) -> None:
    from aiohttp import web

    store = await _open_read_only(settings)
    logging.getLogger("aiohttp.server").addFilter(MALFORMED_REQUESTS)  # once, however often serve runs
    runner = web.AppRunner(make_app(store, settings), access_log=log, access_log_format='%a "%r" %s %b %Tfs')
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError("serve.port", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        if not settings.serve.token and not _is_loopback(host):
            log.warning(
                "serving on %s without serve.token: whoever reaches the port reads the store "
                "(set serve.token, or put a proxy with access control in front)",
                host,
            )
        for address in runner.addresses:
            shown = f"[{address[0]}]" if ":" in str(address[0]) else address[0]
            log.info("serving on http://%s:%s/", shown, address[1])
            print(f"serving on http://{shown}:{address[1]}/", flush=True)
        await stop.wait()
        log.info("stopping: no new requests, in-flight ones finish")
    finally:
        await runner.cleanup()
        await store.close()
