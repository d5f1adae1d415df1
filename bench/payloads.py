"""Synthetic hot lists and feeds for the benchmarks, served by a local HTTP server process.

Each source i has a list of `size` entries per round r: from one round to the next 10%
of the entries are new and 20% change rank, the rest keep their place. Feeds carry an
ETag per round, so a client that sends If-None-Match for the current round gets 304.
"""

from __future__ import annotations

import json
import random
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


def _serve(port_queue: Queue, size: int) -> None:  # type: ignore[type-arg]
    state = {"round": 0}
    cache: dict[tuple[str, int, int], bytes] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            if parts[0] == "round":
                with lock:
                    state["round"] = int(parts[1])
                return self._send(200, b"ok", "text/plain")
            kind, source = parts[0], int(parts[1])
            round_no = state["round"]
            if kind == "feed":
                etag = f'"r{round_no}"'
                if self.headers.get("If-None-Match") == etag:
                    return self._send(304, b"", None, {"ETag": etag})
            key = (kind, source, round_no)
            body = cache.get(key)
            if body is None:
                body = newsnow_body(source, round_no, size) if kind == "nn" else feed_body(source, round_no, size)
                cache[key] = body
            if kind == "nn":
                return self._send(200, body, "application/json")
            return self._send(200, body, "application/rss+xml; charset=utf-8", {"ETag": f'"r{round_no}"'})

        def _send(self, status: int, body: bytes, ctype: str | None, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            if ctype:
                self.send_header("Content-Type", ctype)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 1024  # many clients connect at once

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that hung up is not news

    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    port_queue.put(httpd.server_address[1])
    httpd.serve_forever()


def start_server(size: int) -> tuple[Process, int]:
    """Start the payload server in its own process (so it does not share our GIL)."""
    q: Queue = Queue()  # type: ignore[type-arg]
    proc = Process(target=_serve, args=(q, size), daemon=True)
    proc.start()
    return proc, int(q.get(timeout=30))
