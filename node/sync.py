"""Database sync: capture at the data's owner, apply at the center's shared library
(共享库), distribute to the subscribing bureaus.

- A node with ``capture`` on a resource runs a capture cycle on its schedule. Changes go
  out as ``rows`` packages (bureau: to the center; center: to the subscribers), and a
  cycle that finds nothing sends a signed zero-update report (零更新上报), so silence
  is visible. The capture checkpoint is committed in the same state-DB transaction as
  the outbox insert: capture is exactly once.
- A ``rows`` package is applied to the resource's table in one transaction of the target
  database, with the package id in the marker table (``exnode_applied``), so a
  re-delivered package is never applied twice. At the center the conflict policy
  decides first; refused changes go back to the sender in a signed rejection notice,
  accepted ones are forwarded to the subscribers (never back to their origin).
- A schema mismatch stops the resource: nothing is applied, the package is not
  acknowledged (so nothing is lost) and status shows the error until it is fixed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import cbor2
import structlog
from sqlalchemy import Connection, Engine, create_engine, select

from exnode.policies.changes import Change, ChangeBatch

from .config import ResourceSpec, parse_duration
from .errors import ExnodeError, PackageError, UsageError
from .state import conflicts, freshness, notices, row_origin, sync_jobs

if TYPE_CHECKING:
    from .daemon import ApplyContext, Node

log = structlog.get_logger("exnode.sync")

ROWS = "rows"
ZERO = "zero"
REJECTION = "rejection"
VERIFY_MAX_KEYS = 100_000  # keys listed per verify answer
APPLIED_DELETE = b""  # row_origin.hash of a row exnode deleted (see policies.capture)


class Deferred(PackageError):
    """The package cannot be applied now (the resource is stopped): it stays
    unacknowledged, so the sender keeps it and tries again later."""


def key_text(key: tuple[Any, ...]) -> str:
    """A key as stable text for state tables."""
    return json.dumps([v if isinstance(v, int | str) else str(v) for v in key],
                      ensure_ascii=False, separators=(",", ":"))


class SyncEngine:
    """The sync side of one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.cfg = node.cfg
        self._engines: dict[str, Engine] = {}
        self._adapters: dict[str, Any] = {}
        self._strategies: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.last_cycle: dict[str, float] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._verify_waits: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        from .quality import Quality

        self.quality = Quality(self)

    # --- databases and adapters ---------------------------------------------------------

    def engine(self, name: str) -> Engine:
        eng = self._engines.get(name)
        if eng is None:
            eng = self._engines[name] = create_engine(self.cfg.database_url(name),
                                                      pool_pre_ping=True)
        return eng

    def spec(self, rid: str) -> ResourceSpec:
        spec = self.cfg.resources.get(rid)
        if spec is None:
            raise PackageError("unknown-resource", f"resource '{rid}' is not configured here")
        return spec

    def adapter(self, rid: str) -> Any:
        """The opened SQL adapter for a resource; a schema problem stops the resource."""
        from exnode.adapters.sql import SchemaMismatch, SqlAdapter

        ad = self._adapters.get(rid)
        if ad is None:
            spec = self.spec(rid)
            ad = SqlAdapter(self.engine(spec.database), rid, spec)
            try:
                ad.open()
            except SchemaMismatch as e:
                self.stop_resource(rid, str(e))
                raise
            self._adapters[rid] = ad
        return ad

    def stop_resource(self, rid: str, why: str) -> None:
        if self.errors.get(rid) != why:
            log.error("resource_stopped", resource=rid, reason=why)
        self.errors[rid] = why

    def close(self) -> None:
        for st in self._strategies.values():
            close = getattr(st, "close", None)
            if close is not None:
                close()
        for e in self._engines.values():
            e.dispose()

    # --- where changes go ---------------------------------------------------------------

    def destinations(self, rid: str, origin: str | None = None) -> list[str]:
        """Who gets this node's changes of ``rid`` (never the change's origin)."""
        spec = self.spec(rid)
        if self.node.is_center:
            if spec.direction == "upload":
                return []
            out = [s for s in spec.subscribers if s != origin]
        else:
            out = [self.node.center_id] if spec.direction in ("upload", "both") else []
        return [d for d in out if d != self.node.id]

    def forward_to(self, rid: str, origin: str) -> list[str]:
        """Center: subscribers that get changes the center accepted from ``origin``."""
        spec = self.spec(rid)
        return [s for s in spec.subscribers if s not in (origin, self.node.id)]

    # --- capture ------------------------------------------------------------------------

    def strategy(self, rid: str) -> Any:
        from exnode.policies import capture as cap

        st = self._strategies.get(rid)
        if st is None:
            spec = self.spec(rid)
            assert spec.capture is not None
            st = cap.make_capture(rid, spec, self.adapter(rid),
                                  cap.SqlCaptureState(self.node.engine, create_tables=False),
                                  engine=self.engine(spec.database),
                                  applied_hashes=self.applied_hash_lookup(rid))
            self._strategies[rid] = st
        return st

    def applied_hash_lookup(self, rid: str) -> Any:
        """key -> hash of the row this node last applied from elsewhere (loop prevention
        for snapshot and incremental capture)."""

        def lookup(keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], bytes]:
            if not keys:
                return {}
            with self.node.engine.connect() as conn:
                found = self._row_origin(conn, rid, keys, row_origin.c.hash)
            return {k: h for k, h in found.items() if h is not None}

        return lookup

    def capture_cycle(self, rid: str) -> int | None:
        """One capture cycle (state-DB thread). Returns the number of changes sent, or
        None when the cycle could not run yet (it is tried again shortly)."""
        if rid in self.errors:
            self.errors.pop(rid)  # try again: the operator may have fixed it
            self._adapters.pop(rid, None)
            self._strategies.pop(rid, None)
        spec = self.spec(rid)
        assert spec.capture is not None
        if any(self.node.directory.get(d) is None for d in self.destinations(rid)):
            return None  # not enrolled yet, or the global configuration has not arrived
        if self._initial_running(rid):
            return None  # the initial load sends every row; capture goes on after it
        try:
            st = self.strategy(rid)
            batch: ChangeBatch = st.capture(spec.capture.chunk_rows)
        except ExnodeError as e:
            self.stop_resource(rid, str(e))
            return 0
        from exnode.adapters.rowcodec import encode_batch

        dests = self.destinations(rid)
        now = time.time()
        with self.node.engine.begin() as conn:
            try:
                good, _bad = self.quality.check(conn, rid, batch.changes, "owner", self.node.id,
                                                None)
            except ExnodeError as e:
                self.stop_resource(rid, str(e))
                return 0
            batch = ChangeBatch(rid, good, checkpoint=batch.checkpoint)
            for dest in dests:
                if batch.changes:
                    self.node.enqueue_sync(conn, dest, ROWS, rid,
                                           encode_batch(batch, self.adapter(rid).fields))
                else:
                    self.node.enqueue_sync(conn, dest, ZERO, rid,
                                           cbor2.dumps({"checked": now}))
            st.commit(batch.checkpoint, conn)
            self._record_fresh(conn, rid, self.node.id, now, changed=bool(batch.changes),
                               rows=len(batch.changes))
        self.last_cycle[rid] = now
        return len(batch.changes)

    async def run_capture(self, rid: str) -> None:
        """The capture loop of one resource, on its schedule."""
        from exnode.policies.schedule import Schedule

        spec = self.spec(rid)
        assert spec.capture is not None
        sched = Schedule.from_spec(spec.capture.schedule)
        wake = self._wakeups.setdefault(rid, asyncio.Event())
        next_at = time.time()
        while True:
            delay = max(0.0, next_at - time.time())
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), timeout=delay)
            except TimeoutError:
                pass
            try:
                n = await self.node.db(self.capture_cycle, rid)
            except Exception as e:
                self.stop_resource(rid, f"{type(e).__name__}: {e}")
                n = 0
            if n is None:
                next_at = time.time() + 1.0
                continue
            if n:
                self.node._wake.set()
            await self._backpressure()
            if n >= spec.capture.chunk_rows:
                next_at = time.time()  # more is waiting: go on at once
            elif sched.is_continuous:
                next_at = time.time() + await self._wait_trigger(rid)
            else:
                next_at = sched.next_run(time.time())

    async def _wait_trigger(self, rid: str) -> float:
        """Continuous trigger capture on PostgreSQL sleeps until NOTIFY (else briefly)."""
        st = self._strategies.get(rid)
        if st is not None and hasattr(st, "wait"):
            await asyncio.get_running_loop().run_in_executor(None, st.wait, 1.0)
            return 0.0
        return 0.2

    async def _backpressure(self, limit: int = 256) -> None:
        """Keep the outbox (and so disk and memory) bounded while capture outruns delivery."""
        while True:
            depth = await self.node.db(self.node.outbox_depth)
            if depth < limit:
                return
            await asyncio.sleep(0.2)

    def wake(self, rid: str) -> None:
        ev = self._wakeups.get(rid)
        if ev is not None:
            ev.set()

    # --- initial load -------------------------------------------------------------------

    def start_initial(self, rid: str, restart: bool = False) -> dict[str, Any]:
        spec = self.spec(rid)
        if not self.destinations(rid):
            raise UsageError(f"resource '{rid}' has nowhere to send from this node "
                             f"(direction {spec.direction})")
        self.adapter(rid)
        now = time.time()
        with self.node.engine.begin() as conn:
            job = conn.execute(select(sync_jobs).where(sync_jobs.c.resource == rid,
                                                       sync_jobs.c.kind == "initial")) \
                .mappings().first()
            if job is not None and job["status"] == "running" and not restart:
                return dict(job)
            if job is not None:
                conn.execute(sync_jobs.delete().where(sync_jobs.c.resource == rid,
                                                      sync_jobs.c.kind == "initial"))
            conn.execute(sync_jobs.insert().values(
                resource=rid, kind="initial", status="running", after_key=None, rows=0,
                total=None, started=now, updated=now, error=None))
            job = conn.execute(select(sync_jobs).where(sync_jobs.c.resource == rid,
                                                       sync_jobs.c.kind == "initial")) \
                .mappings().one()
        return dict(job)

    def _initial_running(self, rid: str) -> bool:
        with self.node.engine.connect() as conn:
            return conn.execute(select(sync_jobs.c.status).where(
                sync_jobs.c.resource == rid, sync_jobs.c.kind == "initial")).scalar() \
                == "running"

    def initial_chunk(self, rid: str, chunk_rows: int) -> tuple[int, bool]:
        """Send the next chunk of an initial load; progress is committed with the outbox
        insert, so a killed load resumes where it stopped."""
        from exnode.adapters.rowcodec import encode_batch

        ad = self.adapter(rid)
        with self.node.engine.begin() as conn:
            job = conn.execute(select(sync_jobs).where(sync_jobs.c.resource == rid,
                                                       sync_jobs.c.kind == "initial")) \
                .mappings().one()
            after = tuple(cbor2.loads(job["after_key"])) if job["after_key"] else None
            total = job["total"]
            if total is None:
                total = ad.count()
                conn.execute(sync_jobs.update().where(sync_jobs.c.resource == rid,
                                                      sync_jobs.c.kind == "initial")
                             .values(total=total))
            it: Iterator[list[dict[str, Any]]] = ad.read_chunks(chunk_rows, after)
            rows = next(it, [])
            close = getattr(it, "close", None)
            if close:
                close()
            if not rows:
                conn.execute(sync_jobs.update().where(sync_jobs.c.resource == rid,
                                                      sync_jobs.c.kind == "initial")
                             .values(status="done", updated=time.time()))
                return 0, True
            batch = ChangeBatch(rid, [Change("upsert", tuple(r[k] for k in ad.key), r)
                                      for r in rows], initial=True)
            good, _bad = self.quality.check(conn, rid, batch.changes, "owner", self.node.id,
                                            None)
            data = encode_batch(ChangeBatch(rid, good, initial=True), ad.fields)
            for dest in self.destinations(rid):
                self.node.enqueue_sync(conn, dest, ROWS, rid, data, extra={"initial": True})
            spec = self.spec(rid)
            if spec.capture is not None and spec.capture.strategy == "snapshot":
                # What was sent is the snapshot now: the next capture pass sends only
                # what changed since, not every row again.
                from exnode.policies.capture import SqlCaptureState, encode_key

                SqlCaptureState(self.node.engine, create_tables=False).apply_hashes(
                    rid, [(encode_key(c.key), ad.row_hash(c.row)) for c in good
                          if c.row is not None], conn)
            last = batch.changes[-1].key
            conn.execute(sync_jobs.update().where(sync_jobs.c.resource == rid,
                                                  sync_jobs.c.kind == "initial")
                         .values(after_key=cbor2.dumps(list(last)),
                                 rows=sync_jobs.c.rows + len(rows), updated=time.time()))
        return len(rows), len(rows) < chunk_rows

    async def run_initial(self, rid: str) -> None:
        spec = self.spec(rid)
        chunk = spec.capture.chunk_rows if spec.capture else 5000
        try:
            while True:
                await self._backpressure(64)
                n, done = await self.node.db(self.initial_chunk, rid, chunk)
                if n:
                    self.node._wake.set()
                if done:
                    if n:  # mark done on the next (empty) read
                        await self.node.db(self.initial_chunk, rid, chunk)
                    log.info("initial_load_done", resource=rid)
                    return
        except ExnodeError as e:
            await self.node.db(self._job_error, rid, str(e))
            self.stop_resource(rid, str(e))

    def _job_error(self, rid: str, err: str) -> None:
        with self.node.engine.begin() as conn:
            conn.execute(sync_jobs.update().where(sync_jobs.c.resource == rid,
                                                  sync_jobs.c.kind == "initial")
                         .values(status="failed", error=err[:500], updated=time.time()))

    def jobs(self) -> list[dict[str, Any]]:
        with self.node.engine.connect() as conn:
            return [{k: v for k, v in dict(r).items() if k != "after_key"}
                    for r in conn.execute(select(sync_jobs)).mappings()]

    # --- applying -----------------------------------------------------------------------

    def on_rows(self, ctx: ApplyContext) -> None:
        """Apply a ``rows`` package (state-DB thread, inside the inbox transaction)."""
        from exnode.adapters.rowcodec import decode_batch, encode_batch
        from exnode.adapters.sql import SchemaMismatch

        h = ctx.header
        rid = h.res
        spec = self.spec(rid)
        if self.node.is_center and spec.direction == "distribute":
            raise PackageError("direction", f"resource '{rid}' is distributed by the center; "
                               "bureaus do not upload it")
        batch = decode_batch(ctx.payload)
        try:
            ad = self.adapter(rid)
        except SchemaMismatch as e:
            raise Deferred("resource-stopped", str(e)) from None
        changes = batch.changes
        rejected: list[tuple[Change, str]] = []
        if self.node.is_center:
            from exnode.policies.conflict import decide

            keys = [c.key for c in changes]
            # A fixed owner decides without the shared copy: spare the SELECT.
            fixed_owner = spec.conflict == "owner-wins" and spec.owner is not None
            current = {} if fixed_owner else ad.fetch(keys)
            origins = self._origins(ctx.conn, rid, keys) \
                if spec.conflict in ("center-wins", "manual") else {}
            d = decide(spec, h.src, changes, current, origins, ad.row_hash)
            changes, rejected = d.accepted, d.rejected
            try:
                changes, refused = self.quality.check(ctx.conn, rid, changes, "center", h.src,
                                                      h.id)
            except ExnodeError as e:
                self.stop_resource(rid, str(e))
                raise Deferred("resource-stopped", str(e)) from None
            rejected += refused
            for ch, reason in d.queued:
                cur = current.get(ch.key)
                ctx.conn.execute(conflicts.insert().values(
                    resource=rid, src=h.src, pkg_id=h.id, key=key_text(ch.key),
                    change=encode_batch(ChangeBatch(rid, [ch]), ad.fields),
                    current=None if cur is None else encode_batch(
                        ChangeBatch(rid, [Change("upsert", ch.key, cur)]), ad.fields),
                    reason=reason, status="open", created=time.time()))
        try:
            ad.apply(ChangeBatch(rid, changes, initial=batch.initial), h.id, h.src)
        except SchemaMismatch as e:
            self.stop_resource(rid, str(e))
            self._adapters.pop(rid, None)  # reflect the table afresh on the next attempt
            self._strategies.pop(rid, None)
            self.quality._tables.pop(rid, None)
            raise Deferred("resource-stopped", str(e)) from None
        self.errors.pop(rid, None)
        self._record_origins(ctx.conn, rid, h.src, ad, changes)
        if rejected:
            ctx.reply(REJECTION, cbor2.dumps({
                "resource": rid, "pkg_id": h.id,
                "items": [[list(ch.key), reason] for ch, reason in rejected]}))
        forward = self.forward_to(rid, h.src) if self.node.is_center and changes else []
        if forward:  # encoded only when someone gets it
            data = encode_batch(ChangeBatch(rid, changes, initial=batch.initial), ad.fields)
            for dest in forward:
                ctx.send(dest, ROWS, data)
        self._record_fresh(ctx.conn, rid, h.src, time.time(), changed=True, rows=len(changes))

    def on_zero(self, ctx: ApplyContext) -> None:
        """A zero-update report: the sender checked and nothing changed."""
        self.spec(ctx.header.res)
        self._record_fresh(ctx.conn, ctx.header.res, ctx.header.src, time.time(),
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

    def _origins(self, conn: Connection, rid: str, keys: list[tuple]) -> dict[tuple, str]:
        return self._row_origin(conn, rid, keys, row_origin.c.origin)

    @staticmethod
    def _row_origin(conn: Connection, rid: str, keys: list[tuple], column: Any) -> dict[tuple, Any]:
        """One column of ``row_origin`` for ``keys`` (those that have a row)."""
        texts = {key_text(k): k for k in keys}
        items = list(texts)
        out = {}
        for i in range(0, len(items), 500):
            for kt, value in conn.execute(select(row_origin.c.key, column).where(
                    row_origin.c.resource == rid, row_origin.c.key.in_(items[i:i + 500]))):
                out[texts[kt]] = value
        return out

    def _record_origins(self, conn: Connection, rid: str, origin: str, ad: Any,
                        changes: list[Change]) -> None:
        """Who wrote each row last, and its hash: needed for center-wins and manual, and
        for loop prevention where this node also captures the resource."""
        spec = self.spec(rid)
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

    def _record_fresh(self, conn: Connection, rid: str, node: str, now: float, changed: bool,
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

    # --- verification -------------------------------------------------------------------

    def verify_peers(self, rid: str) -> list[str]:
        """Whose copies `sync verify` compares with this node's: at the center the owner
        (or every node that sent the resource) and the subscribers; at a bureau, the
        center."""
        spec = self.spec(rid)
        if not self.node.is_center:
            return [self.node.center_id]
        peers: list[str] = []
        if spec.owner:
            peers.append(spec.owner)
        else:
            with self.node.engine.connect() as conn:
                peers += [n for (n,) in conn.execute(select(freshness.c.node).where(
                    freshness.c.resource == rid)) if n != self.node.id]
        peers += spec.subscribers
        return [p for p in dict.fromkeys(peers) if p != self.node.id]

    def summary(self, rid: str, fields: list[str] | None = None,
                buckets: set[int] | None = None) -> dict[str, Any]:
        """Row count, order-independent checksum and 256 bucket checksums of this node's
        copy; with ``buckets``, the (key, hash) of every row in those buckets."""
        from exnode.adapters.sql import row_hash

        ad = self.adapter(rid)
        fields = fields or ad.fields
        missing = [f for f in fields if f not in ad.fields]
        if missing:
            raise UsageError(f"resource '{rid}' here lacks fields {missing}")
        sums = [0] * 256
        total = count = 0
        keys: list[list[Any]] = []
        for chunk in ad.read_chunks(5000):
            for row in chunk:
                key = ad.key_of(row)
                h = int.from_bytes(row_hash(row, fields, ad.naive_tz), "big")
                b = _bucket(key)
                sums[b] = (sums[b] + h) % (1 << 128)
                total = (total + h) % (1 << 128)
                count += 1
                if buckets is not None and b in buckets and len(keys) < VERIFY_MAX_KEYS:
                    keys.append([key_text(key), h.to_bytes(16, "big")])
        out: dict[str, Any] = {"count": count, "checksum": total.to_bytes(16, "big").hex(),
                               "buckets": [x.to_bytes(16, "big") for x in sums]}
        if buckets is not None:
            out["keys"] = keys
        return out

    def on_verify_request(self, ctx: ApplyContext) -> None:
        """Answer a verify request off the DB thread: a checksum of a large table takes
        a while, and packages keep flowing meanwhile."""
        try:
            req = cbor2.loads(ctx.payload)
            req_id, fields = str(req["req"]), [str(f) for f in req["fields"]]
            buckets = set(req["buckets"]) if req.get("buckets") is not None else None
        except Exception:
            raise PackageError("malformed", "verify request is not readable") from None
        rid, src, node = ctx.header.res, ctx.header.src, self.node
        self.spec(rid)

        async def answer() -> None:
            try:
                res = await asyncio.get_running_loop().run_in_executor(
                    None, self.summary, rid, fields, buckets)
            except ExnodeError as e:
                res = {"error": str(e)}
            res["req"] = req_id
            await node.send(src, "verify-res", rid, cbor2.dumps(res))

        loop = node._loop
        assert loop is not None
        ctx.after_commit(lambda: loop.call_soon_threadsafe(
            lambda: node.spawn(answer(), "verify answer")))

    def on_verify_result(self, ctx: ApplyContext) -> None:
        try:
            res = cbor2.loads(ctx.payload)
            req_id = str(res["req"])
        except Exception:
            raise PackageError("malformed", "verify result is not readable") from None
        fut = self._verify_waits.get((req_id, ctx.header.src))
        loop = self.node._loop
        if fut is not None and loop is not None:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(res))

    async def _ask(self, peer: str, rid: str, fields: list[str], buckets: list[int] | None,
                   timeout: float) -> dict[str, Any]:
        import uuid

        req_id = uuid.uuid4().hex
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._verify_waits[(req_id, peer)] = fut
        try:
            await self.node.send(peer, "verify-req", rid, cbor2.dumps(
                {"req": req_id, "fields": fields, "buckets": buckets}))
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return {"error": f"no answer within {timeout:.0f} s"}
        finally:
            self._verify_waits.pop((req_id, peer), None)

    async def verify(self, rid: str, timeout: float = 120.0) -> dict[str, Any]:
        """Compare this node's copy of ``rid`` with its peers' and list differing keys."""
        loop = asyncio.get_running_loop()
        ad = await self.node.db(self.adapter, rid)
        fields = ad.fields
        mine = await loop.run_in_executor(None, self.summary, rid, fields, None)
        peers = await self.node.db(self.verify_peers, rid)
        answers = await asyncio.gather(*(self._ask(p, rid, fields, None, timeout)
                                         for p in peers))
        report = {"resource": rid, "fields": fields,
                  "nodes": [{"node": self.node.id, "count": mine["count"],
                             "checksum": mine["checksum"], "same": True}]}
        ok = True
        for peer, ans in zip(peers, answers, strict=True):
            if "error" in ans:
                report["nodes"].append({"node": peer, "error": ans["error"], "same": False})
                ok = False
                continue
            same = ans["checksum"] == mine["checksum"] and ans["count"] == mine["count"]
            entry: dict[str, Any] = {"node": peer, "count": ans["count"],
                                     "checksum": ans["checksum"], "same": same}
            if not same:
                ok = False
                diff = [b for b in range(256) if ans["buckets"][b] != mine["buckets"][b]]
                theirs = await self._ask(peer, rid, fields, diff, timeout)
                ours = await loop.run_in_executor(None, self.summary, rid, fields, set(diff))
                entry["differences"] = _key_diff(dict((k, h) for k, h in ours["keys"]),
                                                 dict((k, h) for k, h in
                                                      theirs.get("keys", [])))
            report["nodes"].append(entry)
        report["ok"] = ok
        return report

    # --- conflicts ----------------------------------------------------------------------

    def list_conflicts(self, status: str | None = "open") -> list[dict[str, Any]]:
        q = select(conflicts.c.id, conflicts.c.resource, conflicts.c.src, conflicts.c.pkg_id,
                   conflicts.c.key, conflicts.c.reason, conflicts.c.status, conflicts.c.created,
                   conflicts.c.resolved_at, conflicts.c.resolution).order_by(conflicts.c.id)
        if status:
            q = q.where(conflicts.c.status == status)
        with self.node.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def show_conflict(self, cid: int) -> dict[str, Any]:
        from exnode.adapters.rowcodec import decode_batch

        with self.node.engine.connect() as conn:
            r = conn.execute(select(conflicts).where(conflicts.c.id == cid)).mappings().first()
        if r is None:
            raise UsageError(f"no conflict {cid}")
        out = {k: v for k, v in dict(r).items() if k not in ("change", "current")}
        ch = decode_batch(r["change"]).changes[0]
        out["incoming"] = {"op": ch.op, "row": _jsonable(ch.row)}
        out["current"] = None if r["current"] is None else _jsonable(
            decode_batch(r["current"]).changes[0].row)
        return out

    def resolve_conflict(self, cid: int, keep: str) -> dict[str, Any]:
        """keep='incoming': apply the bureau's change and forward it; keep='current': keep
        the shared copy and send the bureau a rejection notice."""
        from exnode.adapters.rowcodec import decode_batch, encode_batch

        if keep not in ("incoming", "current"):
            raise UsageError("--keep takes 'incoming' or 'current'")
        with self.node.engine.begin() as conn:
            r = conn.execute(select(conflicts).where(conflicts.c.id == cid)).mappings().first()
            if r is None:
                raise UsageError(f"no conflict {cid}")
            if r["status"] != "open":
                raise UsageError(f"conflict {cid} is already resolved ({r['resolution']})")
            rid = r["resource"]
            batch = decode_batch(r["change"])
            ad = self.adapter(rid)
            if keep == "incoming":
                ad.apply(ChangeBatch(rid, batch.changes), f"conflict-{cid}-{r['pkg_id'][:20]}",
                         r["src"])
                self._record_origins(conn, rid, r["src"], ad, batch.changes)
                data = encode_batch(ChangeBatch(rid, batch.changes), ad.fields)
                for dest in self.forward_to(rid, r["src"]):
                    self.node.enqueue_sync(conn, dest, ROWS, rid, data)
            else:
                self.node.enqueue_sync(conn, r["src"], REJECTION, rid, cbor2.dumps({
                    "resource": rid, "pkg_id": r["pkg_id"],
                    "items": [[list(batch.changes[0].key),
                               f"conflict resolved for the center's copy: {r['reason']}"]]}))
            conn.execute(conflicts.update().where(conflicts.c.id == cid).values(
                status="resolved", resolution=keep, resolved_at=time.time()))
        return {"id": cid, "resolution": keep}

    # --- status -------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Per resource: when each node was last known current, and whether that is
        older than the resource's update frequency."""
        now = time.time()
        with self.node.engine.connect() as conn:
            fresh = [dict(r) for r in conn.execute(select(freshness)).mappings()]
            open_conflicts = conn.execute(select(conflicts.c.resource).where(
                conflicts.c.status == "open")).scalars().all()
        out = []
        for rid, spec in self.cfg.resources.items():
            limit = parse_duration(spec.freshness) if spec.freshness else None
            nodes = []
            for f in fresh:
                if f["resource"] != rid:
                    continue
                age = now - f["last_current"]
                nodes.append({"node": f["node"], "last_current": f["last_current"],
                              "last_change": f["last_change"], "age_s": round(age, 1),
                              "stale": limit is not None and age > limit})
            out.append({"resource": rid, "error": self.errors.get(rid),
                        "freshness_s": limit, "nodes": nodes,
                        "stale": any(n["stale"] for n in nodes) or (
                            limit is not None and not nodes
                            and now - self.node.started > limit),
                        "open_conflicts": sum(1 for r in open_conflicts if r == rid),
                        "capture": spec.capture.strategy if spec.capture else None,
                        "last_cycle": self.last_cycle.get(rid)})
        return out


def _jsonable(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = {}
    for k, v in row.items():
        if isinstance(v, bytes):
            out[k] = "0x" + v.hex()
        elif v is None or isinstance(v, bool | int | float | str):
            out[k] = v
        else:
            out[k] = str(v)
    return out


def _bucket(key: tuple[Any, ...]) -> int:
    import hashlib

    return hashlib.sha256(key_text(key).encode()).digest()[0]


def _key_diff(ours: dict[str, bytes], theirs: dict[str, bytes],
              limit: int = 100) -> dict[str, Any]:
    """Keys only here, only there, and with different rows (at most ``limit`` each)."""
    only_here = sorted(k for k in ours if k not in theirs)
    only_there = sorted(k for k in theirs if k not in ours)
    changed = sorted(k for k in ours if k in theirs and ours[k] != theirs[k])
    return {"missing_there": only_here[:limit], "extra_there": only_there[:limit],
            "different": changed[:limit],
            "counts": {"missing_there": len(only_here), "extra_there": len(only_there),
                       "different": len(changed)}}
