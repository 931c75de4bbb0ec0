"""Correction feedback (校核纠错, a built-in service): a consumer that finds a wrong value
in a shared resource files a correction on the record (its key, the field, what the
consumer says the value is, and the evidence); the center records it, sets the owner's
deadline (``access.correction_days`` working days of the ``access.calendar_file``
calendar) and forwards it to the owner (the resource's ``provider_node`` in the catalog).
The owner accepts it (after fixing its source, which then syncs as usual) or rejects it
with a reason; the center tells the consumer and the owner the correction's new state.

A correction past its deadline is flagged once in the exchange log at the owner and at the
center, shown by ``status`` there and listed by ``exnode corrections list --overdue``.

Packages (all between a bureau and the center; the center relays none):
``correction`` consumer -> center; ``correction-fwd`` center -> owner;
``correction-answer`` owner -> center; ``correction-note`` center -> consumer and owner.

The key and the value a consumer says may be personal data: neither is ever written to the
structlog logs or to the exchange log (counts and ids only).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime
from typing import Any

import cbor2
import click
import structlog
from sqlalchemy import Connection, func, select

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
from exnode.policies.workdays import WorkCalendar

from .tables import TABLES
from .tables import corrections as ct

log = structlog.get_logger("exnode.corrections")

FILE, FWD, ANSWER, NOTE = ("correction", "correction-fwd", "correction-answer",
                           "correction-note")
STATUSES = ("open", "accepted", "rejected")
DECISIONS = ("filed", "accepted", "rejected")
MAX_TEXT = 2000
MAX_KEY_PARTS = 16
MAX_KEY_PART = 256
MAX_HISTORY = 50
DOC = ("key", "field", "says", "evidence", "history")


def _text(v: Any, what: str, required: bool = False, size: int = MAX_TEXT) -> str:
    if v is None and not required:
        return ""
    if not isinstance(v, str) or len(v) > size or (required and not v.strip()):
        raise PackageError("malformed", f"{what} is not a text of at most {size} "
                           "characters" + (" (it is required)" if required else ""))
    return v


def _uuid(v: Any, what: str) -> str:
    s = _text(v, what, True, 36)
    try:
        uuid.UUID(s)
    except ValueError:
        raise PackageError("malformed", f"{what} is not a UUID") from None
    return s


def _when(v: Any, what: str, required: bool = False) -> float | None:
    if v is None and not required:
        return None
    if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v < 1e11:
        raise PackageError("malformed", f"{what} is not a time")
    return float(v)


def _key(v: Any) -> list[str]:
    if not isinstance(v, list) or not 0 < len(v) <= MAX_KEY_PARTS or not all(
            isinstance(x, str) and 0 < len(x) <= MAX_KEY_PART for x in v):
        raise PackageError("malformed", f"key is not a list of 1 to {MAX_KEY_PARTS} texts of "
                           f"at most {MAX_KEY_PART} characters")
    return list(v)


def _history(v: Any) -> list[dict[str, Any]]:
    if not isinstance(v, list) or len(v) > MAX_HISTORY:
        raise PackageError("malformed", f"history is not a list of at most {MAX_HISTORY} "
                           "steps")
    out = []
    for h in v:
        if not isinstance(h, dict):
            raise PackageError("malformed", "a history step is not a map")
        decision = _text(h.get("decision"), "history decision", True, 16)
        if decision not in DECISIONS:
            raise PackageError("malformed", "unknown history decision")
        out.append({"at": _when(h.get("at"), "history time", True),
                    "by": _text(h.get("by"), "history node", True, 64),
                    "decision": decision, "reason": _text(h.get("reason"), "reason")})
    return out


def _day(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else "-"


class CorrectionsService:
    def __init__(self, api: ServiceAPI) -> None:
        self.api = api
        acc = api.config.access
        path = api.config.resolve(acc.calendar_file) if acc.calendar_file else None
        self.calendar = WorkCalendar.load(path, acc.timezone)

    # --- records ----------------------------------------------------------------------------

    @staticmethod
    def _row(r: Any) -> dict[str, Any]:
        doc = json.loads(r.doc)
        return {**{k: doc.get(k) for k in DOC}, "id": r.id, "resource": r.resource,
                "consumer": r.consumer, "owner": r.owner, "status": r.status, "due": r.due,
                "overdue": bool(r.overdue) or (r.status == "open" and r.due is not None
                                               and time.time() >= r.due),
                "flagged": bool(r.overdue), "created": r.created, "updated": r.updated}

    def _get(self, conn: Connection, cid: str) -> dict[str, Any] | None:
        r = conn.execute(select(ct).where(ct.c.id == cid)).first()
        return self._row(r) if r is not None else None

    @staticmethod
    def _save(conn: Connection, c: dict[str, Any]) -> None:
        vals = {k: c.get(k) for k in ("resource", "consumer", "owner", "status", "due",
                                      "created", "updated")}
        vals["overdue"] = bool(c.get("flagged"))
        vals["doc"] = json.dumps({k: c.get(k) for k in DOC}, ensure_ascii=False)
        if conn.execute(ct.update().where(ct.c.id == c["id"]).values(**vals)).rowcount == 0:
            conn.execute(ct.insert().values(id=c["id"], **vals))

    @staticmethod
    def _wire(c: dict[str, Any]) -> dict[str, Any]:
        return {k: c.get(k) for k in ("id", "resource", "consumer", "owner", "status", "due",
                                      "created", "updated", *DOC)}

    @staticmethod
    def _step(c: dict[str, Any], status: str, by: str, decision: str, reason: str = "",
              due: float | None = None) -> None:
        now = time.time()
        c.setdefault("history", []).append({"at": now, "by": by, "decision": decision,
                                            "reason": reason})
        c["history"] = c["history"][-MAX_HISTORY:]
        c["status"] = status
        c["updated"] = now
        c["due"] = due
        c["flagged"] = False

    def _log(self, conn: Connection, c: dict[str, Any], event: str, status: str,
             pkg_id: str | None = None) -> None:
        """An exchange-log entry: ids, nodes and states only (never a key or a value)."""
        self.api.log(conn, [{"pkg_id": pkg_id or c["id"], "event": event,
                             "peer": c["consumer"], "resource": c["resource"],
                             "kind": FILE, "status": status[:200]}])

    def _checked(self, c: Any) -> dict[str, Any]:
        """A correction as the center sends it, every field checked."""
        if not isinstance(c, dict):
            raise PackageError("malformed", "correction is not a map")
        status = _text(c.get("status"), "status", True, 16)
        if status not in STATUSES:
            raise PackageError("malformed", "unknown correction status")
        return {"id": _uuid(c.get("id"), "correction id"),
                "resource": _text(c.get("resource"), "resource", True, 128),
                "consumer": _text(c.get("consumer"), "consumer", True, 64),
                "owner": _text(c.get("owner"), "owner", True, 64),
                "status": status, "due": _when(c.get("due"), "due"),
                "created": _when(c.get("created"), "created", True),
                "updated": _when(c.get("updated"), "updated", True),
                "key": _key(c.get("key")),
                "field": _text(c.get("field"), "field", True, 128),
                "says": _text(c.get("says"), "says"),
                "evidence": _text(c.get("evidence"), "evidence", True),
                "history": _history(c.get("history"))}

    def _problem(self, c: dict[str, Any], entry: dict[str, Any] | None) -> str:
        """Why the center cannot take a correction ('' when it can)."""
        if entry is None:
            return f"the catalog lists no resource '{c['resource']}'"
        if c["consumer"] == entry["provider_node"]:
            return f"{c['consumer']} owns {c['resource']}: it corrects its source itself"
        known = [e["name"] for e in entry.get("elements") or []]
        if c["field"] not in known:
            return f"{c['resource']} has no field '{c['field'][:128]}'"
        key = entry.get("key") or []
        if key and len(c["key"]) != len(key):
            return f"the key of {c['resource']} has {len(key)} part(s) ({', '.join(key)}), " \
                   f"not {len(c['key'])}"
        return ""

    # --- kinds --------------------------------------------------------------------------------

    @hookimpl
    def exnode_package_kinds(self, register: Any) -> None:
        register(KindSpec(FILE, self.on_file, senders="bureau", recipients="center",
                          relay=False))
        register(KindSpec(FWD, self.on_fwd, senders="center", recipients="bureau",
                          relay=False))
        register(KindSpec(ANSWER, self.on_answer, senders="bureau", recipients="center",
                          relay=False))
        register(KindSpec(NOTE, self.on_note, senders="center", recipients="bureau",
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

    def on_file(self, ctx: ApplyContext) -> None:
        """(center) A consumer's correction: recorded, given its deadline, forwarded."""
        b = self._body(ctx)
        cid = _uuid(b.get("id"), "correction id")
        old = self._get(ctx.conn, cid)
        if old is not None:
            if old["consumer"] != ctx.header.src:
                raise PackageError("malformed", "correction id already used")
            return  # a repeat
        now = time.time()
        c = {"id": cid, "resource": _text(b.get("resource"), "resource", True, 128),
             "consumer": ctx.header.src, "owner": "", "status": "open", "due": None,
             "created": now, "updated": now, "key": _key(b.get("key")),
             "field": _text(b.get("field"), "field", True, 128),
             "says": _text(b.get("says"), "says"),
             "evidence": _text(b.get("evidence"), "evidence", True), "history": []}
        self._receive(ctx.conn, c, ctx.header.id)

    def _receive(self, conn: Connection, c: dict[str, Any], pkg_id: str | None) -> None:
        """(center) Take a new correction: rejected at once, or open with its deadline."""
        entry = self.api.catalog.entry(c["resource"])
        c["owner"] = entry["provider_node"] if entry else ""
        why = self._problem(c, entry)
        if why:
            self._step(c, "rejected", self.api.node_id, "rejected", why)
        else:
            due = self.calendar.deadline(time.time(), self.api.config.access.correction_days)
            self._step(c, "open", self.api.node_id, "filed", "", due)
        self._save(conn, c)
        self._log(conn, c, "correction", f"filed, {c['status']}"
                  + (f", due {_day(c['due'])}" if c["due"] else ""), pkg_id)
        log.info("correction_filed", correction=c["id"], resource=c["resource"],
                 consumer=c["consumer"], owner=c["owner"], status=c["status"])
        if c["status"] == "open" and c["owner"] != self.api.node_id and \
                self.api.directory.has(c["owner"]):
            self.api.enqueue(conn, c["owner"], FWD, c["resource"],
                             cbor2.dumps({"correction": self._wire(c)}))
        self._notify(conn, c, owner=False)

    def _notify(self, conn: Connection, c: dict[str, Any], owner: bool = True) -> None:
        body = cbor2.dumps({"correction": self._wire(c)})
        for dest in {c["consumer"], c["owner"] if owner else ""}:
            if dest and dest != self.api.node_id and self.api.directory.has(dest):
                self.api.enqueue(conn, dest, NOTE, c["resource"], body)

    def on_fwd(self, ctx: ApplyContext) -> None:
        """(owner) A correction on this node's data, to answer by its deadline."""
        c = self._checked(self._body(ctx).get("correction"))
        if c["owner"] != self.api.node_id:
            raise PackageError("malformed", "a correction for another owner")
        if c["status"] != "open":
            raise PackageError("malformed", "a forwarded correction that is not open")
        old = self._get(ctx.conn, c["id"])
        if old is not None:
            return  # a repeat
        self._save(ctx.conn, c)
        self._log(ctx.conn, c, "correction", f"received, due {_day(c['due'])}",
                  ctx.header.id)
        log.info("correction_received", correction=c["id"], resource=c["resource"],
                 consumer=c["consumer"], due=_day(c["due"]))

    def on_note(self, ctx: ApplyContext) -> None:
        """(consumer or owner) A correction's new state."""
        c = self._checked(self._body(ctx).get("correction"))
        if self.api.node_id not in (c["consumer"], c["owner"]):
            raise PackageError("malformed", "a note about someone else's correction")
        old = self._get(ctx.conn, c["id"])
        if old is not None:
            if old["consumer"] != c["consumer"] or old["resource"] != c["resource"]:
                raise PackageError("malformed", "a note that does not match the correction")
            if old["status"] != "open" and c["status"] == "open":
                return  # an older state, arrived late
            c["flagged"] = old["flagged"] and c["status"] == "open"
        self._save(ctx.conn, c)

    def on_answer(self, ctx: ApplyContext) -> None:
        """(center) The owner's answer."""
        b = self._body(ctx)
        c = self._get(ctx.conn, _uuid(b.get("id"), "correction id"))
        if c is None:
            raise PackageError("unknown-correction", "no such correction")
        if c["owner"] != ctx.header.src:
            raise PackageError("not-owner", f"{ctx.header.src} does not own {c['resource']}")
        decision = _text(b.get("decision"), "decision", True, 16)
        if decision not in ("accepted", "rejected"):
            raise PackageError("malformed", "decision is neither accepted nor rejected")
        reason = _text(b.get("reason"), "reason", decision == "rejected")
        if c["status"] != "open":
            return  # decided already (a repeat)
        self._decide(ctx.conn, c, decision, reason, ctx.header.src, ctx.header.id)

    def _decide(self, conn: Connection, c: dict[str, Any], decision: str, reason: str,
                by: str, pkg_id: str | None = None) -> None:
        self._step(c, decision, by, decision, reason)
        self._save(conn, c)
        self._log(conn, c, "correction", f"{decision} by {by}", pkg_id)
        log.info("correction_decided", correction=c["id"], resource=c["resource"],
                 decision=decision, by=by)
        self._notify(conn, c)

    # --- deadlines ----------------------------------------------------------------------------

    @hookimpl
    def exnode_startup(self, api: ServiceAPI) -> None:
        api.spawn(self._watch_deadlines(), "correction deadlines")

    async def _watch_deadlines(self) -> None:
        while True:
            try:
                await self.api.db(self._flag_overdue)
            except Exception as e:  # never end the loop
                log.error("correction_deadlines_failed", error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(10.0)

    def _acts(self, c: dict[str, Any]) -> bool:
        """Whether this node watches the correction's deadline (the owner, the center)."""
        return c["status"] == "open" and (self.api.is_center
                                          or c["owner"] == self.api.node_id)

    def _flag_overdue(self) -> int:
        """An open correction past its deadline is logged once, at the owner and at the
        center."""
        now = time.time()
        n = 0
        with self.api.state.begin() as conn:
            rows = conn.execute(select(ct).where(ct.c.status == "open", ct.c.due < now,
                                                 ct.c.overdue.is_(False))).all()
            for r in rows:
                c = self._row(r)
                if not self._acts(c):
                    continue
                c["flagged"] = True
                self._save(conn, c)
                self._log(conn, c, "overdue", f"owner's answer overdue since {_day(c['due'])}")
                log.warning("correction_overdue", correction=c["id"], resource=c["resource"],
                            owner=c["owner"], due=_day(c["due"]))
                n += 1
        return n

    # --- status -------------------------------------------------------------------------------

    @hookimpl
    def exnode_status_sections(self, status: StatusBuilder) -> None:
        with self.api.state.connect() as conn:
            counts = dict(conn.execute(select(ct.c.status, func.count()).group_by(
                ct.c.status)).all())
            rows = [self._row(r) for r in conn.execute(select(ct).where(
                ct.c.status == "open"))]
        late = [c for c in rows if c["overdue"] and self._acts(c)]
        waiting = [c for c in rows if self._acts(c)]
        data = {s: int(counts.get(s, 0)) for s in STATUSES}
        data.update({"overdue": len([c for c in rows if c["overdue"]]),
                     "waiting": len(waiting), "total": sum(data.values())})
        for c in late:
            what = ("answer it: exnode corrections accept|reject " + c["id"]
                    if c["owner"] == self.api.node_id else f"{c['owner']} has not answered")
            status.problem(f"correction {c['id']} ({c['consumer']} on {c['resource']}, "
                           f"field {c['field']}): the owner's answer was due "
                           f"{_day(c['due'])}; {what}")
        status.add("corrections", data, [
            f"corrections {data['open']} open ({data['overdue']} overdue, "
            f"{len(waiting)} waiting for this node), {data['accepted']} accepted, "
            f"{data['rejected']} rejected"])

    # --- control routes -----------------------------------------------------------------------

    @hookimpl
    def exnode_control_routes(self, router: Router) -> None:
        router.post("/corrections/file", self._file)
        router.get("/corrections", self._list)
        router.get("/corrections/{id}", self._show)
        router.post("/corrections/{id}/accept", self._accept)
        router.post("/corrections/{id}/reject", self._reject)

    async def _file(self, req: ControlRequest) -> Any:
        """(consumer) File a correction; checked here against this node's catalog first."""
        rid = req.arg("resource")
        entry = self.api.catalog.entry(rid)
        if entry is None:
            raise NotFound(f"the catalog lists no resource '{rid}' (exnode catalog search "
                           "...)")
        key = req.arg("key", list)
        if not key or not all(isinstance(k, str) and k.strip() for k in key):
            raise UsageError("KEY: give the record's key (comma-separated parts for a "
                             "composite key)")
        if len(key) > MAX_KEY_PARTS or any(len(k) > MAX_KEY_PART for k in key):
            raise UsageError(f"KEY: at most {MAX_KEY_PARTS} parts of {MAX_KEY_PART} "
                             "characters")
        now = time.time()
        c = {"id": str(uuid.uuid4()), "resource": rid, "consumer": self.api.node_id,
             "owner": entry["provider_node"], "status": "open", "due": None,
             "created": now, "updated": now, "key": [k.strip() for k in key],
             "field": req.arg("field"), "says": req.arg("says", str, ""),
             "evidence": req.arg("evidence", str, ""), "history": []}
        for what, v in (("--says", c["says"]), ("--evidence", c["evidence"])):
            if len(v) > MAX_TEXT:
                raise UsageError(f"{what}: at most {MAX_TEXT} characters")
        if not c["evidence"].strip():
            raise UsageError("--evidence: say how you know the value is wrong (it is sent "
                             "to the owner)")
        why = self._problem(c, entry)
        if why:
            if "field" in why:
                known = [e["name"] for e in entry.get("elements") or []]
                raise Refused("unknown-field", f"{why} (fields: {', '.join(known[:20])})")
            raise UsageError(why)
        await self.api.db(self._send_file, c)
        self.api.wake_outbox()
        return self._wire(c)

    def _send_file(self, c: dict[str, Any]) -> None:
        with self.api.state.begin() as conn:
            if self.api.is_center:
                self._receive(conn, c, None)
                return
            self._save(conn, c)
            self._log(conn, c, "correction", "filed")
            body = {k: c[k] for k in ("id", "resource", "key", "field", "says", "evidence")}
            self.api.enqueue(conn, self.api.center_id, FILE, c["resource"],
                             cbor2.dumps(body))

    async def _list(self, req: ControlRequest) -> Any:
        status = req.query.get("status") or "all"
        if status not in (*STATUSES, "all"):
            raise UsageError(f"--status: one of {', '.join(STATUSES)}, all")
        return await self.api.db(self._list_db, status,
                                 req.query.get("overdue") in ("1", "true"))

    def _list_db(self, status: str, overdue: bool) -> list[dict[str, Any]]:
        q = select(ct).order_by(ct.c.created.desc()).limit(10_000)
        if status != "all":
            q = q.where(ct.c.status == status)
        with self.api.state.connect() as conn:
            rows = [self._row(r) for r in conn.execute(q)]
        return [r for r in rows if r["overdue"]] if overdue else rows

    async def _show(self, req: ControlRequest) -> Any:
        return await self.api.db(self._show_db, req.params["id"])

    def _show_db(self, cid: str) -> dict[str, Any]:
        with self.api.state.connect() as conn:
            c = self._get(conn, cid)
        if c is None:
            raise NotFound(f"no correction {cid}")
        return c

    async def _accept(self, req: ControlRequest) -> Any:
        return await self._answer(req.params["id"], "accepted", req.arg("reason", str, ""))

    async def _reject(self, req: ControlRequest) -> Any:
        reason = req.arg("reason", str, "")
        if not reason.strip():
            raise UsageError("--reason: say why it is rejected (the consumer sees it)")
        return await self._answer(req.params["id"], "rejected", reason)

    async def _answer(self, cid: str, decision: str, reason: str) -> Any:
        if len(reason) > MAX_TEXT:
            raise UsageError(f"--reason: at most {MAX_TEXT} characters")
        out = await self.api.db(self._answer_db, cid, decision, reason)
        self.api.wake_outbox()
        return out

    def _answer_db(self, cid: str, decision: str, reason: str) -> dict[str, Any]:
        """(owner) Accept or reject; the center records it and tells the consumer."""
        with self.api.state.begin() as conn:
            c = self._get(conn, cid)
            if c is None:
                raise NotFound(f"no correction {cid}")
            if c["owner"] != self.api.node_id:
                raise UsageError(f"correction {cid} is for {c['owner'] or 'nobody'} to "
                                 "answer (the owner of its resource)")
            if c["status"] != "open":
                raise UsageError(f"correction {cid} is not open (it is {c['status']})")
            if self.api.is_center:
                self._decide(conn, c, decision, reason, self.api.node_id)
                return c
            self._step(c, decision, self.api.node_id, decision, reason)
            self._save(conn, c)
            self._log(conn, c, "correction", f"{decision}; answer sent")
            self.api.enqueue(conn, self.api.center_id, ANSWER, c["resource"], cbor2.dumps(
                {"id": cid, "decision": decision, "reason": reason}))
        return c


@hookimpl
def exnode_state_tables(register: Any) -> None:
    register(TABLES)


@hookimpl
def exnode_services(api: ServiceAPI) -> CorrectionsService:
    return CorrectionsService(api)


@hookimpl
def exnode_cli_commands(cli: click.Group) -> None:
    from .cli import corrections

    cli.add_command(corrections)
