"""(center) Forwarding accepted changes to the subscribers without letting one of them
stop the others.

A subscriber that is not an approved member right now (not yet approved, not known,
revoked) does not make the owner's package fail: its changes are held in the state DB
(``held_forwards``), in order, and go out once it is a member (a revoked id comes back
only when the operator readmits it: ``nodes invite ID --readmit``). While a subscriber
has changes held for a resource, newer ones queue behind them, so it receives them in
the order the center accepted them. At most ``hold_max`` packages are held per
subscriber and resource; later ones are dropped, counted and shown with the command
that brings the copy back (``exnode sync repair RES --node N``).
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from sqlalchemy import Connection, func, select

from exnode.adapters.rowcodec import decode_batch
from exnode.node.kernel.api import ServiceAPI

from .rowlog import send_rows
from .tables import held_forwards

log = structlog.get_logger("exnode.sync")

DRAIN_BATCH = 200


def _count(data: bytes) -> int:
    """The changes in a batch held before its row count was kept (an upgrade)."""
    return len(decode_batch(data).changes)


class Forwards:
    def __init__(self, api: ServiceAPI) -> None:
        self.api = api
        self._held: set[tuple[str, str]] | None = None  # (dest, resource) with rows held
        self.overflow: dict[tuple[str, str], int] = {}  # dropped beyond MAX_HELD
        self._counts: dict[tuple[str, str], int] = {}

    def _keys(self, conn: Connection) -> set[tuple[str, str]]:
        if self._held is None:
            self._held = {(d, r) for d, r in conn.execute(
                select(held_forwards.c.dest, held_forwards.c.resource).distinct())}
        return self._held

    def send(self, conn: Connection, dest: str, rid: str, data: bytes, rows: int) -> None:
        """Queue ``data`` (a rows batch of ``rows`` changes) for ``dest``, or hold it
        with the reason. A package that goes out is logged with its rows (event
        ``sync``); a held one when it goes out."""
        d = self.api.directory
        held = self._keys(conn)
        if d.has(dest) and (dest, rid) not in held:
            send_rows(self.api, conn, dest, rid, data, rows)
            return
        if dest in d.revoked:
            reason = f"{dest} is revoked (held until it is readmitted, or remove it from " \
                     "the subscribers)"
        elif not d.has(dest):
            reason = f"{dest} is not an approved member"
        else:
            reason = "behind earlier held changes"
        n = self._counts.get((dest, rid))
        if n is None:
            n = int(conn.execute(select(func.count()).where(
                held_forwards.c.dest == dest, held_forwards.c.resource == rid)).scalar() or 0)
        limit = self.api.config.resources[rid].hold_max
        if n >= limit:
            over = self.overflow.get((dest, rid), 0)
            if over == 0:
                log.warning("forward_dropped", resource=rid, node=dest,
                            reason=f"more than {limit} packages held for it")
            self.overflow[(dest, rid)] = over + 1
            return
        self._counts[(dest, rid)] = n + 1
        conn.execute(held_forwards.insert().values(dest=dest, resource=rid, data=data,
                                                   rows=rows, created=time.time(),
                                                   reason=reason))
        if (dest, rid) not in held:
            log.warning("forward_held", resource=rid, node=dest, reason=reason)
        held.add((dest, rid))

    def drain(self) -> int:
        """(state-DB thread) Send held changes, oldest first, to the subscribers that
        are members again; returns how many went out."""
        if not self._held and self._held is not None:
            return 0
        moved = 0
        with self.api.state.begin() as conn:
            keys = sorted(self._keys(conn))
        for dest, rid in keys:
            if not self.api.directory.has(dest):
                continue
            with self.api.state.begin() as conn:
                rows = conn.execute(
                    select(held_forwards.c.id, held_forwards.c.data, held_forwards.c.rows)
                    .where(held_forwards.c.dest == dest, held_forwards.c.resource == rid)
                    .order_by(held_forwards.c.id).limit(DRAIN_BATCH)).all()
                for r in rows:
                    send_rows(self.api, conn, dest, rid, r.data,
                              r.rows if r.rows is not None else _count(r.data))
                if rows:
                    conn.execute(held_forwards.delete().where(
                        held_forwards.c.id.in_([r.id for r in rows])))
            moved += len(rows)
            self._counts.pop((dest, rid), None)
            if len(rows) < DRAIN_BATCH:
                assert self._held is not None
                self._held.discard((dest, rid))
                log.info("forwards_released", resource=rid, node=dest)
        return moved

    def status(self, conn: Connection) -> dict[str, list[dict[str, Any]]]:
        """resource -> the subscribers with changes held, how many, since when, why."""
        out: dict[str, list[dict[str, Any]]] = {}
        q = (select(held_forwards.c.resource, held_forwards.c.dest, func.count(),
                    func.min(held_forwards.c.created), func.min(held_forwards.c.reason))
             .group_by(held_forwards.c.resource, held_forwards.c.dest))
        for rid, dest, n, since, reason in conn.execute(q):
            out.setdefault(rid, []).append({"node": dest, "packages": n, "since": since,
                                            "reason": reason})
        return out
