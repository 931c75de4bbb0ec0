"""Months of the ledger: ``YYYY-MM`` in the node's time zone (``access.timezone``).

Light on purpose (the standard library only): the CLI parses ``--month`` with it before
it asks the daemon for anything."""

from __future__ import annotations

import datetime as dt
import re
import time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from exnode.node.base.errors import UsageError

MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")
DEFAULT_TZ = "Asia/Shanghai"


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or DEFAULT_TZ)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"time zone '{name}' is not known (access.timezone)") from None


def parse_month(text: str) -> tuple[int, int]:
    """``YYYY-MM`` -> (year, month); anything else is a one-line usage error."""
    m = MONTH_RE.match(text.strip()) if isinstance(text, str) else None
    if m is None or not 1 <= int(m.group(2)) <= 12 or not 1970 <= int(m.group(1)) <= 9998:
        raise UsageError(f"--month '{text}': give a month as YYYY-MM (e.g. 2026-11)")
    return int(m.group(1)), int(m.group(2))


def month_text(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


def previous_month(tz: str | None = None, now: float | None = None) -> str:
    """The month before the current one, in ``tz``: the default of ``exnode ledger``."""
    d = dt.datetime.fromtimestamp(time.time() if now is None else now, zone(tz))
    y, m = (d.year, d.month - 1) if d.month > 1 else (d.year - 1, 12)
    return month_text(y, m)


def bounds(month: str, tz: str | None = None) -> tuple[float, float]:
    """The month's first instant and the next month's first, as Unix times, in ``tz``:
    a log row belongs to the month when ``start <= ts < end``."""
    y, m = parse_month(month)
    z = zone(tz)
    start = dt.datetime(y, m, 1, tzinfo=z)
    nxt = dt.datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=z)
    return start.timestamp(), nxt.timestamp()


def local_iso(t: float, tz: str | None = None) -> str:
    return dt.datetime.fromtimestamp(t, zone(tz)).isoformat(timespec="seconds")
