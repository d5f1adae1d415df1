"""Pure normalization: heat numbers, canonical URLs, titles and item keys."""

from __future__ import annotations

import hashlib

import pytest

from aggregator.models import RawItem
from aggregator.normalize import (
    ODD,
    IdentityMemo,
    canonical_url,
    clean_text,
    item_key,
    normalize_items,
    normalize_title,
    parse_heat,
)


@pytest.mark.parametrize(
    ("raw", "number"),
    [
        ("123万", 1_230_000),
        ("1.2亿", 120_000_000),
        ("856 万热度", 8_560_000),
        ("4956213", 4_956_213),
        ("10万+", 100_000),
        ("１２３万", 1_230_000),
        ("盛典 215325", 215_325),
        (378435, 378_435),
        ("18.7万讨论 4.8亿阅读", 187_000),
        ("1,234,567", 1_234_567),
        ("2.5k", 2500),
        ("", None),
        ("热", None),
        (None, None),
        (False, None),
        ("-10.06% SZ", None),
        (-5, None),
    ],
)
def test_parse_heat(raw: object, number: float | None) -> None:
    assert parse_heat(raw) == number


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("HTTPS://Example.COM:443/a?utm_source=x&b=2&a=1#frag", "https://example.com/a?a=1&b=2"),
        ("http://example.com:8080", "http://example.com:8080/"),
        ("https://s.weibo.com/weibo?q=%23x%23&band_rank=3&Refer=top", "https://s.weibo.com/weibo?q=%23x%23"),
        ("https://m.example.com/p?spm=a.b.c&from=timeline&id=7", "https://m.example.com/p?id=7"),
        ("javascript:alert(1)", None),
        ("/relative/path", None),
        ("", None),
        ("http://[::1]:99/x", "http://[::1]:99/x"),
    ],
)
def test_canonical_url(url: str, canonical: str | None) -> None:
    assert canonical_url(url) == canonical


@pytest.mark.parametrize(
    ("title", "normal"),
    [
        ("#某某回应#", "某某回应"),
        ("  Ｈｅｌｌｏ　World  ", "hello world"),
        ("【快讯】某地暴雨！", "快讯】某地暴雨"),
        ("#话题# 与 #另一个#", "话题 与 另一个"),
    ],
)
def test_normalize_title(title: str, normal: str) -> None:
    assert normalize_title(title) == normal


def test_item_key_is_16_hex_of_sha256() -> None:
    expected = hashlib.sha256(b"weibo\x00https://x.example/a").hexdigest()[:16]
    assert item_key("weibo", "https://x.example/a") == expected
    assert len(expected) == 16 and int(expected, 16) >= 0


def test_clean_text_strips_controls_and_bidi() -> None:
    assert clean_text("a\x00b\u202ec\u200bd\n\n e &amp; f", 100) == "abcd e & f"
    assert clean_text("x" * 50, 10) == "x" * 10


def test_normalize_items_identity_and_ranks() -> None:
    raw = [
        RawItem(title="A &amp; B", url="https://e.example/1?utm_medium=x", native_id="n1", heat_raw="12万"),
        RawItem(title="   "),  # no title: dropped
        RawItem(title="C", url="https://e.example/3"),
        RawItem(title="C", url="https://e.example/3"),  # a repeat: dropped
        RawItem(title="D", rank=9),
    ]
    items, dropped = normalize_items("src", raw)
    assert dropped == 2
    assert [i.title for i in items] == ["A & B", "C", "D"]
    assert [i.rank for i in items] == [1, 2, 9]
    assert items[0].key == item_key("src", "n1")  # the platform's id comes first
    assert items[1].key == item_key("src", "https://e.example/3")  # then the canonical URL
    assert items[2].key == item_key("src", "d")  # then the normalized title
    assert items[0].heat == 120_000 and items[0].heat_raw == "12万"
    assert items[0].canonical_url == "https://e.example/1"


def test_memo_reuses_identities_and_keeps_no_payload_strings() -> None:
    long_url = "https://e.example/" + "x" * 3000

    def payload(titles: list[str]) -> list[RawItem]:
        # Each poll decodes its own string objects, equal to the last poll's.
        raws = [RawItem(title="".join(list(t)), url=f"https://e.example/{t}?utm_source=x") for t in titles]
        # Entries that cleaning changes: an entity and spaces, a URL too long to keep, an id to trim.
        raws.append(RawItem(title="".join(list(" 甲&amp;乙 ")), url="".join(list(long_url))))
        raws.append(RawItem(title="".join(list("Show HN: Foo")), url=None, native_id="".join(list(" id-7 "))))
        raws.append(RawItem(title="".join(list("   ")), url="https://e.example/blank"))  # no title: dropped
        return raws

    memo = IdentityMemo()
    first, dropped = normalize_items("weibo", payload(["甲新闻", "乙新闻"]), memo)
    second_raw = payload(["乙新闻", "丙新闻", "甲新闻"])
    second, dropped_again = normalize_items("weibo", second_raw, memo)
    fresh, _ = normalize_items("weibo", payload(["乙新闻", "丙新闻", "甲新闻"]))
    assert second == fresh and dropped == dropped_again == 1  # the memo changes nothing but the work done
    assert {it.key for it in first} <= {it.key for it in second}
    # What the items hold is this payload's own strings: the memo kept none of the first poll's.
    for raw, it in zip(second_raw, second, strict=False):
        if it.title == raw.title:
            assert it.title is raw.title
        if it.url == raw.url:
            assert it.url is raw.url
    assert [it.title for it in second[3:]] == ["甲&乙", "Show HN: Foo"]
    assert second[3].url is None and second[4].native_id == "id-7"
    # The three plain entries in arrays (their canonical URL a prefix of the URL); the two
    # cleaned ones in full and the one without a title aside.
    assert len(memo) == 6 and sorted(len(p) if p else 0 for p in memo.odd.values()) == [0, 6, 6]
    assert sorted(memo.canon) == [
        ODD,
        ODD,
        ODD,
        *(len("https://e.example/") + len(t) for t in ["丙新闻", "乙新闻", "甲新闻"]),
    ]
    assert [it.rank for it in second] == [1, 2, 3, 4, 5]
