"""Access requests and grants (目录授权, a built-in service): deny by default; a consumer
asks for a resource of the catalog, and the share type decides the way.

- 无条件共享 (unconditional): granted at once by the center (still recorded).
- 有条件共享 (conditional): the center's compliance review first (``access.review_days``
  working days), then the provider's answer (``access.answer_days``, or the entry's
  ``publish_days`` when the data must first be published); the provider may narrow the
  fields, add a row filter, masking rules, an expiry, a rate and a daily quota.
- 不予共享 (not shared): cannot be requested.

Each step's deadline is counted in working days (工作日) of the Chinese calendar
(``exnode.policies.workdays``); a step past it is flagged once in the exchange log and
shown by ``status`` and ``exnode access list --overdue`` until it is decided.

Grants live in the kernel's ledger (``ServiceAPI.grants``): the center issues them and
sends each to the consumer and to the provider (the holder of data kept at the bureau);
a revocation is in force at the center at once and at the holder as soon as its notice
arrives. The services that read data (sync, query, verification) check the ledger.

Packages (all between a bureau and the center; the center relays none):
``access-req`` consumer -> center; ``access-ask`` center -> provider;
``access-answer`` provider -> center; ``access-note`` center -> consumer and provider
(a request's new state); ``grant`` center -> consumer and provider;
``access-revoke`` provider -> center.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import date, datetime
from typing import Any

import cbor2
import click
import structlog
from sqlalchemy import Connection, select

from exnode.node.base.errors import NotFound, PackageError, Refused, UsageError
from exnode.node.kernel.api import (
    ApplyContext,
    ControlRequest,
    KindSpec,
    Router,
    ServiceAPI,
    StatusBuilder,
)
from exnode.plugins import hookimpl
from exnode.policies import filters
from exnode.policies.grants import SERVICES, Grant
from exnode.policies.masking import parse_rules
from exnode.policies.workdays import WorkCalendar

from .tables import TABLES
from .tables import access_requests as ar

log = structlog.get_logger("exnode.access")

REQ, ASK, ANSWER, NOTE, GRANT, REVOKE = ("access-req", "access-ask", "access-answer",
                                         "access-note", "grant", "access-revoke")
OPEN = ("review", "provider")
MAX_TEXT = 2000
DAY = 86400.0


def _text(v: Any, what: str, required: bool = False) -> str:
    if v is None and not required:
        return ""
    if not isinstance(v, str) or len(v) > MAX_TEXT or (required and not v.strip()):
        raise PackageError("malformed", f"{what} is not a text of at most {MAX_TEXT} "
                           "characters" + (" (it is required)" if required else ""))
    return v


def _names(v: Any, what: str) -> list[str] | None:
    if v is None:
        return None
    if not isinstance(v, list) or len(v) > 2000 or not all(
            isinstance(x, str) and 0 < len(x) <= 128 for x in v):
        raise PackageError("malformed", f"{what} is not a list of field names")
    return list(v)


def _when(v: Any, what: str) -> float | None:
    if v is None:
        return None
    if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
        raise PackageError("malformed", f"{what} is not a time")
    return float(v)


def _count(v: Any, what: str) -> int | None:
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 1 or v > 10**12:
        raise PackageError("malformed", f"{what} is not a positive whole number")
    return v


def parse_until(text: str | None) -> float | None:
    """``--until YYYY-MM-DD``: the grant ends at the end of that day (local time)."""
    if not text:
        return None
    try:
        d = date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--until: '{text}' is not a date (YYYY-MM-DD)") from None
    end = datetime(d.year, d.month, d.day).timestamp() + DAY
    if end <= time.time():
        raise UsageError(f"--until: {text} is in the past")
    return end


def _day(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else "-"


class AccessService:
    def __init__(self, api: ServiceAPI) -> None:
        self.api = api
        acc = api.config.access
        path = api.config.resolve(acc.calendar_file) if acc.calendar_file else None
        self.calendar = WorkCalendar.load(path, acc.timezone)

    # --- records --------------------------------------------------------------------------

    @staticmethod
    def _row(r: Any) -> dict[str, Any]:
        doc = json.loads(r.doc)
        return {**doc, "id": r.id, "resource": r.resource, "consumer": r.consumer,
                "provider": r.provider, "service": r.service, "status": r.status,
                "due": r.due, "overdue": bool(r.overdue) or (
                    r.status in OPEN and r.due is not None and time.time() >= r.due),
                "created": r.created, "updated": r.updated}

    def _get(self, conn: Connection, rid: str) -> dict[str, Any] | None:
        r = conn.execute(select(ar).where(ar.c.id == rid)).first()
        return self._row(r) if r is not None else None

    def _save(self, conn: Connection, req: dict[str, Any]) -> None:
        base = {"resource", "consumer", "provider", "service", "status", "due", "overdue",
                "created", "updated", "id"}
        doc = json.dumps({k: v for k, v in req.items() if k not in base}, ensure_ascii=False)
        vals = {k: req.get(k) for k in base if k not in ("id", "overdue")}
        vals["overdue"] = bool(req.get("overdue_flagged"))
        vals["doc"] = doc
        if conn.execute(ar.update().where(ar.c.id == req["id"]).values(**vals)).rowcount == 0:
            conn.execute(ar.insert().values(id=req["id"], **vals))

    def _step(self, req: dict[str, Any], status: str, by: str, decision: str,
              reason: str = "", days: int | None = None) -> None:
        now = time.time()
        # the step's own deadline goes with it, so whether it was answered in time can be
        # told after the request has moved on (the monthly ledger)
        req.setdefault("history", []).append({"at": now, "step": req["status"], "by": by,
                                              "decision": decision, "reason": reason,
                                              "due": req.get("due")})
        req["status"] = status
        req["updated"] = now
        req["due"] = self.calendar.deadline(now, days) if days else None
        req["overdue_flagged"] = False

    def _log(self, conn: Connection, req: dict[str, Any], event: str, status: str,
             pkg_id: str | None = None) -> None:
        self.api.log(conn, [{"pkg_id": pkg_id or req["id"], "event": event,
                             "peer": req["consumer"], "resource": req["resource"],
                             "kind": REQ, "status": status[:200]}])

    # --- kinds ----------------------------------------------------------------------------

    @hookimpl
    def exnode_package_kinds(self, register: Any) -> None:
        register(KindSpec(REQ, self.on_request, senders="bureau", recipients="center",
                          relay=False))
        register(KindSpec(ASK, self.on_ask, senders="center", recipients="bureau",
                          relay=False))
        register(KindSpec(ANSWER, self.on_answer, senders="bureau", recipients="center",
                          relay=False))
        register(KindSpec(NOTE, self.on_note, senders="center", recipients="bureau",
                          relay=False))
        register(KindSpec(GRANT, self.on_grant, senders="center", recipients="bureau",
                          relay=False))
        register(KindSpec(REVOKE, self.on_revoke, senders="bureau", recipients="center",
                          relay=False))

    @staticmethod
    def _body(ctx: ApplyContext) -> dict[str, Any]:
        try:
            body = cbor2.loads(ctx.payload)
        except Exception:
            raise PackageError("malformed", f"{ctx.header.kind} payload is not CBOR") from None
        if not isinstance(body, dict):
            raise PackageError("malformed", f"{ctx.header.kind} payload is not a map")
        return body

    def on_request(self, ctx: ApplyContext) -> None:
        """(center) A consumer's request: decided at once or put on its way."""
        b = self._body(ctx)
        src = ctx.header.src
        rid = _text(b.get("id"), "request id", True)
        try:
            uuid.UUID(rid)
        except ValueError:
            raise PackageError("malformed", "request id is not a UUID") from None
        service = _text(b.get("service"), "service", True)
        if service not in SERVICES:
            raise PackageError("malformed", f"unknown service '{service}'")
        old = self._get(ctx.conn, rid)
        if old is not None:
            if old["consumer"] != src:
                raise PackageError("malformed", "request id already used")
            return  # a repeat
        now = time.time()
        req = {"id": rid, "resource": _text(b.get("resource"), "resource", True),
               "consumer": src, "service": service, "status": "review", "due": None,
               "created": now, "updated": now,
               "fields": _names(b.get("fields"), "fields"),
               "rows": filters.to_wire(filters.from_wire(b.get("rows") or [])),
               "purpose": _text(b.get("purpose"), "purpose", True),
               "basis": _text(b.get("basis"), "basis"),
               "until": _when(b.get("until"), "until"), "history": []}
        entry = self.api.catalog.entry(req["resource"])
        req["provider"] = entry["provider_node"] if entry else ""
        why = self._refusal(req, entry)
        if why:
            self._step(req, "refused", self.api.node_id, "refused", why)
        elif entry is not None and entry["share"] == "unconditional":
            self._step(req, "granted", self.api.node_id, "granted",
                       "unconditional sharing (无条件共享)")
            self._issue(ctx.conn, req, {})
        else:
            self._step(req, "review", self.api.node_id, "received", "",
                       self.api.config.access.review_days)
        self._save(ctx.conn, req)
        self._log(ctx.conn, req, "access", f"{req['service']} request {req['status']}",
                  ctx.header.id)
        self._notify(ctx.conn, req)

    def _refusal(self, req: dict[str, Any], entry: dict[str, Any] | None) -> str:
        if entry is None:
            return f"the catalog lists no resource '{req['resource']}'"
        if entry["share"] == "none":
            return f"{req['resource']} is not shared (不予共享)"
        if req["consumer"] == entry["provider_node"]:
            return f"{req['consumer']} provides {req['resource']} itself"
        known = [e["name"] for e in entry.get("elements") or []]
        bad = [f for f in req["fields"] or [] if f not in known]
        if bad:
            return f"unknown field(s) {', '.join(bad[:10])} (fields: {', '.join(known[:20])})"
        bad = [c.field for c in filters.from_wire(req["rows"]) if c.field not in known]
        if bad:
            return f"the row filter names unknown field(s) {', '.join(bad[:10])}"
        return ""

    def _notify(self, conn: Connection, req: dict[str, Any]) -> None:
        body = cbor2.dumps({"request": req})
        for dest in {req["consumer"], req["provider"]}:
            if dest and dest != self.api.node_id and self.api.directory.has(dest):
                self.api.enqueue(conn, dest, NOTE, req["resource"], body)

    def _issue(self, conn: Connection, req: dict[str, Any], answer: dict[str, Any]) -> Grant:
        """(center) The grant that decides ``req``; in the ledger and on its way."""
        entry = self.api.catalog.entry(req["resource"]) or {}
        now = time.time()
        longest = now + self.api.config.access.max_grant_days * DAY
        until = min(t for t in (req.get("until"), answer.get("until"), longest)
                    if t is not None)
        fields = req.get("fields")
        if answer.get("fields") is not None:
            fields = [f for f in (fields or answer["fields"]) if f in answer["fields"]]
        g = Grant(id=str(uuid.uuid4()), resource=req["resource"], grantee=req["consumer"],
                  service=req["service"], fields=tuple(fields) if fields is not None else None,
                  rows=tuple(req.get("rows") or []) + tuple(answer.get("rows") or []),
                  masks=dict(answer.get("masks") or {}), purpose=req["purpose"],
                  basis=req.get("basis", ""), granted_at=now, expires_at=until,
                  rate_per_min=answer.get("rate_per_min"),
                  daily_quota=answer.get("daily_quota"), request_id=req["id"],
                  holder=entry.get("provider_node", "") if entry.get("held_at") == "owner"
                  else self.api.node_id)
        self._put(conn, g)
        req["grant_id"] = g.id
        return g

    def _put(self, conn: Connection, g: Grant, ctx: ApplyContext | None = None) -> None:
        show = self.api.grants.put(conn, g)
        if ctx is not None:
            ctx.after_commit(show)
        else:
            show()  # (control routes commit before they answer; a failure raises)
        if self.api.is_center:
            body = cbor2.dumps({"grant": g.to_wire()})
            entry = self.api.catalog.entry(g.resource) or {}
            for dest in {g.grantee, entry.get("provider_node", "")}:
                if dest and dest != self.api.node_id and self.api.directory.has(dest):
                    self.api.enqueue(conn, dest, GRANT, g.resource, body)

    def on_ask(self, ctx: ApplyContext) -> None:
        """(provider) A reviewed request for the provider's answer."""
        req = self._checked_request(self._body(ctx).get("request"))
        if req["provider"] != self.api.node_id:
            raise PackageError("malformed", "an answer is asked of another provider")
        self._save(ctx.conn, req)
        log.info("access_answer_asked", request=req["id"], resource=req["resource"],
                 consumer=req["consumer"], due=_day(req["due"]))

    def on_note(self, ctx: ApplyContext) -> None:
        """(consumer or provider) A request's new state."""
        req = self._checked_request(self._body(ctx).get("request"))
        if self.api.node_id not in (req["consumer"], req["provider"]):
            raise PackageError("malformed", "a note about someone else's request")
        self._save(ctx.conn, req)

    def _checked_request(self, req: Any) -> dict[str, Any]:
        if not isinstance(req, dict):
            raise PackageError("malformed", "request is not a map")
        for k in ("id", "resource", "consumer", "provider", "service", "status", "purpose"):
            _text(req.get(k), k, k not in ("provider",))
        if req["status"] not in (*OPEN, "granted", "refused"):
            raise PackageError("malformed", f"unknown request status '{req['status']}'")
        for k in ("due", "created", "updated"):
            _when(req.get(k), k)
        req.setdefault("created", time.time())
        req.setdefault("updated", time.time())
        req.setdefault("due", None)
        return req

    def on_grant(self, ctx: ApplyContext) -> None:
        """(consumer or holder) A grant, or a new state of one (a revocation)."""
        try:
            g = Grant.from_wire(self._body(ctx).get("grant"))
        except ValueError as e:
            raise PackageError("malformed", f"grant: {e}") from None
        if g.grantee != self.api.node_id:
            entry = self.api.catalog.entry(g.resource)
            if not (entry and entry["provider_node"] == self.api.node_id) and \
                    g.resource not in self.api.config.resources:
                raise PackageError("malformed", "a grant that concerns neither this node "
                                   "nor its data")
        ctx.after_commit(self.api.grants.put(ctx.conn, g))
        self.api.log(ctx.conn, [{"pkg_id": ctx.header.id, "event": "grant",
                                 "peer": g.grantee, "resource": g.resource, "kind": GRANT,
                                 "status": f"{g.service} {g.status}"}])

    def on_answer(self, ctx: ApplyContext) -> None:
        """(center) The provider's answer to a reviewed request."""
        b = self._body(ctx)
        req = self._get(ctx.conn, _text(b.get("id"), "request id", True))
        if req is None:
            raise PackageError("unknown-request", "no such request")
        if req["provider"] != ctx.header.src:
            raise PackageError("not-owner", f"{ctx.header.src} does not provide "
                               f"{req['resource']}")
        if req["status"] != "provider":
            return  # decided already (a repeat, or answered twice)
        self._decide(ctx.conn, req, b, ctx.header.src)

    def _decide(self, conn: Connection, req: dict[str, Any], b: dict[str, Any],
                by: str) -> None:
        if b.get("approve") is True:
            answer = {"fields": _names(b.get("fields"), "fields"),
                      "rows": filters.to_wire(filters.from_wire(b.get("rows") or [])),
                      "masks": b.get("masks") or {}, "until": _when(b.get("until"), "until"),
                      "rate_per_min": _count(b.get("rate_per_min"), "rate"),
                      "daily_quota": _count(b.get("daily_quota"), "quota")}
            try:
                parse_rules(answer["masks"])
            except Exception as e:
                raise PackageError("malformed", f"masks: {e}") from None
            self._issue(conn, req, answer)
            self._step(req, "granted", by, "granted", _text(b.get("reason"), "reason"))
        else:
            self._step(req, "refused", by, "refused", _text(b.get("reason"), "reason", True))
        self._save(conn, req)
        self._log(conn, req, "access", f"{req['service']} request {req['status']} by {by}")
        self._notify(conn, req)

    def on_revoke(self, ctx: ApplyContext) -> None:
        """(center) The provider revokes a grant on its data."""
        b = self._body(ctx)
        g = self.api.grants.get(_text(b.get("grant"), "grant id", True))
        if g is None:
            raise PackageError("unknown-grant", "no such grant")
        entry = self.api.catalog.entry(g.resource) or {}
        if entry.get("provider_node") != ctx.header.src:
            raise PackageError("not-owner", f"{ctx.header.src} does not provide {g.resource}")
        self._revoke(ctx.conn, g, _text(b.get("reason"), "reason") or "revoked by the "
                     "provider", ctx)

    def _revoke(self, conn: Connection, g: Grant, reason: str,
                ctx: ApplyContext | None = None) -> Grant:
        if g.status == "revoked":
            return g
        new = Grant(**{**g.__dict__, "status": "revoked", "revoked_at": time.time(),
                       "reason": reason})
        self._put(conn, new, ctx)
        self.api.log(conn, [{"pkg_id": g.id, "event": "grant", "peer": g.grantee,
                             "resource": g.resource, "kind": GRANT,
                             "status": f"{g.service} revoked", "reason": reason[:200]}])
        return new

    # --- lifecycle ------------------------------------------------------------------------

    @hookimpl
    def exnode_startup(self, api: ServiceAPI) -> None:
        api.spawn(self._watch_deadlines(), "access deadlines")

    async def _watch_deadlines(self) -> None:
        while True:
            try:
                await self.api.db(self._flag_overdue)
            except Exception as e:  # never end the loop
                log.error("access_deadlines_failed", error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(10.0)

    def _flag_overdue(self) -> int:
        """A step past its deadline is logged once (at the node that must act: the
        center for a review, the provider for an answer)."""
        now = time.time()
        with self.api.state.begin() as conn:
            rows = conn.execute(select(ar).where(ar.c.status.in_(OPEN), ar.c.due < now,
                                                 ar.c.overdue.is_(False))).all()
            n = 0
            for r in rows:
                req = self._row(r)
                mine = (r.status == "review" and self.api.is_center) or (
                    r.status == "provider" and r.provider == self.api.node_id)
                if not mine:
                    continue
                req["overdue_flagged"] = True
                self._save(conn, req)
                self._log(conn, req, "overdue", f"{r.status} step overdue since "
                          f"{_day(r.due)}")
                log.warning("access_overdue", request=r.id, resource=r.resource,
                            step=r.status, due=_day(r.due))
                n += 1
        return n

    # --- status ----------------------------------------------------------------------------

    @hookimpl
    def exnode_status_sections(self, status: StatusBuilder) -> None:
        with self.api.state.connect() as conn:
            rows = [self._row(r) for r in conn.execute(select(ar).where(
                ar.c.status.in_(OPEN)))]
        late = [r for r in rows if r["overdue"] and self._acts(r)]
        waiting = [r for r in rows if self._acts(r)]
        grants = [g for g in self.api.grants.all() if g.refusal() is None]
        lines = [f"access    {len(waiting)} request(s) waiting for this node, "
                 f"{len(late)} overdue; {len(grants)} grant(s) in force"]
        for r in late:
            status.problem(f"access request {r['id']} ({r['consumer']} asks for "
                           f"{r['resource']}): the {r['status']} step was due "
                           f"{_day(r['due'])}; decide it: exnode access "
                           + ("review" if r["status"] == "review" else "answer")
                           + f" {r['id']} --approve|--refuse")
        unknown = self.calendar.unknown_years
        if unknown:
            status.problem(f"the working-day calendar does not know {', '.join(map(str, unknown))}"
                           ": deadlines there count Monday-Friday; add the year(s) to "
                           "access.calendar_file")
        status.add("access", {"waiting": len(waiting), "overdue": len(late),
                              "grants": len(grants)}, lines)

    def _acts(self, r: dict[str, Any]) -> bool:
        return (r["status"] == "review" and self.api.is_center) or (
            r["status"] == "provider" and r["provider"] == self.api.node_id)

    # --- control routes ----------------------------------------------------------------

    @hookimpl
    def exnode_control_routes(self, router: Router) -> None:
        router.post("/access/request", self._request)
        router.get("/access/requests", self._list)
        router.get("/access/requests/{id}", self._show)
        router.post("/access/requests/{id}/review", self._review)
        router.post("/access/requests/{id}/answer", self._answer)
        router.get("/access/grants", self._grants)
        router.post("/access/grants/{id}/revoke", self._revoke_route)

    async def _request(self, req: ControlRequest) -> Any:
        """(consumer) Ask for a grant; checked here against this node's catalog first."""
        if self.api.is_center:
            raise UsageError("the center does not ask for grants; a bureau does")
        rid = req.arg("resource")
        service = req.arg("service", str, "query")
        if service not in SERVICES:
            raise UsageError(f"--service: one of {', '.join(SERVICES)}")
        entry = self.api.catalog.entry(rid)
        if entry is None:
            raise NotFound(f"the catalog lists no resource '{rid}' (exnode catalog search "
                           "...)")
        if entry["share"] == "none":
            raise Refused("not-shared", f"{rid} is not shared (不予共享): it cannot be "
                          "requested")
        fields = req.arg("fields", list, None)
        conds = [filters.parse(t) for t in req.arg("rows", list, [])]
        body = {"id": str(uuid.uuid4()), "resource": rid, "service": service,
                "fields": fields, "rows": filters.to_wire(conds),
                "purpose": req.arg("purpose", str, ""), "basis": req.arg("basis", str, ""),
                "until": req.arg("until", float, None)}
        if not body["purpose"].strip():
            raise UsageError("--purpose: say what the data is for (it is recorded)")
        probe = {**body, "consumer": self.api.node_id, "rows": body["rows"]}
        why = self._refusal(probe, entry)
        if why:
            raise Refused("unknown-field" if "field" in why else "refused", why)
        now = time.time()
        local = {**body, "consumer": self.api.node_id, "provider": entry["provider_node"],
                 "status": "sent", "due": None, "created": now, "updated": now,
                 "history": []}
        await self.api.db(self._send_request, local, body)
        self.api.wake_outbox()
        return local

    def _send_request(self, local: dict[str, Any], body: dict[str, Any]) -> None:
        with self.api.state.begin() as conn:
            self._save(conn, local)
            self.api.enqueue(conn, self.api.center_id, REQ, body["resource"],
                             cbor2.dumps(body))

    async def _list(self, req: ControlRequest) -> Any:
        return await self.api.db(self._list_db, req.query.get("status"),
                                 req.query.get("overdue") in ("1", "true"))

    def _list_db(self, status: str | None, overdue: bool) -> list[dict[str, Any]]:
        q = select(ar).order_by(ar.c.created.desc()).limit(10_000)
        if status == "open":
            q = q.where(ar.c.status.in_(OPEN))
        elif status and status != "all":
            q = q.where(ar.c.status == status)
        with self.api.state.connect() as conn:
            rows = [self._row(r) for r in conn.execute(q)]
        return [r for r in rows if r["overdue"]] if overdue else rows

    async def _show(self, req: ControlRequest) -> Any:
        return await self.api.db(self._show_db, req.params["id"])

    def _show_db(self, rid: str) -> dict[str, Any]:
        with self.api.state.connect() as conn:
            r = self._get(conn, rid)
        if r is None:
            raise NotFound(f"no access request {rid}")
        return r

    async def _review(self, req: ControlRequest) -> Any:
        """(center) The compliance review: on to the provider, or refused."""
        if not self.api.is_center:
            raise UsageError("the compliance review is the center's")
        out = await self.api.db(self._review_db, req.params["id"], req.arg("approve", bool),
                                req.arg("reason", str, ""))
        self.api.wake_outbox()
        return out

    def _review_db(self, rid: str, approve: bool, reason: str) -> dict[str, Any]:
        with self.api.state.begin() as conn:
            r = self._get(conn, rid)
            if r is None:
                raise NotFound(f"no access request {rid}")
            if r["status"] != "review":
                raise UsageError(f"request {rid} is not waiting for review (it is "
                                 f"{r['status']})")
            if not approve:
                if not reason.strip():
                    raise UsageError("--reason: say why it is refused (the consumer sees it)")
                self._step(r, "refused", self.api.node_id, "refused", reason)
            else:
                entry = self.api.catalog.entry(r["resource"]) or {}
                days = entry.get("publish_days") or self.api.config.access.answer_days
                self._step(r, "provider", self.api.node_id, "reviewed", reason, days)
            if r["status"] == "provider" and r["provider"] == self.api.node_id:
                pass  # the center provides it itself: it answers below, with 'answer'
            elif r["status"] == "provider":
                self.api.enqueue(conn, r["provider"], ASK, r["resource"],
                                 cbor2.dumps({"request": r}))
            self._save(conn, r)
            self._log(conn, r, "access", f"review {r['status']}")
            self._notify(conn, r)
        return r

    async def _answer(self, req: ControlRequest) -> Any:
        """(provider) Approve, with the conditions, or refuse."""
        rid = req.params["id"]
        approve = req.arg("approve", bool)
        masks = req.arg("masks", dict, {})
        try:
            parse_rules(masks)
        except Exception as e:
            raise UsageError(f"--mask: {e}") from None
        b = {"id": rid, "approve": approve, "reason": req.arg("reason", str, ""),
             "fields": req.arg("fields", list, None),
             "rows": filters.to_wire([filters.parse(t) for t in req.arg("rows", list, [])]),
             "masks": masks, "until": req.arg("until", float, None),
             "rate_per_min": req.arg("rate_per_min", int, None),
             "daily_quota": req.arg("daily_quota", int, None)}
        if not approve and not b["reason"].strip():
            raise UsageError("--reason: say why it is refused (the consumer sees it)")
        out = await self.api.db(self._answer_db, b)
        self.api.wake_outbox()
        return out

    def _answer_db(self, b: dict[str, Any]) -> dict[str, Any]:
        with self.api.state.begin() as conn:
            r = self._get(conn, b["id"])
            if r is None:
                raise NotFound(f"no access request {b['id']}")
            if r["provider"] != self.api.node_id:
                raise UsageError(f"request {b['id']} is for {r['provider']} to answer")
            if r["status"] != "provider":
                raise UsageError(f"request {b['id']} is not waiting for an answer (it is "
                                 f"{r['status']})")
            entry = self.api.catalog.entry(r["resource"]) or {}
            known = [e["name"] for e in entry.get("elements") or []]
            bad = [f for f in b["fields"] or [] if f not in known]
            if bad:
                raise Refused("unknown-field", f"unknown field(s) {', '.join(bad)} of "
                              f"{r['resource']}")
            if self.api.is_center:
                self._decide(conn, r, b, self.api.node_id)
                return r
            self._step(r, "provider", self.api.node_id,
                       "approved" if b["approve"] else "refused", b["reason"])
            r["status"] = "provider"  # the center decides on receipt; until then
            r["answered"] = True
            self._save(conn, r)
            self.api.enqueue(conn, self.api.center_id, ANSWER, r["resource"], cbor2.dumps(b))
        return r

    async def _grants(self, req: ControlRequest) -> Any:
        gs = self.api.grants.all()
        if req.query.get("resource"):
            gs = [g for g in gs if g.resource == req.query["resource"]]
        if req.query.get("all") not in ("1", "true"):
            gs = [g for g in gs if g.refusal() is None]
        return [{**g.to_wire(), "state": (g.refusal() or ("active", ""))[0]} for g in gs]

    async def _revoke_route(self, req: ControlRequest) -> Any:
        gid = req.params["id"]
        reason = req.arg("reason", str, "")
        g = self.api.grants.get(gid)
        if g is None:
            raise NotFound(f"no grant {gid}")
        entry = self.api.catalog.entry(g.resource) or {}
        if not self.api.is_center and entry.get("provider_node") != self.api.node_id:
            raise UsageError(f"only the center or the provider of {g.resource} revokes "
                             "its grants")
        out = await self.api.db(self._revoke_db, g, reason or f"revoked at {self.api.node_id}")
        self.api.wake_outbox()
        return out.to_wire()

    def _revoke_db(self, g: Grant, reason: str) -> Grant:
        with self.api.state.begin() as conn:
            new = self._revoke(conn, g, reason)
            if not self.api.is_center:  # in force here at once; the center is told
                self.api.enqueue(conn, self.api.center_id, REVOKE, g.resource,
                                 cbor2.dumps({"grant": g.id, "reason": reason}))
        return new


@hookimpl
def exnode_state_tables(register: Any) -> None:
    register(TABLES)


@hookimpl
def exnode_services(api: ServiceAPI) -> AccessService:
    return AccessService(api)


@hookimpl
def exnode_cli_commands(cli: click.Group) -> None:
    from .cli import access

    cli.add_command(access)
