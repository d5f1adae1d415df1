"""Pure scoring: observation signals, story heat with decay, and 热度 (0–100).

Per observation, the position signal is (N − rank + 1) / N for rank r of a list of N,
so rank 1 is 1.0 whatever the list length. When the source reports a native heat, the
signal blends in log(1 + heat) / log(1 + max heat of that poll) with `heat_weight`.
A story's heat is the sum over the sources currently listing it of weight × its best
signal there, plus a persistence bonus that grows to `persistence_bonus` after
`persistence_full` on the lists. Off every list, heat decays with `half_life` from the
heat it had when last listed. 热度 = 100 × heat / max heat, one decimal.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from aggregator.settings import ScoreSettings


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One current observation of a story's item on a source's latest list."""

    story_id: int
    source_id: str
    rank: int
    list_length: int
    heat: float | None
    max_heat: float | None  # the highest native heat in the same poll
    weight: float
    collected_at: datetime


@dataclass(frozen=True, slots=True)
class SourceTerm:
    source_id: str
    rank: int
    list_length: int
    heat: float | None
    weight: float
    signal: float

    @property
    def contribution(self) -> float:
        return self.weight * self.signal


@dataclass(frozen=True, slots=True)
class StoryHeat:
    """The parts that add up to a story's heat at one moment (what `explain` prints)."""

    story_id: int
    terms: tuple[SourceTerm, ...] = ()
    bonus: float = 0.0
    base_heat: float = 0.0  # heat when last listed; for stories off every list
    decay: float = 1.0  # factor applied to base_heat
    last_seen_at: datetime | None = None

    @property
    def on_list(self) -> bool:
        return bool(self.terms)

    @property
    def heat(self) -> float:
        if self.terms:
            return sum(t.contribution for t in self.terms) + self.bonus
        return self.base_heat * self.decay


def observation_signal(
    rank: int, list_length: int, heat: float | None, max_heat: float | None, heat_weight: float
) -> float:
    """The 0–1 signal of one observation: position, blended with native heat when known."""
    length = max(list_length, rank, 1)
    position = (length - rank + 1) / length
    if heat is None or max_heat is None or max_heat <= 0 or heat_weight <= 0:
        return position
    native = math.log1p(max(heat, 0.0)) / math.log1p(max_heat)
    return (1 - heat_weight) * position + heat_weight * min(native, 1.0)


def persistence_bonus(first_seen_at: datetime, now: datetime, settings: ScoreSettings) -> float:
    if settings.persistence_full <= 0:
        return settings.persistence_bonus
    listed_s = max((now - first_seen_at).total_seconds(), 0.0)
    return settings.persistence_bonus * min(1.0, listed_s / settings.persistence_full)


def decay_factor(last_seen_at: datetime, now: datetime, half_life_s: float) -> float:
    elapsed = max((now - last_seen_at).total_seconds(), 0.0)
    if half_life_s <= 0:
        return 0.0
    return float(0.5 ** (elapsed / half_life_s))


def listed_heat(
    story_id: int, entries: Iterable[ListEntry], first_seen_at: datetime | None, now: datetime, settings: ScoreSettings
) -> StoryHeat:
    """Heat of one story from its current list entries: best signal per source, summed."""
    best: list[SourceTerm] = []  # per source its best term, in the order the sources came
    seen_at: datetime | None = None
    for e in entries:
        signal = observation_signal(e.rank, e.list_length, e.heat, e.max_heat, settings.heat_weight)
        for i, current in enumerate(best):
            if current.source_id == e.source_id:
                if signal > current.signal:
                    best[i] = SourceTerm(e.source_id, e.rank, e.list_length, e.heat, e.weight, signal)
                break
        else:
            best.append(SourceTerm(e.source_id, e.rank, e.list_length, e.heat, e.weight, signal))
        if seen_at is None or e.collected_at > seen_at:
            seen_at = e.collected_at
    terms = tuple(sorted(best, key=lambda t: -t.contribution))
    bonus = persistence_bonus(first_seen_at or now, now, settings)
    return StoryHeat(story_id, terms, bonus, last_seen_at=seen_at)


def listed_heats(
    entries: Iterable[ListEntry], first_seen: Mapping[int, datetime], now: datetime, settings: ScoreSettings
) -> dict[int, StoryHeat]:
    """Heat of every story on at least one current list (`listed_heat` of each)."""
    by_story: dict[int, list[ListEntry]] = {}
    for e in entries:
        by_story.setdefault(e.story_id, []).append(e)
    return {
        story_id: listed_heat(story_id, mine, first_seen.get(story_id), now, settings)
        for story_id, mine in by_story.items()
    }


def unlisted_heat(
    story_id: int, base_heat: float, last_seen_at: datetime, now: datetime, settings: ScoreSettings
) -> StoryHeat:
    return StoryHeat(
        story_id,
        base_heat=base_heat,
        decay=decay_factor(last_seen_at, now, settings.half_life),
        last_seen_at=last_seen_at,
    )


@dataclass(frozen=True, slots=True)
class Scored:
    heats: dict[int, StoryHeat] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    max_heat: float = 0.0


def score_all(heats: Mapping[int, StoryHeat]) -> Scored:
    """热度 of every story: 100 × heat / max heat, one decimal; the top is exactly 100.0."""
    values = {sid: h.heat for sid, h in heats.items()}
    top = max(values.values(), default=0.0)
    return Scored(dict(heats), {sid: score_of(v, top) for sid, v in values.items()}, max(top, 0.0))


def score_of(heat: float, top: float) -> float:
    """热度 of a heat when the hottest story has `top`: 100 × heat / top, one decimal."""
    return round(100.0 * heat / top, 1) if top > 0 else 0.0


class HeatTable:
    """Heat of many stories in parallel arrays, a few dozen bytes a story (what `rescore` writes).

    A `StoryHeat` with its terms is a few hundred bytes; held for every active story at
    once, they were most of the daemon's peak memory. `scores` gives the same 热度 as
    `score_all` on the same heats.
    """

    def __init__(self) -> None:
        self.ids = array("q")
        self.heats = array("d")
        self.bases = array("d")  # heat when last listed: the heat itself for listed stories
        self.listed = array("b")
        self.last_seen: list[datetime | None] = []

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, heat: StoryHeat) -> None:
        self.ids.append(heat.story_id)
        value = heat.heat
        self.heats.append(value)
        self.bases.append(value if heat.on_list else heat.base_heat)
        self.listed.append(heat.on_list)
        self.last_seen.append(heat.last_seen_at)

    def scores(self) -> Iterator[float]:
        """热度 of each story, in order, as `score_all` computes it."""
        top = max(self.heats, default=0.0)
        return (score_of(v, top) for v in self.heats)
