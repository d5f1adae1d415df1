"""Benchmark of story clustering: about 100,000 titles polled from 30 hot lists over a simulated week.

Not a test. Run: `.venv/bin/python bench/cluster.py [--titles N] [--tracemalloc]`.

The simulation: a poll round every `--round-s` seconds (5 minutes) polls the next source in
rotation (30 sources, so each is polled every 2.5 hours), which lists 50 entries of which 10% are
new since its previous poll. Half of the new entries report a story another source listed within
the last 12 hours, in that source's own wording (a Weibo hot word, a Baidu query with an edit, a
Toutiao headline with a prefix and a detail, a Zhihu "如何看待…？" question, a short-video caption);
the rest are new stories. Subjects come from a Zipf-distributed pool, so many unrelated stories share
a person or a place. Three English sources (Hacker News-like) have their own stories.

Each poll is clustered with `assign` then `StoryIndex.expire`, as the pipeline would; titles are
normalized beforehand (that is `normalize`'s cost, not clustering's). Reported: titles/s overall, for
the first and last 10% of titles, for new titles only (the n-gram path), peak memory, and how well
the known stories were recovered.
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import sys
import time
import tracemalloc
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aggregator.dedupe import StoryIndex, assign
from aggregator.normalize import normalize_title

START = datetime(2025, 3, 24, 0, 0, tzinfo=UTC)
STYLES = ["weibo"] * 6 + ["baidu"] * 6 + ["toutiao"] * 6 + ["zhihu"] * 4 + ["video"] * 5 + ["english"] * 3
PREFIXES = ["如何看待", "网友热议", "最新"]


@dataclass(frozen=True, slots=True)
class BenchItem:
    item_id: int
    norm_title: str
    canonical_url: str | None
    source_id: str
    event_id: int


@dataclass(slots=True)
class Event:
    event_id: int
    english: bool
    core: str
    detail: str
    born_at: datetime


class World:
    """Random but reproducible stories and the way each source words them."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        chars = [chr(c) for c in self.rng.sample(range(0x4E00, 0x9FA6), 3000)]
        self.chars = chars
        self.char_weights = _zipf_cum(len(chars), 1.0)
        self.subjects = ["".join(self._chars(self.rng.choice((2, 3, 3, 4)))) for _ in range(4000)]
        self.subject_weights = _zipf_cum(len(self.subjects), 1.1)
        self.words = [
            "".join(self.rng.choices("abcdefghijklmnopqrstuvwxyz", k=self.rng.randint(3, 9))) for _ in range(3000)
        ]
        self.word_weights = _zipf_cum(len(self.words), 1.0)
        self.events: list[Event] = []

    def _chars(self, count: int) -> list[str]:
        return self.rng.choices(self.chars, cum_weights=self.char_weights, k=count)

    def _text(self, low: int, high: int) -> str:
        return "".join(self._chars(self.rng.randint(low, high)))

    def _english(self, low: int, high: int) -> str:
        words = self.rng.choices(self.words, cum_weights=self.word_weights, k=self.rng.randint(low, high))
        return " ".join(words)

    def new_event(self, english: bool, now: datetime) -> Event:
        if english:
            core, detail = self._english(4, 8), self._english(2, 4)
        else:
            subject = self.rng.choices(self.subjects, cum_weights=self.subject_weights)[0]
            number = str(self.rng.randint(2, 999)) if self.rng.random() < 0.2 else ""
            core, detail = subject + self._text(3, 8) + number, self._text(5, 10)
        event = Event(len(self.events), english, core, detail, now)
        self.events.append(event)
        return event

    def word(self, style: str, event: Event) -> str:
        rng = self.rng
        if style == "english":
            return f"Show HN: {event.core}" if rng.random() < 0.2 else f"{event.core} {event.detail}"
        if style == "weibo":
            return f"#{event.core}#" if rng.random() < 0.3 else event.core
        if style == "baidu":  # the hot word itself, or with a particle added inside its words
            words = event.core.rstrip("0123456789")
            if rng.random() < 0.5 or len(words) < 2:
                return event.core
            at = rng.randint(1, len(words) - 1)
            return event.core[:at] + rng.choice("的了将") + event.core[at:]
        if style == "toutiao":
            prefix = (
                self.rng.choices(self.subjects, cum_weights=self.subject_weights)[0] + "："
                if rng.random() < 0.4
                else ""
            )
            return f"{prefix}{event.core}：{event.detail}"
        if style == "zhihu":
            return f"{rng.choice(PREFIXES)}{event.core}？{event.detail}？"
        return f"{event.core} {self._text(2, 3)}"


def _zipf_cum(count: int, exponent: float) -> list[float]:
    total = 0.0
    cum = []
    for rank in range(1, count + 1):
        total += 1.0 / rank**exponent
        cum.append(total)
    return cum


Poll = tuple[datetime, list[BenchItem], list[int]]  # when, the list, positions new to the source


