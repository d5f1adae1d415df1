"""Pure story clustering: near-duplicate titles by character n-grams, and an incremental index of active stories.

Two items are one story when their canonical URLs are equal or their normalized titles are
near-duplicates. Titles are compared after `aggregator.normalize.normalize_title`, without word
splitting: Chinese text becomes character bigrams, Latin text becomes words, numbers become values.

    coverage   = share of the shorter title's tokens that lie inside an n-gram the other title has
    similarity = max(0, 2 × coverage × penalties − 1)      (covered share minus uncovered share)

Coverage of the shorter title is n-gram containment measured per character: a hot word
("董明珠再回应玫瑰空调被吐槽") inside a long headline scores high, the details the headline adds cost
nothing, while a reworded subject or event costs what it replaces. The penalties catch hard
negatives that share most of their characters: numbers that disagree (episodes, scores, dates),
different subjects in one template ("故宫回应…"/"颐和园回应…"), different Latin names in Chinese titles
("G2战胜TES"/"G2战胜BLG"), and titles too short to be specific. Boilerplate ("回应", "官方", "最新",
Zhihu's "如何看待…具体情况如何", "Show HN:") is cut out first, so it can neither make two titles
match nor dilute a real match.

`StoryIndex` keeps the active stories (seen within `window_s`) in an inverted index from n-gram to
story ids. Looking up a title reads only the posting lists of its own n-grams, skips those longer
than `MAX_POSTING_STORIES`, and scores at most `MAX_CANDIDATES` stories; exact titles and URLs are
dictionary hits. The cost per item depends on the title, not on the history.
"""

from __future__ import annotations

import math
import re
import sys
import zlib
from array import array
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from heapq import heappop, heappush
from operator import itemgetter
from typing import Protocol

from aggregator.slotmap import U32, SlotMap, put_row

# Similarity 0.5 is a shorter title 75% covered once penalties are applied. On the labelled pairs
# in tests/data/dedupe_pairs.tsv precision is flat (0.95) for coverage cuts 0.72-0.76 and falls
# below 0.72; 0.75 sits inside that plateau. It is also `dedupe.threshold`'s default in settings.
DEFAULT_THRESHOLD = 0.5
# Features of the titles recently matched or compared (least recently used go first):
# candidates are mostly the stories on the lists now, so a couple of thousand cover them
# without keeping the features of every title of the window (3-4 KB each). Since `match`
# rules most candidates out before computing features, 8,192 bought little speed for
# 30 MB more in bench/ingest.py.
FEATURE_CACHE_SIZE = 2048
# The design's `dedupe.window`: a story not seen on any list for two days is over.
DEFAULT_WINDOW_S = 48 * 3600.0

# A title with at most this many n-grams (a 3-character hot word, a two-word English title) is too
# short to be specific: unless the n-grams are equal it is a topic, not a story ("庆余年" must not
# swallow "庆余年第二季"). The factor puts a fully contained tiny title at similarity 0.2.
TINY_GRAMS = 2
TINY_FACTOR = 0.6
# Numbers each title has and the other lacks ("第12集"/"第13集", "2:0"/"1:2", "6月1日"/"6月2日") mean
# another episode, match or day however alike the words are. A number only one title gives is
# detail and costs nothing. Any factor from 0.3 to 0.7 gives the same results on the pairs.
NUMBER_CONFLICT_FACTOR = 0.5
# Headlines open with their subject: when neither title's first token occurs anywhere in the other,
# one template is being applied to two subjects. Flat from 0.6 to 0.8 on the pairs.
SUBJECT_CONFLICT_FACTOR = 0.75
# Latin words inside Chinese titles are names (teams, products, companies): each title naming one
# the other lacks means different actors. Flat from 0.5 to 0.8 on the pairs.
NAME_CONFLICT_FACTOR = 0.7

# Two entries of one list are distinct entries by construction, so a story that only the querying
# source has listed must clear a higher bar: one entry reworded over time still merges
# ("缅甸7.9级地震" → "缅甸发生7.9级强烈地震", 1.0), loosely related entries of one list do not.
SAME_SOURCE_MARGIN = 0.15
# N-grams shared by more live stories than this are stop-grams for the lookup ("中国", "男子" in a
# busy window): their posting lists are not read, and a title's other n-grams still find its story.
MAX_POSTING_STORIES = 64
# Stories scored per lookup, most shared n-grams first; a real match ranks near the top.
MAX_CANDIDATES = 8
# Member wordings kept and indexed per story: enough to match new rewordings, bounded memory.
MAX_TITLES_PER_STORY = 8
# Exact titles and URLs remembered per story for the dictionary paths.
MAX_KEYS_PER_STORY = 64

