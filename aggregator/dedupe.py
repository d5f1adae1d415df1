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

import heapq
import re
import sys
import zlib
from array import array
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Protocol

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

    grams: frozenset[str]  # CJK bigrams, CJK/Latin boundary bigrams, Latin words and numbers
    ordered_grams: tuple[str, ...]  # the same in reading order, so that lookups are reproducible
    # Per gram of ordered_grams, the tokens its occurrences cover as a bit mask (bit i: token i).
    # Two ints per title instead of a tuple per n-gram: thousands of titles' features are cached.
    gram_masks: tuple[int, ...]
    keys: array[int]  # per gram of ordered_grams, its posting key (`_gram_key`), 4 bytes each
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
                    gram = _intern(tokens[-1] + char)
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
        # Tokens and n-grams recur across titles: interned, the cached features share them.
        token = _intern(token)
        index = len(tokens)
        if index > run_start and prev_cjk:
            gram = _intern(tokens[-1] + token)
            masks[gram] = masks.get(gram, 0) | (3 << (index - 1))
            span_count += 1
        if counts:
            masks[token] = masks.get(token, 0) | (1 << index)
            span_count += 1
        tokens.append(token)
        weighted.append(counts)
        prev_cjk = False
    counted = [t for t, w in zip(tokens, weighted, strict=True) if w]
    ordered = tuple(masks)
    return TitleFeatures(
        grams=frozenset(ordered),
        ordered_grams=ordered,
        gram_masks=tuple(masks.values()),
        keys=array("I", map(_gram_key, ordered)),
        weighted_mask=sum(1 << i for i, w in enumerate(weighted) if w),
        weight=len(counted),
        repeats=span_count - len(ordered),
        first=counted[0] if counted else None,
        tokens=tuple(dict.fromkeys(counted)),
        numbers=frozenset(numbers) if numbers else _EMPTY,
        names=frozenset(names) if names and cjk_count >= 2 else _EMPTY,
        text="".join(text.split()),
    )


def _coverage(a: TitleFeatures, b: TitleFeatures) -> float:
    """Share of a's counting tokens that lie inside an n-gram b also has."""
    covered = 0
    b_grams = b.grams
    for gram, mask in zip(a.ordered_grams, a.gram_masks, strict=True):
        if gram in b_grams:
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
    if not a.grams or not b.grams:
        return 1.0 if a.text and a.text == b.text else 0.0
    shared = len(a.grams & b.grams)
    if shared == 0:
        return 0.0
    size_a, size_b = (a.weight, len(a.grams)), (b.weight, len(b.grams))
    short, long_ = (a, b) if size_a <= size_b else (b, a)
    factor = 1.0
    if len(short.grams) <= TINY_GRAMS and short.grams != long_.grams:
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
    coverage = _coverage(short, long_) if size_a != size_b else min(_coverage(a, b), _coverage(b, a))
    return max(0.0, 2.0 * coverage * factor - 1.0)


def title_similarity(a_norm: str, b_norm: str) -> float:
    """Similarity in [0, 1] of two normalized titles; one story from `DEFAULT_THRESHOLD` up. Symmetric."""
    if a_norm and a_norm == b_norm:
        return 1.0  # as the index's exact-title path, even for a title that is all boilerplate
    return features_similarity(title_features(a_norm), title_features(b_norm))


@dataclass(slots=True)
class _Story:
    """Mutable bookkeeping of one active story, private to the index.

    Tuples, not sets and lists: nearly every story has one source, one wording and one URL,
    and a 1-tuple is 48 bytes where a set is 216 and a list that was appended to 88.
    """

    last_seen_at: datetime
    sources: tuple[str, ...] = ()
    # Exact wordings (for the dictionary path), in the order they came. The first
    # MAX_TITLES_PER_STORY are also the member titles that are indexed and compared: their
    # features are recomputed (and cached) when compared, which keeps an active story near a
    # few hundred bytes instead of several kilobytes.
    title_keys: tuple[str, ...] = ()
    # The canonical URLs as `hash()` values: the dictionary path needs no more than that, and a
    # URL string is the largest thing a story would keep (two URLs of a window colliding in a
    # 64-bit hash: about 1 in 10^10).
    urls: tuple[int, ...] = ()

    # Over the member titles: the fewest counting tokens and the most repeated n-grams. With
    # them `match` rules a candidate out from its count of shared n-grams alone, before
    # computing any member's features (the bound of `_similarity`, taken for every member).
    min_weight: int = 1 << 30
    max_repeats: int = 0

    @property
    def titles(self) -> tuple[str, ...]:
        return self.title_keys[:MAX_TITLES_PER_STORY]


