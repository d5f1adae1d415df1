"""Text the CLI and `serve` show: column padding for CJK, sparklines, `explain`, `history`, JSON."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aggregator.score import StoryHeat


def json_text(payload: Any) -> str:
    """`payload` as indented JSON for scripts; times as ISO-8601 with their UTC offset."""

    def default(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        raise TypeError(f"{type(value).__name__} is not JSON")

    return json.dumps(payload, ensure_ascii=False, indent=2, default=default)


async def unknown_source(store: Any, settings: Any, source_id: str) -> str | None:
    """Why `source_id` is a typo, or None: a source no longer configured still has its history."""
    stored = set(await store.source_states())
    configured = {s.id for s in settings.sources}
    if source_id in stored | configured:
        return None
    known = ", ".join(sorted(stored | configured)) or "none"
    return f"no source {source_id!r} in the settings or the store (known: {known})"


def source_report(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A `sources_status` row as `sources` shows it, for people and scripts (never the cookies).

    `state` is ok, failing, backing_off, not_polled or disabled; `next_due` is when the
    source is polled next (its backoff, else its last poll plus its interval); the last
    error is given only while it is newer than the last success.
    """
    if not row["enabled"]:
        state = "disabled"
    elif row["last_poll_at"] is None:
        state = "not_polled"
    elif not row["consecutive_failures"]:
        state = "ok"
    elif row["next_attempt_at"] is not None and row["next_attempt_at"] > now:
        state = "backing_off"
    else:
        state = "failing"
    due = row["next_attempt_at"]
    if due is None and row["last_poll_at"] is not None:
        due = row["last_poll_at"] + timedelta(seconds=row["interval_s"])
    current_error = row["last_error_at"] is not None and (
        row["last_success_at"] is None or row["last_error_at"] > row["last_success_at"]
    )
    return {
        "id": row["id"],
        "name": row["display_name"],
        "kind": row["kind"],
        "enabled": bool(row["enabled"]),
        "interval_s": row["interval_s"],
        "state": state,
        "last_poll_at": row["last_poll_at"],
        "last_success_at": row["last_success_at"],
        "next_due": due,
        "consecutive_failures": row["consecutive_failures"],
        "failing_since": (row["failing_since"] or row["last_error_at"]) if current_error else None,
        "last_error_kind": row["last_error_kind"] if current_error else None,
        "last_error": row["last_error"] if current_error else None,
        "held_by": row["lease_owner"],
    }


SPARKS = "▁▂▃▄▅▆▇█"


def width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def pad(text: str, cells: int) -> str:
    """`text` cut or padded to `cells` terminal columns (CJK characters take two)."""
    cut, used = [], 0
    for ch in text:
        w = width(ch)
        if used + w > cells:
            break
        cut.append(ch)
        used += w
    return "".join(cut) + " " * (cells - used)


def sparkline(values: Sequence[float], cells: int = 40) -> str:
    if not values:
        return ""
    if len(values) > cells:  # keep the shape: the maximum of each bucket
        step = len(values) / cells
        values = [max(values[int(i * step) : max(int((i + 1) * step), int(i * step) + 1)]) for i in range(cells)]
    top = max(values)
    if top <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(int(v / top * (len(SPARKS) - 1) + 0.5), len(SPARKS) - 1)] for v in values)


def local(when: datetime | None, zone: ZoneInfo, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return when.astimezone(zone).strftime(fmt) if when is not None else "-"


def explain_lines(
    story: dict[str, Any], heat: StoryHeat, top_heat: float, top_story: int | None, half_life_s: float, zone: ZoneInfo
) -> list[str]:
    """Every term of a story's score, adding up to the 热度 shown."""
    lines = [f"story {story['id']}: {story['title']}  (on {story['source_count']} platform(s))"]
    if heat.on_list:
        lines.append(
            f"  {pad('source', 20)} {'rank':>5} {'of':>4} {'heat':>12} {'weight':>7} {'signal':>7} "
            f"{'weight×signal':>14}"
        )
        for t in heat.terms:
            native = f"{t.heat:,.0f}" if t.heat is not None else "-"
            lines.append(
                f"  {pad(t.source_id, 20)} {t.rank:>5} {t.list_length:>4} {native:>12} {t.weight:>7.2f} "
                f"{t.signal:>7.3f} {t.contribution:>14.3f}"
            )
        lines.append(f"  {pad('persistence bonus', 60)} {heat.bonus:>14.3f}")
    else:
        since = local(heat.last_seen_at, zone)
        lines.append(f"  off every list since {since}: heat when last listed {heat.base_heat:.3f}")
        lines.append(f"  decay 0.5^(elapsed / half-life {half_life_s / 3600:g}h) = {heat.decay:.3f}")
    lines.append(f"  {pad('heat', 60)} {heat.heat:>14.3f}")
    lines.append(f"  {pad(f'top heat now (story {top_story})', 60)} {top_heat:>14.3f}")
    score = round(100.0 * heat.heat / top_heat, 1) if top_heat > 0 else 0.0
    lines.append(f"  热度 = 100 × {heat.heat:.3f} / {top_heat:.3f} = {score:.1f}")
    return lines


def history_lines(
    story: dict[str, Any], observations: Sequence[Any], scores: Sequence[Any], zone: ZoneInfo
) -> list[str]:
    lines = [f"story {story['id']}: {story['title']}", "  rank per source (1 = top):"]
    by_source: dict[str, list[Any]] = {}
    for o in observations:
        by_source.setdefault(o.source_id, []).append(o)
    for source_id, rows in sorted(by_source.items()):
        ranks = [r.rank for r in rows]
        first, last = rows[0].collected_at, rows[-1].collected_at
        lines.append(
            f"    {pad(source_id, 20)} {len(rows):>4} polls  best {min(ranks):>3}  now {ranks[-1]:>3}  "
            f"{local(first, zone, '%m-%d %H:%M')} → {local(last, zone, '%m-%d %H:%M')}"
        )
        shown = rows[-12:]
        lines.append("      " + "  ".join(f"{local(r.collected_at, zone, '%H:%M')} #{r.rank}" for r in shown))
    if scores:
        values = [float(s.score) for s in scores]
        lines.append(
            f"  热度 over time ({len(values)} rescorings, "
            f"{local(scores[0].scored_at, zone, '%m-%d %H:%M')} → {local(scores[-1].scored_at, zone, '%m-%d %H:%M')}):"
        )
        lines.append(f"    {sparkline(values)}  now {values[-1]:.1f}, peak {max(values):.1f}")
    else:
        lines.append("  no score history yet")
    return lines
