"""Date parsing shared by the date rules and the date cleaning step."""

from __future__ import annotations

import calendar
import re
from datetime import date, datetime, timedelta
from typing import Any

__all__ = ["as_date", "as_datetime", "date_bound", "parse_loose_date", "shift"]

# Common input shapes of a date, after NFKC: 2024-01-05, 2024/1/5, 2024.1.5, 20240105,
# 2024年1月5日; each may carry a midnight time part ("00:00:00"), as legacy exports do.
_LOOSE = re.compile(
    r"(?P<y>\d{4})(?:(?P<sep>[-/.])(?P<m>\d{1,2})(?P=sep)(?P<d>\d{1,2})"
    r"|(?P<m8>\d{2})(?P<d8>\d{2})"
    r"|\s*年\s*(?P<mz>\d{1,2})\s*月\s*(?P<dz>\d{1,2})\s*日?)"
    r"(?:[T ]0{1,2}:00(?::00(?:\.0+)?)?)?"
)


def parse_loose_date(text: str) -> date | None:
    """Parse a date written in one of the common shapes; None if it is not one."""
    m = _LOOSE.fullmatch(text.strip())
    if m is None:
        return None
    g = m.group
    month, day = (
        (g("m"), g("d"))
        if g("m")
        else (g("m8"), g("d8"))
        if g("m8")
        else (
            g("mz"),
            g("dz"),
        )
    )
    try:
        return date(int(g("y")), int(month), int(day))
    except ValueError:
        return None


def as_date(value: Any) -> date | None:
    """A date object or a strict ISO ``YYYY-MM-DD`` string as a date; else None."""
    if type(value) is date:
        return value
    if isinstance(value, str):
        if len(value) == 10 and value[4] == "-" and value[7] == "-" and value.isascii():
            try:
                return date.fromisoformat(value)
            except ValueError:
                return None
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    return None


def as_datetime(value: Any) -> datetime | None:
    """A datetime object or an ISO 8601 date-time string (``YYYY-MM-DD[T ]HH:MM...``)."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        if len(value) >= 16 and value[4] == "-" and value[10] in "T " and value.isascii():
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                return None
    return None


def shift(day: date, amount: int, unit: str) -> date:
    """``day`` moved by ``amount`` days (d), months (m) or years (y), clamping the day."""
    if unit == "d":
        return day + timedelta(days=amount)
    months = day.year * 12 + day.month - 1 + (amount * 12 if unit == "y" else amount)
    year, month = divmod(months, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


_RELATIVE = re.compile(r"today\s*(?:([+-])\s*(\d+)\s*([dmy]))?", re.IGNORECASE)


def date_bound(spec: date | str) -> date | tuple[int, str]:
    """Parse a bound: a date, an ISO date string, or ``today[+-N(d|m|y)]``.

    Returns a date, or ``(offset, unit)`` for a bound relative to today.
    Raises ValueError for anything else.
    """
    if isinstance(spec, datetime):
        return spec.date()
    if isinstance(spec, date):
        return spec
    m = _RELATIVE.fullmatch(spec.strip())
    if m is not None:
        if m.group(1) is None:
            return (0, "d")
        amount = int(m.group(2))
        return (-amount if m.group(1) == "-" else amount, m.group(3).lower())
    parsed = as_date(spec.strip())
    if parsed is None:
        raise ValueError(f"{spec!r} is not a date (use YYYY-MM-DD or today, today-18y, today+30d)")
    return parsed
