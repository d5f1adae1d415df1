"""The one guarded path for outbound HTTP: deadlines, byte caps, redirects by hand.

Every request of every collector goes through `fetch`:
- a total deadline per request (httpx's timeouts are per read: a server that drips a
  byte a second never trips them);
- a cap on wire bytes and on decoded bytes, with decompression bounded per read so a
  small gzip bomb never becomes a large buffer;
- redirects followed by hand, at most MAX_REDIRECTS, bodies never read, each hop's URL
  re-checked;
- a per-host concurrency limit, TLS always verified, no proxy from the environment
  unless one is configured;
- httpx's API on aiohttp's wire (see `transport`).
Errors leave as FetchError with a kind (see aggregator.errors.ERROR_KINDS).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import re
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from aggregator.collectors.transport import AiohttpTransport
from aggregator.errors import FetchError, ParseError
from aggregator.models import Collected, RawItem, SourceState
from aggregator.settings import HttpSettings, SourceSettings

MAX_REDIRECTS = 5
MAX_CONNECTIONS = 100  # open at once, all hosts together (each host also has http.per_host_limit)
# What a source is configured with is for its own host: a redirect to another host gets
# none of it, and what that host sets is not kept for the source.
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
# Chinese sites often serve GBK while saying (or defaulting to) UTF-8; GB18030 is the
# superset that reads GB2312 and GBK bytes alike.
_GB_CHARSETS = frozenset({"gb2312", "gbk", "x-gbk", "gb18030", "cp936"})
# Retry-After beyond this is a server asking us to go away for good; we come back anyway.
MAX_RETRY_AFTER_S = 6 * 3600.0
_CHARSET = re.compile(r"charset=[\"']?([\w.:-]+)", re.I)
# Pages that stand where a list should be: anti-bot walls, captchas and logins.
_BLOCKED_MARKERS = (
    "sina visitor system",
    "passport.weibo.com/visitor",
    "captcha",
    "验证码",
    "安全验证",
    "cf-challenge",
    "challenge-platform",
    "just a moment...",
    "请登录",
    "访问过于频繁",
)


@dataclass(frozen=True, slots=True)
class FetchResponse:
    status: int
    url: str
    headers: Mapping[str, str]
    body: bytes
    set_cookies: dict[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def charset(self) -> str | None:
        match = _CHARSET.search(self.headers.get("content-type", ""))
        return match.group(1).lower() if match else None


# Awaited with each URL about to be requested (the first and every redirect hop); raises
# FetchError(kind="blocked") to refuse it. The full-text fetcher passes an SSRF guard.
UrlCheck = Callable[[str], Awaitable[None]]
# Called with (host, IP actually connected) once a response has begun, before its body
# is read; raises FetchError(kind="blocked") to refuse it.
PeerCheck = Callable[[str, str], None]


@dataclass(slots=True)
class Fetcher:
    """An httpx transport plus the limits and headers that apply to every request made with it.

    Requests go to the transport directly: httpx's client layer would only add a cookie
    jar shared by every source of a host (the fetcher keeps cookies per source), redirect
    and auth machinery the fetcher does by hand, and a third of each request's CPU.
    """

    transport: httpx.AsyncBaseTransport
    settings: HttpSettings
    headers: dict[str, str] = field(default_factory=dict)
    timeout: dict[str, float | None] = field(default_factory=dict)  # httpx's "timeout" extension
    _host_locks: dict[str, asyncio.Semaphore] = field(default_factory=dict)

    def host_limit(self, url: str) -> asyncio.Semaphore:
        host = urlsplit(url).hostname or ""
        lock = self._host_locks.get(host)
        if lock is None:
            lock = self._host_locks[host] = asyncio.Semaphore(self.settings.per_host_limit)
        return lock

    def request(self, url: str, headers: Mapping[str, str]) -> httpx.Request:
        return httpx.Request("GET", url, headers={**self.headers, **headers}, extensions={"timeout": self.timeout})

    async def aclose(self) -> None:
        await self.transport.aclose()


def make_fetcher(settings: HttpSettings) -> Fetcher:
    timeout = httpx.Timeout(settings.timeout, connect=settings.connect_timeout)
    return Fetcher(
        transport=AiohttpTransport(max_connections=MAX_CONNECTIONS, proxy=settings.proxy or None),
        settings=settings,
        headers={"User-Agent": settings.user_agent, "Accept-Encoding": "gzip, deflate"},
        timeout=timeout.as_dict(),
    )


def _retry_after_s(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class _Decoder:
    """gzip/deflate decoding whose output per call is bounded by `limit` bytes."""

    def __init__(self, encoding: str) -> None:
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            self._z: Any = None
        elif encoding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._z = zlib.decompressobj()
        else:
            raise FetchError(f"unsupported Content-Encoding {encoding!r}", kind="network")

    def feed(self, chunk: bytes, limit: int) -> bytes | None:
        """The decoded bytes of `chunk`, or None when they would be more than `limit`."""
        if self._z is None:
            return chunk
        try:
            out = self._z.decompress(chunk, limit + 1)
            if self._z.unconsumed_tail:
                # More output waits than the cap allows: stop here without inflating it.
                return None
            return bytes(out)
        except zlib.error as exc:
            raise FetchError(f"corrupt compressed body: {exc}", kind="network") from exc

    def finish(self) -> None:
        """The body ended: a compressed stream cut short is a truncated response, not a list."""
        if self._z is not None and not self._z.eof:
            raise FetchError("compressed body ends before its end marker (truncated response)", kind="network")


def _cookie_header(cookies: Mapping[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


def _parse_set_cookies(headers: httpx.Headers) -> dict[str, str]:
    found: dict[str, str] = {}
    for raw in headers.get_list("set-cookie"):
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            continue
        for name, morsel in jar.items():
            found[name] = morsel.value
    return found


def _classify(exc: httpx.HTTPError) -> FetchError:
    if isinstance(exc, httpx.TimeoutException):
        return FetchError(f"timed out ({type(exc).__name__})", kind="timeout")
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text:
        return FetchError(f"TLS error: {text}", kind="tls")
    lowered = text.lower()
    if (
        "name or service not known" in lowered
        or "nodename nor servname" in lowered
        or "getaddrinfo" in lowered
        or "temporary failure in name resolution" in lowered
        or "no address associated" in lowered
    ):
        return FetchError(f"DNS lookup failed: {text}", kind="dns")
    if isinstance(exc, httpx.TooManyRedirects):
        return FetchError(text, kind="redirect_loop")
    return FetchError(f"network error: {text}", kind="network")


async def fetch(
    fetcher: Fetcher,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    cookies: Mapping[str, str] | None = None,
    etag: str | None = None,
    last_modified: str | None = None,
    check_url: UrlCheck | None = None,
    check_peer: PeerCheck | None = None,
    deadline_s: float | None = None,
    max_bytes: int | None = None,
) -> FetchResponse:
    """GET `url` within the limits; returns 2xx and 304 responses, raises otherwise."""
    limits = fetcher.settings
    deadline = deadline_s if deadline_s is not None else limits.timeout
    cap = max_bytes if max_bytes is not None else limits.max_bytes
    try:
        async with asyncio.timeout(deadline):
            return await _fetch(fetcher, url, headers, cookies, etag, last_modified, check_url, check_peer, cap)
    except TimeoutError:
        raise FetchError(f"no complete response within {deadline:g}s", kind="timeout") from None


async def _fetch(
    fetcher: Fetcher,
    url: str,
    headers: Mapping[str, str] | None,
    cookies: Mapping[str, str] | None,
    etag: str | None,
    last_modified: str | None,
    check_url: UrlCheck | None,
    check_peer: PeerCheck | None,
    cap: int,
) -> FetchResponse:
    request_headers = dict(headers or {})
    if etag:
        request_headers["If-None-Match"] = etag
    if last_modified:
        request_headers["If-Modified-Since"] = last_modified
    jar = dict(cookies or {})
    set_cookies: dict[str, str] = {}
    seen: set[str] = set()
    home = urlsplit(url).hostname
    for _hop in range(MAX_REDIRECTS + 1):
        if urlsplit(url).scheme not in ("http", "https"):
            raise FetchError(f"refusing non-HTTP URL scheme in {url[:100]!r}", kind="blocked")
        if check_url is not None:
            await check_url(url)
        if url in seen:
            raise FetchError(f"redirect loop at {url[:200]}", kind="redirect_loop")
        seen.add(url)
        at_home = urlsplit(url).hostname == home
        hop_headers = {k: v for k, v in request_headers.items() if at_home or k.lower() not in _CREDENTIAL_HEADERS}
        if jar and at_home:
            hop_headers["Cookie"] = _cookie_header(jar)
        async with fetcher.host_limit(url):
            try:
                response = await fetcher.transport.handle_async_request(fetcher.request(url, hop_headers))
            except httpx.HTTPError as exc:
                raise _classify(exc) from exc
            try:
                if check_peer is not None:
                    stream = response.extensions.get("network_stream")
                    peer = stream.get_extra_info("server_addr") if stream is not None else None
                    if peer:
                        check_peer(urlsplit(url).hostname or "", str(peer[0]))
                if at_home:
                    new_cookies = _parse_set_cookies(response.headers)
                    set_cookies.update(new_cookies)
                    jar.update(new_cookies)
                if response.status_code in (301, 302, 303, 307, 308):
                    location = response.headers.get("location")
                    if not location:
                        raise FetchError(
                            f"HTTP {response.status_code} without Location",
                            kind="http_4xx",
                            http_status=response.status_code,
                        )
                    url = urljoin(url, location)
                    continue  # the redirect body is never read
                if response.status_code == 304:
                    return FetchResponse(304, url, dict(response.headers), b"", set_cookies)
                _raise_for_status(response)
                body = await _read_capped(response, cap)
                return FetchResponse(response.status_code, url, dict(response.headers), body, set_cookies)
            except httpx.HTTPError as exc:
                # Reading the body fails in its own ways: a reset, a short body, a read timeout.
                raise _classify(exc) from exc
            finally:
                await response.aclose()
    raise FetchError(f"more than {MAX_REDIRECTS} redirects", kind="redirect_loop")


def _raise_for_status(response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    retry_after = _retry_after_s(response.headers.get("retry-after"), time.time())
    if status == 429 or (status == 503 and retry_after is not None):
        raise FetchError(
            f"HTTP {status}: rate limited", kind="rate_limited", http_status=status, retry_after_s=retry_after
        )
    kind = "http_5xx" if status >= 500 else "http_4xx"
    raise FetchError(
        f"HTTP {status} {response.reason_phrase}".strip(), kind=kind, http_status=status, retry_after_s=retry_after
    )


async def _read_capped(response: httpx.Response, cap: int) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise FetchError(
            f"body of {int(declared)} bytes is over the {cap}-byte cap",
            kind="too_large",
            http_status=response.status_code,
        )
    decoder = _Decoder(response.headers.get("content-encoding", ""))
    wire = 0
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        wire += len(chunk)
        if wire > cap:
            raise FetchError(f"body over the {cap}-byte cap", kind="too_large", http_status=response.status_code)
        decoded = decoder.feed(chunk, cap - size)
        size += len(decoded) if decoded is not None else cap + 1
        if decoded is None or size > cap:
            raise FetchError(
                f"decoded body over the {cap}-byte cap after {wire} bytes on the wire",
                kind="too_large",
                http_status=response.status_code,
            )
        parts.append(decoded)
    decoder.finish()
    return b"".join(parts)


def looks_blocked(body: bytes) -> bool:
    """An anti-bot wall, captcha or login page instead of the content (UTF-8 or GBK)."""
    sample = body[:16384]
    head = sample.decode("utf-8", "replace").lower()
    if "\ufffd" in head:
        head += sample.decode("gb18030", "replace").lower()
    return any(marker in head for marker in _BLOCKED_MARKERS)


def _codec(label: str | None) -> str:
    name = (label or "utf-8").strip().lower()
    if name in _GB_CHARSETS:
        return "gb18030"
    try:
        b"a".decode(name)  # refuses labels Python lacks and codecs that are not text (base64, zlib)
    except LookupError:
        return "utf-8"
    except UnicodeDecodeError:
        pass  # a text codec that needs more than one byte (UTF-16, UTF-32)
    return name


def decode_text(body: bytes, charset: str | None, what: str) -> str:
    """`body` as text: UTF-8 when it is valid UTF-8, else its declared charset, else GB18030.

    Valid UTF-8 wins over a declared charset because a label is often wrong (a server's
    default ISO-8859-1, GBK in a template) and text in another charset is almost never
    valid UTF-8. A body that decodes as none of them is a ParseError: decoded with a
    codec it was not written in, it would be stored as mojibake.
    """
    codec = _codec(charset)
    if not codec.startswith(("utf-16", "utf-32", "utf_16", "utf_32")):
        with contextlib.suppress(UnicodeDecodeError):
            return body.decode("utf-8")
    try:
        return body.decode(codec)
    except UnicodeDecodeError as exc:
        failure = exc
    if codec != "gb18030":
        with contextlib.suppress(UnicodeDecodeError):
            return body.decode("gb18030")
    bad = body[failure.start : failure.start + 4]
    raise ParseError(f"{what} is neither valid {codec} nor GB18030 (bytes {bad!r} at {failure.start})", kind="parse")


def decode_json(response: FetchResponse, what: str) -> Any:
    """Parse a JSON body, with clear errors for HTML pages and walls served with 200."""
    body = response.body.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not body:
        raise ParseError(f"empty body where {what} JSON was expected", kind="empty")
    if body[:1] == b"<":
        if looks_blocked(body):
            raise ParseError(f"an anti-bot or login page where {what} JSON was expected", kind="blocked")
        title = re.search(rb"<title[^>]*>(.{0,80}?)</title>", body[:8192], re.I | re.S)
        shown = title.group(1).decode("utf-8", "replace").strip() if title else "untitled"
        raise ParseError(f"an HTML page ({shown!r}) where {what} JSON was expected", kind="parse")
    try:
        try:
            return json.loads(body)
        except UnicodeDecodeError:
            return json.loads(decode_text(body, response.charset, f"{what} body"))
    except RecursionError:
        raise ParseError(f"{what} body nests too deep to be a list", kind="parse") from None
    except ValueError as exc:  # JSONDecodeError, and integers longer than Python converts
        raise ParseError(f"{what} body is not valid JSON: {str(exc)[:200]}", kind="parse") from exc


@contextlib.contextmanager
def parsing(response: FetchResponse) -> Iterator[None]:
    """Parse errors raised inside carry the HTTP status of the response they came from."""
    try:
        yield
    except ParseError as exc:
        if exc.http_status is None:
            exc.http_status = response.status
        raise


ListParser = Callable[[FetchResponse], tuple[list[RawItem], int]]


async def collect_list(
    fetcher: Fetcher,
    source: SourceSettings,
    state: SourceState,
    parse: ListParser,
    *,
    url: str,
    headers: Mapping[str, str],
) -> Collected:
    """The whole `collect` of a hot list: fetch with the source's headers and cookies, parse."""
    response = await fetch(
        fetcher, url, headers={**headers, **source.headers}, cookies={**state.cookies, **source.cookies}
    )
    with parsing(response):
        items, dropped = parse(response)
    return Collected(
        items=items, http_status=response.status, dropped_count=dropped, cookies=response.set_cookies or None
    )
