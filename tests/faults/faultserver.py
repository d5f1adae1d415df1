"""A lying HTTP server on 127.0.0.1 for fault tests: raw asyncio, so it can do what a real one would not.

It runs its own event loop on a thread, so in-process async tests and daemons in a
subprocess can both use it. Each route is a behaviour: an async function given the
parsed request and the connection's reader and writer. The behaviours below answer
normally, hang, drip a byte at a time, lie about lengths, reset the connection, stream
"2 GB" until the client hangs up, send a gzip bomb or redirect in a loop. Every
connection is closed after its response (no keep-alive), which keeps each behaviour
on its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import json
import socket
import ssl
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

# What one 64 KiB write of zeros looks like; endless bodies repeat it.
CHUNK = bytes(64 * 1024)
# An endless body stops by itself after this much, should a client never hang up.
ENDLESS_LIMIT = 3 * 2**30
TWO_GB = 2 * 2**30


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # as sent: a path, or an absolute URL when we are used as a proxy
    path: str
    headers: dict[str, str]
    at: float  # time.monotonic() when it arrived


Behaviour = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter, "RouteStats"], Awaitable[None]]


@dataclass
class RouteStats:
    """What happened on one route: bytes written, clients that hung up and when."""

    bytes_sent: int = 0
    hangups: list[float] = field(default_factory=list)  # time.monotonic() of each client hang-up
    active: int = 0
    max_active: int = 0


def head(status: int, headers: dict[str, str] | None = None, *, length: int | None = None) -> bytes:
    phrase = http.HTTPStatus(status).phrase if status in {int(s) for s in http.HTTPStatus} else "Odd"
    lines = [f"HTTP/1.1 {status} {phrase}"]
    merged = {"Connection": "close", **(headers or {})}
    if length is not None:
        merged["Content-Length"] = str(length)
    lines += [f"{k}: {v}" for k, v in merged.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send(writer: asyncio.StreamWriter, stats: RouteStats, data: bytes) -> None:
    writer.write(data)
    await writer.drain()
    stats.bytes_sent += len(data)


# -- behaviours ---------------------------------------------------------------------------


def respond(
    body: bytes | str = b"",
    status: int = 200,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json; charset=utf-8",
) -> Behaviour:
    data = body.encode() if isinstance(body, str) else body

    async def run(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: RouteStats) -> None:
        await _send(writer, stats, head(status, {"Content-Type": content_type, **(headers or {})}, length=len(data)))
        await _send(writer, stats, data)

    return run


def json_body(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def sequence(*behaviours: Behaviour) -> Behaviour:
    """The n-th request gets the n-th behaviour; the last one repeats."""
    served = 0

    async def run(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: RouteStats) -> None:
        nonlocal served
        behaviour = behaviours[min(served, len(behaviours) - 1)]
        served += 1
        await behaviour(req, reader, writer, stats)

    return run


def when_header(name: str, value: str, then: Behaviour, otherwise: Behaviour) -> Behaviour:
    """`then` when the request carries header `name: value` (conditional GET), else `otherwise`."""

    async def run(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: RouteStats) -> None:
        chosen = then if req.headers.get(name.lower()) == value else otherwise
        await chosen(req, reader, writer, stats)

    return run


async def _until_hangup(reader: asyncio.StreamReader, stats: RouteStats) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass
    stats.hangups.append(time.monotonic())


def hang() -> Behaviour:
    """Read the request, never answer; return when the client gives up."""

    async def run(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: RouteStats) -> None:
        await _until_hangup(reader, stats)

    return run


def drip(body: bytes, every_s: float = 1.0, *, headers_too: bool = False) -> Behaviour:
    """Send the response one byte every `every_s` (the head too when headers_too)."""

    async def run(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: RouteStats) -> None:
        start = head(200, {"Content-Type": "application/json"}, length=len(body))
        data = start + body
        if not headers_too:
            await _send(writer, stats, start)
            data = body
        watcher = asyncio.ensure_future(_until_hangup(reader, stats))
        try:
            for i in range(len(data)):
                if watcher.done():
                    return
                await _send(writer, stats, data[i : i + 1])
                await asyncio.sleep(every_s)  # the fault itself: a slow server
        finally:
            watcher.cancel()

    return run


def endless(
    declared_length: int | None = TWO_GB, *, status: int = 200, headers: dict[str, str] | None = None
) -> Behaviour:
    """A huge body, declared or not, streamed until the client hangs up (never really 2 GB)."""

    async def run(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: RouteStats) -> None:
        await _send(
            writer, stats, head(status, {"Content-Type": "application/json", **(headers or {})}, length=declared_length)
        )
        with contextlib.suppress(ConnectionError):
            while stats.bytes_sent < ENDLESS_LIMIT:
                await _send(writer, stats, CHUNK)
        stats.hangups.append(time.monotonic())

    return run


@functools.lru_cache(maxsize=4)
def gzip_of_zeros(size: int) -> bytes:
    """gzip of `size` zero bytes: about a thousandth of the size."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(2**20)
    parts = [packer.compress(block) for _ in range(size // len(block))]
    parts.append(packer.compress(bytes(size % len(block))))
    parts.append(packer.flush())
    return b"".join(parts)


def gzip_bomb(decoded_size: int = 200 * 2**20, *, declare_length: bool = True) -> Behaviour:
    async def run(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: RouteStats) -> None:
        data = gzip_of_zeros(decoded_size)
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        await _send(writer, stats, head(200, headers, length=len(data) if declare_length else None))
        with contextlib.suppress(ConnectionError):
            await _send(writer, stats, data)

    return run


def redirect(location: str, status: int = 302, *, huge_body: bool = False) -> Behaviour:
    """A redirect; with huge_body it declares and streams "2 GB" that must never be read."""
    if huge_body:
        return endless(TWO_GB, status=status, headers={"Location": location})
    return respond(b"", status=status, headers={"Location": location}, content_type="text/plain")


def lie_length(body: bytes, declared: int) -> Behaviour:
    """Declare `declared` bytes, send `body`, close."""

    async def run(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: RouteStats) -> None:
        await _send(writer, stats, head(200, {"Content-Type": "application/json"}, length=declared))
        await _send(writer, stats, body)

    return run


def reset_after(body: bytes, declared: int) -> Behaviour:
    """Send part of a response, then reset the connection (RST, not FIN)."""

    async def run(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: RouteStats) -> None:
        await _send(writer, stats, head(200, {"Content-Type": "application/json"}, length=declared) + body)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    return run


def concurrent(release: threading.Event, then: Behaviour) -> Behaviour:
    """Hold each request until `release` is set (counting how many wait at once), then answer."""

    async def run(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: RouteStats) -> None:
        stats.active += 1
        stats.max_active = max(stats.max_active, stats.active)
        try:
            while not release.is_set():
                await asyncio.sleep(0.01)
        finally:
            stats.active -= 1
        await then(req, reader, writer, stats)

    return run


def rotating_list(size: int, new_per_hit: int, *, fail_every: int = 0, name: str = "story") -> Behaviour:
    """A NewsNow list that moves on each request: `new_per_hit` entries new, the rest re-ranked.

    With fail_every = n, every n-th request is answered with a 500 instead.
    """
    hits = 0

    async def run(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: RouteStats) -> None:
        nonlocal hits
        hits += 1
        if fail_every and hits % fail_every == 0:
            await respond(b"upstream down", status=500, content_type="text/plain")(req, reader, writer, stats)
            return
        first = hits * new_per_hit
        titles = [f"{name} {n}" for n in range(first + size - 1, first - 1, -1)]
        await respond(newsnow_payload(titles, prefix=f"https://example.com/{name}/"))(req, reader, writer, stats)

    return run


def not_found() -> Behaviour:
    return respond(b"no such route", status=404, content_type="text/plain")


# -- the server ---------------------------------------------------------------------------


class FaultServer:
    """Routes by request target (exact), then by path with and without the query."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.routes: dict[str, Behaviour] = {}
        self.stats: dict[str, RouteStats] = {}
        self.hits: Counter[str] = Counter()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-server", daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    # lifecycle
    def start(self) -> FaultServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _start(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=2**16, ssl=self.ssl_context)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5)
        await self._server.wait_closed()

    # routes
    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, path: str, behaviour: Behaviour) -> str:
        with self._lock:
            self.routes[path] = behaviour
            self.stats[path] = RouteStats()
        return self.url(path)

    def stats_of(self, path: str) -> RouteStats:
        return self.stats[path]

    def requests_to(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.target == path or r.path == path]

    def _lookup(self, req: Request) -> tuple[str, Behaviour]:
        with self._lock:
            for key in (req.target, req.path, req.path.split("?")[0]):
                if key in self.routes:
                    return key, self.routes[key]
        return "", not_found()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            first = await reader.readexactly(1)
            if first == b"\x16":  # a TLS ClientHello: answer in plain HTTP, as a plain server would
                writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            raw = first + await reader.readuntil(b"\r\n\r\n")
            req = _parse(raw)
            key, behaviour = self._lookup(req)
            with self._lock:
                self.hits[key or req.path] += 1
                self.requests.append(req)
                stats = self.stats.setdefault(key, RouteStats())
            await behaviour(req, reader, writer, stats)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()


def _parse(raw: bytes) -> Request:
    lines = raw.decode("latin-1").split("\r\n")
    method, target, _version = [*lines[0].split(" ", 2), "", ""][:3]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    path = target
    if "://" in target:  # absolute form: we are being used as a proxy
        after = target.split("://", 1)[1]
        path = "/" + after.split("/", 1)[1] if "/" in after else "/"
    return Request(method, target, path, headers, time.monotonic())


def newsnow_payload(titles: Sequence[str], prefix: str = "https://example.com/") -> bytes:
    items = [
        {"id": t, "title": t, "url": f"{prefix}{zlib.crc32(t.encode())}", "extra": {"info": f"{100 + i}万"}}
        for i, t in enumerate(titles)
    ]
    return json_body({"status": "success", "id": "x", "updatedTime": 1700000000000, "items": items})


def rss_payload(titles: Sequence[str], encoding: str = "utf-8", declared: str | None = None) -> bytes:
    entries = "".join(
        f"<item><title>{t}</title><link>https://example.org/{i}</link></item>" for i, t in enumerate(titles)
    )
    declaration = f'<?xml version="1.0" encoding="{declared or encoding}"?>'
    return f'{declaration}<rss version="2.0"><channel><title>f</title>{entries}</channel></rss>'.encode(encoding)
