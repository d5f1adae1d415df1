"""Data types passed between the pipeline stages: RawItem → Item → Observation rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple


# RawItem and Item are NamedTuples: immutable like frozen dataclasses, but built at
# tuple speed (a frozen dataclass sets each field through object.__setattr__), and a poll
# builds one of each per entry.
class RawItem(NamedTuple):
    """One entry as a collector read it, before normalization."""

    title: str
    url: str | None = None
    rank: int | None = None  # as shown on the platform; None means "use list position"
    heat_raw: str | int | float | None = None  # the platform's heat as served
    native_id: str | None = None
    label: str | None = None
    summary: str | None = None
    published_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Collected:
    """What one successful fetch of a source gave."""

    items: list[RawItem]
    http_status: int | None = 200
    not_modified: bool = False
    etag: str | None = None
    last_modified: str | None = None
    dropped_count: int = 0  # promoted / pinned / malformed entries not stored as ranked items
    cookies: dict[str, str] | None = None  # cookies to keep for the next poll, when changed


class Item(NamedTuple):
    """A normalized entry: identity computed, ready to store."""

    key: str
    item_id: int
    source_id: str
    title: str
    norm_title: str
    url: str | None
    canonical_url: str | None
    rank: int
    heat: float | None
    heat_raw: str | None
    label: str | None
    native_id: str | None
    summary: str | None
    published_at: datetime | None


@dataclass(slots=True)
class SourceState:
    """What a source carries from one poll to the next (conditional GET, cookies)."""

    etag: str | None = None
    last_modified: str | None = None
    cookies: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PollResult:
    """The outcome of one poll, as stored in `polls` and shown by `run --once`."""

    source_id: str
    poll_id: int | None
    status: str  # ok | not_modified | error
    started_at: datetime
    finished_at: datetime
    http_status: int | None
    item_count: int
    new_count: int
    dropped_count: int
    error_kind: str | None = None
    error: str | None = None
    retry_after_s: float | None = None
    consecutive_failures: int = 0
    next_attempt_at: datetime | None = None

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()
