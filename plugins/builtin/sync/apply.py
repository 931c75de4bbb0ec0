"""Applying changes: ``rows``, ``zero`` and ``rejection`` packages, and the one path that
applies accepted changes to a resource's table, records who wrote each row and when the
source was current, and forwards them to the subscribers. Received packages, resolved
conflicts and quarantine retries all go through :meth:`Applier.apply_and_forward`."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

import cbor2
import structlog
from sqlalchemy import Connection, select

from exnode.adapters.contract import ApplyError, SchemaMismatch
from exnode.adapters.rowcodec import decode_batch, encode_batch
from exnode.adapters.sql import Unstorable
from exnode.node.base.errors import Deferred, ExnodeError, PackageError
from exnode.node.kernel.api import ApplyContext, ServiceAPI
from exnode.policies import filters
from exnode.policies.changes import Change, ChangeBatch
from exnode.policies.conflict import decide
from exnode.policies.masking import Masker

from .capture import APPLIED_DELETE
from .forwards import Forwards
from .quality import Quality
from .resources import REJECTION, Resources, key_text
from .rowlog import applied_entry
from .tables import conflicts, freshness, notices, row_origin

log = structlog.get_logger("exnode.sync")


class Applier:
    def __init__(self, api: ServiceAPI, res: Resources, quality: Quality,
                 forwards: Forwards) -> None:
        self.api = api
        self.res = res
        self.quality = quality
        self.forwards = forwards

    # --- the one path ------------------------------------------------------------------------

    def apply_and_forward(self, conn: Connection, rid: str, changes: list[Change], src: str,
                          pkg_id: str, initial: bool = False, ad: Any = None,
                          retrying: int | None = None) -> int:
        """Apply accepted ``changes`` from ``src`` to this node's copy (in one target
        transaction, marked with ``pkg_id``), record the rows' origin and the source's
        freshness in ``conn``'s transaction, and, at the center, queue them for every
        subscriber but their origin. A schema mismatch stops the resource and defers.

        Changes whose values the copy cannot store exactly are quarantined (stage
        ``apply``) and the others applied; an applied change closes the open quarantine
        entries of its key here (but ``retrying``, the entry being retried). Returns how
        many changes were applied. Each package forwarded is logged with its rows."""
        ad = ad or self.res.adapter(rid)
        try:
            try:
                ad.apply(ChangeBatch(rid, changes, initial=initial), pkg_id, src)
            except Unstorable as e:
                changes = self._set_aside(conn, rid, changes, src, pkg_id, e)
                if changes:  # the others, still under the package's marker
                    ad.apply(ChangeBatch(rid, changes, initial=initial), pkg_id, src)
        except SchemaMismatch as e:
            self.res.stop(rid, str(e))
            self.res.reset(rid)  # reflect the table afresh on the next attempt
            raise Deferred("resource-stopped", str(e)) from None
        except ApplyError as e:
            if e.transient:  # the database is away: try the package again later
                self.res.stop(rid, str(e))
                raise Deferred("database-unavailable", str(e)) from None
            changes = self._one_by_one(conn, rid, changes, src, pkg_id, initial, ad)
        self.res.errors.pop(rid, None)
        self.quality.supersede(conn, rid, changes, pkg_id, ("center", "apply"),
                               keep=retrying)
        self.record_origins(conn, rid, src, ad, changes)
        forward = self.res.forward_to(rid, src) if self.api.is_center and changes else []
        if forward:  # encoded only when someone gets it, once per kind of grant
            for dests, fields, part in self.granted_views(rid, changes, forward, ad):
                data = encode_batch(ChangeBatch(rid, part, initial=initial), fields)
                for dest in dests:  # one subscriber's problem never refuses the package
                    self.forwards.send(conn, dest, rid, data, len(part))
        self.record_fresh(conn, rid, src, time.time(), changed=True, rows=len(changes))
        return len(changes)

    def granted_views(self, rid: str, changes: list[Change], dests: list[str], ad: Any) \
            -> list[tuple[list[str], list[str], list[Change]]]:
        """(center) What each subscriber may receive of ``changes``, by its sync grant:
        only the granted fields (the key always), masked values (脱敏; key fields are
        never masked: they identify the row), and of the rows only those inside the
        grant's row filter (a delete passes: it carries only the key). Subscribers
        whose grants read alike share one encoding."""
        groups: dict[Any, list[str]] = {}
        grants: dict[Any, Any] = {}
        for dest in dests:
            g = self.api.grants.find(rid, dest, "sync")
            sig = (g.fields, g.rows, tuple(sorted(g.masks.items())), g.id
                   if any(r == "hash" for r in g.masks.values()) else None) if g else None
            groups.setdefault(sig, []).append(dest)
            grants[sig] = g
        out = []
        for sig, group in groups.items():
            g = grants[sig]
            if g is None or (g.fields is None and not g.rows and not g.masks):
                out.append((group, ad.fields, changes))
                continue
            keys = list(ad.key)
            fields = keys + [f for f in g.visible(ad.fields) if f not in keys]
            conds = filters.from_wire(list(g.rows)) if g.rows else []
            masks = {f: r for f, r in g.masks.items() if f in fields and f not in keys}
            masker = Masker(masks, salt=g.id.encode()) if masks else None
            part = []
            for ch in changes:
                if ch.row is None:
                    part.append(ch)
                    continue
                if conds and not filters.matches(conds, ch.row):
                    continue
                row = {f: ch.row.get(f) for f in fields}
                part.append(replace(ch, row=masker.apply(row) if masker else row))
            if part:
                out.append((group, fields, part))
        return out

    def _set_aside(self, conn: Connection, rid: str, changes: list[Change], src: str,
                   pkg_id: str, e: Unstorable) -> list[Change]:
        """Quarantine the changes the copy cannot store exactly, each with its reason;
        returns the others, in order."""
        for i in sorted(e.reasons):
            self.quality.quarantine_unstorable(conn, rid, changes[i], src, pkg_id,
                                               e.reasons[i])
        # no keys or values in the log: they may be personal data
        log.warning("rows_not_storable", resource=rid, count=len(e.reasons), pkg_id=pkg_id,
                    why="inexact")
        return [ch for i, ch in enumerate(changes) if i not in e.reasons]

    def _one_by_one(self, conn: Connection, rid: str, changes: list[Change], src: str,
                    pkg_id: str, initial: bool, ad: Any) -> list[Change]:
        """The database refused the batch: apply its changes one at a time (each marked
        with an id made from the package's and its place, so a redelivery is still
        applied once) and quarantine those it refuses, with its reason. Returns the
        changes that were applied."""
        good, refused = [], 0
        for i, ch in enumerate(changes):
            try:
                ad.apply(ChangeBatch(rid, [ch], initial=initial),
                         str(uuid.uuid5(uuid.NAMESPACE_URL, f"exnode:{pkg_id}/{i}")), src)
            except ApplyError as e:
                if e.transient:
                    self.res.stop(rid, str(e))
                    raise Deferred("database-unavailable", str(e)) from None
                reason = e.reasons[0] if isinstance(e, Unstorable) and 0 in e.reasons \
                    else str(e).split(": ", 2)[-1]  # the database's own words
                self.quality.quarantine_unstorable(conn, rid, ch, src, pkg_id, reason)
                refused += 1
                continue
            good.append(ch)
        if refused:  # no keys or values in the log: they may be personal data
            log.warning("rows_not_storable", resource=rid, count=refused, pkg_id=pkg_id)
        return good

    # --- package handlers ------------------------------------------------------------------

    def on_rows(self, ctx: ApplyContext) -> None:
        """A ``rows`` package (state-DB thread, inside the inbox transaction), logged
        with its rows (event ``sync``) in that transaction."""
        h = ctx.header
        rid = h.res
        spec = self.res.spec(rid)
        if self.api.is_center and spec.direction == "distribute":
            raise PackageError("direction", f"resource '{rid}' is distributed by the center; "
                               "bureaus do not upload it")
        batch = decode_batch(ctx.payload)
        try:
            ad = self.res.adapter(rid)
        except SchemaMismatch as e:
            raise Deferred("resource-stopped", str(e)) from None
        changes = batch.changes
        rejected: list[tuple[Change, str]] = []
        if self.api.is_center:
            changes, rejected = self._judge(ctx.conn, rid, h.src, h.id, changes, ad)
        applied = self.apply_and_forward(ctx.conn, rid, changes, h.src, h.id, batch.initial,
                                         ad)
        n = len(batch.changes)
        self.api.log(ctx.conn, [applied_entry(
            h.id, h.src, rid, n, applied, refused=len(rejected),
            conflicts=n - len(changes) - len(rejected))])
        if rejected:
            ctx.reply(REJECTION, cbor2.dumps({
                "resource": rid, "pkg_id": h.id,
                "items": [[list(ch.key), reason] for ch, reason in rejected]}))

    def _judge(self, conn: Connection, rid: str, src: str, pkg_id: str,
               changes: list[Change], ad: Any) -> tuple[list[Change], list[tuple[Change, str]]]:
        """Center: the conflict policy, then the rules; conflicts for an operator are
        queued. Returns the accepted changes and the refused ones with reasons."""
        spec = self.res.spec(rid)
        keys = [c.key for c in changes]
        # A fixed owner decides without the shared copy: spare the SELECT.
        fixed_owner = spec.conflict == "owner-wins" and spec.owner is not None
        current = {} if fixed_owner else ad.fetch(keys)
        origins = self.row_origin(conn, rid, keys, row_origin.c.origin) \
            if spec.conflict in ("center-wins", "manual") else {}
        d = decide(spec, src, changes, current, origins, ad.row_hash)
        try:
            accepted, refused = self.quality.check(conn, rid, d.accepted, "center", src, pkg_id)
        except ExnodeError as e:
            self.res.stop(rid, str(e))
            raise Deferred("resource-stopped", str(e)) from None
        for ch, reason in d.queued:
            cur = current.get(ch.key)
            conn.execute(conflicts.insert().values(
                resource=rid, src=src, pkg_id=pkg_id, key=key_text(ch.key),
                change=encode_batch(ChangeBatch(rid, [ch]), ad.fields),
                current=None if cur is None else encode_batch(
                    ChangeBatch(rid, [Change("upsert", ch.key, cur)]), ad.fields),
                reason=reason, status="open", created=time.time()))
        return accepted, d.rejected + refused

    def on_zero(self, ctx: ApplyContext) -> None:
        """A zero-update report (零更新上报): the sender checked and nothing changed."""
        self.res.spec(ctx.header.res)
        self.record_fresh(ctx.conn, ctx.header.res, ctx.header.src, time.time(),
                          changed=False, rows=0)

    def on_rejection(self, ctx: ApplyContext) -> None:
        """The center refused some of our changes: keep the notice for the operator."""
        try:
            d = cbor2.loads(ctx.payload)
            items = d["items"]
        except Exception:
            raise PackageError("malformed", "rejection notice is not readable") from None
        ctx.conn.execute(notices.insert().values(
            resource=str(d.get("resource", ctx.header.res)), src=ctx.header.src,
            pkg_id=str(d.get("pkg_id", "")), items=cbor2.dumps(items),
            received_at=time.time()))
        log.warning("changes_rejected", resource=ctx.header.res, by=ctx.header.src,
                    count=len(items))

    # --- bookkeeping ---------------------------------------------------------------------

    @staticmethod
    def row_origin(conn: Connection, rid: str, keys: list[tuple[Any, ...]],
                   column: Any) -> dict[tuple[Any, ...], Any]:
        """One column of ``row_origin`` for ``keys`` (those that have a row)."""
        texts = {key_text(k): k for k in keys}
        items = list(texts)
        out = {}
        for i in range(0, len(items), 500):
            for kt, value in conn.execute(select(row_origin.c.key, column).where(
                    row_origin.c.resource == rid, row_origin.c.key.in_(items[i:i + 500]))):
                out[texts[kt]] = value
        return out

    def record_origins(self, conn: Connection, rid: str, origin: str, ad: Any,
                       changes: list[Change]) -> None:
        """Who wrote each row last, and its hash: needed for center-wins and manual, and
        for loop prevention where this node also captures the resource."""
        spec = self.res.spec(rid)
        needed = spec.conflict in ("center-wins", "manual") or (
            spec.capture is not None and spec.capture.strategy != "trigger")
        if not needed or not changes:
            return
        now = time.time()
        texts = [key_text(c.key) for c in changes]
        for i in range(0, len(texts), 500):
            conn.execute(row_origin.delete().where(row_origin.c.resource == rid,
                                                   row_origin.c.key.in_(texts[i:i + 500])))
        rows = []
        seen = set()
        for c, kt in zip(reversed(changes), reversed(texts), strict=True):
            if kt in seen:
                continue
            seen.add(kt)
            rows.append({"resource": rid, "key": kt, "origin": origin, "updated_at": now,
                         "hash": ad.row_hash(c.row) if c.row is not None else APPLIED_DELETE})
        conn.execute(row_origin.insert(), rows)

    @staticmethod
    def record_fresh(conn: Connection, rid: str, node: str, now: float, changed: bool,
                     rows: int) -> None:
        vals: dict[str, Any] = {"last_current": now}
        if changed:
            vals["last_change"] = now
            vals["last_rows"] = rows
        n = conn.execute(freshness.update().where(freshness.c.resource == rid,
                                                  freshness.c.node == node).values(**vals)) \
            .rowcount
        if n == 0:
            conn.execute(freshness.insert().values(resource=rid, node=node, last_current=now,
                                                   last_change=now if changed else None,
                                                   last_rows=rows if changed else 0))

    def applied_hash_lookup(self, rid: str) -> Any:
        """key -> hash of the row this node last applied from elsewhere (loop prevention
        for snapshot and incremental capture)."""

        def lookup(keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], bytes]:
            if not keys:
                return {}
            with self.api.state.connect() as conn:
                found = self.row_origin(conn, rid, keys, row_origin.c.hash)
            return {k: h for k, h in found.items() if h is not None}

        return lookup
