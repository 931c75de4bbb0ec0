"""SQL dialects: everything that differs between databases, one module per database.

:mod:`exnode.adapters.sql` speaks SQLAlchemy Core and asks a :class:`Dialect` object
for everything else: session set-up, column kinds, keyset and key-list predicates,
upserts and deletes; :mod:`exnode.adapters.triggers` asks it for the capture-trigger
DDL. :class:`Dialect` itself is the generic path, portable Core that works on any
database SQLAlchemy knows; each database module overrides what its database does
better or differently:

- :mod:`.postgresql` (psycopg 3): row values, ``ON CONFLICT``, COPY for large batches,
  plpgsql triggers with NOTIFY.
- :mod:`.mysql` (MariaDB and MySQL, PyMySQL): UTC sessions, TINYINT(1) as bool,
  ``ON DUPLICATE KEY``, flag-variable loop prevention in its triggers.
- :mod:`.sqlite`: row values, ``ON CONFLICT``, WHEN-guarded triggers.
- :mod:`.generic`: the base class under its own name (Oracle, SQL Server, ...).

A new database is one module: a :class:`Dialect` subclass with a unique ``name`` and
the SQLAlchemy dialect names it claims (``sa_names``, or override ``matches``), added
with :meth:`DialectRegistry.register` (which is the ``register`` callback a plugin's
dialect hook gets). A registry answers :meth:`DialectRegistry.for_dialect` with the
first registered dialect that matches, else with its fallback, the generic one.
:data:`default_registry` holds the built-in dialects, so that code without a plugin
manager (the CLI, tests, scripts) gets them too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sqlalchemy.engine import Dialect as SaDialect

from .base import (
    ROWS_PER_STATEMENT,
    Dialect,
    DialectError,
    TriggerError,
)
from .generic import GenericDialect
from .mysql import MySQLDialect
from .postgresql import PG_COPY_MIN_ROWS, PostgreSQLDialect
from .sqlite import SQLiteDialect

__all__ = [
    "PG_COPY_MIN_ROWS",
    "ROWS_PER_STATEMENT",
    "Dialect",
    "DialectError",
    "DialectRegistry",
    "GenericDialect",
    "MySQLDialect",
    "PostgreSQLDialect",
    "SQLiteDialect",
    "TriggerError",
    "builtin_dialects",
    "default_registry",
]


class DialectRegistry:
    """Dialects by name, in registration order, plus a fallback for everything else.

    ``DialectRegistry()`` knows no dialect: every database then takes the fallback
    (generic) path, which is how the generic path is tested on real databases.
    """

    def __init__(self, dialects: Iterable[Dialect] = (), *,
                 fallback: Dialect | None = None) -> None:
        self._fallback: Dialect = fallback if fallback is not None else GenericDialect()
        self._dialects: dict[str, Dialect] = {}
        for d in dialects:
            self.register(d)

    def register(self, dialect: Dialect) -> None:
        """Add ``dialect`` after those registered before it. DialectError when it is no
        Dialect or its name is taken (the fallback's name included)."""
        if not isinstance(dialect, Dialect):
            raise DialectError(f"{dialect!r} is not a Dialect (subclass "
                               "exnode.adapters.dialects.Dialect)")
        name = dialect.name
        if name in self._dialects or name == self._fallback.name:
            taken = self._dialects.get(name, self._fallback)
            raise DialectError(f"SQL dialect name {name!r} is already registered (by "
                               f"{type(taken).__module__}.{type(taken).__qualname__})")
        self._dialects[name] = dialect

    def for_dialect(self, sa_dialect: SaDialect) -> Dialect:
        """The first registered dialect that matches SQLAlchemy's ``sa_dialect``
        (``engine.dialect``), else the fallback."""
        for d in self._dialects.values():
            if d.matches(sa_dialect):
                return d
        return self._fallback

    def get(self, name: str) -> Dialect:
        """The dialect called ``name`` (the fallback too); DialectError if none is."""
        if name == self._fallback.name:
            return self._fallback
        try:
            return self._dialects[name]
        except KeyError:
            raise DialectError(f"no SQL dialect {name!r} is registered (known: "
                               f"{', '.join(self.names()) or 'none'})") from None

    @property
    def fallback(self) -> Dialect:
        """The dialect for databases no registered dialect matches."""
        return self._fallback

    def names(self) -> list[str]:
        """Names of the registered dialects, in registration order (not the fallback)."""
        return list(self._dialects)

    def __iter__(self) -> Iterator[Dialect]:
        return iter(list(self._dialects.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._dialects or name == self._fallback.name

    def __repr__(self) -> str:
        return f"DialectRegistry({self.names()!r}, fallback={self._fallback.name!r})"


def builtin_dialects() -> list[Dialect]:
    """New instances of the dialects exnode ships: PostgreSQL, MariaDB/MySQL, SQLite
    (the generic one is every registry's fallback)."""
    return [PostgreSQLDialect(), MySQLDialect(), SQLiteDialect()]


#: The built-in dialects; what SqlAdapter and the trigger functions use by default.
default_registry = DialectRegistry(builtin_dialects())