def simulate(
    titles: int, list_size: int, new_share: float, shared_share: float, round_s: float, seed: int
) -> tuple[list[Poll], int]:
    """The polls in order, and the number of distinct stories they report."""
    world = World(seed)
    sources = [f"{style}-{n}" for n, style in enumerate(STYLES)]
    lists: dict[str, list[BenchItem]] = {}
    listed_events: dict[str, set[int]] = defaultdict(set)
    next_id = 1
    polls: list[Poll] = []
    produced = 0
    now = START
    rng = world.rng

    def entry(source: str, event: Event) -> BenchItem:
        nonlocal next_id
        style = source.split("-")[0]
        title = world.word(style, event)
        url = f"https://{source}.example.com/story/{event.event_id}" if style in ("toutiao", "english") else None
        next_id += 1
        listed_events[source].add(event.event_id)
        return BenchItem(next_id, normalize_title(title), url, source, event.event_id)

    def fresh(source: str) -> BenchItem:
        english = source.startswith("english")
        if rng.random() < shared_share:
            recent = [
                e
                for e in world.events[-400:]
                if e.english == english
                and now - e.born_at < timedelta(hours=12)
                and e.event_id not in listed_events[source]
            ]
            if recent:
                return entry(source, rng.choice(recent))
        return entry(source, world.new_event(english, now))

    turn = 0
    while produced < titles:
        source = sources[turn % len(sources)]
        turn += 1
        previous = lists.get(source)
        if previous is None:
            current = [fresh(source) for _ in range(list_size)]
            new_at = list(range(list_size))
        else:
            keep = rng.sample(range(list_size), list_size - max(1, round(list_size * new_share)))
            keep_set = set(keep)
            current = [previous[i] if i in keep_set else fresh(source) for i in range(list_size)]
            new_at = [i for i in range(list_size) if i not in keep_set]
        lists[source] = current
        polls.append((now, current, new_at))
        produced += len(current)
        now += timedelta(seconds=round_s)
    return polls, len(world.events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--titles", type=int, default=100_000)
    parser.add_argument("--list-size", type=int, default=50)
    parser.add_argument("--new-share", type=float, default=0.1)
    parser.add_argument("--shared-share", type=float, default=0.5)
    parser.add_argument("--round-s", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tracemalloc", action="store_true", help="trace the index's allocations (slower)")
    args = parser.parse_args()

    polls, event_count = simulate(
        args.titles, args.list_size, args.new_share, args.shared_share, args.round_s, args.seed
    )
    total = sum(len(items) for _, items, _ in polls)
    gc.collect()
    gc.freeze()  # the generated polls live to the end: keep the collector from rescanning them
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.tracemalloc:
        tracemalloc.start()
    index = StoryIndex()
    durations: list[tuple[int, float]] = []  # (titles, seconds) per poll
    new_durations: list[tuple[int, float]] = []  # (new titles, seconds) per poll
    new_titles = 0
    new_seconds = 0.0
    expire_seconds = 0.0
    story_of: dict[int, int] = {}  # item id → story id
    active_counts: list[int] = []  # active stories after each poll
    for now, items, new_at in polls:
        new_set = set(new_at)
        repeats = [item for i, item in enumerate(items) if i not in new_set]
        fresh = [items[i] for i in new_at]
        started = time.perf_counter()
        repeat_ids = assign(index, repeats, now)
        middle = time.perf_counter()
        fresh_ids = assign(index, fresh, now)
        assigned = time.perf_counter()
        index.expire(now)
        finished = time.perf_counter()
        durations.append((len(items), finished - started))
        active_counts.append(len(index))
        new_durations.append((len(fresh), assigned - middle))
        new_titles += len(fresh)
        new_seconds += assigned - middle
        expire_seconds += finished - assigned
        for item, story_id in zip(repeats + fresh, repeat_ids + fresh_ids, strict=True):
            story_of[item.item_id] = story_id
    traced_peak = tracemalloc.get_traced_memory()[1] if args.tracemalloc else None
    if args.tracemalloc:
        tracemalloc.stop()
    rss_after_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def rate(part: list[tuple[int, float]]) -> float:
        return sum(n for n, _ in part) / sum(s for _, s in part)

    tenth = max(1, len(durations) // 10)
    seconds = sum(s for _, s in durations)
    print(
        f"polls {len(polls)} over {polls[-1][0] - polls[0][0]}, titles {total}, "
        f"new titles {new_titles}, stories {event_count}"
    )
    print(f"clustering: {seconds:.2f} s, {total / seconds:,.0f} titles/s overall")
    print(
        f"  first 10% of polls: {rate(durations[:tenth]):,.0f} titles/s; "
        f"last 10%: {rate(durations[-tenth:]):,.0f} titles/s"
    )
    print(f"  new titles only (n-gram path): {new_titles / new_seconds:,.0f} titles/s")
    print(f"  expire: {1e6 * expire_seconds / len(polls):.0f} µs per poll")
    deciles = [new_durations[i * tenth : (i + 1) * tenth] for i in range(10)]
    per_new_us = " ".join(f"{1e6 / rate(part):.0f}" for part in deciles if part)
    print(f"  µs per new title, by tenth of the week: {per_new_us}")
    active = " ".join(str(active_counts[min(len(active_counts), (i + 1) * tenth) - 1]) for i in range(10))
    print(f"  active stories at the end of each tenth: {active}")
    print(f"  active stories at the end: {len(index)}")
    print(f"peak RSS {rss_after_kib / 1024:.0f} MiB (before clustering {rss_before_kib / 1024:.0f} MiB)")
    if traced_peak is not None:
        print(f"traced peak of clustering allocations: {traced_peak / 2**20:.1f} MiB")

    # Known stories recovered: items of one event under one story id, and no story mixing events.
    by_event: dict[int, set[int]] = defaultdict(set)
    by_story: dict[int, set[int]] = defaultdict(set)
    for _, items, _ in polls:
        for item in items:
            by_event[item.event_id].add(story_of[item.item_id])
            by_story[story_of[item.item_id]].add(item.event_id)
    split = sum(1 for stories in by_event.values() if len(stories) > 1)
    mixed = sum(1 for events in by_story.values() if len(events) > 1)
    print(
        f"known stories split over several ids: {split} of {len(by_event)}; "
        f"ids mixing stories: {mixed} of {len(by_story)}"
    )


if __name__ == "__main__":
    main()
