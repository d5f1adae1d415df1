"""One daemon per SQLite file: an advisory lock on `<db>.lock` held while it runs."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from aggregator.errors import StoreError
from aggregator.store.engine import make_data_dir


class DaemonLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        make_data_dir(self.path.parent)
        try:
            fh = self.path.open("a+")
        except OSError as exc:
            raise StoreError(f"cannot open the daemon lock {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise StoreError(
                f"another aggregator daemon ({holder}) is already running on this database "
                f"(lock {self.path}); stop it first, or give this one another [store] data_dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
