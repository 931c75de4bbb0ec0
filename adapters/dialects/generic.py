"""The generic dialect: any database SQLAlchemy knows that no registered dialect claims
(Oracle, SQL Server, DB2, ...), in portable Core only.

It is :class:`~exnode.adapters.dialects.base.Dialect` itself under its own name:
row comparisons spelled out as AND/OR, composite-key IN as an OR of ANDs, upsert as an
UPDATE of the keys that exist then an INSERT of the rest, at most 1000 items per IN
list, sessions and reflected types left as they are, and no capture triggers (use
incremental or snapshot capture). A registry falls back to it; it matches nothing by
itself.
"""

from __future__ import annotations

from typing import ClassVar

from .base import Dialect


class GenericDialect(Dialect):
    """Portable SQLAlchemy Core; the fallback of every registry."""

    name: ClassVar[str] = "generic"
