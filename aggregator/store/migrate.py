"""Migrations in a short-lived child process, so that the daemon never imports Alembic.

Alembic and Mako would stay in the long-running daemon's memory (about 12 MB) for
migrations that take a moment at its start. `upgrade_in_child` runs

    python -P -m aggregator.store.migrate [--busy-timeout SECONDS]

with the daemon's interpreter and hands it the database URL on stdin (never on the
command line, where `ps` would show its password). The child applies the pending
migrations exactly as `aggregator db upgrade` does and exits 0, or prints the reason on
stderr and exits with EXIT_STORE_ERROR; the daemon turns that into the same StoreError
an in-process upgrade raises. Commands that exit soon (`db upgrade`, `run --once`) and
`Store.open(upgrade=True)` keep migrating in their own process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aggregator.errors import StoreError

log = logging.getLogger("aggregator.store.migrate")

# The child's exit status when the upgrade failed with a StoreError, whose message is on
# the stderr line that starts with ERROR_PREFIX. Any other non-zero status is a crash.
EXIT_STORE_ERROR = 3
ERROR_PREFIX = "migration failed: "
MODULE = "aggregator.store.migrate"


async def _upgrade(url: str, busy_timeout_s: float) -> int:
    from aggregator.store import engine as engine_mod

    try:
        engine = engine_mod.make_engine(url, busy_timeout_s=busy_timeout_s, pool_size=1, max_overflow=0)
        try:
            await engine_mod.upgrade(engine)
        finally:
            await engine.dispose()
    except StoreError as exc:
        # Written while the loop still runs: a driver thread that outlives it may print a
        # traceback after this line, never into it.
        print(ERROR_PREFIX + " ".join(str(exc).split("\n")).strip(), file=sys.stderr, flush=True)
        return EXIT_STORE_ERROR
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import argparse  # the child's alone: the daemon imports this module for upgrade_in_child

    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Apply the pending migrations to the database whose URL is read from stdin.",
    )
    parser.add_argument("--busy-timeout", type=float, default=10.0, metavar="SECONDS", help="SQLite busy timeout")
    args = parser.parse_args(argv)
    # A Ctrl-C in the daemon's terminal, or systemd's SIGTERM to every process of the unit,
    # reaches this process too: the daemon decides whether the migrations are given time to
    # end or cancelled, which kills this process (see `Daemon._migrate`).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    url = sys.stdin.readline().strip()
    if not url:
        print(ERROR_PREFIX + "no database URL on stdin", file=sys.stderr)
        return EXIT_STORE_ERROR
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(_upgrade(url, args.busy_timeout))


def _child_env() -> dict[str, str]:
    """The environment of the child, which must import this very `aggregator` package.

    The child runs with -P: the working directory (the daemon's is often its writable data
    directory) is not put in front of sys.path. A package that the parent found only through
    its working directory (a checkout run as `python -m aggregator`) is handed over in
    PYTHONPATH; an installed one (site-packages, an editable install's .pth) the child finds itself.
    """
    env = dict(os.environ)
    root = os.path.realpath(Path(__file__).parents[2])
    cwd = os.path.realpath(os.getcwd())
    installed = any(entry and os.path.realpath(entry) == root != cwd for entry in sys.path)
    if not installed:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


async def upgrade_in_child(url: str, *, busy_timeout_s: float = 10.0) -> None:
    """Apply the pending migrations to `url` in a child process; StoreError when they fail."""
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",
            "-m",
            MODULE,
            "--busy-timeout",
            str(busy_timeout_s),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=_child_env(),
        )
    except OSError as exc:
        raise StoreError(f"cannot start the migration process {sys.executable}: {exc}") from exc
    try:
        _out, err = await proc.communicate((url + "\n").encode())
    except BaseException:
        # Cancelled (or interrupted) while the child runs: it must not outlive the daemon's
        # start; its transaction rolls back.
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    lines = [line for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
    code = proc.returncode
    if code == 0:
        if lines:  # warnings of the migrations
            log.warning("migration: %s", "\n".join(lines))
        return
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    if code == EXIT_STORE_ERROR and errors:
        others = [line for line in lines if not line.startswith(ERROR_PREFIX)]
        if others:  # e.g. a driver thread's traceback after the failure: not news to the operator
            log.debug("migration process output:\n%s", "\n".join(others))
        raise StoreError(errors[-1].removeprefix(ERROR_PREFIX))
    if lines:
        log.error("migration process output:\n%s", "\n".join(lines))
    how = f"was killed by {_signal_name(-code)}" if code is not None and code < 0 else f"exited with status {code}"
    last = f": {lines[-1]}" if lines else ""
    raise StoreError(f"the migration process {how}{last}")


async def upgrade_if_needed(url: str, *, busy_timeout_s: float = 10.0) -> bool:
    """`upgrade_in_child` unless the database is at the head revision already; True if it ran.

    A restart on an up-to-date database (the usual one) then costs a read of
    alembic_version instead of a Python process. A database that is not ours or is newer
    is refused here with the same StoreError the child would give.
    """
    from aggregator.store import engine as engine_mod

    engine = engine_mod.make_engine(url, busy_timeout_s=busy_timeout_s, pool_size=1, max_overflow=0)
    try:
        current = await engine_mod.check_version(engine)
        head = engine_mod.head_revision()
        if current == head:
            return False
        # On a large store a migration can take a while: the log says what the start waits for.
        log.info("migrating the store from %s to revision %s", f"revision {current}" if current else "nothing", head)
        started = time.monotonic()
        # This engine's connection stays open while the child migrates: on SQLite the
        # child's is then not the last connection, whose close checkpoints and deletes the
        # WAL under an exclusive lock that a reader arriving meanwhile gets SQLITE_BUSY from.
        await upgrade_in_child(url, busy_timeout_s=busy_timeout_s)
        log.info("store migrated to revision %s in %.1fs", head, time.monotonic() - started)
        return True
    finally:
        await engine.dispose()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


if __name__ == "__main__":
    sys.exit(main())
