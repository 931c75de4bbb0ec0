"""Change batches: what a capture strategy finds and what an applier writes, and the
protocols that adapters satisfy (:class:`RowSource`, :class:`RowTarget`).

A change is an upsert (the whole row as the owner has it now) or a delete (the key
only). Batches travel in ``rows`` packages, encoded with :mod:`exnode.adapters.rowcodec`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Op = Literal["upsert", "delete"]
Key = tuple[Any, ...]
Row = dict[str, Any]


@dataclass
class Change:
    """One row-level change. ``key`` is the primary-key tuple in ``ResourceSpec.key``
    order; ``row`` maps every field to its value (None for a delete)."""

    op: Op
    key: tuple[Any, ...]
    row: dict[str, Any] | None = None


@dataclass
class ChangeBatch:
    """Changes of one resource, in the order they must be applied."""

    resource: str
    changes: list[Change] = field(default_factory=list)
    # Capture bookkeeping, committed only once the batch is safely in the outbox
    # (e.g. the new watermark or the last change-table id); never sent.
    checkpoint: dict[str, Any] = field(default_factory=dict)
    # True when this is (part of) an initial load rather than captured changes.
    initial: bool = False

    def __len__(self) -> int:
        return len(self.changes)


@runtime_checkable
class RowSource(Protocol):
    """Where rows are read: what capture, initial loads and checks need. Rows are dicts
    of field -> value that include the key fields."""

    def read_chunks(self, chunk_rows: int, after: Key | None = None) -> Iterable[Any]:
        """Rows in key order after key ``after``, as lists of at most ``chunk_rows``
        rows (one list per call is also accepted: the caller then pages on)."""
        ...

    def read_since(self, column: str, after_value: Any, after_key: Key | None,
                   limit: int) -> Sequence[Row]:
        """At most ``limit`` rows with (column, key) > (after_value, after_key), in that
        order; all rows from the start when ``after_value`` is None."""
        ...

    def fetch(self, keys: Sequence[Key]) -> Mapping[Key, Row]:
        """The current rows of ``keys`` that still exist."""
        ...

    def row_hash(self, row: Row) -> bytes:
        """A digest of the exchanged fields of ``row``."""
        ...


@runtime_checkable
class RowTarget(Protocol):
    """Where changes are written, exactly once per package."""

    def apply(self, batch: ChangeBatch, pkg_id: str, origin: str) -> str:
        """Apply ``batch`` in one transaction of the target, marked with ``pkg_id`` so
        that the same package is never applied twice; returns what happened."""
        ...
