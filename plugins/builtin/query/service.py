"""The query service itself (see the package's docstring); loaded only by a daemon,
so that ``exnode query`` starts without SQLAlchemy and the adapters."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import OrderedDict
from typing import Any

import cbor2
import structlog

from exnode.adapters.pool import AdapterPool
from exnode.node.base.errors import PackageError, Refused, UsageError
from exnode.node.kernel.api import (
    ApplyContext,
    Blob,
    ControlRequest,
    HolderRequests,
    KindSpec,
    Router,
    ServiceAPI,
)
from exnode.plugins import hookimpl
from exnode.policies import filters
from exnode.policies.masking import Masker

from . import formats

log = structlog.get_logger("exnode.query")

REQ, PAGE = "query-req", "query-page"
MAX_PAGE = 100_000
AHEAD_PAGES = 2
"""Pages of a download requested ahead of the one its reader has."""
AHEAD_KEEP_S = 120.0
"""Pages read ahead for a download whose reader went away are dropped after this."""
AHEAD_MAX = 8
"""Downloads read ahead at most at once (memory: AHEAD_PAGES + 1 pages each)."""
CURSORS_KEPT = 256
"""Read-aheads a holder remembers the place of."""


def _ahead_key(rid: str, body: dict[str, Any]) -> str:
    return json.dumps([rid, body], sort_keys=True, default=str)


class _Stream:
    """One download's read-ahead: the pages asked for and not yet claimed."""

    def __init__(self, svc: QueryService, rid: str, body: dict[str, Any],
                 timeout: float) -> None:
        self.svc, self.rid, self.body, self.timeout = svc, rid, body, timeout
        self.sid = str(uuid.uuid4())
        self.next_n = 0
        self.pages: dict[int, asyncio.Future[Any]] = {}
        self.at = time.monotonic()

    def ask(self, n: int) -> asyncio.Future[Any]:
        wire = {**self.body, "sid": self.sid, "n": n}
        if n:
            wire["cont"] = True
        task = asyncio.ensure_future(self.svc.page(self.rid, wire, self.timeout))
        task.add_done_callback(_retrieved)
        self.pages[n] = task
        self.next_n = n + 1
        return task

    def ask_next(self) -> None:
        self.ask(self.next_n)

    def close(self) -> None:
        for task in self.pages.values():
            task.cancel()
        self.pages.clear()


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a page read ahead that failed: its caller hears it, if any


