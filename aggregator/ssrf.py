"""Which addresses outbound requests may reach: a pure SSRF policy over URLs and connected IPs (no I/O)."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from urllib.parse import urlsplit

from aggregator.errors import FetchError

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

ALLOWED_SCHEMES = ("http", "https")
# A DNS name is at most 253 characters; anything longer is not a host we can reach.
MAX_HOST_CHARS = 253

# Never reachable as a destination: Python's `is_global` already refuses most of these,
# but its tables changed between patch releases (3.11.10, 3.12.4, 3.13), so the policy
# lists them itself. Multicast is listed because `is_global` says True for it.
_BLOCKED_V4 = tuple(
    IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host on Linux
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, including cloud metadata at 169.254.169.254
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255 broadcast
    )
)
_BLOCKED_V6 = tuple(
    IPv6Network(net)
    for net in (
        "::/96",  # unspecified, loopback and the deprecated IPv4-compatible addresses
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, including Teredo 2001::/32
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4: refused whole, whatever IPv4 address it embeds
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # SRv6 SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
# Well-known NAT64 prefix: the last 32 bits are the IPv4 address actually reached.
_NAT64 = IPv6Network("64:ff9b::/96")

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
# C0 controls, space and DEL: browsers strip or drop some of them and other parsers do
# not, so a URL carrying any is refused rather than guessed at.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_AUTHORITY_END = re.compile(r"[/?#\\]")
# Characters that no host may hold (WHATWG's forbidden host code points, and space).
_FORBIDDEN_HOST = re.compile(r"[\x00-\x20\x7f#%/:<>?@\[\\\]^|]")
_PORT = re.compile(r"[0-9]{1,5}")
# Parts of an IPv4 literal the way inet_aton and browsers read them.
_HEX_PART = re.compile(r"0[xX][0-9a-fA-F]*")
_OCTAL_PART = re.compile(r"0[0-7]+")
_DECIMAL_PART = re.compile(r"0|[1-9][0-9]*")
# A host whose last label looks like a number is an IPv4 literal to a browser, valid or not.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")


@dataclass(frozen=True, slots=True)
class _Allow:
    networks: tuple[IPNetwork, ...]
    hosts: frozenset[str]
    suffixes: tuple[str, ...]  # from "*.example.com": ".example.com"


def is_public_address(ip: IPAddress) -> bool:
    """True when `ip` is a globally reachable unicast address (embedded IPv4 checked too)."""
    if isinstance(ip, IPv6Address):
        if ip.scope_id:
            return False
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return is_public_address(mapped)
        if ip in _NAT64:
            return is_public_address(IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None and not is_public_address(ip.sixtofour):
            return False
        teredo = ip.teredo
        if teredo is not None and not all(is_public_address(part) for part in teredo):
            return False
        if any(ip in net for net in _BLOCKED_V6):
            return False
    elif any(ip in net for net in _BLOCKED_V4):
        return False
    return ip.is_global and not ip.is_multicast and not ip.is_reserved and not ip.is_unspecified


def parse_host_literal(host: str) -> IPAddress | None:
    """The IP address `host` stands for, read as browsers and inet_aton read it; None for a name.

    Accepts `[v6]` and bare v6, and IPv4 in the forms libc accepts: 1 to 4 parts, each
    decimal, octal (leading 0) or hex (0x), the last filling the remaining bytes: `127.1`,
    `0x7f.1`, `2130706433`, `0177.0.0.1`. Full-width digits and dots count as ASCII ones.
    """
    text = _normalize_host(host)
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1].replace("%25", "%")
        return _parse_v6(text)
    if ":" in text:
        return _parse_v6(text)
    if text.endswith("."):
        text = text[:-1]
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        number = _parse_v4_part(part)
        if number is None:
            return None
        numbers.append(number)
    *head, last = numbers
    if any(n > 0xFF for n in head) or last >= 1 << (8 * (5 - len(numbers))):
        return None
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return IPv4Address(value)


def check_url(url: str, allow: Sequence[str]) -> None:
    """Refuse (FetchError kind="blocked") a URL that is not http(s), carries credentials, is
    ambiguous to parse, or names a non-public IP literal outside `allow`.

    `allow` holds hostnames (exact, or `*.example.com` for subdomains), IPs and CIDRs such as
    "127.0.0.0/8". Names are not resolved here: call `check_resolved` for every address
    actually connected to.
    """
    if _CONTROL.search(url):
        raise _blocked("URL contains control characters or line breaks")
    scheme_match = _SCHEME.match(url)
    scheme = scheme_match[1].lower() if scheme_match else ""
    if scheme not in ALLOWED_SCHEMES:
        raise _blocked(f"scheme {scheme or '(none)'!r} is not allowed; only http and https")
    rest = url[scheme_match.end() :] if scheme_match else url
    if not rest.startswith("//"):
        raise _blocked("URL has no host")
    rest = rest[2:]
    end = _AUTHORITY_END.search(rest)
    authority = rest[: end.start()] if end else rest
    if "\\" in rest.split("?", 1)[0].split("#", 1)[0]:
        raise _blocked("URL contains a backslash, which parsers disagree about")
    if "@" in authority:
        # Also the `user@127.0.0.1@example.com` trick; credentials belong in headers.
        raise _blocked("URL carries credentials (userinfo), which are not allowed")
    host, port = _split_authority(authority)
    if port is not None and not (_PORT.fullmatch(port) and 0 < int(port) <= 0xFFFF):
        raise _blocked(f"invalid port {port!r}")
    try:
        other = urlsplit(url).hostname
    except ValueError as exc:
        raise _blocked(f"malformed URL: {exc}") from None
    if (other or "") != host.strip("[]").lower():
        raise _blocked("URL host is ambiguous")
    _check_host(host, _parse_allow(allow))


def check_resolved(host: str, ip: IPAddress | str, allow: Sequence[str]) -> None:
    """Refuse (FetchError kind="blocked") connecting to `ip` for `host` unless it is public or allowed."""
    address: IPAddress | None
    if isinstance(ip, str):
        address = parse_host_literal(ip)
        if address is None:
            raise _blocked(f"{host} resolved to {ip!r}, which is not an IP address")
    else:
        address = ip
    rules = _parse_allow(allow)
    if _host_allowed(_normalize_host(host).rstrip("."), rules) or _ip_allowed(address, rules):
        return
    if not is_public_address(address):
        raise _blocked(f"{host} resolves to {address}, which is not a public address")


def _check_host(host: str, rules: _Allow) -> None:
    if not host:
        raise _blocked("URL has no host")
    if len(host) > MAX_HOST_CHARS + 2:
        raise _blocked("host name too long")
    if host.startswith("["):
        address = parse_host_literal(host)
        if address is None:
            raise _blocked(f"malformed IPv6 literal {host!r}")
    else:
        name = _normalize_host(host)
        if _FORBIDDEN_HOST.search(name) or ".." in name or name.startswith("."):
            raise _blocked(f"invalid host {host!r}")
        address = parse_host_literal(name)
        if address is None:
            last = name.rstrip(".").rsplit(".", 1)[-1]
            if _NUMERIC_LABEL.fullmatch(last):
                raise _blocked(f"malformed IPv4 literal {host!r}")
            return  # a name: its addresses are checked when connecting
        if _host_allowed(name.rstrip("."), rules):
            return
    if not (_ip_allowed(address, rules) or is_public_address(address)):
        raise _blocked(f"{host} is not a public address ({address})")


def _split_authority(authority: str) -> tuple[str, str | None]:
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise _blocked("unclosed IPv6 literal")
        host, after = authority[: close + 1], authority[close + 1 :]
        if not after:
            return host, None
        if not after.startswith(":"):
            raise _blocked("garbage after IPv6 literal")
        return host, after[1:] or None
    host, colon, port = authority.partition(":")
    if ":" in port:
        raise _blocked("more than one ':' in the host")
    return host, (port or None) if colon else None


def _normalize_host(host: str) -> str:
    # What IDNA mapping (UTS 46) does to digits and dots before a browser reads a literal.
    return unicodedata.normalize("NFKC", host).replace("\u3002", ".").strip().lower()


def _parse_v6(text: str) -> IPv6Address | None:
    try:
        return IPv6Address(text)
    except ValueError:
        return None


def _parse_v4_part(part: str) -> int | None:
    if _HEX_PART.fullmatch(part):
        return int(part[2:] or "0", 16)
    if _OCTAL_PART.fullmatch(part):
        return int(part, 8)
    if _DECIMAL_PART.fullmatch(part):
        return int(part)
    return None


def _parse_allow(allow: Sequence[str]) -> _Allow:
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    suffixes: list[str] = []
    for raw in allow:
        entry = _normalize_host(raw).rstrip(".")
        if not entry:
            continue
        if "/" in entry:
            try:
                networks.append(ipaddress.ip_network(entry.replace("[", "").replace("]", ""), strict=False))
            except ValueError as exc:
                raise ValueError(f"allowlist entry {raw!r} is not a CIDR: {exc}") from None
            continue
        address = parse_host_literal(entry)
        if address is not None:
            networks.append(ipaddress.ip_network(address))
        elif entry.startswith("*."):
            suffixes.append(entry[1:])
        elif _NUMERIC_LABEL.fullmatch(entry.rsplit(".", 1)[-1]):
            raise ValueError(f"allowlist entry {raw!r} is neither an IP address nor a host name")
        else:
            hosts.add(entry)
    return _Allow(networks=tuple(networks), hosts=frozenset(hosts), suffixes=tuple(suffixes))


def _host_allowed(name: str, rules: _Allow) -> bool:
    return name in rules.hosts or any(name.endswith(suffix) for suffix in rules.suffixes)


def _ip_allowed(address: IPAddress, rules: _Allow) -> bool:
    candidates: list[IPAddress] = [address]
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(candidate in net for candidate in candidates for net in rules.networks)


def _blocked(reason: str) -> FetchError:
    return FetchError(f"blocked: {reason}", kind="blocked")
