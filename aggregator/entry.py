"""The `aggregator` command's entry point: the console script and `python -m aggregator`.

Its first act, before the imports that take a few tenths of a second, is to hold SIGTERM,
SIGINT and SIGHUP, whose default actions would kill the process: a `systemctl reload`
right after a start, or a stop while the daemon loads a large store, must not end it
half-way. `run` hands what arrived to the daemon, which stops cleanly or reloads as soon
as it can (see `Daemon.run`); every other command gets the default actions back once its
command line is read, and a signal that came meanwhile takes effect then.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence

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


@contextlib.contextmanager
def acting_on(
    actions: Mapping[signal.Signals, Callable[[signal.Signals], object]], early: Sequence[int]
) -> Iterator[None]:
    """`actions` as the running event loop's signal handlers (each is given its signal), once
    those of `early` (held since the process began) have been acted on; removed at the end.
    A held signal without an action is dropped."""
    import asyncio  # here: the entry point's first act must come before any heavy import

    loop = asyncio.get_running_loop()
    for sig, action in actions.items():
        loop.add_signal_handler(sig, action, sig)
    try:
        for number in early:
            if (sig := signal.Signals(number)) in actions:
                actions[sig](sig)
        yield
    finally:
        for sig in actions:
            loop.remove_signal_handler(sig)


def main() -> int:
    held = HeldSignals()
    from aggregator.cli import main as cli_main

    return cli_main(held=held)
