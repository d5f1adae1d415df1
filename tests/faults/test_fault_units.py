"""The pure parts of fault handling, table-driven: backoff timing, decoding, hostile numbers and text."""

from __future__ import annotations

import itertools
import random

import pytest

from aggregator.backoff import MAX_BACKOFF_S, MIN_RETRY_AFTER_S, retry_delay_s
from aggregator.collectors.fetch import FetchResponse, decode_text
from aggregator.errors import ParseError
from aggregator.normalize import clean_text, parse_heat


@pytest.mark.parametrize("interval_s", [1.0, 60.0, 600.0])
def test_backoff_grows_to_the_cap_and_never_past_it(interval_s: float) -> None:
    rng = random.Random(7)
    delays = [retry_delay_s(interval_s, failures, rng=rng) for failures in range(1, 40)]
    assert delays[0] == interval_s  # the first retry is one interval away
    assert all(interval_s <= d <= MAX_BACKOFF_S for d in delays)
    assert delays[-1] >= 0.8 * MAX_BACKOFF_S  # reached the cap
    assert all(later >= 0.8 * earlier for earlier, later in itertools.pairwise(delays))


@pytest.mark.parametrize("failures", [1024, 1025, 5000, 10**9])
def test_backoff_never_gives_up_after_many_failures(failures: int) -> None:
    # 2.0 ** 1024 overflows: a source down for months must still get a next attempt.
    assert 0.8 * MAX_BACKOFF_S <= retry_delay_s(600.0, failures) <= MAX_BACKOFF_S


def test_backoff_is_jittered() -> None:
    rng = random.Random(3)
    assert len({round(retry_delay_s(60.0, 5, rng=rng), 3) for _ in range(20)}) > 10


@pytest.mark.parametrize(
    ("retry_after_s", "expected"),
    [(120.0, 120.0), (0.0, MIN_RETRY_AFTER_S), (-5.0, MIN_RETRY_AFTER_S), (10 * 86400.0, MAX_BACKOFF_S)],
)
def test_retry_after_is_honoured_within_bounds(retry_after_s: float, expected: float) -> None:
    assert retry_delay_s(1.0, 1, retry_after_s) == expected


def test_healthy_source_keeps_its_interval() -> None:
    assert retry_delay_s(120.0, 0) == 120.0


@pytest.mark.parametrize(
    ("body", "charset", "text"),
    [
        ("热搜".encode(), None, "热搜"),
        ("热搜".encode("gbk"), None, "热搜"),  # GBK without a label
        ("热搜".encode("gbk"), "utf-8", "热搜"),  # GBK labelled UTF-8
        ("热搜".encode("gb18030"), "GB2312", "热搜"),  # GB2312 labels are read as their superset
        ("热搜".encode("utf-16"), "utf-16", "热搜"),
        ("café".encode("latin-1"), "iso-8859-1", "café"),  # a declared charset that decodes is believed
        ("热搜".encode(), "iso-8859-1", "热搜"),  # ... unless the body is valid UTF-8 (a server's default label)
        ("热搜".encode(), "gbk", "热搜"),
        ("热搜".encode(), "no-such-charset", "热搜"),
        ("热搜".encode(), "base64", "热搜"),  # a codec that is not a text encoding is no charset
    ],
)
def test_decode_text(body: bytes, charset: str | None, text: str) -> None:
    assert decode_text(body, charset, "body") == text


@pytest.mark.parametrize("body", [b"\x80\xff", b"ok \xff\xfe\xfd"])
def test_decode_text_refuses_what_decodes_as_nothing(body: bytes) -> None:
    with pytest.raises(ParseError) as caught:
        decode_text(body, "utf-8", "the list")
    assert caught.value.kind == "parse" and "GB18030" in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "heat"),
    [
        (float("inf"), None),
        (float("-inf"), None),
        (float("nan"), None),
        (10**30, None),
        (10**400, None),  # too large for a float at all
        (-3, None),
        (True, None),
        (123, 123.0),
        (4.5e6, 4.5e6),
    ],
)
def test_parse_heat_of_hostile_numbers(raw: object, heat: float | None) -> None:
    assert parse_heat(raw) == heat


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("a\x00b\x08c\x1bd\x7fe\x85f", "abcdef"),
        ("right\u202eto\u202cleft \u2066iso\u2069 \u061cmark", "righttoleft iso mark"),
        ("zero\u200bwidth\u2060join\ufeff", "zerowidthjoin"),
        ("lone\ud800sur\udfffrogate", "lonesurrogate"),
        ("anno\ufff9ta\ufffbtion", "annotation"),
        ("line\u2028para\u2029end", "line para end"),
        ("tab\tnew\nline", "tab new line"),
    ],
)
def test_clean_text_strips_what_no_reader_should_see(text: str, clean: str) -> None:
    assert clean_text(text, 100) == clean


def test_charset_of_a_response() -> None:
    response = FetchResponse(200, "http://x/", {"content-type": 'application/json; charset="GBK"'}, b"")
    assert response.charset == "gbk"
