"""The ledger service: ``GET /ledger?month=YYYY-MM&format=json|csv|xlsx|pdf[&bom=1]
[&signed=1]``. JSON (the default) answers the ledger's data; a file format answers a
``Blob`` of the file, with its detached signature (``sig``, made with the node's key
through ``ServiceAPI.sign``) in the meta. ``format=json&signed=1`` answers the JSON
file the same way."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from exnode.node.base.errors import UsageError
from exnode.node.kernel.api import Blob, ControlRequest, Router, ServiceAPI
from exnode.plugins import hookimpl

from . import compute, months, render, signing


class LedgerService:
    def __init__(self, api: ServiceAPI) -> None:
        self.api = api
        self._lock = asyncio.Lock()  # one ledger at a time: a month can be 10M log rows

    @property
    def tz(self) -> str:
        return self.api.config.access.timezone or months.DEFAULT_TZ

    def intervals(self) -> dict[str, float | None]:
        """resource -> expected update interval: the resource's freshness, else the
        catalog's update frequency (also for resources this node only knows from it)."""
        out: dict[str, float | None] = {}
        for e in self.api.catalog.entries():
            out[e["resource"]] = compute.interval_of(None, e.get("update_frequency"))
        for rid, spec in self.api.config.resources.items():
            cat = spec.catalog.update_frequency if spec.catalog else None
            out[rid] = compute.interval_of(spec.freshness, cat) or out.get(rid)
        return out

    def have(self) -> set[str]:
        return {n for n in ("access", "corrections", "sync") if n in self.api.plugins.tables}

    def data(self, month: str) -> dict[str, Any]:
        """The ledger's figures (a worker thread: a snapshot read, not the DB thread)."""
        return compute.compute(self.api.state, node_id=self.api.node_id, role=self.api.role,
                               month=month, tz=self.tz, intervals=self.intervals(),
                               have=self.have())

    def check_month(self, month: str | None) -> str:
        month = month or months.previous_month(self.tz)
        months.parse_month(month)
        start, _end = months.bounds(month, self.tz)
        if start > time.time():
            raise UsageError(f"--month {month} has not begun")
        return month

    @hookimpl
    def exnode_control_routes(self, router: Router) -> None:
        router.get("/ledger", self._ledger)

    async def _ledger(self, req: ControlRequest) -> Any:
        q = req.query
        month = self.check_month(q.get("month"))
        fmt = q.get("format") or "json"
        if fmt not in render.FORMATS:
            raise UsageError(f"--format '{fmt}': one of {', '.join(render.FORMATS)}")
        bom = q.get("bom") in ("1", "true")
        async with self._lock:
            data = await asyncio.to_thread(self.data, month)
            if fmt == "json" and q.get("signed") not in ("1", "true"):
                return data
            blob = await asyncio.to_thread(render.render, data, fmt, bom)
        name = render.filename(data, fmt)
        sig = signing.make_sig(blob, node=self.api.node_id, month=month, fmt=fmt, file=name,
                               signed_at=time.time(), sign=self.api.sign,
                               signer=self.api.signer)
        totals = {s["id"]: s["total"] for s in data["sections"]}
        return Blob({"month": month, "format": fmt, "filename": name,
                     "media_type": render.MEDIA[fmt], "size": len(blob),
                     "sha256": sig["sha256"], "sig": sig, "log": data["log"],
                     "totals": totals}, blob)
