"""Times for people: what the CLI and the services' commands print."""

from __future__ import annotations

import datetime as dt
import time


def ts(t: float | None) -> str:
    """A timestamp as local 'YYYY-MM-DD HH:MM:SS' ('-' for none)."""
    if not t:
        return "-"
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def ago(t: float) -> str:
    """How long ago ``t`` was: '12 s ago', '5 min ago', '3.2 h ago'."""
    s = time.time() - t
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 \
        else f"{s / 3600:.1f} h ago"
