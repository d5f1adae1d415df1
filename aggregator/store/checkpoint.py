"""WAL checkpoints on their own thread, off the poll writer's path.

With SQLite's automatic checkpoint, the commit that takes the WAL past 1,000 pages also
copies those pages into the database file and syncs both files before it returns: the
poll writer stood still for that, every few polls. Here the writer connection only
appends to the WAL, and every `every` commits it asks this thread for a PASSIVE
checkpoint on a connection of its own. A passive checkpoint takes no lock that writers
or readers wait for; what it cannot copy yet (pages a reader still needs) the next one
copies. The writer keeps a far automatic checkpoint as a backstop should this thread
ever stall.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor

import sqlalchemy as sa

log = logging.getLogger(__name__)

# Commits between two checkpoints: a poll writes 50-200 pages, so the WAL stays near
# the 1,000 pages SQLite's own checkpoint would keep it under.
CHECKPOINT_EVERY_COMMITS = 8
# The writer's own automatic checkpoint, should this thread fall behind: 16,384 pages of
# 4 KiB is a 64 MiB WAL.
BACKSTOP_AUTOCHECKPOINT_PAGES = 16384


class Checkpointer:
    """Runs `PRAGMA wal_checkpoint(PASSIVE)` on `engine` in a thread of its own, every `every` commits."""

    def __init__(self, engine: sa.Engine, every: int = CHECKPOINT_EVERY_COMMITS) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.engine = engine
        self.every = every
        self.checkpoints = 0  # completed, for tests and logs
        self._commits = 0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aggregator-checkpoint")
        self._running: Future[None] | None = None

    def committed(self) -> None:
        """The writer committed a transaction (called on the writer's thread)."""
        self._commits += 1
        if self._commits >= self.every and (self._running is None or self._running.done()):
            self._commits = 0
            self._running = self._thread.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        try:
            with self.engine.connect() as conn:
                busy, wal_pages, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
            self.checkpoints += 1
            log.debug("WAL checkpoint: %s of %s pages copied (busy=%s)", copied, wal_pages, busy)
        except Exception as exc:  # the backstop checkpoint still bounds the WAL
            log.warning("WAL checkpoint failed (the next one retries): %s", exc)

    def wait(self) -> None:
        """Block until the checkpoint that is running, if any, has finished."""
        running = self._running
        if running is not None:
            running.result()

    def close(self) -> None:
        """Wait for a running checkpoint, then close the connection on its own thread."""
        self._thread.submit(self.engine.dispose).result()
        self._thread.shutdown(wait=True)
