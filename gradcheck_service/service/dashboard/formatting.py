"""Jinja filters that turn the report's raw units (bytes, seconds, floats, UTC datetimes) into readable text."""

from __future__ import annotations

import datetime as dt
import math
import unicodedata
from typing import Any

from flask import Blueprint

from ...report import units


def human_bytes(value: float | int | None) -> str:
    """Bytes in binary units with three significant figures: 1536 -> '1.50 KiB'; '–' where not measured."""
    return "–" if value is None else units.human_bytes(value)


def scientific(value: float | int | None, digits: int = 3) -> str:
    """Errors and norms span many orders of magnitude: ``1.23e-07`` rather than ``0.000000123``."""
    if value is None:
        return "–"
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "∞" if number > 0 else "-∞"
    if number == 0:
        return "0"
    if 1e-3 <= abs(number) < 1e4:
        return f"{number:.{digits}g}"
    return f"{number:.{digits - 1}e}"


def seconds(value: float | None) -> str:
    """A duration in seconds: '850 ms', '12.3 s', '4 min 05 s'."""
    if value is None:
        return "–"
    if value < 0:
        return "-" + seconds(-value)
    if value < 0.01:
        return f"{value * 1000:.2g} ms"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.3g} s"
    minutes, secs = divmod(int(round(value)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def when(value: dt.datetime | None) -> str:
    """A UTC timestamp as 'YYYY-MM-DD HH:MM UTC'."""
    if value is None:
        return "–"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def ago(value: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """How long ago, coarsely: 'just now', '5 min ago', '3 h ago', '2 days ago'."""
    if value is None:
        return "–"
    delta = ((now or dt.datetime.now(dt.UTC)) - value).total_seconds()
    if delta < 45:
        return "just now"
    if delta < 3600:
        return f"{round(delta / 60)} min ago"
    if delta < 86400:
        return f"{round(delta / 3600)} h ago"
    days = round(delta / 86400)
    return f"{days} day{'s' if days != 1 else ''} ago"


def percent(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value * 100:.{digits}f} %"


def short_commit(value: str | None) -> str:
    return (value or "")[:10]


def visible(text: str | None) -> str:
    """Control and format characters as escapes (``\\u202e``): the right-to-left override and the other bidi
    controls, zero-width characters, C0/C1 controls. A submitted file name then reads as what it is and cannot
    reorder the text around it (``evil\\u202eyp.txt`` rather than a name that displays as ``evil.txt.py``)."""
    if text is None:
        return ""
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cc", "Cf") else c for c in str(text))


def duration(run: Any) -> float | None:
    """Wall seconds of a run: start to finish, or start to now while it runs."""
    if run.started_at is None:
        return None
    end = run.finished_at or (dt.datetime.now(dt.UTC) if run.status == "running" else None)
    return (end - run.started_at).total_seconds() if end else None


def register(bp: Blueprint) -> None:
    """Install the filters app-wide when ``bp`` is registered (Flask's template filters are app-wide)."""
    for name, function in (("bytes", human_bytes), ("sci", scientific), ("secs", seconds), ("when", when),
                           ("ago", ago), ("pct", percent), ("short_commit", short_commit),
                           ("visible", visible)):
        bp.add_app_template_filter(function, name)
    bp.add_app_template_global(duration, "run_duration")
