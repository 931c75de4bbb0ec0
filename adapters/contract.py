"""The adapter contract: what a data adapter (chosen by ``databases.<name>.kind``, added
through the ``exnode_adapters`` hook) offers the services, and the errors it raises.

An adapter is a :class:`~exnode.policies.changes.RowSource` and a
:class:`~exnode.policies.changes.RowTarget` for one resource, with a little more: it
opens (checks the table against the resource), counts, names its fields and key, and
hashes rows the same way on every node so that copies can be compared.
:class:`exnode.adapters.sql.SqlAdapter` is the built-in one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from exnode.node.base.errors import ExnodeError
from exnode.policies.changes import Key, RowSource, RowTarget


class SchemaMismatch(ExnodeError):
    """The database does not have the table, column, key or column type a resource or
    a received batch needs. Nothing was written."""


class ApplyError(ExnodeError):
    """The database refused a batch; the transaction was rolled back. ``transient`` is
    True when retrying later may help (connection lost, lock timeout)."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@runtime_checkable
class Adapter(RowSource, RowTarget, Protocol):
    """One resource's data, as the sync service uses it."""

    @property
    def fields(self) -> list[str]:
        """The exchanged fields, in a stable order."""
        ...

    @property
    def key(self) -> list[str]:
        """The primary-key fields."""
        ...

    def open(self) -> Adapter:
        """Check the table against the resource; raise :class:`SchemaMismatch`."""
        ...

    def count(self) -> int: ...

    def key_of(self, row: Mapping[str, Any]) -> Key: ...