# Boilerplate phrases removed before n-grams are made, longest first so that "对此你怎么看" goes
# before "你怎么看". Each is a frame, a generic verb or a channel word that carries no event.
_BOILERPLATE = (
    # Zhihu question frames
    "如何看待|如何评价|怎么看待|怎样看待|怎么评价|你怎么看|如何解读|对此你怎么看|具体情况如何|具体情况怎么样"
    "|目前情况如何|真实情况如何|当地情况如何|目前疫情情况如何|有哪些信息值得关注|哪些信息值得关注"
    "|有哪些细节值得关注|哪些细节值得关注|值得关注|意味着什么|释放了什么信号|会带来哪些影响|会带来什么影响"
    "|有何影响|有什么影响|这场比赛|是怎么回事|怎么回事|为什么|是什么|有哪些|哪些|什么"
    # news and hot-list boilerplate
    "|回应|官方通报|通报|官方|最新消息|最新|网友|网传|引发热议|热议|引发关注|曝光|视频|现场|直击|独家|突发"
    "|快讯|重磅|刚刚|热搜|官宣|发文"
    # Hacker News prefixes
    "|show hn|ask hn|tell hn|launch hn"
).split("|")
_BOILERPLATE_RE = re.compile("|".join(re.escape(p) for p in sorted(_BOILERPLATE, key=len, reverse=True)))

# English words that occur in any headline.
_STOPWORDS = frozenset(
    "a an the of to in on for and or is are was were be been has have had it its this that with by at from as"
    " now new how why what who we i you my our your will can about after into over than s t vs".split()
)
# Words that are numbers in disguise: they take part in the number-conflict rule.
_MONTHS = "january february march april may june july august september october november december".split()
_ORDINALS = "first second third fourth fifth sixth seventh eighth ninth tenth".split()
_NUMBER_WORDS = {
    **{month: f"m{i}" for i, month in enumerate(_MONTHS, start=1)},
    **{month[:3]: f"m{i}" for i, month in enumerate(_MONTHS, start=1)},
    **{word: str(i) for i, word in enumerate(_ORDINALS, start=1)},
}

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_WORDCHAR = rf"[^\W_{_CJK}]"
_TOKEN_RE = re.compile(
    rf"(?P<cjk>[{_CJK}]+)"  # a run: each character is a token
    rf"|(?P<score>\d+(?:\s*[:：比]\s*\d+)+)(?!{_WORDCHAR})"
    rf"|(?P<num>(?P<digits>\d+(?:\.\d+)*)(?!{_WORDCHAR})(?:[余多]?(?P<unit>[万亿]))?)"
    rf"|(?P<word>{_WORDCHAR}+)"
    rf"|(?P<sep>[\W_]+)"
)
# Spaces Zhihu puts around numbers and Latin words ("中科大 26 岁") are not word breaks.
_INNER_SPACE_RE = re.compile(rf"(?<=[{_CJK}])\s+(?=[a-z0-9])|(?<=[a-z0-9])\s+(?=[{_CJK}])")
_VERSION_V_RE = re.compile(r"(?<![^\W_])v(?=\d)")

_CN_DIGITS = {**{ch: i for i, ch in enumerate("零一二三四五六七八九")}, "〇": 0, "两": 2}
_CN_UNITS = {"十": 10, "百": 100, "千": 1000}
_CN_NUM = "零〇一二两三四五六七八九十百千"
# Chinese numerals that are numbers rather than words: after 第, before a counter (seasons,
# episodes, rounds, 神舟十九号, 三年, 两名), or a run like 二十 / 一百 / 二〇二五. "一男子" stays text.
_CN_NUMBER_RE = re.compile(
    rf"(?<=第)[{_CN_NUM}]+"
    rf"|[{_CN_NUM}]+(?=[季集期届部强轮代号年个名位天次岁])"
    rf"|[{_CN_NUM}]*[十百千][{_CN_NUM}]+|[{_CN_NUM}]+[十百千][{_CN_NUM}]*"
    rf"|[零〇一二三四五六七八九]{{3,}}"
)
_CN_NUM_CHARS = frozenset(_CN_NUM)
_NUMBER_SCALE = {"万": 1e4, "亿": 1e8}
_SCORE_SPLIT_RE = re.compile(r"\s*[:：比]\s*")


