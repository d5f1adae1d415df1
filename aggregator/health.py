"""Is the daemon healthy? The heartbeat record and the pure decision over it.

The running daemon writes a `Heartbeat` into the store every `health.heartbeat_every`
(and once at start and at a clean stop); `aggregator health` reads it back and asks
`decide`, which does no I/O and takes `now` as an argument.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aggregator.settings import Settings

# Key prefix of heartbeat rows in aggregator_meta; the rest of the key is the instance id.
HEARTBEAT_KEY_PREFIX = "heartbeat:"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What a daemon says about itself: when, who, and whether its sources are failing."""

    at: datetime
    instance: str
    pid: int
    scheduler_running: bool
    sources_total: int
    sources_failing: int

    @property
    def key(self) -> str:
        return HEARTBEAT_KEY_PREFIX + self.instance

    def to_json(self) -> str:
        return json.dumps(
            {
                "at": self.at.astimezone(UTC).isoformat(timespec="seconds"),
                "instance": self.instance,
                "pid": self.pid,
                "scheduler_running": self.scheduler_running,
                "sources_total": self.sources_total,
                "sources_failing": self.sources_failing,
            },
            ensure_ascii=False,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Heartbeat:
        """Parse a stored heartbeat; ValueError when it is not one."""
        try:
            raw = json.loads(text)
            at = datetime.fromisoformat(raw["at"])
            beat = cls(
                at=at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC),
                instance=str(raw["instance"]),
                pid=int(raw["pid"]),
                scheduler_running=bool(raw["scheduler_running"]),
                sources_total=int(raw["sources_total"]),
                sources_failing=int(raw["sources_failing"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a heartbeat record: {text[:80]!r}") from exc
        return beat


def choose_heartbeat(beats: Iterable[Heartbeat], instance: str, host: str) -> Heartbeat | None:
    """The heartbeat `aggregator health` judges: this instance's, else this host's newest.

    With `daemon.instance_id` set the instance is known exactly; by default a daemon is
    `host:pid`, and the health command (another process) only knows the host.
    """
    if instance:
        mine = [b for b in beats if b.instance == instance]
    else:
        mine = [b for b in beats if b.instance.startswith(f"{host}:")]
    return max(mine, key=lambda b: b.at, default=None)


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def decide(
    beat: Heartbeat | None, now: datetime, stale_after_s: float, store_problem: str | None = None
) -> tuple[bool, str]:
    """(healthy, one line saying why) for a heartbeat at `now`.

    Unhealthy, in the order checked: the store cannot be written (`store_problem`, found
    by the caller), no heartbeat, a clean stop, a heartbeat older than `stale_after_s`,
    every source failing.
    """
    if store_problem is not None:
        return False, f"store not writable: {store_problem}"
    if beat is None:
        return False, "no heartbeat in the store: the daemon has not started here"
    age_s = (now - beat.at).total_seconds()
    who = f"daemon {beat.instance}"
    if not beat.scheduler_running:
        return False, f"{who} is stopped (scheduler not running since {_ago(age_s)} ago)"
    if age_s > stale_after_s:
        return False, (
            f"heartbeat is stale: last one {_ago(age_s)} ago from {who} (limit {_ago(stale_after_s)}); "
            "the daemon is hung or gone"
        )
    if beat.sources_total > 0 and beat.sources_failing >= beat.sources_total:
        return False, f"all {beat.sources_total} sources are failing ({who})"
    return True, (
        f"ok: {who} heartbeat {_ago(age_s)} ago, {beat.sources_total} sources, {beat.sources_failing} failing"
    )


async def check_health(settings: Settings, instance: str | None) -> tuple[bool, str]:
    """(healthy, why) for the daemon of this host or of `instance`, read from the store.

    A store that cannot be read is unhealthy, not an error: container runtimes read exit
    status 1 as unhealthy and reserve 2.
    """
    import socket

    from aggregator.errors import StoreError
    from aggregator.store.maintenance import HEALTH_BUSY_TIMEOUT_S, inspect_health

    busy_s = min(settings.store.busy_timeout, HEALTH_BUSY_TIMEOUT_S)
    try:
        beats, problem = await inspect_health(settings.store.effective_url, busy_timeout_s=busy_s)
    except StoreError as exc:
        return False, str(exc)
    beat = choose_heartbeat(beats, instance or settings.daemon.instance_id, socket.gethostname())
    return decide(beat, datetime.now(UTC), settings.health.stale_after, problem)
