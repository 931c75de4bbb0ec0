"""The outbox: a package is sealed, signed and written here before it is published, and
republished with backoff and flow control until its signed receipt settles it.

All methods but :meth:`Outbox.pump` run in the state-DB worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, bindparam, func, select

from exnode.node.base.config import Config
from exnode.node.base.errors import PackageError
from exnode.node.kernel import envelope, exlog
from exnode.node.kernel import identity as idn
from exnode.node.kernel.directory import Members
from exnode.node.kernel.framing import frames
from exnode.node.kernel.state import outbox, outbox_blobs, seq_out
from exnode.node.kernel.transport import Transport

log = structlog.get_logger("exnode")

WIRE_CACHE_BYTES = 128 * 1024 * 1024
EXPRESS_LIMIT = 64  # at most this many packages published by the one that queued them


class Outbox:
    """Queued packages of one node, and the pump that publishes them."""

    def __init__(self, cfg: Config, engine: Engine, identity: idn.Identity, suite: Any,
                 members: Members, ordered: Callable[[str], bool],
                 counters: dict[str, int]) -> None:
        self.cfg = cfg
        self.engine = engine
        self.identity = identity
        self.suite = suite
        self.members = members
        self.ordered = ordered
        self.counters = counters
        self.wake = asyncio.Event()
        self.held_back = False  # fresh packages wait for room in the window
        self.busy = False  # the pump is claiming or publishing
        self._claimed_n = self._sent_n = 0  # claim_now's batches, and those published
        self.connected: Callable[[], bool] = lambda: False  # the node sets the transport's
        self._wire_cache: OrderedDict[str, bytes] = OrderedDict()
        self._wire_cache_bytes = 0

    def log(self, conn: Connection, entries: list[dict[str, Any]]) -> None:
        exlog.append(conn, entries, self.identity.sign)

    # --- queueing ------------------------------------------------------------------------

    def enqueue(self, conn: Connection, dest: str, kind: str, resource: str, payload: bytes,
                extra: dict[str, Any] | None = None, ttl_s: int | None = None) -> str:
        """Seal and sign a package and write it to the outbox, inside ``conn``'s txn;
        ``ttl_s`` shortens its lifetime (a report that is soon out of date)."""
        member = self.members.current.get(dest)
        if member is None:
            raise PackageError("unknown-recipient", f"'{dest}' is not an approved member "
                               "(is the global configuration current?)")
        seq = self._next_seq(conn, dest, resource) if self.ordered(kind) else 0
        pkg = envelope.build(suite=self.suite, sign_key=self.identity.sign_key,
                             src=self.identity.node_id, kind=kind,
                             rcpt={dest: member.enc_pub}, resource=resource, seq=seq,
                             payload=payload, ttl_s=ttl_s or self.cfg.delivery.package_ttl_s,
                             extra=extra)
        now = time.time()
        conn.execute(outbox.insert().values(
            pkg_id=pkg.header.id, dest=dest, kind=kind, resource=resource, seq=seq,
            size=len(pkg.wire), created=now, expires=pkg.header.expires / 1000,
            next_attempt=now, attempts=0, status="pending"))
        conn.execute(outbox_blobs.insert().values(pkg_id=pkg.header.id, blob=pkg.wire))
        self.log(conn, [{"pkg_id": pkg.header.id, "event": "created", "peer": dest,
                         "resource": resource, "kind": kind, "size": len(pkg.wire)}])
        self._cache_wire(pkg.header.id, pkg.wire)
        return pkg.header.id

    @staticmethod
    def _next_seq(conn: Connection, dest: str, resource: str) -> int:
        cur = conn.execute(select(seq_out.c.last_seq).where(
            seq_out.c.dest == dest, seq_out.c.resource == resource)).scalar()
        seq = (cur or 0) + 1
        if cur is None:
            conn.execute(seq_out.insert().values(dest=dest, resource=resource, last_seq=seq))
        else:
            conn.execute(seq_out.update().where(seq_out.c.dest == dest,
                                                seq_out.c.resource == resource)
                         .values(last_seq=seq))
        return seq

    def enqueue_claim(self, items: list[tuple[str, str, str, bytes]]) \
            -> tuple[list[str], list[dict[str, Any]] | None]:
        """Several packages queued in one transaction, and :meth:`claim_now` in it."""
        with self.engine.begin() as conn:
            ids = [self.enqueue(conn, *it) for it in items]
            return ids, self.claim_now(conn)

    def _cache_wire(self, pkg_id: str, wire: bytes) -> None:
        """Keep a just-queued package in memory so its first publish needs no read."""
        # When full, the newest stay out: the oldest are the next to be published.
        if self._wire_cache_bytes + len(wire) <= WIRE_CACHE_BYTES:
            self._wire_cache[pkg_id] = wire
            self._wire_cache_bytes += len(wire)

    # --- what to publish --------------------------------------------------------------

    def due_next(self, limit: int) -> tuple[list[dict[str, Any]], float]:
        """:meth:`claim` in a transaction of its own, and in it the seconds until the
        next package is due after these (so the pump needs no second look when there
        are no more)."""
        with self.engine.begin() as conn:
            rows = self.claim(conn, limit)
            if len(rows) >= limit:
                return rows, 0.0
            t = conn.execute(select(func.min(outbox.c.next_attempt)).where(
                outbox.c.status == "pending")).scalar()
        return rows, 5.0 if t is None else max(0.0, t - time.time())

    def claim(self, conn: Connection, limit: int) -> list[dict[str, Any]]:
        """Packages to publish now, claimed inside ``conn``'s transaction: retries that
        are due, then fresh ones as far as the flow-control window allows (blobs are read
        only for the rows chosen). The caller publishes the rows once that transaction
        has committed (never before: a package of a transaction rolled back must not go
        out)."""
        now = time.time()
        d = self.cfg.delivery
        cols = (outbox.c.pkg_id, outbox.c.dest, outbox.c.attempts, outbox.c.kind,
                outbox.c.resource, outbox.c.size)
        inflight_n, inflight_b = conn.execute(
            select(func.count(), func.coalesce(func.sum(outbox.c.size), 0)).where(
                outbox.c.status == "pending", outbox.c.attempts > 0)).one()
        rows = [dict(r) for r in conn.execute(
            select(*cols).where(outbox.c.status == "pending", outbox.c.attempts > 0,
                                outbox.c.next_attempt <= now)
            .order_by(outbox.c.created, outbox.c.pkg_id).limit(limit)).mappings()]
        room_n = min(limit, d.window_packages - inflight_n)
        room_b = d.window_bytes - inflight_b
        # fresh packages may be left waiting for room in the window: a receipt that
        # frees room must then wake the pump (otherwise it need not)
        self.held_back = True
        if room_n > 0 and room_b > 0:
            fresh = 0
            for r in conn.execute(
                    select(*cols).where(outbox.c.status == "pending",
                                        outbox.c.attempts == 0)
                    .order_by(outbox.c.created, outbox.c.pkg_id).limit(room_n)).mappings():
                if room_b <= 0:
                    break
                rows.append(dict(r))
                room_b -= r["size"]
                fresh += 1
            else:
                self.held_back = fresh >= room_n
        self._attach_blobs(conn, rows)
        if rows:
            # Claimed in the same transaction: attempts and the next retry time move now,
            # so the pump never needs a second round trip per batch.
            self._mark_attempted(conn, rows)
        return rows

    def claim_now(self, conn: Connection) -> list[dict[str, Any]] | None:
        """Packages just queued in ``conn``'s transaction (and any others due), claimed
        to be published by the caller after the commit instead of by the pump, which
        saves the pump's turn in the state-DB thread; None when the pump is at work (it
        takes them in order with its own). When :data:`EXPRESS_LIMIT` rows come back,
        more may be due: the caller wakes the pump. Also None while rows claimed so are
        still being published: a steady flow is left to the pump, which publishes many
        packages at a time."""
        if self.busy or self._claimed_n != self._sent_n or not self.connected():
            return None
        rows = self.claim(conn, EXPRESS_LIMIT)
        if rows:
            self._claimed_n += 1  # written only here, in the state-DB thread
        return rows

    async def send_claimed(self, transport: Transport, topic_for: Callable[[str], str],
                           db: Callable[..., Awaitable[Any]],
                           rows: list[dict[str, Any]]) -> bool:
        """Publish rows of :meth:`claim_now`; the ones that failed are retried soon.
        True if all went."""
        try:
            return await self._send_claimed(transport, topic_for, db, rows)
        finally:
            self._sent_n += 1  # written only here, in the event loop

    async def _send_claimed(self, transport: Transport, topic_for: Callable[[str], str],
                            db: Callable[..., Awaitable[Any]],
                            rows: list[dict[str, Any]]) -> bool:
        started = time.monotonic()
        ok = await self.publish(transport, [(topic_for(r["dest"]), r["blob"], r["pkg_id"])
                                            for r in rows])
        took = time.monotonic() - started
        failed = [r["pkg_id"] for r, good in zip(rows, ok, strict=True) if not good]
        self.counters["published"] += len(rows) - len(failed)
        if took > 0.25 and len(failed) < len(rows):
            # the retry clock started when the batch was claimed; a large batch needs
            # about as long again on its way on from the center before a receipt can
            # come, so its retry waits for both
            await db(self.postpone, [r["pkg_id"] for r, good in zip(rows, ok, strict=True)
                                     if good], 2 * took)
        if failed:
            await db(self.retry_soon, failed)
        return not failed

    def _attach_blobs(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        missing = []
        for r in rows:
            wire = self._wire_cache.pop(r["pkg_id"], None)
            if wire is None:
                missing.append(r["pkg_id"])
            else:
                self._wire_cache_bytes -= len(wire)
                r["blob"] = wire
        blobs: dict[str, bytes] = {}
        for i in range(0, len(missing), 200):
            blobs.update(conn.execute(select(outbox_blobs.c.pkg_id, outbox_blobs.c.blob)
                                      .where(outbox_blobs.c.pkg_id.in_(missing[i:i + 200])))
                         .tuples().all())
        for r in rows:
            if "blob" not in r:
                r["blob"] = blobs[r["pkg_id"]]

    def _mark_attempted(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        now = time.time()
        d = self.cfg.delivery
        first = []
        params = []
        for r in rows:
            delay = min(d.retry_initial_s * (2 ** r["attempts"]), d.retry_max_s)
            params.append({"k": r["pkg_id"], "n": r["attempts"] + 1,
                           "t": now + delay * random.uniform(0.8, 1.2)})
            if r["attempts"] == 0:
                first.append({"pkg_id": r["pkg_id"], "event": "sent", "peer": r["dest"],
                              "resource": r["resource"], "kind": r["kind"], "size": r["size"]})
        conn.execute(outbox.update().where(outbox.c.pkg_id == bindparam("k"),
                                           outbox.c.status == "pending")
                     .values(attempts=bindparam("n"), next_attempt=bindparam("t")), params)
        if first:
            self.log(conn, first)

    def expire(self) -> None:
        """Give up on packages whose lifetime ended without a receipt (checked every few
        seconds by the node's periodic task, not on every pump)."""
        now = time.time()
        with self.engine.begin() as conn:
            expired = conn.execute(select(outbox.c.pkg_id, outbox.c.dest, outbox.c.kind,
                                          outbox.c.resource, outbox.c.size).where(
                outbox.c.status == "pending", outbox.c.expires < now)).mappings().all()
            if not expired:
                return
            gone = [e["pkg_id"] for e in expired]
            conn.execute(outbox.update().where(outbox.c.pkg_id.in_(gone)).values(
                status="expired", done_at=now, reason="expired undelivered"))
            conn.execute(outbox_blobs.delete().where(outbox_blobs.c.pkg_id.in_(gone)))
            self.log(conn, [{"pkg_id": e["pkg_id"], "event": "expired", "peer": e["dest"],
                             "resource": e["resource"], "kind": e["kind"], "size": e["size"],
                             "status": "expired",
                             "reason": "no receipt before the package expired"}
                            for e in expired])

    def postpone(self, pkg_ids: list[str], seconds: float) -> None:
        """Move the next republish of these packages ``seconds`` later."""
        with self.engine.begin() as conn:
            for i in range(0, len(pkg_ids), 200):
                conn.execute(outbox.update().where(outbox.c.pkg_id.in_(pkg_ids[i:i + 200]),
                                                   outbox.c.status == "pending")
                             .values(next_attempt=outbox.c.next_attempt + seconds))

    def retry_soon(self, pkg_ids: list[str]) -> None:
        """Publishing failed (the connection dropped): try these again shortly."""
        with self.engine.begin() as conn:
            conn.execute(outbox.update().where(outbox.c.pkg_id.in_(pkg_ids),
                                               outbox.c.status == "pending")
                         .values(next_attempt=time.time() + 0.5))

    def retry_all_now(self) -> None:
        """After a (re)connect, packages that were sent into a dead connection go again."""
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(outbox.update().where(outbox.c.status == "pending",
                                               outbox.c.attempts > 0,
                                               outbox.c.next_attempt > now)
                         .values(next_attempt=now))

    def backlog(self, conn: Connection,
                kinds: list[str]) -> dict[tuple[str, str], tuple[int, float]]:
        """(dest, resource) -> packages of ``kinds`` waiting for their receipt, and when
        the oldest was queued."""
        q = (select(outbox.c.dest, outbox.c.resource, func.count(), func.min(outbox.c.created))
             .where(outbox.c.status == "pending", outbox.c.kind.in_(kinds))
             .group_by(outbox.c.dest, outbox.c.resource))
        return {(d, r): (int(n), float(t)) for d, r, n, t in conn.execute(q)}

    def depth(self) -> int:
        """Packages waiting for their receipt."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).where(
                outbox.c.status == "pending")).scalar() or 0)

    def backlog_by_dest(self) -> dict[str, dict[str, float]]:
        """Per destination: packages waiting for their receipt, and the oldest's age."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.dest, func.count(), func.min(outbox.c.created))
                                .where(outbox.c.status == "pending")
                                .group_by(outbox.c.dest)).all()
        return {d: {"packages": int(n), "oldest": float(t)} for d, n, t in rows}

    # --- publishing -----------------------------------------------------------------------

    def _sign(self, message: bytes) -> tuple[str, bytes]:
        """This node's signature of a chunk claim."""
        return self.identity.node_id, self.identity.sign(message)

    async def publish(self, transport: Transport, items: list[tuple[str, bytes, str]]) \
            -> list[bool]:
        """Publish packages (``topic, wire, pkg_id``), chunked to the broker's limit."""
        limit = self.cfg.broker.max_message_bytes
        # QoS 1 publishes are written to the socket in call order, so order per topic holds.
        return list(await asyncio.gather(*(
            transport.publish_frames(topic, frames(pkg_id, wire, limit, self._sign))
            for topic, wire, pkg_id in items)))

    async def pump(self, transport: Transport, topic_for: Callable[[str], str],
                   db: Callable[..., Awaitable[Any]], stop: asyncio.Event) -> None:
        """Publish what is due, for as long as the node runs."""
        while not stop.is_set():
            await transport.connected.wait()
            self.wake.clear()  # before looking, so a wake-up during the look is not lost
            self.busy = True
            try:
                rows, wait = await db(self.due_next, 512)
                if rows:
                    if not await self._send_claimed(transport, topic_for, db, rows):
                        await asyncio.sleep(0.5)
                        continue
                    if wait <= 0.0 or self.wake.is_set():
                        continue  # more is due now
            finally:
                self.busy = False
            # nothing more is due until ``wait`` (no second look needed), or a wake-up
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=max(min(wait, 1.0), 0.01))
