"""Pure retry timing: exponential backoff with jitter after failures, Retry-After honoured."""

from __future__ import annotations

import random

# However long a source has failed, it is tried again at least this often.
MAX_BACKOFF_S = 6 * 3600.0
# Retry-After under this is treated as this: a server asking for "0" is not asking to be hammered.
MIN_RETRY_AFTER_S = 5.0
# 2 ** 40 times any interval of a second or more is far past any cap.
MAX_DOUBLINGS = 40


def retry_delay_s(
    interval_s: float,
    failures: int,
    retry_after_s: float | None = None,
    *,
    cap_s: float = MAX_BACKOFF_S,
    rng: random.Random | None = None,
) -> float:
    """Seconds until the next attempt after `failures` consecutive failures (0 = healthy)."""
    if failures <= 0:
        return interval_s
    r: random.Random = rng or random.Random()
    # The exponent stops growing long before the cap stops mattering: 2.0 ** 1024 overflows,
    # and a source down for months has failed that many times.
    base = min(interval_s * 2.0 ** min(failures - 1, MAX_DOUBLINGS), cap_s)
    # Jitter takes up to a fifth off, never adds: sources that failed together spread out,
    # and none waits longer than the cap.
    delay = max(base * (1.0 - 0.2 * r.random()), min(interval_s, cap_s))
    if retry_after_s is not None:
        delay = max(delay, min(max(retry_after_s, MIN_RETRY_AFTER_S), cap_s))
    return min(delay, cap_s)
