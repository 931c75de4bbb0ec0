"""The center's conflict queue for resources with ``conflict: manual``: an operator keeps
the incoming change (applied and forwarded through the one apply path) or the current
row (the sender gets a rejection notice)."""

from __future__ import annotations

import time
from typing import Any

import cbor2
from sqlalchemy import select

from exnode.adapters.rowcodec import decode_batch
from exnode.node.base.errors import NotFound, UsageError
from exnode.node.kernel.api import ServiceAPI

from .apply import Applier
from .resources import REJECTION, Resources, jsonable
from .tables import conflicts


class Conflicts:
    def __init__(self, api: ServiceAPI, res: Resources, applier: Applier) -> None:
        self.api = api
        self.res = res
        self.applier = applier

    def list(self, status: str | None = "open") -> list[dict[str, Any]]:
        q = select(conflicts.c.id, conflicts.c.resource, conflicts.c.src, conflicts.c.pkg_id,
                   conflicts.c.key, conflicts.c.reason, conflicts.c.status, conflicts.c.created,
                   conflicts.c.resolved_at, conflicts.c.resolution).order_by(conflicts.c.id)
        if status:
            q = q.where(conflicts.c.status == status)
        with self.api.state.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def show(self, cid: int) -> dict[str, Any]:
        with self.api.state.connect() as conn:
            r = conn.execute(select(conflicts).where(conflicts.c.id == cid)).mappings().first()
        if r is None:
            raise NotFound(f"no conflict {cid}")
        out = {k: v for k, v in dict(r).items() if k not in ("change", "current")}
        ch = decode_batch(r["change"]).changes[0]
        out["incoming"] = {"op": ch.op, "row": jsonable(ch.row)}
        out["current"] = None if r["current"] is None else jsonable(
            decode_batch(r["current"]).changes[0].row)
        return out

    def resolve(self, cid: int, keep: str) -> dict[str, Any]:
        """keep='incoming': apply the bureau's change and forward it; keep='current': keep
        the shared copy and send the bureau a rejection notice."""
        if keep not in ("incoming", "current"):
            raise UsageError("--keep takes 'incoming' or 'current'")
        with self.api.state.begin() as conn:
            r = conn.execute(select(conflicts).where(conflicts.c.id == cid)).mappings().first()
            if r is None:
                raise NotFound(f"no conflict {cid}")
            if r["status"] != "open":
                raise UsageError(f"conflict {cid} is already resolved ({r['resolution']})")
            rid = r["resource"]
            batch = decode_batch(r["change"])
            ad = self.res.adapter(rid)
            if keep == "incoming":
                self.applier.apply_and_forward(conn, rid, batch.changes, r["src"],
                                               f"conflict-{cid}-{r['pkg_id'][:20]}", ad=ad)
            else:
                self.api.enqueue(conn, r["src"], REJECTION, rid, cbor2.dumps({
                    "resource": rid, "pkg_id": r["pkg_id"],
                    "items": [[list(batch.changes[0].key),
                               f"conflict resolved for the center's copy: {r['reason']}"]]}))
            conn.execute(conflicts.update().where(conflicts.c.id == cid).values(
                status="resolved", resolution=keep, resolved_at=time.time()))
        return {"id": cid, "resolution": keep}
