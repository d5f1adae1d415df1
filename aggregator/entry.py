"""The `aggregator` command's entry point: the console script and `python -m aggregator`.

Its first act, before the imports that take a few tenths of a second, is to hold SIGTERM,
SIGINT and SIGHUP, whose default actions would kill the process: a `systemctl reload`
right after a start, or a stop while the daemon loads a large store, must not end it
half-way. `run` hands what arrived to the daemon, which stops cleanly or reloads as soon
as it can (see `Daemon.run`); every other command gets the default actions back once its
command line is read, and a signal that came meanwhile takes effect then.
"""

from __future__ import annotations

import signal

HELD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class HeldSignals:
    """HELD's handlers replaced by one that records each signal's number in `received`."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous = {sig: signal.signal(sig, self._keep) for sig in HELD}

    def _keep(self, number: int, _frame: object) -> None:
        self.received.append(number)

    def release(self, *, deliver: bool) -> None:
        """The handlers of before back; with `deliver`, the signals received meanwhile raised again."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        if deliver:
            for number in self.received:
                signal.raise_signal(number)


def main() -> int:
    held = HeldSignals()
    from aggregator.cli import main as cli_main

    return cli_main(held=held)
