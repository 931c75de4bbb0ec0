"""Change batches: what a capture strategy finds and what an applier writes.

A change is an upsert (the whole row as the owner has it now) or a delete (the key
only). Batches travel in ``rows`` packages, encoded with :mod:`exnode.adapters.rowcodec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Op = Literal["upsert", "delete"]


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