class StoryIndex:
    """Incremental in-memory index of the stories seen within `window_s`.

    Matching order: canonical URL, then exact normalized title, then title similarity against the
    member titles of the candidate stories. A story listed only by the querying source needs
    `threshold + SAME_SOURCE_MARGIN`, so cross-source matches are preferred. Not thread-safe.
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
        self._window = timedelta(seconds=window_s)
        self._stories: dict[int, _Story] = {}
        # n-gram (as a CRC-32, see _gram_key) → the one story holding it, or several: an array of
        # ids (8 bytes each, where a set takes about 40) while they are few enough to be read,
        # a set once the n-gram is a stop-gram (more than MAX_POSTING_STORIES).
        self._postings: dict[int, int | array[int] | set[int]] = {}
        self._by_url: dict[int, int] = {}  # hash(canonical URL) → story
        self._by_title: dict[str, int] = {}
        self._one_source: dict[str, tuple[str]] = {}
        self._expiry: list[tuple[datetime, int]] = []  # one entry per story; may lag its last_seen_at
        self._feature_cache: OrderedDict[str, TitleFeatures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._stories)

    def __contains__(self, story_id: object) -> bool:
        return story_id in self._stories

    def _features(self, norm_title: str) -> TitleFeatures:
        # match() for a whole poll, then add_item() for the same titles: compute each once.
        cache = self._feature_cache
        features = cache.get(norm_title)
        if features is None:
            if len(cache) >= FEATURE_CACHE_SIZE:
                cache.popitem(last=False)  # least recently used
            features = cache[norm_title] = title_features(norm_title)
        else:
            cache.move_to_end(norm_title)
        return features

    def _active(self, story_id: int, cutoff: datetime) -> _Story | None:
        story = self._stories.get(story_id)
        return story if story is not None and story.last_seen_at >= cutoff else None

    def match(self, norm_title: str, canonical_url: str | None, source_id: str, now: datetime) -> int | None:
        """The id of the active story this item belongs to, or None for a new story."""
        cutoff = now - self._window
        if canonical_url:
            story_id = self._by_url.get(hash(canonical_url))
            if story_id is not None and self._active(story_id, cutoff) is not None:
                return story_id
        story_id = self._by_title.get(norm_title)
        if story_id is not None and self._active(story_id, cutoff) is not None:
            return story_id
        features = self._features(norm_title)
        listed: list[int] = []  # the stories of each listed n-gram, one entry per n-gram shared
        # Postings of n-grams in too many stories to list them (stop-grams): looked into, not read.
        common: list[array[int] | set[int]] = []
        postings = self._postings
        for key in features.keys:
            posting = postings.get(key)
            if posting is None:
                continue
            if isinstance(posting, int):
                listed.append(posting)
            elif len(posting) <= MAX_POSTING_STORIES:
                listed.extend(posting)
            else:
                common.append(posting)
        if not listed:
            return None
        best_id: int | None = None
        best_score = 0.0
        # Most shared n-grams first, ties in the order met (Counter counts and sorted orders in C).
        ranked = sorted(Counter(listed).items(), key=itemgetter(1), reverse=True)
        for candidate, count in ranked[:MAX_CANDIDATES]:
            story = self._active(candidate, cutoff)
            if story is None:
                continue
            needed = self.threshold
            if len(story.sources) == 1 and source_id in story.sources:
                needed += SAME_SOURCE_MARGIN
            # A pair reaches `needed` only if the shorter title's coverage can reach
            # (needed + 1) / 2, and coverage <= 2 * (shared + repeats) / weight, where `shared`
            # counts this title's n-grams that any member has. If neither title can be the short
            # one, the candidate is ruled out without computing a member's features. `shared` is
            # exact: the listed n-grams counted from the postings, then (only when sharing every
            # stop-gram would be enough) the candidate looked up in the stop-grams' sets.
            reach = (needed + 1.0) / 4.0
            enough = min(reach * features.weight - features.repeats, reach * story.min_weight - story.max_repeats)
            if count + len(common) < enough:
                continue
            if common and count + sum(candidate in stop for stop in common) < enough:
                continue
            score = max(_similarity(features, self._features(member), needed) for member in story.titles)
            if score >= needed and score > best_score:
                best_id, best_score = candidate, score
        return best_id

    def add_item(
        self, story_id: int, norm_title: str, canonical_url: str | None, source_id: str, seen_at: datetime
    ) -> None:
        """Record an item as a member of `story_id`, creating the story when it is new."""
        story = self._stories.get(story_id)
        if story is None:
            if self.max_stories and len(self._stories) >= self.max_stories:
                self._evict_least_recent()
            story = _Story(last_seen_at=seen_at)
            self._stories[story_id] = story
            heapq.heappush(self._expiry, (seen_at, story_id))
        elif seen_at > story.last_seen_at:
            story.last_seen_at = seen_at
        if not story.sources:
            # Nearly every story has one source: all of a source's share one 1-tuple.
            story.sources = self._one_source.setdefault(source_id, (source_id,))
        elif source_id not in story.sources:
            story.sources += (source_id,)
        if canonical_url and len(story.urls) < MAX_KEYS_PER_STORY:
            url_key = hash(canonical_url)
            if url_key not in self._by_url:
                self._by_url[url_key] = story_id
                story.urls += (url_key,)
        if norm_title in self._by_title:
            return  # this wording is indexed already (here or in a story it was not merged with)
        if len(story.title_keys) >= MAX_KEYS_PER_STORY:
            return
        self._by_title[norm_title] = story_id
        story.title_keys += (norm_title,)
        if len(story.title_keys) <= MAX_TITLES_PER_STORY:  # one of the member titles
            features = self._features(norm_title)
            story.min_weight = min(story.min_weight, features.weight)
            story.max_repeats = max(story.max_repeats, features.repeats)
            # A story's first title: its id is in no posting yet, no need to look.
            first_title = len(story.title_keys) == 1
            postings = self._postings
            for key in features.keys:
                posting = postings.get(key)
                if posting is None:
                    postings[key] = story_id
                elif isinstance(posting, int):
                    if posting != story_id:
                        postings[key] = array("q", (posting, story_id))
                elif isinstance(posting, array):
                    if first_title or story_id not in posting:
                        posting.append(story_id)
                        if len(posting) > MAX_POSTING_STORIES:
                            postings[key] = set(posting)
                else:
                    posting.add(story_id)

    def touch(self, story_id: int, seen_at: datetime) -> None:
        """Mark a story as still listed at `seen_at`; unknown (expired) ids are ignored."""
        story = self._stories.get(story_id)
        if story is not None and seen_at > story.last_seen_at:
            story.last_seen_at = seen_at

    def expire(self, now: datetime) -> list[int]:
        """Drop the stories not seen within `window_s` before `now`; returns their ids."""
        cutoff = now - self._window
        dropped: list[int] = []
        while self._expiry and self._expiry[0][0] < cutoff:
            _, story_id = heapq.heappop(self._expiry)
            story = self._stories.get(story_id)
            if story is None:
                continue
            if story.last_seen_at >= cutoff:
                heapq.heappush(self._expiry, (story.last_seen_at, story_id))
                continue
            self._drop(story_id, story)
            dropped.append(story_id)
        return dropped

    def _evict_least_recent(self) -> None:
        """Drop the story seen least recently (the expiry heap's entries may lag: re-queue those)."""
        while self._expiry:
            seen_at, story_id = heapq.heappop(self._expiry)
            story = self._stories.get(story_id)
            if story is None:
                continue
            if story.last_seen_at > seen_at:
                heapq.heappush(self._expiry, (story.last_seen_at, story_id))
                continue
            self._drop(story_id, story)
            self.evicted += 1
            return

    def _drop(self, story_id: int, story: _Story) -> None:
        del self._stories[story_id]
        for title in story.titles:
            for key in self._features(title).keys:
                posting = self._postings.get(key)
                if posting is None:
                    continue
                if isinstance(posting, int):
                    if posting == story_id:
                        del self._postings[key]
                    continue
                if isinstance(posting, array):
                    if story_id in posting:
                        posting.remove(story_id)
                else:
                    posting.discard(story_id)
                if len(posting) == 1:
                    self._postings[key] = next(iter(posting))
                elif not posting:
                    del self._postings[key]
        for title_key in story.title_keys:
            if self._by_title.get(title_key) == story_id:
                del self._by_title[title_key]
        for url in story.urls:
            if self._by_url.get(url) == story_id:
                del self._by_url[url]


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
