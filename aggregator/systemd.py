"""systemd's notify protocol (sd_notify(3)), so that `Type=notify` units know the daemon's state.

When systemd starts the daemon with `NOTIFY_SOCKET` in its environment, the daemon
tells it, one datagram of `KEY=value` lines each time:

- `READY=1` once the jobs are scheduled: `systemctl start` returns then, and a
  `systemctl reload` sent right after it waits until the daemon can take it;
- `RELOADING=1` (with `MONOTONIC_USEC`, as systemd asks) when a SIGHUP reload begins,
  `READY=1` when it has ended, whether it changed anything or not;
- `EXTEND_TIMEOUT_USEC` every 30 s while migrations run at the start, so that a long one
  is not cut off by `TimeoutStartSec=` (and then started over at every restart);
- `STOPPING=1` when a stop begins;
- `WATCHDOG=1` every half of `WatchdogSec=` (given as `WATCHDOG_USEC`), from a job of
  the scheduler: a daemon whose event loop or scheduler hangs stops sending it, and
  systemd restarts it;
- `STATUS=…`, a line that `systemctl status` shows.

Without `NOTIFY_SOCKET` (a container, a terminal) every call does nothing. The protocol
is a datagram on a Unix socket; libsystemd's Python binding needs its C headers to build
and the small packages on the index that wrap this are not kept up, so it is written here.
A failed send is logged once and never stops the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("aggregator.systemd")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is a socket in the abstract namespace, whose address begins with a NUL byte.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_s = _watchdog_s(env)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str) -> bool:
        """One datagram of `KEY=value` lines (keys as given, e.g. READY="1"); False if it was not sent."""
        if not self.address:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # a receiver that does not read must not hold the loop
                sock.sendto(message, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                shown = self.address.replace("\0", "@")
                log.warning("systemd notification to %s failed: %s (later failures are not logged)", shown, exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def reloading(self) -> None:
        self.send(RELOADING="1", MONOTONIC_USEC=str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000))

    def stopping(self) -> None:
        self.send(STOPPING="1", STATUS="stopping")

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")


def _watchdog_s(env: Mapping[str, str]) -> float | None:
    """WatchdogSec= in seconds when it is meant for this process, else None."""
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None
