"""The monitor service itself (see the package's docstring); loaded only by a daemon,
so that ``exnode alerts`` starts without it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from sqlalchemy import Connection, func, select
from sqlalchemy.exc import IntegrityError

from exnode.node.base.errors import NotFound, UsageError
from exnode.node.kernel.api import ControlRequest, Router, ServiceAPI, StatusBuilder
from exnode.plugins import hookimpl

from .items import day, tracked
from .tables import alerts as at

log = structlog.get_logger("exnode.monitor")

STATES = ("open", "acknowledged", "cleared")
LIVE = ("open", "acknowledged")
MAX_LISTED = 1000
MAX_PROBLEMS = 20


class MonitorService:
    def __init__(self, api: ServiceAPI) -> None:
        self.api = api
        self.every = api.config.monitor.scan_every_s
        self.last_scan: float | None = None
        self.last_items: list[dict[str, Any]] = []

    # --- alerts --------------------------------------------------------------------------

    def _alert(self, r: Any) -> dict[str, Any]:
        """An alert as routes, the CLI and the ``exnode_alert`` hook see it."""
        return {"id": r.id, "kind": r.kind, "item": r.item, "resource": r.resource,
                "node": r.node, "item_state": r.item_state, "deadline": r.deadline,
                "raised": r.raised, "state": r.state, "cleared": r.cleared,
                "acked_by": r.acked_by, "acked_at": r.acked_at, "text": r.text,
                "origin": self.api.node_id}

    def _log(self, conn: Connection, a: dict[str, Any], state: str, reason: str = "") -> None:
        """An exchange-log entry: the alert's ids and states only."""
        self.api.log(conn, [{"pkg_id": a["item"][:36], "event": "alert", "peer": a["node"],
                             "resource": a["resource"], "kind": a["kind"], "status": state,
                             "reason": (f"alert {a['id']}: {a['item_state']}, due "
                                        f"{day(a['deadline'])}" + (f"; {reason}" if reason
                                                                   else ""))[:300]}])

    def scan(self, now: float | None = None) -> list[dict[str, Any]]:
        """(state-DB thread) Look at every tracked item: raise an alert for each overdue
        one that has none (one per item and deadline, whatever the number of scans and
        restarts), clear those whose item is no longer overdue. Returns the new alerts;
        :meth:`announce` them once committed."""
        now = time.time() if now is None else now
        new: list[dict[str, Any]] = []
        with self.api.state.begin() as conn:
            items = tracked(self.api, conn, now)
            overdue = {(i["kind"], i["id"]): i for i in items if i["overdue"]}
            alive = set()
            for r in conn.execute(select(at).where(at.c.state.in_(LIVE))).all():
                if (r.kind, r.item) in overdue:
                    alive.add((r.kind, r.item))
                    continue
                conn.execute(at.update().where(at.c.id == r.id).values(state="cleared",
                                                                       cleared=now))
                self._log(conn, self._alert(r), "cleared", "no longer overdue")
            for key, it in overdue.items():
                if key in alive:
                    continue  # raised already (perhaps for an earlier deadline)
                if conn.execute(select(at.c.id).where(
                        at.c.kind == it["kind"], at.c.item == it["id"],
                        at.c.deadline == it["deadline"])).first() is not None:
                    continue  # raised for this deadline before, and cleared since
                vals = {"kind": it["kind"], "item": it["id"], "deadline": it["deadline"],
                        "resource": it["resource"][:128], "node": it["node"][:64],
                        "item_state": it["state"][:64],
                        "text": (it["text"] + f"; overdue since {day(it['deadline'])}")[:500],
                        "state": "open", "raised": now}
                try:
                    with conn.begin_nested():
                        aid = conn.execute(at.insert().values(**vals)) \
                            .inserted_primary_key[0]
                except IntegrityError:  # raised by another scanner meanwhile
                    continue
                r = conn.execute(select(at).where(at.c.id == aid)).one()
                a = self._alert(r)
                self._log(conn, a, "open")
                new.append(a)
        self.last_scan, self.last_items = now, items
        return new

    def announce(self, new: list[dict[str, Any]]) -> None:
        """(event loop) New alerts, committed: a log line each, and the hook."""
        for a in new:
            log.warning("alert", alert=a["id"], kind=a["kind"], item=a["item"],
                        resource=a["resource"], node=a["node"], state=a["item_state"],
                        due=day(a["deadline"]))
            self.api.notify(a)

    async def scan_once(self) -> list[dict[str, Any]]:
        new: list[dict[str, Any]] = await self.api.db(self.scan)
        self.announce(new)
        return new

    @hookimpl
    def exnode_startup(self, api: ServiceAPI) -> None:
        api.spawn(self._watch(), "monitor scan")

    async def _watch(self) -> None:
        await asyncio.sleep(min(2.0, self.every))  # let the other services start first
        while True:
            try:
                await self.scan_once()
            except Exception as e:  # never end the loop
                log.error("monitor_scan_failed", error=f"{type(e).__name__}: {e}"[:300])
            await asyncio.sleep(self.every)

    def ack(self, aid: int, by: str) -> dict[str, Any]:
        """(state-DB thread) An operator has seen the alert: who and when; it no longer
        fails ``status --check``, and is cleared once its item is done."""
        with self.api.state.begin() as conn:
            r = conn.execute(select(at).where(at.c.id == aid)).first()
            if r is None:
                raise NotFound(f"no alert {aid} (exnode alerts --all)")
            if r.state != "open":
                raise UsageError(f"alert {aid} is {r.state}" + (
                    f" (by {r.acked_by}, {day(r.acked_at)})" if r.acked_by else ""))
            now = time.time()
            conn.execute(at.update().where(at.c.id == aid).values(
                state="acknowledged", acked_by=by, acked_at=now))
            r = conn.execute(select(at).where(at.c.id == aid)).one()
            a = self._alert(r)
            self._log(conn, a, "acknowledged", f"by {by}")
        log.info("alert_acknowledged", alert=aid, by=by)
        return a

    def listing(self, state: str) -> list[dict[str, Any]]:
        q = select(at).order_by(at.c.id.desc()).limit(MAX_LISTED)
        if state != "all":
            q = q.where(at.c.state == state)
        with self.api.state.connect() as conn:
            return [self._alert(r) for r in conn.execute(q)]

    def get(self, aid: int) -> dict[str, Any]:
        with self.api.state.connect() as conn:
            r = conn.execute(select(at).where(at.c.id == aid)).first()
        if r is None:
            raise NotFound(f"no alert {aid} (exnode alerts --all)")
        return self._alert(r)

    def items(self) -> list[dict[str, Any]]:
        with self.api.state.connect() as conn:
            return tracked(self.api, conn)

    # --- status ------------------------------------------------------------------------------

    @hookimpl
    def exnode_status_sections(self, status: StatusBuilder) -> None:
        with self.api.state.connect() as conn:
            counts = dict(conn.execute(select(at.c.state, func.count()).group_by(
                at.c.state)).all())
            opened = conn.execute(select(at).where(at.c.state == "open").order_by(
                at.c.id).limit(MAX_PROBLEMS)).all()
        data = {s: int(counts.get(s, 0)) for s in STATES}
        data.update({"tracked": len(self.last_items),
                     "overdue": sum(1 for i in self.last_items if i["overdue"]),
                     "last_scan": self.last_scan})
        for r in opened:
            status.problem(f"alert {r.id}: {r.text} (acknowledge: exnode alerts ack {r.id})")
        if data["open"] > len(opened):
            status.problem(f"{data['open'] - len(opened)} more open alert(s): exnode alerts")
        status.add("monitor", data, [
            f"monitor   {data['open']} open alert(s), {data['acknowledged']} acknowledged; "
            f"{data['tracked']} item(s) tracked, {data['overdue']} overdue"])

    # --- control routes ----------------------------------------------------------------------

    @hookimpl
    def exnode_control_routes(self, router: Router) -> None:
        router.get("/alerts", self._list)
        router.get("/alerts/{id}", self._show)
        router.post("/alerts/{id}/ack", self._ack)
        router.get("/monitor/items", self._items)

    async def _list(self, req: ControlRequest) -> Any:
        """``GET /alerts``: the open alerts, newest first (``?all=1``: every alert, the
        newest 1000; ``?state=open|acknowledged|cleared|all``). Each alert: ``id``
        (int), ``kind``, ``item``, ``resource``, ``node`` (who has to act), ``item_state``,
        ``deadline``, ``raised``, ``state`` (open | acknowledged | cleared), ``cleared``,
        ``acked_by``, ``acked_at``, ``text``, ``origin`` (this node); times are Unix
        seconds."""
        state = "all" if req.query.get("all") in ("1", "true") else \
            req.query.get("state") or "open"
        if state not in (*STATES, "all"):
            raise UsageError(f"state: one of {', '.join(STATES)}, all")
        return await self.api.db(self.listing, state)

    @staticmethod
    def _id(text: str) -> int:
        if not text.isdigit() or len(text) > 12:
            raise UsageError(f"ID: an alert's number (exnode alerts), not '{text[:40]}'")
        return int(text)

    async def _show(self, req: ControlRequest) -> Any:
        """``GET /alerts/{id}``: one alert (the fields of ``GET /alerts``)."""
        return await self.api.db(self.get, self._id(req.params["id"]))

    async def _ack(self, req: ControlRequest) -> Any:
        """``POST /alerts/{id}/ack`` ``{"by": NAME}``: acknowledge an open alert; answers
        the alert. 400 when it is not open, 404 when there is none."""
        aid = self._id(req.params["id"])
        by = req.arg("by", str, "operator").strip()
        if not by or len(by) > 64:
            raise UsageError("by: who acknowledges, 1 to 64 characters")
        return await self.api.db(self.ack, aid, by)

    async def _items(self, req: ControlRequest) -> Any:
        """``GET /monitor/items`` (``?overdue=1``: only the overdue ones): every item this
        node tracks, as a list of ``{"kind", "id", "resource", "node", "state",
        "deadline", "overdue", "text"}``; ``kind`` is access, correction, package,
        download, freshness or silent; ``deadline`` is Unix seconds or null (an item with
        no deadline now, e.g. a member never heard from)."""
        items: list[dict[str, Any]] = await self.api.db(self.items)
        if req.query.get("overdue") in ("1", "true"):
            items = [i for i in items if i["overdue"]]
        return items