@dataclass(frozen=True, slots=True)
class TitleFeatures:
    """What the similarity looks at in one normalized title."""

    # The n-grams (CJK bigrams, CJK/Latin boundary bigrams, Latin words and numbers) as their
    # posting keys (`_gram_key`), in reading order so that lookups are reproducible: 4 bytes
    # each, where the n-gram strings of the cached features and the interpreter's table of
    # interned strings took 4.6 MB in bench/ingest.py. Two n-grams of a pair of titles sharing a
    # CRC-32 counts one shared n-gram too many, about once in 10^8 pairs.
    # Distinct; no set of them is kept (sets of ints were 1 KB a cached title): the similarity
    # makes the two it compares.
    keys: array[int]
    # Per key, the tokens its n-gram's occurrences cover as a bit mask (bit i: token i).
    # Two ints per title instead of a tuple per n-gram: thousands of titles' features are cached.
    gram_masks: tuple[int, ...]
    weighted_mask: int  # the tokens that count (English stopwords and single letters do not)
    weight: int  # number of tokens that count
    repeats: int  # n-grams occurring more than once (spans - distinct grams), for the score bound
    first: str | None  # the first token that counts: where the subject sits
    tokens: tuple[str, ...]  # the distinct tokens that count (only ever tested for membership)
    numbers: frozenset[str]  # canonical numbers and scores ("1.5万" → "15000", "第三季" → "3", "2:0")
    names: frozenset[str]  # Latin words inside a mostly Chinese title
    text: str  # boilerplate-free text without spaces, for titles without n-grams


class ClusterableItem(Protocol):
    """What `assign` reads from an item (`aggregator.models.Item` has it)."""

    @property
    def item_id(self) -> int: ...
    @property
    def norm_title(self) -> str: ...
    @property
    def canonical_url(self) -> str | None: ...
    @property
    def source_id(self) -> str: ...


def _cn_to_int(numeral: str) -> int:
    if not any(ch in _CN_UNITS for ch in numeral):
        return int("".join(str(_CN_DIGITS[ch]) for ch in numeral))
    total = current = 0
    for ch in numeral:
        if ch in _CN_UNITS:
            total += (current or 1) * _CN_UNITS[ch]
            current = 0
        else:
            current = _CN_DIGITS[ch]
    return total + current


def _canonical_number(digits: str, scale: float) -> str:
    parts = digits.split(".")
    while len(parts) > 2 and not parts[-1].strip("0"):
        parts.pop()  # a version: "1.80.0" is "1.80"
    if len(parts) > 2:
        return ".".join(str(int(p)) for p in parts)
    return f"{float('.'.join(parts)) * scale:.9g}"


def _stem(word: str) -> str:
    if len(word) >= 5:
        for suffix in ("ing", "ed", "es", "s"):
            if word.endswith(suffix):
                word = word[: -len(suffix)]
                break
    return word[:-1] if len(word) >= 4 and word.endswith("e") else word


_EMPTY: frozenset[str] = frozenset()
_intern = sys.intern


