"""The built-in SQL plugin: the ``sql`` adapter kind (SQLAlchemy Core, every database
SQLAlchemy knows) and the dialect modules for PostgreSQL, MariaDB/MySQL and SQLite, with
the portable generic path for the rest."""

from __future__ import annotations

from typing import Any

from exnode.adapters.dialects import builtin_dialects
from exnode.adapters.sql import SqlAdapter
from exnode.plugins import hookimpl


@hookimpl
def exnode_sql_dialects(register: Any) -> None:
    for d in builtin_dialects():
        register(d)


@hookimpl
def exnode_adapters(register: Any) -> None:
    register("sql", SqlAdapter)
