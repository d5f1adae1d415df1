"""Pure normalization: clean text, canonical URLs, titles, item keys and heat numbers."""

from __future__ import annotations

import functools
import hashlib
import html
import math
import re
import unicodedata
from array import array
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aggregator.errors import ConfigError
from aggregator.models import Item, RawItem

# Limits on what one entry may carry: a title longer than this is not a headline, and a
# list longer than MAX_ITEMS is a broken or hostile payload.
MAX_TITLE_CHARS = 500
MAX_URL_CHARS = 2048
MAX_SUMMARY_CHARS = 4000
MAX_HEAT_RAW_CHARS = 64
MAX_ITEMS = 500

# Query parameters that only track the reader; dropping them makes the same article one URL.
TRACKING_PARAMS = frozenset(
    {
        "spm",
        "from",
        "band_rank",
        "refer",
        "fr",
        "share_token",
        "share_source",
        "share_from",
        "share_medium",
        "share_plat",
        "share_tag",
        "timestamp",
        "tt_from",
        "utm_source",
        "utm_medium",
        "utm_campaign",
        "utm_term",
        "utm_content",
        "utm_id",
        "fbclid",
        "gclid",
        "mc_cid",
        "mc_eid",
        "ref",
        "ref_src",
        "source",
        "sourcefrom",
        "wfr",
        "isappinstalled",
        "scene",
        "clicktime",
        "enterid",
        "vd_source",
        "unique_k",
        "is_sharing",
        "log_from",
    }
)
_TRACKING_PREFIXES = ("utm_", "hmsr", "_hs")

# C0/C1 controls (but tab/newline), zero-width and bidi marks: invisible text that can
# forge log lines or reorder what a reader sees. Lone surrogates (JSON "\\ud800") are not
# text at all: the database refuses to encode them.
_INVISIBLE = re.compile(
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb\ud800-\udfff]"
)
_SPACES = re.compile(r"\s+")
# Whitespace that collapsing changes: a run of two or more, or one that is not a plain space.
# Text without any is returned as the very object it came in as, so that what the identity
# memo keeps (raw fields and their cleaned forms) is one string, not two equal ones.
_SPACES_TO_FIX = re.compile(r"\s{2,}|[^\S ]")
_TOPIC_MARKS = re.compile(r"#([^#]{1,200})#")
_EDGE_PUNCT = " \t\r\n#【】[]「」『』《》\"'“”‘’:：,，.。!！?？;；|｜-—~·…"


def clean_text(text: str, limit: int) -> str:
    """Unescape HTML entities, drop invisible characters, collapse whitespace, cap length."""
    if "&" in text:
        unescaped = html.unescape(text)
        if unescaped != text:  # a URL's "&utm_source=" is no entity: keep the same object
            text = unescaped
    text = _INVISIBLE.sub("", text)
    text = _SPACES_TO_FIX.sub(" ", text).strip()
    return text[:limit]


def normalize_title(title: str) -> str:
    """NFKC, #话题# marks and edge punctuation removed, whitespace collapsed, lower-cased."""
    text = unicodedata.normalize("NFKC", title)
    text = _TOPIC_MARKS.sub(r"\1", text)
    text = _SPACES.sub(" ", text).strip(_EDGE_PUNCT)
    lowered = text.lower()
    # A title already normalized (most Chinese ones) stays one string object, not two.
    return title if lowered == title else lowered


# Words one search may hold: each is a LIKE per spelling, and SQLite limits expression depth.
MAX_SEARCH_WORDS = 20


def search_terms(texts: Iterable[str], key: str) -> list[list[str]]:
    """The words of `texts`, each with its spellings for a title search: as typed and
    NFKC-normalized (full-width letters and digits find their ASCII forms).

    ConfigError naming `key` when there is no word or more than MAX_SEARCH_WORDS.
    """
    words = [w for text in texts for w in text.split()]
    if not words:
        raise ConfigError(key, "give at least one word to search for")
    if len(words) > MAX_SEARCH_WORDS:
        raise ConfigError(key, f"at most {MAX_SEARCH_WORDS} words, not {len(words)}")
    return [list(dict.fromkeys((w, unicodedata.normalize("NFKC", w)))) for w in words]


def _is_tracking(name: str) -> bool:
    lowered = name.lower()
    return lowered in TRACKING_PARAMS or lowered.startswith(_TRACKING_PREFIXES)