def title_features(norm_title: str) -> TitleFeatures:
    """The n-grams, numbers and names of a normalized title (pure; cache it if you compare often)."""
    # Each pass only where it can apply: most titles have no "v", no Chinese numeral, no space.
    text = _VERSION_V_RE.sub("", norm_title) if "v" in norm_title else norm_title
    if not _CN_NUM_CHARS.isdisjoint(text):
        text = _CN_NUMBER_RE.sub(lambda m: str(_cn_to_int(m.group())), text)
    text = _BOILERPLATE_RE.sub(" ", text)
    if not text.isalnum():  # whitespace is never alphanumeric
        text = _INNER_SPACE_RE.sub("", text)
    tokens: list[str] = []
    weighted: list[bool] = []
    masks: dict[str, int] = {}  # gram → tokens covered, in reading order
    span_count = 0
    numbers: set[str] = set()
    names: set[str] = set()
    cjk_count = 0
    run_start = 0  # index of the first token after the last separator
    prev_cjk = False
    for match in _TOKEN_RE.finditer(text):
        kind = match.lastgroup
        token = match.group()
        if kind == "sep":
            run_start = len(tokens)
            continue
        if kind == "cjk":
            # Each character is a token that counts; each pair within the run, or with the token
            # before it, is a bigram. One regex match for the run instead of one per character.
            index = len(tokens)
            for char in token:
                char = _intern(char)
                if index > run_start:
                    gram = tokens[-1] + char
                    masks[gram] = masks.get(gram, 0) | (3 << (index - 1))
                    span_count += 1
                tokens.append(char)
                weighted.append(True)
                index += 1
            cjk_count += len(token)
            prev_cjk = True
            continue
        counts = True
        if kind == "score":
            token = ":".join(_canonical_number(part, 1.0) for part in _SCORE_SPLIT_RE.split(token))
            numbers.add(token)
        elif kind == "num":
            scale = _NUMBER_SCALE.get(match.group("unit") or "", 1.0)
            token = _canonical_number(match.group("digits"), scale)
            numbers.add(token)
        else:
            if token in _NUMBER_WORDS:
                numbers.add(_NUMBER_WORDS[token])
            counts = token not in _STOPWORDS and len(token) > 1
            if counts:
                token = _stem(token)
                names.add(token)
        # Tokens recur across titles: interned, the cached features share them.
        token = _intern(token)
        index = len(tokens)
        if index > run_start and prev_cjk:
            gram = tokens[-1] + token
            masks[gram] = masks.get(gram, 0) | (3 << (index - 1))
            span_count += 1
        if counts:
            masks[token] = masks.get(token, 0) | (1 << index)
            span_count += 1
        tokens.append(token)
        weighted.append(counts)
        prev_cjk = False
    counted = [t for t, w in zip(tokens, weighted, strict=True) if w]
    key_masks: dict[int, int] = {}
    for gram, mask in masks.items():
        key = _gram_key(gram)
        key_masks[key] = key_masks.get(key, 0) | mask
    return TitleFeatures(
        keys=array("I", key_masks),
        gram_masks=tuple(key_masks.values()),
        weighted_mask=sum(1 << i for i, w in enumerate(weighted) if w),
        weight=len(counted),
        repeats=span_count - len(masks),
        first=counted[0] if counted else None,
        tokens=tuple(dict.fromkeys(counted)),
        numbers=frozenset(numbers) if numbers else _EMPTY,
        names=frozenset(names) if names and cjk_count >= 2 else _EMPTY,
        text="".join(text.split()),
    )


def _coverage(a: TitleFeatures, b_grams: set[int]) -> float:
    """Share of a's counting tokens that lie inside an n-gram of `b_grams` (another title's keys)."""
    covered = 0
    for key, mask in zip(a.keys, a.gram_masks, strict=True):
        if key in b_grams:
            covered |= mask
    return (covered & a.weighted_mask).bit_count() / a.weight


def _numbers_conflict(a: frozenset[str], b: frozenset[str]) -> bool:
    # A number only one title gives is detail; numbers each title has and the other lacks are
    # another date, score, episode or model.
    return bool(a - b) and bool(b - a)


def features_similarity(a: TitleFeatures, b: TitleFeatures) -> float:
    """`title_similarity` on precomputed features."""
    return _similarity(a, b, 0.0)


def _similarity(a: TitleFeatures, b: TitleFeatures, floor: float) -> float:
    """The similarity, or 0.0 early when it cannot reach `floor` (the result is the same either way)."""
    if not a.keys or not b.keys:
        return 1.0 if a.text and a.text == b.text else 0.0
    a_grams, b_grams = set(a.keys), set(b.keys)
    shared = len(a_grams & b_grams)
    if shared == 0:
        return 0.0
    size_a, size_b = (a.weight, len(a.keys)), (b.weight, len(b.keys))
    short = a if size_a <= size_b else b
    factor = 1.0
    if len(short.keys) <= TINY_GRAMS and a_grams != b_grams:
        factor *= TINY_FACTOR
    if _numbers_conflict(a.numbers, b.numbers):
        factor *= NUMBER_CONFLICT_FACTOR
    if a.first not in b.tokens and b.first not in a.tokens:
        factor *= SUBJECT_CONFLICT_FACTOR
    if a.names - b.names and b.names - a.names:
        factor *= NAME_CONFLICT_FACTOR
    # an n-gram covers at most two tokens, so this bounds the coverage without computing it
    bound = min(1.0, 2.0 * (shared + short.repeats) / short.weight)
    if floor > 0.0 and 2.0 * bound * factor - 1.0 < floor:
        return 0.0
    # equal sizes: the lower coverage, so that the similarity is symmetric
    if size_a != size_b:
        coverage = _coverage(a, b_grams) if short is a else _coverage(b, a_grams)
    else:
        coverage = min(_coverage(a, b_grams), _coverage(b, a_grams))
    return max(0.0, 2.0 * coverage * factor - 1.0)


