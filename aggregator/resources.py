"""Where the files shipped beside the code live: Alembic migrations and seed data.

In a wheel they are inside the package (`aggregator/_migrations`, `aggregator/_seeds`,
see pyproject's force-include); in a source checkout they are the top-level folders.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _locate(installed: str, checkout: str) -> Path:
    inside = _PACKAGE_DIR / installed
    if inside.is_dir():
        return inside
    beside = _PACKAGE_DIR.parent / checkout
    if beside.is_dir():
        return beside
    raise FileNotFoundError(f"neither {inside} nor {beside} exists: the installation is incomplete")


def migrations_dir() -> Path:
    return _locate("_migrations", "migrations")


def seeds_dir() -> Path:
    return _locate("_seeds", "seeds")
