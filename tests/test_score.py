"""Properties of the score: top = 100.0, better rank and more platforms never lower it, decay."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from aggregator.score import (
    ListEntry,
    decay_factor,
    listed_heats,
    observation_signal,
    score_all,
    unlisted_heat,
)
from aggregator.settings import ScoreSettings

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SETTINGS = ScoreSettings()
SOURCES = ["weibo", "zhihu", "baidu", "toutiao", "douyin"]

entry = st.builds(
    ListEntry,
    story_id=st.integers(1, 30),
    source_id=st.sampled_from(SOURCES),
    rank=st.integers(1, 50),
    list_length=st.just(50),
    heat=st.one_of(st.none(), st.floats(0, 1e9)),
    max_heat=st.just(1e9),
    weight=st.floats(0.1, 3),
    collected_at=st.just(NOW),
)


def scores_of(entries: list[ListEntry]) -> dict[int, float]:
    first_seen = {e.story_id: NOW - timedelta(hours=1) for e in entries}
    return score_all(listed_heats(entries, first_seen, NOW, SETTINGS)).scores


@given(st.lists(entry, min_size=1, max_size=60))
def test_top_is_exactly_100_and_all_in_range(entries: list[ListEntry]) -> None:
    scores = scores_of(entries)
    assert max(scores.values()) == 100.0
    assert all(0.0 <= s <= 100.0 for s in scores.values())


@given(st.integers(1, 49), st.integers(2, 50), st.one_of(st.none(), st.floats(0, 1e8)))
def test_better_rank_never_lowers_the_signal(rank: int, length: int, heat: float | None) -> None:
    rank = min(rank, length - 1)
    worse = observation_signal(rank + 1, length, heat, 1e8, SETTINGS.heat_weight)
    better = observation_signal(rank, length, heat, 1e8, SETTINGS.heat_weight)
    assert better > worse


@given(st.lists(entry, min_size=1, max_size=40), st.integers(1, 30), st.integers(1, 49))
def test_better_rank_never_lowers_a_score(entries: list[ListEntry], story: int, rank: int) -> None:
    target = [e for e in entries if e.story_id == story]
    if not target:
        return
    one = target[0]
    moved = [e for e in entries if e is not one]
    worse = ListEntry(one.story_id, one.source_id, min(rank + 1, 50), 50, one.heat, one.max_heat, one.weight, NOW)
    better = ListEntry(one.story_id, one.source_id, min(rank, 50), 50, one.heat, one.max_heat, one.weight, NOW)
    assert scores_of([*moved, better])[story] >= scores_of([*moved, worse])[story]


@given(st.lists(entry, min_size=1, max_size=40), st.integers(1, 30), st.integers(1, 50))
def test_adding_a_platform_never_lowers_a_score(entries: list[ListEntry], story: int, rank: int) -> None:
    present = {e.source_id for e in entries if e.story_id == story}
    missing = [s for s in SOURCES if s not in present]
    if not missing:
        return
    before = scores_of(entries).get(story, 0.0)
    added = ListEntry(story, missing[0], rank, 50, None, None, 1.0, NOW)
    assert scores_of([*entries, added])[story] >= before


@given(st.floats(0.01, 100), st.lists(st.floats(0, 72), min_size=2, max_size=10))
def test_a_story_off_every_list_decays_monotonically(base: float, hours: list[float]) -> None:
    left = NOW - timedelta(hours=1)
    heats = [unlisted_heat(1, base, left, left + timedelta(hours=h), SETTINGS).heat for h in sorted(hours)]
    assert all(a >= b for a, b in itertools.pairwise(heats))
    assert heats[0] <= base


def test_half_life_halves() -> None:
    assert decay_factor(NOW, NOW + timedelta(seconds=SETTINGS.half_life), SETTINGS.half_life) == 0.5


def test_same_rank_on_more_platforms_scores_higher() -> None:
    one = [ListEntry(1, "weibo", 3, 50, None, None, 1.0, NOW), ListEntry(2, "weibo", 3, 50, None, None, 1.0, NOW)]
    scores = scores_of([*one, ListEntry(2, "zhihu", 3, 50, None, None, 1.0, NOW)])
    assert scores[2] == 100.0 and scores[1] < 100.0