def title_similarity(a_norm: str, b_norm: str) -> float:
    """Similarity in [0, 1] of two normalized titles; one story from `DEFAULT_THRESHOLD` up. Symmetric."""
    if a_norm and a_norm == b_norm:
        return 1.0  # as the index's exact-title path, even for a title that is all boilerplate
    return features_similarity(title_features(a_norm), title_features(b_norm))


_NO_URL = 0  # `_url` of a story without a URL (a URL hashing to 0 is stored as 1)
_NEVER = 1 << 40  # POSIX seconds after every last sighting
_FREE = float("nan")  # `_seen` of a free slot: never active (NaN >= x is false), never expired


@dataclass(slots=True)
class _Extra:
    """What a story has beyond its first source, wording and URL (most stories have none)."""

    sources: tuple[str, ...] = ()
    # Further exact wordings in the order they came; with the first, the first
    # MAX_TITLES_PER_STORY are the member titles that are indexed and compared.
    titles: tuple[bytes, ...] = ()  # UTF-8, as `_titles`
    urls: tuple[int, ...] = ()  # further canonical URLs as `hash()` values


class StoryIndex:
    """Incremental in-memory index of the stories seen within `window_s`.

    Matching order: canonical URL, then exact normalized title, then title similarity against the
    member titles of the candidate stories. A story listed only by the querying source needs
    `threshold + SAME_SOURCE_MARGIN`, so cross-source matches are preferred. Not thread-safe.

    Each story has a slot: a position in the per-story arrays (id, last seen as POSIX seconds,
    first source, first URL's hash, the bounds `match` uses) and in `_titles`, its first wording.
    The maps from n-grams, wordings, URLs and ids to slots are `SlotMap`s. What a story has
    beyond one source, wording and URL is in `_extra`. About 300 bytes a story where objects
    per story and per n-gram took 1.2 KB in bench/ingest.py, with the lookups as fast.
    """

    def __init__(
        self, threshold: float = DEFAULT_THRESHOLD, window_s: float = DEFAULT_WINDOW_S, max_stories: int = 0
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        if max_stories < 0:
            raise ValueError(f"max_stories must be 0 (no cap) or more, got {max_stories}")
        self.threshold = threshold
        self.window_s = window_s
        # At most this many stories (0: no cap): past it, adding one drops the story seen least
        # recently, before the window would. Memory then stays bounded on a busy window.
        self.max_stories = max_stories
        self.evicted = 0  # stories dropped for the cap, not the window
        self._count = 0
        self._ids = array("q")
        self._seen = array("d")  # last seen, POSIX seconds; _FREE for a free slot
        self._source = array("I")  # first source, as an index into _source_names
        self._url = array("q")  # hash of the first canonical URL, or _NO_URL
        # Over the member titles: the fewest counting tokens and the most repeated n-grams. With
        # them `match` rules a candidate out from its count of shared n-grams alone, before
        # computing any member's features (the bound of `_similarity`, taken for every member).
        self._min_weight = array("I")
        self._max_repeats = array("I")
        # The first wording (None until the story has one). The member titles' features are
        # recomputed (and cached) when compared: a few hundred bytes a story, not kilobytes.
        # As UTF-8: 72 bytes where the str of a 12-character Chinese title takes 104, and no
        # str shared with the poll's items, which would keep the UTF-8 copy SQLite's binding
        # attaches to each string it is given (about 40 bytes more a title).
        self._titles: list[bytes | None] = []
        self._extra: dict[int, _Extra] = {}
        self._free: list[int] = []
        # Expiry and eviction order: a heap of ``int(last seen) << 32 | slot``, one int a story where
        # a tuple of a datetime and an id took 100 bytes. An entry may lag its story's last
        # sighting (touch does not move it) and may outlive its story (a dropped slot's entries
        # stay until they surface); `_queued` counts each slot's entries, so that only its last
        # is pushed again and every live story keeps one entry no later than its last sighting.
        self._expiry: list[int] = []
        self._queued = array("I")
        self._source_names: list[str] = []
        self._source_slot: dict[str, int] = {}
        self._by_id = SlotMap(8)  # story id → its slot
        # n-gram (as a CRC-32, see _gram_key) → the stories holding it
        self._postings = SlotMap(10)
        self._by_url = SlotMap(8)  # hash(canonical URL) → story
        self._by_title = SlotMap(8)  # hash(normalized title) → story
        self._feature_cache: OrderedDict[bytes, TitleFeatures] = OrderedDict()

    def __len__(self) -> int:
        return self._count

    def __contains__(self, story_id: object) -> bool:
        return isinstance(story_id, int) and self._slot(story_id) >= 0

    def _features(self, utf8: bytes, norm_title: str | None = None) -> TitleFeatures:
        """The features of a title given as UTF-8 (and as text, when the caller has it).

        match() for a whole poll, then add_item() for the same titles: each computed once. The
        cache is keyed by the UTF-8 the index keeps: a member title's bytes hash once."""
        cache = self._feature_cache
        features = cache.get(utf8)
        if features is None:
            if len(cache) >= FEATURE_CACHE_SIZE:
                cache.popitem(last=False)  # least recently used
            text = _text(utf8) if norm_title is None else norm_title
            features = cache[utf8] = title_features(text)
        else:
            cache.move_to_end(utf8)
        return features

    def _slot(self, story_id: int) -> int:
        return self._by_id.find(story_id, self._ids)

    def _title_keys(self, slot: int) -> tuple[bytes, ...]:
        first = self._titles[slot]
        if first is None:
            return ()
        extra = self._extra.get(slot)
        return (first, *extra.titles) if extra is not None and extra.titles else (first,)

    def _url_keys(self, slot: int) -> tuple[int, ...]:
        first = self._url[slot]
        if first == _NO_URL:
            return ()
        extra = self._extra.get(slot)
        return (first, *extra.urls) if extra is not None and extra.urls else (first,)

    def _sources(self, slot: int) -> tuple[str, ...]:
        first = self._source_names[self._source[slot]]
        extra = self._extra.get(slot)
        return (first, *extra.sources) if extra is not None and extra.sources else (first,)

    def _slot_of_title(self, utf8: bytes) -> int:
        key = hash(utf8)
        slot = self._by_title.first(key)
        if slot < 0 or self._titles[slot] == utf8:
            return slot
        return next((s for s in self._by_title.slots(key) if utf8 in self._title_keys(s)), -1)

    def _slot_of_url(self, url_key: int) -> int:
        slot = self._by_url.first(url_key)
        if slot < 0 or self._url[slot] == url_key:
            return slot
        return next((s for s in self._by_url.slots(url_key) if url_key in self._url_keys(s)), -1)

    def match(self, norm_title: str, canonical_url: str | None, source_id: str, now: datetime) -> int | None:
        """The id of the active story this item belongs to, or None for a new story."""
        cutoff = now.timestamp() - self.window_s
        seen = self._seen
        if canonical_url:
            slot = self._slot_of_url(_url_key(canonical_url))
            if slot >= 0 and seen[slot] >= cutoff:
                return self._ids[slot]
        utf8 = _utf8(norm_title)
        slot = self._slot_of_title(utf8)
        if slot >= 0 and seen[slot] >= cutoff:
            return self._ids[slot]
        features = self._features(utf8, norm_title)
        listed: list[int] = []  # the stories of each listed n-gram, one entry per n-gram shared
        # N-grams in too many stories to list them (stop-grams): looked into, not read.
        common: list[int] = []
        postings = self._postings
        span = postings.span
        for key in features.keys:
            bucket, lo, hi = span(key)
            if hi == lo:
                continue
            if hi - lo <= MAX_POSTING_STORIES:
                listed.extend([packed & U32 for packed in bucket[lo:hi]])
            else:
                common.append(key)
        if not listed:
            return None
        best_slot = -1
        best_score = 0.0
        # Most shared n-grams first, ties in the order met (Counter counts and sorted orders in C).
        ranked = sorted(Counter(listed).items(), key=itemgetter(1), reverse=True)
        for candidate, count in ranked[:MAX_CANDIDATES]:
            if not seen[candidate] >= cutoff:
                continue
            needed = self.threshold
            if self._only_source(candidate, source_id):
                needed += SAME_SOURCE_MARGIN
            # A pair reaches `needed` only if the shorter title's coverage can reach
            # (needed + 1) / 2, and coverage <= 2 * (shared + repeats) / weight, where `shared`
            # counts this title's n-grams that any member has. If neither title can be the short
            # one, the candidate is ruled out without computing a member's features. `shared` is
            # exact: the listed n-grams counted from the postings, then (only when sharing every
            # stop-gram would be enough) the candidate looked up in the stop-grams' postings.
            reach = (needed + 1.0) / 4.0
            enough = min(
                reach * features.weight - features.repeats,
                reach * self._min_weight[candidate] - self._max_repeats[candidate],
            )
            if count + len(common) < enough:
                continue
            if common and count + sum(postings.has(key, candidate) for key in common) < enough:
                continue
            members = self._title_keys(candidate)[:MAX_TITLES_PER_STORY]
            score = max((_similarity(features, self._features(m), needed) for m in members), default=0.0)
            if score >= needed and score > best_score:
                best_slot, best_score = candidate, score
        return self._ids[best_slot] if best_slot >= 0 else None

    def _only_source(self, slot: int, source_id: str) -> bool:
        """Whether `source_id` is the one source that has listed the story."""
        if self._source_names[self._source[slot]] != source_id:
            return False
        extra = self._extra.get(slot)
        return extra is None or not extra.sources

    def _new_slot(self, story_id: int, seen_at: float, source: int) -> int:
        columns = (self._ids, self._seen, self._source, self._url, self._min_weight, self._max_repeats, self._titles)
        slot = put_row(columns, (story_id, seen_at, source, _NO_URL, U32, 0, None), self._free)
        if slot == len(self._queued):
            self._queued.append(0)  # a reused slot keeps its count: its old heap entries are still there
        self._by_id.add(story_id, slot)
        self._count += 1
        self._queue(slot, seen_at)
        return slot

    def _queue(self, slot: int, seen_at: float) -> None:
        heappush(self._expiry, int(seen_at) << 32 | slot)
        self._queued[slot] += 1

    def _pop_due(self, before: int) -> int:
        """The slot of a live story last seen before `before` (whole POSIX seconds), least recent
        first, or -1 when there is none; entries that lag their story are pushed again on the way."""
        expiry, seen, queued = self._expiry, self._seen, self._queued
        while expiry and expiry[0] >> 32 < before:
            entry = heappop(expiry)
            slot = entry & U32
            queued[slot] -= 1
            seen_ts = seen[slot]
            if seen_ts < before and int(seen_ts) == entry >> 32:
                return slot
            if seen_ts == seen_ts and not queued[slot]:  # live (not NaN), and this was its last entry
                self._queue(slot, seen_ts)
        return -1

    def _extra_of(self, slot: int) -> _Extra:
        extra = self._extra.get(slot)
        if extra is None:
            extra = self._extra[slot] = _Extra()
        return extra

    def add_item(
        self, story_id: int, norm_title: str, canonical_url: str | None, source_id: str, seen_at: datetime
    ) -> None:
        """Record an item as a member of `story_id`, creating the story when it is new."""
        seen_ts = seen_at.timestamp()
        source = self._source_slot.get(source_id)
        if source is None:
            source = self._source_slot[source_id] = len(self._source_names)
            self._source_names.append(source_id)
        slot = self._slot(story_id)
        if slot < 0:
            if self.max_stories and self._count >= self.max_stories:
                self._evict_least_recent()
            slot = self._new_slot(story_id, seen_ts, source)
        else:
            if seen_ts > self._seen[slot]:
                self._seen[slot] = seen_ts
            if source != self._source[slot] and source_id not in self._sources(slot):
                extra = self._extra_of(slot)
                extra.sources += (source_id,)
        if canonical_url:
            url_key = _url_key(canonical_url)
            urls = self._url_keys(slot)
            if len(urls) < MAX_KEYS_PER_STORY and self._slot_of_url(url_key) < 0:
                self._by_url.add(url_key, slot)
                if not urls:
                    self._url[slot] = url_key
                else:
                    extra = self._extra_of(slot)
                    extra.urls += (url_key,)
        utf8 = _utf8(norm_title)
        if self._slot_of_title(utf8) >= 0:
            return  # this wording is indexed already (here or in a story it was not merged with)
        titles = self._title_keys(slot)
        if len(titles) >= MAX_KEYS_PER_STORY:
            return
        self._by_title.add(hash(utf8), slot)
        if not titles:
            self._titles[slot] = utf8
        else:
            extra = self._extra_of(slot)
            extra.titles += (utf8,)
        if len(titles) < MAX_TITLES_PER_STORY:  # one of the member titles
            features = self._features(utf8, norm_title)
            self._min_weight[slot] = min(self._min_weight[slot], features.weight)
            self._max_repeats[slot] = max(self._max_repeats[slot], features.repeats)
            add = self._postings.add
            for key in features.keys:
                add(key, slot)

    def touch(self, story_id: int, seen_at: datetime) -> None:
        """Mark a story as still listed at `seen_at`; unknown (expired) ids are ignored."""
        slot = self._slot(story_id)
        if slot >= 0:
            seen_ts = seen_at.timestamp()
            if seen_ts > self._seen[slot]:
                self._seen[slot] = seen_ts

    def expire(self, now: datetime) -> list[int]:
        """Drop the stories not seen within `window_s` before `now`; returns their ids."""
        # In whole seconds, as the heap's entries: a story expires up to a second late (`match`
        # compares the exact times, so it is not found meanwhile).
        cutoff = math.floor(now.timestamp() - self.window_s)
        dropped: list[int] = []
        while (slot := self._pop_due(cutoff)) >= 0:
            dropped.append(self._ids[slot])
            self._drop(slot)
        return dropped

    def _evict_least_recent(self) -> None:
        """Drop the story seen least recently."""
        slot = self._pop_due(_NEVER)
        if slot >= 0:
            self._drop(slot)
            self.evicted += 1

    def _drop(self, slot: int) -> None:
        titles = self._title_keys(slot)
        for title in titles[:MAX_TITLES_PER_STORY]:
            for key in self._features(title).keys:
                self._postings.remove(key, slot)
        for title in titles:
            self._by_title.remove(hash(title), slot)
        for url_key in self._url_keys(slot):
            self._by_url.remove(url_key, slot)
        self._by_id.remove(self._ids[slot], slot)
        self._seen[slot] = _FREE
        self._titles[slot] = None
        self._extra.pop(slot, None)
        self._free.append(slot)
        self._count -= 1


def _utf8(title: str) -> bytes:
    # surrogatepass: a title the cleaning let through is kept whatever it holds.
    return title.encode("utf-8", "surrogatepass")


def _text(title: bytes) -> str:
    return title.decode("utf-8", "surrogatepass")


def _url_key(canonical_url: str) -> int:
    # The canonical URL as its `hash()`: the dictionary path needs no more than that, and a URL
    # string is the largest thing a story would keep (two URLs of a window colliding in a
    # 64-bit hash: about 1 in 10^10). 0 is `_NO_URL`.
    return hash(canonical_url) or 1


def _gram_key(gram: str) -> int:
    # A 32-bit checksum instead of the string keeps a posting near 100 bytes; a collision only
    # adds a candidate, which the similarity then rejects.
    return zlib.crc32(gram.encode())


def assign(index: StoryIndex, items: Iterable[ClusterableItem], now: datetime) -> list[int]:
    """Story id for each item, in order: an active story it matches, else its own `item_id`.

    Every item is added to the index as seen at `now`, so later items of the same batch can join
    the stories earlier ones started.
    """
    story_ids: list[int] = []
    for item in items:
        story_id = index.match(item.norm_title, item.canonical_url, item.source_id, now)
        if story_id is None:
            story_id = item.item_id
        index.add_item(story_id, item.norm_title, item.canonical_url, item.source_id, now)
        story_ids.append(story_id)
    return story_ids