def canonical_url(url: str | None) -> str | None:
    """Lower-case scheme and host, no fragment, no tracking parameters, sorted query."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    default_port = {"http": 80, "https": 443}[parts.scheme.lower()]
    netloc = host if port in (None, default_port) else f"{host}:{port}"
    if ":" in host:
        netloc = f"[{host}]" if port in (None, default_port) else f"[{host}]:{port}"
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _is_tracking(k))
    path = parts.path or "/"
    return urlunsplit((parts.scheme.lower(), netloc, path, urlencode(query), ""))


def item_key(source_id: str, identity: str) -> str:
    """16 lowercase hex chars of SHA-256 over source id, NUL, identity."""
    return hashlib.sha256(f"{source_id}\0{identity}".encode()).hexdigest()[:16]


def item_id_of(key: str) -> int:
    """The integer primary key of an item: the key's 64 bits folded into a signed 63.

    Computing it from the key lets one poll write items and observations without
    reading ids back from the database.
    """
    return int(key, 16) & 0x7FFF_FFFF_FFFF_FFFF


_FULLWIDTH = str.maketrans("０１２３４５６７８９．，", "0123456789.,")
_HEAT_NUMBER = re.compile(r"(\d+(?:\.\d+)?)\s*(万|亿|w|W|k|K|m|M)?")
_UNITS = {"万": 1e4, "w": 1e4, "W": 1e4, "亿": 1e8, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}


def parse_heat(raw: object) -> float | None:
    """'123万' → 1230000, '1.2亿' → 1.2e8, '856 万热度', '4956213', '10万+', '盛典 215325'.

    The first number in the text counts, scaled by a unit that follows it. Anything
    else (booleans, '', percentages, text without digits) is None: the raw string is
    kept by the caller.
    """
    if raw is None or isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        # JSON gives 1e400 as inf and integers too large for a float: neither is a heat.
        value = float(raw) if isinstance(raw, float) or abs(raw) < 10**15 else math.inf
        return value if 0 <= value < 1e15 else None
    if not isinstance(raw, str):
        return None
    text = unicodedata.normalize("NFKC", raw).translate(_FULLWIDTH).replace(",", "")
    if "%" in text:
        return None  # a price change, not a heat
    match = _HEAT_NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group(1)) * _UNITS.get(match.group(2) or "", 1.0)
    return value if value < 1e15 else None


def _heat_raw_text(raw: object) -> str | None:
    if raw is None or isinstance(raw, bool):
        return None
    text = clean_text(str(raw), MAX_HEAT_RAW_CHARS)
    return text or None


@functools.lru_cache(maxsize=8192)
def _heat_of_text(raw: str) -> tuple[float | None, str | None]:
    return parse_heat(raw), _heat_raw_text(raw)


def heat_fields(raw: object) -> tuple[float | None, str | None]:
    """(heat, heat_raw) of what a platform served: lists repeat their heat strings poll to poll."""
    if isinstance(raw, str) and len(raw) <= 2 * MAX_HEAT_RAW_CHARS:
        return _heat_of_text(raw)
    return parse_heat(raw), _heat_raw_text(raw)


Identity = tuple[str, str, str, str | None, str | None, str | None]
# What one poll's entries normalized to, keyed by the hash of their raw fields (title, url,
# native id): lists repeat most of their entries from one poll to the next, so the next poll
# of the source reuses it. A value is an `Identity` packed by `_pack`, or None for an entry
# without a title.
# The usual entry: the item key as an int (40 bytes where 16 hex characters take 72) and the
# canonical URL, or None when it is the payload's URL; every other string is the payload's own.
# Otherwise: the key and each string normalizing made new, None where it is the payload's.
Packed = tuple[int, str | None] | tuple[int, str | None, str | None, str | None, str | None, str | None]

# How an entry's canonical URL follows from its URL, in `IdentityMemo.canon`: n >= 0 is the
# URL's first n characters (tracking parameters at the end dropped), CANON_IS_URL the URL
# itself; ODD means the whole packed identity (or None) is in `IdentityMemo.odd`.
CANON_IS_URL = -1
ODD = -2


class IdentityMemo:
    """One source's last poll, entry by entry: the hash of its raw fields, its key and how
    its canonical URL follows from its URL, in arrays (about 20 bytes an entry, where a dict
    of tuples took 250: the bench's 400 sources keep 20,000 entries). The few entries that
    cleaning changed, or whose canonical URL is not a prefix of the URL, keep their packed
    identity in `odd`."""

    __slots__ = ("canon", "hashes", "keys", "odd")

    def __init__(self) -> None:
        self.hashes = array("q")
        self.keys = array("Q")
        self.canon = array("i")
        self.odd: dict[int, Packed | None] = {}

    def __len__(self) -> int:
        return len(self.hashes)

    def take(self) -> IdentityMemo:
        """What this memo holds, moved into a new one; this one is left empty."""
        taken = IdentityMemo()
        for name in self.__slots__:  # swapped: the new memo's empty columns become this one's
            mine = getattr(self, name)
            setattr(self, name, getattr(taken, name))
            setattr(taken, name, mine)
        return taken

    def add(self, raw_key: int, packed: Packed | None, raw_url: str | None) -> None:
        code = ODD
        if packed is not None and len(packed) == 2:
            canon = packed[1]
            if canon is None:
                code = CANON_IS_URL
            elif raw_url is not None and raw_url.startswith(canon):
                code = len(canon)
        if code == ODD:
            self.odd[len(self.hashes)] = packed
        self.hashes.append(raw_key)
        self.keys.append(0 if packed is None else packed[0])
        self.canon.append(code)

    def packed(self, index: int, raw_url: str | None) -> Packed | None:
        """Entry `index` as `add` was given it, for an entry of the same raw fields."""
        code = self.canon[index]
        if code == ODD:
            return self.odd[index]
        if code == CANON_IS_URL:
            return self.keys[index], None
        assert raw_url is not None  # the same raw fields: a URL, as when the entry was added
        return self.keys[index], raw_url[:code]


def _pack(identity: Identity, raw: RawItem) -> Packed:
    """The identity with None for each string that is the payload's own (or the field it came
    from): the memo keeps only what normalizing made new, not a second copy of every title
    and URL, and a later poll takes those strings from its own payload (`_unpack`). A URL or
    native id the cleaning dropped is "" here."""
    key, title, norm, url, canon, native_id = identity
    key_int = int(key, 16)
    canon_kept = None if canon is url else canon
    if title is raw.title and norm is title and url is raw.url and native_id is raw.native_id:
        return key_int, canon_kept
    return (
        key_int,
        None if title is raw.title else title,
        None if norm is title else norm,
        None if url is raw.url else (url or ""),
        canon_kept,
        None if native_id is raw.native_id else (native_id or ""),
    )


def _unpack(packed: Packed, raw: RawItem) -> Identity:
    key = f"{packed[0]:016x}"
    if len(packed) == 2:
        url = raw.url
        return key, raw.title, raw.title, url, url if packed[1] is None else packed[1], raw.native_id
    _, kept_title, norm, url, canon, native_id = packed
    title = raw.title if kept_title is None else kept_title
    url = raw.url if url is None else (url or None)
    return (
        key,
        title,
        title if norm is None else norm,
        url,
        url if canon is None else canon,
        raw.native_id if native_id is None else (native_id or None),
    )


def _identity(source_id: str, raw_title: str, raw_url: str | None, raw_native_id: str | None) -> Identity | None:
    """(key, title, normalized title, url, canonical url, native id), or None without a title."""
    title = clean_text(raw_title, MAX_TITLE_CHARS)
    if not title:
        return None
    url = clean_text(raw_url, MAX_URL_CHARS + 1) if raw_url else None
    if url is not None and len(url) > MAX_URL_CHARS:
        url = None  # cut short it would point somewhere else
    canon = canonical_url(url)
    if canon is not None and canon == url:
        canon = url  # one string object for both
    norm = normalize_title(title)
    native_id = clean_text(raw_native_id, 200) if raw_native_id else None
    key = item_key(source_id, native_id or canon or norm)
    return key, title, norm, url if canon else None, canon, native_id


def normalize_items(
    source_id: str, raw_items: Iterable[RawItem], memo: IdentityMemo | None = None
) -> tuple[list[Item], int]:
    """RawItems → Items ranked by list position; returns (items, dropped_count).

    Entries without a usable title are dropped (counted); so are repeats of a key
    already in this list (a platform listing one entry twice). `memo`, when given, holds
    the previous poll's identities on entry and this poll's on return.
    """
    previous = memo.take() if memo is not None else IdentityMemo()
    at = {raw_key: index for index, raw_key in enumerate(previous.hashes)}
    items: list[Item] = []
    seen: set[str] = set()
    dropped = 0
    for raw in raw_items:
        if len(items) >= MAX_ITEMS:
            dropped += 1
            continue
        if not isinstance(raw.title, str):
            dropped += 1
            continue
        # A 64-bit hash stands for the raw fields: two entries of one source's list colliding
        # is a chance of about 1 in 10^16 a poll.
        raw_key = hash((raw.title, raw.url, raw.native_id))
        packed: Packed | None
        index = at.get(raw_key)
        if index is not None:
            packed = previous.packed(index, raw.url)
            identity = None if packed is None else _unpack(packed, raw)
        else:
            identity = _identity(source_id, raw.title, raw.url, raw.native_id)
            packed = None if identity is None else _pack(identity, raw)
        if memo is not None:
            memo.add(raw_key, packed, raw.url)
        if identity is None:
            dropped += 1
            continue
        key, title, norm, url, canon, native_id = identity
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        heat, heat_raw = heat_fields(raw.heat_raw)
        items.append(
            Item(
                key=key,
                item_id=item_id_of(key),
                source_id=source_id,
                title=title,
                norm_title=norm,
                url=url,
                canonical_url=canon,
                rank=raw.rank if raw.rank is not None and raw.rank > 0 else len(items) + 1,
                heat=heat,
                heat_raw=heat_raw,
                label=clean_text(raw.label, 16) or None if raw.label else None,
                native_id=native_id,
                summary=clean_text(raw.summary, MAX_SUMMARY_CHARS) or None if raw.summary else None,
                published_at=raw.published_at,
            )
        )
    return items, dropped
