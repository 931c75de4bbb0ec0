"""The verification service itself (see the package's docstring); loaded only by a
daemon, so that ``exnode verify`` starts without SQLAlchemy and the adapters."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from decimal import Decimal
from typing import Any

import cbor2
import structlog

from exnode.adapters.pool import AdapterPool
from exnode.node.base.errors import ExnodeError, PackageError, Refused, UsageError
from exnode.node.kernel.api import (
    ApplyContext,
    ControlRequest,
    HolderRequests,
    KindSpec,
    Router,
    ServiceAPI,
)
from exnode.plugins import hookimpl

log = structlog.get_logger("exnode.verification")

REQ, RES = "check-req", "check-res"
MAX_RECORDS = 200_000  # per request
PART_RECORDS = 20_000
"""Records per package of a large batch (sent together, answered part by part)."""
MAX_VALUE = 1000


def canon(v: Any) -> str | None:
    """One text form per value, so the holder's typed value and the asker's text agree."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, Decimal):
        t = format(v.normalize(), "f") if v.is_finite() else str(v)
        return t[:-2] if t.endswith(".0") else t
    if isinstance(v, float):
        return canon(Decimal(repr(v)))
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


class VerificationService:
    def __init__(self, api: ServiceAPI) -> None:
        self.api = api
        self.pool = AdapterPool(api.config, api.plugins.adapters, api.plugins.dialects)
        self.requests = HolderRequests(api, "verify", REQ, "verification result")
        self._cleaners: dict[tuple[str, str], Any] = {}

    # --- kinds ----------------------------------------------------------------------------

    @hookimpl
    def exnode_package_kinds(self, register: Any) -> None:
        register(KindSpec(REQ, self.on_request, grant="verify", grant_of="sender"))
        register(KindSpec(RES, self.requests.answered, grant="verify", grant_of="recipient"))

    def _cleaner(self, rid: str, field: str) -> Any:
        key = (rid, field)
        fn = self._cleaners.get(key)
        if fn is None:
            spec = self.api.config.resources[rid]
            fn = _identity
            if spec.quality:
                from exnode.policies.quality import RuleSpecError, compile_ruleset

                try:
                    rs = compile_ruleset({"resource": rid, **spec.quality},
                                         base_dir=self.api.config.base_dir)
                    fn = rs.cleaner(field)
                except (RuleSpecError, ExnodeError):
                    pass
            self._cleaners[key] = fn
        return fn

    def on_request(self, ctx: ApplyContext) -> None:
        """(holder) Answer a batch of records: found, and match per checked field."""
        h = ctx.header
        try:
            b = cbor2.loads(ctx.payload)
            qid, key_fields, check = b["id"], b["key"], b["check"]
            records = b["records"]
        except Exception:
            raise PackageError("malformed", "verification request without id, key, check "
                               "and records") from None
        if not (isinstance(qid, str) and len(qid) <= 64 and isinstance(key_fields, list)
                and isinstance(check, list) and isinstance(records, list)
                and len(records) <= MAX_RECORDS and all(isinstance(f, str) for f in
                                                        key_fields + check)):
            raise PackageError("malformed", "verification request of the wrong shape")
        out: dict[str, Any] = {"id": qid}
        found = 0
        try:
            # one byte per record (found) and per record and checked field (match):
            # 100,000 answers are 200 KB that encode and decode at once, not 100,000
            # nested lists
            hits, matches = self._answer(ctx, h.res, h.src, key_fields, check, records)
            out["found"], out["match"] = bytes(hits), bytes(matches)
            found = hits.count(1)
        except Refused as e:
            out["error"], out["reason"] = str(e), e.reason
        self.api.log(ctx.conn, [{"pkg_id": h.id, "event": "verify", "peer": h.src,
                                 "resource": h.res, "kind": REQ, "size": len(records),
                                 "status": out.get("reason") or f"{len(records)} records, "
                                 f"{found} found"}])
        ctx.reply(RES, cbor2.dumps(out))

    def _answer(self, ctx: ApplyContext, rid: str, who: str, key_fields: list[str],
                check: list[str], records: list[Any]) -> tuple[bytearray, bytearray]:
        g = self.api.grants.check(rid, who, "verify")
        if rid not in self.api.config.resources:
            raise Refused("not-held", f"{rid} is not held at {self.api.node_id}")
        ad = self.pool.adapter(rid)
        if key_fields != list(ad.key):
            raise Refused("unknown-field", f"verify {rid} by its key "
                          f"({', '.join(ad.key)}), not {', '.join(key_fields)}")
        g.check_fields(check, ad.fields)
        self.api.grants.use(ctx.conn, g, len(records))
        nk = len(key_fields)
        keys: list[tuple[Any, ...] | None] = []
        width = nk + len(check)
        as_text = all(ad.kind(f) == "str" for f in key_fields)  # the key is the text
        for rec in records:
            if type(rec) is not list or len(rec) != width:
                raise PackageError("malformed", "a record of the wrong shape")
            for v in rec:
                if v is not None and (type(v) is not str or len(v) > MAX_VALUE):
                    raise PackageError("malformed", "a record of the wrong shape")
            if as_text:
                keys.append(None if None in rec[:nk] else tuple(rec[:nk]))
                continue
            try:
                keys.append(tuple(ad.from_text(f, v) for f, v in
                                  zip(key_fields, rec[:nk], strict=True)))
            except (ValueError, TypeError, ArithmeticError):
                keys.append(None)  # no row can have this key
        held = ad.lookup([k for k in keys if k is not None], check)
        same = [_comparer(self._cleaner(rid, f), ad.kind(f)) for f in check]
        hits, matches = bytearray(), bytearray()
        nc = len(check)
        for rec, k in zip(records, keys, strict=True):
            row = held.get(k) if k is not None else None
            if row is None:
                hits.append(0)
                matches.extend(bytes(nc))
                continue
            hits.append(1)
            matches.extend([1 if eq(rec[nk + i], row[i]) else 0
                            for i, eq in enumerate(same)])
        return hits, matches

    async def ask(self, rid: str, key: list[str], check: list[str],
                  records: list[list[Any]], timeout: float) -> dict[str, Any]:
        """Send a batch and wait for its answer. A large batch goes as parts of
        :data:`PART_RECORDS` records sent at once, so the holder works on one part
        while the next travels and this node reads the answer to the last (each part
        is a request of its own for the grant's rate)."""
        g = self.api.grants.check(rid, self.api.node_id, "verify")
        entry = self.api.catalog.entry(rid) or {}
        g.check_fields(check, [e["name"] for e in entry.get("elements") or []] or check)
        parts = [records[i:i + PART_RECORDS] for i in range(0, len(records), PART_RECORDS)]
        answers = await asyncio.gather(*(self._ask_part(rid, key, check, part, timeout)
                                         for part in parts or [[]]))
        return {"results": [r for a in answers for r in a]}

    async def _ask_part(self, rid: str, key: list[str], check: list[str],
                        records: list[list[Any]], timeout: float) -> list[list[Any]]:
        b = await self.requests.ask(rid, {"key": key, "check": check, "records": records},
                                    timeout)
        hits, matches, nc = b.get("found"), b.get("match"), len(check)
        if not (isinstance(hits, bytes) and isinstance(matches, bytes)
                and len(hits) == len(records) and len(matches) == len(records) * nc):
            raise PackageError("malformed", "the answer does not match the request")
        per_record = zip(*[iter(matches)] * nc, strict=True)  # nc bytes a record
        return [[True, [m == 1 for m in ms]] if f else [False, []]
                for f, ms in zip(hits, per_record, strict=True)]

    # --- control routes ---------------------------------------------------------------------

    @hookimpl
    def exnode_control_routes(self, router: Router) -> None:
        router.post("/verify", self._verify)

    async def _verify(self, req: ControlRequest) -> Any:
        rid = req.arg("resource")
        key = req.arg("key", list)
        check = req.arg("check", list)
        records = req.arg("records", list)
        if not key or not check:
            raise UsageError("--key and --check: name the key and at least one field")
        if len(records) > MAX_RECORDS:
            raise UsageError(f"at most {MAX_RECORDS} records per call")
        width = len(key) + len(check)
        if not all(isinstance(r, list) and len(r) == width for r in records):
            raise UsageError(f"bad request: each record is a list of {width} values (the key "
                             "fields, then the fields to check)")
        t0 = time.monotonic()
        out = await self.ask(rid, key, check, records, req.arg("timeout", float, 60.0))
        out["ms"] = round((time.monotonic() - t0) * 1000, 2)
        return out

    @hookimpl
    def exnode_shutdown(self, api: ServiceAPI) -> None:
        self.pool.close()


def _identity(v: Any) -> Any:
    return v


def _comparer(clean: Any, kind: str) -> Any:
    """``same(asked, held)`` for one checked field: :func:`_same`, or for a text
    column with no cleaning steps the same test without the calls."""
    if clean is _identity and kind == "str":
        return lambda a, h: (a or None) == (h or None)
    return lambda a, h: _same(clean, a, h)


def _same(clean: Any, asked: str | None, held: Any) -> bool:
    a = clean(asked) if asked not in (None, "") else None
    h = clean(canon(held))
    if isinstance(h, str) and not h:
        h = None
    return (a if a is None else str(a)) == (h if h is None else str(h))