class QueryService:
    def __init__(self, api: ServiceAPI) -> None:
        self.api = api
        self.pool = AdapterPool(api.config, api.plugins.adapters, api.plugins.dialects)
        self.requests = HolderRequests(api, "query", REQ, "query page")
        self._ahead: dict[str, tuple[_Stream, int]] = {}
        self._cursors: OrderedDict[tuple[str, Any], tuple[int, Any, bool]] = OrderedDict()

    @hookimpl
    def exnode_package_kinds(self, register: Any) -> None:
        register(KindSpec(REQ, self.on_request, grant="query", grant_of="sender"))
        register(KindSpec(PAGE, self.requests.answered, grant="query", grant_of="recipient"))

    # --- the holder ---------------------------------------------------------------------------

    def on_request(self, ctx: ApplyContext) -> None:
        h = ctx.header
        try:
            b = cbor2.loads(ctx.payload)
            qid = b["id"]
        except Exception:
            raise PackageError("malformed", "query request without an id") from None
        if not isinstance(qid, str) or len(qid) > 64:
            raise PackageError("malformed", "query request id")
        try:
            out = self._page(ctx, h.res, h.src, b)
        except (Refused, filters.FilterError) as e:
            out = {"error": str(e), "reason": getattr(e, "reason", "bad-filter")}
        out["id"] = qid
        sid, seq = b.get("sid"), b.get("n")
        if isinstance(sid, str) and len(sid) <= 64 and isinstance(seq, int) \
                and "error" not in out:  # where read-ahead goes on from
            self._cursors[(h.src, sid)] = (seq, out.get("last"), bool(out.get("done")))
            self._cursors.move_to_end((h.src, sid))
            while len(self._cursors) > CURSORS_KEPT:
                self._cursors.popitem(last=False)
        n = int(out.get("n") or 0)
        if not out.pop("past_end", False):
            self.api.log(ctx.conn, [{"pkg_id": h.id, "event": "query", "peer": h.src,
                                     "resource": h.res, "kind": REQ, "size": n,
                                     "status": out.get("reason") or f"{n} rows"}])
        ctx.reply(PAGE, cbor2.dumps(out))

    def _page(self, ctx: ApplyContext, rid: str, who: str, b: dict[str, Any]) \
            -> dict[str, Any]:
        g = self.api.grants.check(rid, who, "query")
        if rid not in self.api.config.resources:
            raise Refused("not-held", f"{rid} is not held at {self.api.node_id}")
        ad = self.pool.adapter(rid)
        fields = b.get("fields") or g.visible(ad.fields)
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise PackageError("malformed", "query fields")
        g.check_fields(fields, ad.fields)
        allowed = g.visible(ad.fields)
        conds = filters.from_wire(b.get("where") or [])
        outside = [c.field for c in conds if c.field not in allowed]
        if outside:
            raise Refused("field-not-granted", f"the filter names field(s) outside the "
                          f"grant: {', '.join(outside[:10])}")
        conds += filters.from_wire(list(g.rows))
        where = filters.compile(conds, ad.source) if conds else None
        order_in = b.get("order") or []
        if not isinstance(order_in, list):
            raise PackageError("malformed", "query order")
        order = filters.compile_order([(str(f), bool(d)) for f, d in order_in], ad.source,
                                      allowed) if order_in else None
        limit = b.get("limit")
        if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise PackageError("malformed", f"page size 1..{MAX_PAGE}")
        after = b.get("after")
        offset = b.get("offset") or 0
        if after is not None and (not isinstance(after, list) or len(after) != len(ad.key)):
            raise PackageError("malformed", "query 'after' is not a key")
        if not isinstance(offset, int) or offset < 0:
            raise PackageError("malformed", "query offset")
        as_csv, safe = b.get("as") == "csv", b.get("safe", True) is not False
        if b.get("cont"):  # "the page after page n-1 of read-ahead sid"
            cur = self._cursors.get((who, b.get("sid")))
            if cur is None or cur[0] != b.get("n", 0) - 1:
                raise Refused("cursor-lost", "the page before this one is not known here")
            if cur[2]:  # asked ahead past the end: nothing to send, or to log
                return {"fields": fields, "csv" if as_csv else "rows": b"" if as_csv else [],
                        "n": 0, "last": None, "done": True, "past_end": True}
            after = cur[1]
        self.api.grants.use(ctx.conn, g, limit)
        masks = {f: r for f, r in g.masks.items() if f in fields}
        if as_csv and not order and not masks:  # the database writes the CSV itself
            exported = ad.export_page(
                fields, lambda col, kind: formats.sql_csv_cell(col, kind, safe), where,
                tuple(after) if after else None, limit)
            if exported is not None:
                body, n, edge = exported
                return {"fields": fields, "csv": formats.crlf_lines(body), "n": n,
                        "last": list(edge) if edge else None, "done": edge is None}
        rows = ad.page(fields, where, order, tuple(after) if after else None, limit,
                       offset=offset)
        sel = fields if order else list(ad.key) + [f for f in fields if f not in ad.key]
        last = list(rows[-1][:len(ad.key)]) if rows and not order else None
        if sel != fields:  # key first for the keyset; back to the asked order
            idx = [sel.index(f) for f in fields]
            out_rows = [tuple(r[i] for i in idx) for r in rows]
        else:
            out_rows = rows
        if masks:
            out_rows = Masker(masks, salt=g.id.encode()).apply_tuples(fields, out_rows)
        done = len(rows) < limit
        if as_csv:
            return {"fields": fields, "csv": formats.csv_body(out_rows, safe),
                    "n": len(out_rows), "last": last, "done": done}
        return {"fields": fields, "rows": [list(r) for r in out_rows], "n": len(out_rows),
                "last": last, "done": done}

    # --- the requester ------------------------------------------------------------------------

    async def page(self, rid: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.api.grants.check(rid, self.api.node_id, "query")  # refused here first
        return await self.requests.ask(rid, body, timeout)

    @hookimpl
    def exnode_control_routes(self, router: Router) -> None:
        router.post("/query/page", self._page_route)

    async def _page_route(self, req: ControlRequest) -> Any:
        rid = req.arg("resource")
        where = [filters.parse(t) for t in req.arg("where", list, [])]
        order = filters.parse_order(req.arg("order", list, []))
        as_ = req.arg("as", str, "rows")
        if as_ not in ("rows", "csv"):
            raise UsageError("bad request: 'as' is rows or csv")
        body = {"fields": req.arg("fields", list, None), "where": filters.to_wire(where),
                "order": [[f, d] for f, d in order], "after": req.arg("after", list, None),
                "offset": req.arg("offset", int, 0),
                "limit": max(1, min(req.arg("limit", int, 20_000), MAX_PAGE)),
                "as": as_, "safe": req.arg("safe", bool, True)}
        t0 = time.monotonic()
        b = await self._next_page(rid, body, req.arg("timeout", float, 120.0))
        n = int(b.get("n") or len(b.get("rows") or []))
        await self.api.db(self._log_page, rid, n)
        out = {**b, "ms": round((time.monotonic() - t0) * 1000, 1)}
        data = out.pop("csv", None)
        if isinstance(data, bytes):  # the CSV text goes as it is, not inside JSON
            return Blob(out, data)
        return out

    async def _next_page(self, rid: str, body: dict[str, Any], timeout: float) \
            -> dict[str, Any]:
        """The page ``body`` asks for: one read ahead for it, or asked for now.

        Read-ahead: once the first page of a download in key order shows there is
        more, the requester asks for the :data:`AHEAD_PAGES` after it, each as "the page
        after page n-1" (the holder remembers where each page of a read-ahead ended),
        and keeps that many asked for ahead of the page its reader has. So the holder goes from one
        page to the next without waiting for a round trip through the center. A page
        nobody claims is dropped after :data:`AHEAD_KEEP_S`; if the holder lost its
        place (a restart), the reader's own request, with its key, is asked as it is."""
        now = time.monotonic()
        self._expire()
        hit = self._ahead.pop(_ahead_key(rid, body), None)
        if hit is not None:
            stream, n = hit
            stream.at = now
            self.api.grants.check(rid, self.api.node_id, "query")  # revoked meanwhile?
            try:
                b = await stream.pages.pop(n)
            except Refused as e:
                if e.reason != "cursor-lost":
                    stream.close()
                    raise
                stream.close()
                return await self.page(rid, body, timeout)
            self._go_on(stream, n, b)
            return b
        if body["order"] or len(self._ahead) >= AHEAD_MAX:
            return await self.page(rid, body, timeout)
        stream = _Stream(self, rid, body, timeout)
        b = await stream.ask(0)  # the pages after it only once there are more
        self._go_on(stream, 0, b)
        return b

    def _expire(self) -> None:
        """Drop the read-ahead of downloads whose reader has not come back."""
        now = time.monotonic()
        for k, (st, _n) in list(self._ahead.items()):
            if now - st.at > AHEAD_KEEP_S:
                st.close()
                del self._ahead[k]

    def _go_on(self, stream: _Stream, n: int, page: dict[str, Any]) -> None:
        """Page n of a read-ahead was claimed: expect the reader's request for page
        n+1 (the same body, after page n's last key), and keep AHEAD_PAGES asked for."""
        if page.get("done") or page.get("last") is None:
            stream.close()
            return
        # a reader that goes away: its pages are dropped even if nobody asks again
        asyncio.get_running_loop().call_later(AHEAD_KEEP_S + 1, self._expire)
        stream.body = {**stream.body, "after": page["last"]}
        self._ahead[_ahead_key(stream.rid, stream.body)] = (stream, n + 1)
        while stream.next_n <= n + AHEAD_PAGES:
            stream.ask_next()

    def _log_page(self, rid: str, n: int) -> None:
        with self.api.state.begin() as conn:
            self.api.log(conn, [{"pkg_id": "", "event": "query", "peer": self.requests.holder(rid),
                                 "resource": rid, "kind": PAGE, "size": n,
                                 "status": f"{n} rows received"}])

    @hookimpl
    def exnode_shutdown(self, api: ServiceAPI) -> None:
        for stream, _n in self._ahead.values():
            stream.close()
        self._ahead.clear()
        self.pool.close()
