"""Crash safety: SIGKILL at random moments while the daemon ingests never loses or half-writes a poll."""

from __future__ import annotations

import os
from pathlib import Path

from tests.faults.crashharness import CrashHarness
from tests.faults.faultserver import FaultServer

# 25 rounds here; bench/crash.py runs as many as asked.
ROUNDS = int(os.environ.get("AGGREGATOR_TEST_CRASH_ROUNDS", "25"))


def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path, fault_server: FaultServer) -> None:
    harness = CrashHarness(tmp_path, fault_server, seed=int(os.environ.get("AGGREGATOR_TEST_CRASH_SEED", "5")))
    for _ in range(ROUNDS):
        result = harness.run_round()
        assert not result.problems, (result, harness.workdir)
    total = harness.rounds[-1].polls_after
    # The daemon kept ingesting across the kills, and logged most of what it wrote.
    assert total >= ROUNDS and len(harness.reported) >= total // 2, (total, len(harness.reported))
    # Some kills came in the middle of a poll: after its fetch and before its commit, or
    # after the commit and before the log line.
    caught = sum(r.in_flight + (r.polls_after - r.polls_before - r.reported) for r in harness.rounds)
    assert caught > 0
