"""Reading loosely typed JSON fields of the platforms' payloads, the same way in every collector."""

from __future__ import annotations

from typing import Any


def text(value: Any) -> str | None:
    """A non-empty stripped string, or None for anything else (numbers, null, '')."""
    return value.strip() or None if isinstance(value, str) else None


def whole_number(value: Any) -> int | None:
    """An int that is not a bool, or None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
