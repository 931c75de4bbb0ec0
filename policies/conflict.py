"""Conflict policies: what the center does when a bureau's change meets the shared
library's (共享库) copy.

- ``owner-wins``: only the owner of the data updates it (谁拥有数据谁更新); the owner is
  the resource's ``owner`` or, per row, the value of ``owner_column``.
- ``newer-wins``: the change is applied only if its ``version_column`` is newer than the
  shared copy's.
- ``center-wins``: a change to a row that someone else (another bureau, or the center
  itself) wrote last is refused; the shared copy stays.
- ``manual``: such a change waits in the conflict queue for an operator.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from exnode.node.base.config import ResourceSpec
from exnode.policies.changes import Change

CENTER_ORIGIN = "(center)"


@dataclass
class Decision:
    accepted: list[Change] = field(default_factory=list)
    rejected: list[tuple[Change, str]] = field(default_factory=list)
    queued: list[tuple[Change, str]] = field(default_factory=list)


def _comparable(v: Any) -> Any:
    if isinstance(v, dt.datetime) and v.tzinfo is None:
        return v.replace(tzinfo=dt.UTC)
    return v


def decide(spec: ResourceSpec, src: str, changes: list[Change],
           current: dict[tuple, dict[str, Any]], origins: dict[tuple, str],
           row_hash: Callable[[dict[str, Any]], bytes] | None = None) -> Decision:
    """Sort ``changes`` from ``src`` into accepted, rejected (with a reason) and queued.

    ``current`` holds the shared library's rows for the changed keys; ``origins`` who
    wrote each of them last (absent: loaded at the center, so the center).

    A change that would leave the shared copy as it is (the same row, or a delete of a
    row that is not there) is a no-op and never a conflict. This matters when a package
    comes again after the center crashed between applying it and recording that it
    had: its rows are already there, and must not be judged against themselves."""
    d = Decision()
    for ch in changes:
        cur = current.get(ch.key)
        if (ch.row is None and cur is None) or (
                row_hash is not None and ch.row is not None and cur is not None
                and row_hash(ch.row) == row_hash(cur)):
            d.accepted.append(ch)
            continue
        if spec.conflict == "owner-wins":
            owner = spec.owner
            if owner is None and spec.owner_column:
                ref = ch.row if ch.row is not None else cur
                owner = None if ref is None else ref.get(spec.owner_column)
                if cur is not None and ch.row is not None \
                        and cur.get(spec.owner_column) not in (None, src):
                    owner = cur.get(spec.owner_column)  # nobody takes over another's row
            if owner is not None and str(owner) != src:
                d.rejected.append((ch, f"not the owner (owner is {owner})"))
                continue
        elif spec.conflict == "newer-wins" and cur is not None and ch.row is not None:
            col = spec.version_column
            assert col is not None
            new, old = _comparable(ch.row.get(col)), _comparable(cur.get(col))
            if old is not None and (new is None or new <= old):
                d.rejected.append((ch, f"{col} is not newer than the shared copy's"))
                continue
        elif spec.conflict in ("center-wins", "manual") and cur is not None:
            last = origins.get(ch.key, CENTER_ORIGIN)
            if last != src:
                reason = f"row was last written by {last}"
                if spec.conflict == "manual":
                    d.queued.append((ch, reason))
                else:
                    d.rejected.append((ch, reason + "; the center's copy wins"))
                continue
        d.accepted.append(ch)
    return d
