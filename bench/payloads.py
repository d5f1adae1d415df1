"""Synthetic hot lists and feeds for the benchmarks, served by a local HTTP server process.

Each source i has a list of `size` entries per round r: from one round to the next 10%
of the entries are new and 20% change rank, the rest keep their place. Feeds carry an
ETag per round, so a client that sends If-None-Match for the current round gets 304.
`GET /round/R/N` sets the round and renders the bodies of sources 0..N-1 before it answers.
"""

from __future__ import annotations

import json
import random
import zlib
from multiprocessing import Process, Queue
from typing import Any

# 3,000 two-character words drawn from the common CJK range: titles share characters the
# way real ones do, without every title sharing most of its bigrams with every other.
_VOCAB_RNG = random.Random(20261201)
WORDS = ["".join(chr(_VOCAB_RNG.randint(0x4E00, 0x62FF)) for _ in range(2)) for _ in range(3000)]


def list_titles(source: int, round_no: int, size: int) -> list[str]:
    """Titles of source `source` in round `round_no`: 10% new and 20% moved per round."""
    rng = random.Random(source * 1_000_003)
    titles = [f"{''.join(rng.sample(WORDS, 5))} {source}-{k}" for k in range(size)]
    for r in range(1, round_no + 1):
        step = random.Random(source * 7919 + r)
        new_count = size // 10
        for j in step.sample(range(size), new_count):
            titles[j] = f"{''.join(step.sample(WORDS, 5))} {source}-r{r}-{j}"
        moved = step.sample(range(size), size // 5)
        values = [titles[j] for j in moved]
        step.shuffle(values)
        for j, v in zip(moved, values, strict=True):
            titles[j] = v
    return titles


def newsnow_body(source: int, round_no: int, size: int) -> bytes:
    items: list[dict[str, Any]] = []
    for rank, title in enumerate(list_titles(source, round_no, size), start=1):
        entry: dict[str, Any] = {
            "id": f"https://hot.example/{source}/{title}",
            "title": title,
            "url": f"https://hot.example/s/{source}?q={title}&utm_source=nn",
        }
        if source % 2 == 0:
            entry["extra"] = {"info": f"{(size - rank + 1) * 13.7:.1f}万热度"}
        items.append(entry)
    return json.dumps(
        {"status": "success", "id": f"s{source}", "updatedTime": 1764571200000 + round_no, "items": items},
        ensure_ascii=False,
    ).encode()


def feed_body(source: int, round_no: int, size: int) -> bytes:
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>',
        f"<title>Feed {source}</title><link>https://feed{source}.example/</link><description>d</description>",
    ]
    for title in list_titles(source + 100_000, round_no, size):
        parts.append(
            f"<item><title>{title}</title><link>https://feed{source}.example/p/{zlib.crc32(title.encode())}"
            f'</link><guid isPermaLink="false">{source}-{title}</guid>'
            f"<description>摘要 {title}</description>"
            "<pubDate>Mon, 30 Nov 2026 08:00:00 GMT</pubDate></item>"
        )
    parts.append("</channel></rss>")
    return "".join(parts).encode()


def _response(status: int, body: bytes, ctype: str | None, etag: str | None = None) -> bytes:
    reason = {200: "OK", 304: "Not Modified", 404: "Not Found"}[status]
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    if ctype:
        head.append(f"Content-Type: {ctype}")
    if etag:
        head.append(f"ETag: {etag}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Payloads:
    """Every response of the current round, rendered when the round is set (not while timed)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.round = 0
        self.cache: dict[tuple[str, int], bytes] = {}
        self.not_modified = _response(304, b"", None, '"r0"')

    def set_round(self, round_no: int) -> None:
        if round_no != self.round:
            self.round, self.cache = round_no, {}
            self.not_modified = _response(304, b"", None, f'"r{round_no}"')

    def get(self, kind: str, source: int) -> bytes:
        key = (kind, source)
        out = self.cache.get(key)
        if out is None:
            if kind == "nn":
                out = _response(200, newsnow_body(source, self.round, self.size), "application/json")
            else:
                etag = f'"r{self.round}"'
                body = feed_body(source, self.round, self.size)
                out = _response(200, body, "application/rss+xml; charset=utf-8", etag)
            self.cache[key] = out
        return out


def _serve(port_queue: Queue, size: int) -> None:  # type: ignore[type-arg]
    """A keep-alive HTTP/1.1 server on raw asyncio: it answers in microseconds, so the
    client's own path is what the benchmark measures, not Python's http.server."""
    import asyncio

    payloads = _Payloads(size)

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4 :]
                lines = head.split("\r\n")
                path = lines[0].split(" ")[1]
                headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                self.transport.write(self.answer(path, {k.lower(): v for k, v in headers.items()}))

        def answer(self, path: str, headers: dict[str, str]) -> bytes:
            parts = path.strip("/").split("/")
            if parts[0] == "round":
                payloads.set_round(int(parts[1]))
                for kind in ("nn", "feed"):
                    for source in range(int(parts[2]) if len(parts) > 2 else 0):
                        payloads.get(kind, source)
                return _response(200, b"ok", "text/plain")
            if parts[0] not in ("nn", "feed"):
                return _response(404, b"", None)
            if parts[0] == "feed" and headers.get("if-none-match") == f'"r{payloads.round}"':
                return payloads.not_modified
            return payloads.get(parts[0], int(parts[1]))

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Protocol, "127.0.0.1", 0, backlog=1024)
        port_queue.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def start_server(size: int) -> tuple[Process, int]:
    """Start the payload server in its own process (so it does not share our GIL)."""
    q: Queue = Queue()  # type: ignore[type-arg]
    proc = Process(target=_serve, args=(q, size), daemon=True)
    proc.start()
    return proc, int(q.get(timeout=30))
