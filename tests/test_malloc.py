"""glibc malloc settings: applied once in the daemon's process, never over the operator's own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")

SCRIPT = "from aggregator import malloc; print(','.join(malloc.tune()))"


def _tune(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env={**clean, **env}, capture_output=True, text=True, check=True, timeout=60
    )
    return [s for s in done.stdout.strip().split(",") if s]


def test_both_settings_apply_by_default() -> None:
    assert _tune() == ["mmap_threshold=65536", "arena_max=2"]


def test_a_variable_the_operator_set_wins() -> None:
    assert _tune(MALLOC_ARENA_MAX="4") == ["mmap_threshold=65536"]
    assert _tune(MALLOC_MMAP_THRESHOLD_="1048576", MALLOC_ARENA_MAX="1") == []
