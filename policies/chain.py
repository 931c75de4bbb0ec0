"""Hash chains: each entry's hash covers its own values and the hash before it, so an
edited, deleted or inserted entry shows at the first entry that no longer follows. The
exchange log (交换信息库) is one; the console's audit trail (issue 11) will be another.

An entry's hash is SHA-256 over the CBOR encoding of ``[*values, prev]`` (hex); the
first entry's ``prev`` is :data:`GENESIS`. Values must be CBOR-encodable and encode the
same way every time (no floats whose text may vary: give them as strings)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import cbor2

GENESIS = "0" * 64


def link(values: Sequence[Any], prev: str) -> str:
    """The hash of an entry with ``values`` that follows the entry hashed ``prev``."""
    return hashlib.sha256(cbor2.dumps([*values, prev])).hexdigest()


def first_break(entries: Iterable[tuple[Sequence[Any], str, str]]) -> int | None:
    """The index of the first entry (values, prev, hash) that does not follow the one
    before it or whose hash does not cover its values; None when the chain holds."""
    prev = GENESIS
    for i, (values, stated_prev, h) in enumerate(entries):
        if stated_prev != prev or link(values, prev) != h:
            return i
        prev = h
    return None
