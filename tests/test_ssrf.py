"""SSRF policy: address classes, host literals in every spelling, URL checks, allowlists."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from aggregator.errors import FetchError
from aggregator.ssrf import check_resolved, check_url, is_public_address, parse_host_literal

LOOPBACK = IPv4Address("127.0.0.1")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0X7F.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0x", "0.0.0.0"),
        ("１２７．０．０．１", "127.0.0.1"),  # full-width, as IDNA maps it
        ("127。0。0。1", "127.0.0.1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[fe80::1%25eth0]", "fe80::1%eth0"),
        ("93.184.216.34", "93.184.216.34"),
        ("example.com", None),
        ("1.2.3.4.5", None),
        ("256.0.0.1", None),
        ("1.2.3.256", None),
        ("1.2.65536", None),
        ("4294967296", None),
        ("08.0.0.1", None),
        ("1_0.0.0.1", None),
        ("+1.0.0.1", None),
        ("١٢٧.0.0.1", None),  # Arabic-Indic digits are not digits to a browser
        ("1..1", None),
        ("", None),
        ("[not-v6]", None),
    ],
)
def test_parse_host_literal(host: str, expected: str | None) -> None:
    parsed = parse_host_literal(host)
    assert (str(parsed) if parsed is not None else None) == expected


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.0.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.0.1",
        "100.64.0.1",
        "100.127.255.255",
        "0.0.0.0",
        "0.1.2.3",
        "192.0.0.1",
        "192.0.2.1",
        "198.51.100.1",
        "203.0.113.1",
        "198.18.0.1",
        "198.19.255.255",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "192.88.99.1",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "fec0::1",
        "ff02::1",
        "ff0e::1",
        "2001:db8::1",
        "2002:7f00:1::",
        "2002:5db8:d822::1",
        "64:ff9b::7f00:1",
        "64:ff9b::a00:1",
        "64:ff9b:1::1",
        "2001::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "100::1",
        "3fff::1",
        "fe80::1%eth0",
    ],
)
def test_non_public_addresses(ip: str) -> None:
    assert not is_public_address(ip_address(ip))


@pytest.mark.parametrize(
    "ip",
    [
        "93.184.216.34",
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700::1111",
        "2001:4860:4860::8888",
        "::ffff:93.184.216.34",
        "64:ff9b::5db8:d822",
        "100.128.0.1",
        "172.32.0.1",
    ],
)
def test_public_addresses(ip: str) -> None:
    assert is_public_address(ip_address(ip))


BLOCKED_URLS = [
    "http://127.1/",
    "http://0x7f.1/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://[::ffff:127.0.0.1]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/",
    "http://10.0.0.1/",
    "http://[::1]/",
    "http://[::1]:8080/",
    "http://0.0.0.0/",
    "http://0/",
    "http://[2002:7f00:1::]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[fe80::1%25eth0]/",
    "http://１２７.０.０.１/",
    "http://127.0.0.1./",
    "https://192.168.0.1:8443/admin",
    "file:///etc/passwd",
    "gopher://127.0.0.1:70/_stats",
    "gopher://",
    "ftp://example.com/file",
    "javascript:alert(1)",
    "data:text/html,hi",
    "//example.com/no-scheme",
    "example.com/no-scheme",
    "http:example.com",
    "http:/example.com",
    "http:///example.com",
    "http://user@127.0.0.1@example.com",
    "http://user@example.com/",
    "http://user:pass@example.com/",
    "http://example.com@127.0.0.1/",
    "http://127.0.0.1\\@example.com/",
    "http://example.com\\@127.0.0.1/",
    "http://127.0.0.1\\.example.com/",
    "http://exa\nmple.com/",
    "http://example.com\t/",
    " http://example.com/",
    "http://exa mple.com/",
    "http://%31%32%37.0.0.1/",
    "http://example.com:99999/",
    "http://example.com:0/",
    "http://example.com:80:80/",
    "http://[::1/",
    "http://[::1]x/",
    "http://1.2.3.4.5/",
    "http://08.0.0.1/",
    "http://example.0x10/",
    "http:///",
    "http://",
]


@pytest.mark.parametrize("url", BLOCKED_URLS)
def test_blocked_urls(url: str) -> None:
    with pytest.raises(FetchError) as caught:
        check_url(url, [])
    assert caught.value.kind == "blocked"
    assert "pass" not in str(caught.value)  # credentials are never echoed


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/",
        "https://93.184.216.34:8443/path?q=1#frag",
        "http://[2606:4700::1111]/",
        "https://[2606:4700::1111]:443/",
        "https://www.cls.cn/detail/2286386",
        "HTTPS://WWW.EXAMPLE.COM/A",
        "https://例子.中国/路径",
        "https://example.com/a b?c=d e",  # spaces in the path are the client's to encode
        "https://example.com:8080",
        "https://example.com:/",
        "https://example.com./",
        "https://1example.com/",
        "https://example.com/@user",
        "https://example.com/?next=http://127.0.0.1/",
    ],
)
def test_allowed_urls(url: str) -> None:
    check_url(url, [])


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("http://127.0.0.1:8080/", ["127.0.0.0/8"]),
        ("http://127.1:8080/", ["127.0.0.0/8"]),
        ("http://127.0.0.1/", ["127.0.0.1"]),
        ("http://[::1]/", ["::1"]),
        ("http://[::1]/", ["[::1]"]),
        ("http://[::ffff:127.0.0.1]/", ["127.0.0.0/8"]),
        ("http://10.1.2.3/", ["10.0.0.0/8", "192.168.0.0/16"]),
    ],
)
def test_allowlist_lets_literals_through(url: str, allow: list[str]) -> None:
    check_url(url, allow)


def test_allowlist_does_not_open_other_addresses() -> None:
    with pytest.raises(FetchError):
        check_url("http://10.0.0.1/", ["127.0.0.0/8"])
    with pytest.raises(FetchError):
        check_url("file:///etc/passwd", ["127.0.0.0/8"])
    with pytest.raises(FetchError):
        check_url("http://user@127.0.0.1/", ["127.0.0.0/8"])


def test_check_resolved_refuses_private_and_allows_public() -> None:
    check_resolved("example.com", IPv4Address("93.184.216.34"), [])
    check_resolved("example.com", "2606:4700::1111", [])
    for ip in ("127.0.0.1", "10.0.0.5", "169.254.169.254", "::1", "::ffff:127.0.0.1", "fe80::1%eth0"):
        with pytest.raises(FetchError) as caught:
            check_resolved("rebind.example.com", ip, [])
        assert caught.value.kind == "blocked"
        assert "rebind.example.com" in str(caught.value)


def test_check_resolved_allowlist() -> None:
    check_resolved("localhost", LOOPBACK, ["127.0.0.0/8"])
    check_resolved("localhost", IPv6Address("::ffff:127.0.0.1"), ["127.0.0.0/8"])
    check_resolved("mirror.lan", IPv4Address("192.168.1.10"), ["mirror.lan"])
    check_resolved("MIRROR.LAN.", IPv4Address("192.168.1.10"), ["mirror.lan"])
    check_resolved("a.corp.example", IPv4Address("10.0.0.1"), ["*.corp.example"])
    with pytest.raises(FetchError):
        check_resolved("corp.example", IPv4Address("10.0.0.1"), ["*.corp.example"])
    with pytest.raises(FetchError):
        check_resolved("other.lan", IPv4Address("192.168.1.10"), ["mirror.lan"])
    with pytest.raises(FetchError):
        check_resolved("localhost", IPv6Address("::1"), ["127.0.0.0/8"])


def test_check_resolved_refuses_garbage() -> None:
    with pytest.raises(FetchError):
        check_resolved("example.com", "not an ip", [])


@pytest.mark.parametrize("entry", ["127.0.0.0/33", "10.0.0.0/abc", "1.2.3.4.5"])
def test_bad_allowlist_entries_are_errors(entry: str) -> None:
    with pytest.raises(ValueError):
        check_url("https://example.com/", [entry])


def test_hostnames_are_left_to_check_resolved() -> None:
    # A name is not resolved by check_url; its addresses are checked when connecting.
    check_url("http://localhost:8080/", [])
    check_url("http://internal.corp/", [])
