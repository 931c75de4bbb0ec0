"""The node daemon: one program for the center and for each bureau.

Data flows one way through a node: ``enqueue`` (seal, sign, write to the outbox) ->
outbox pump (publish, republish with backoff until a signed receipt) -> broker. On
the receiving side: broker -> reassembly -> ``_process_batch`` (verify, then relay
still sealed, or open and apply exactly once) -> receipts back to the sender.

All state-DB work runs in one worker thread so the event loop stays free for the
broker and the control API.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import cbor2
import structlog
from sqlalchemy import Connection, bindparam, func, select

from . import envelope, exlog, registry
from . import identity as idn
from .config import Config
from .errors import IdentityError, PackageError
from .framing import Reassembler, frames
from .state import inbox, members, outbox, outbox_blobs, peers, seq_in, seq_out
from .sync import Deferred
from .topics import Topics

log = structlog.get_logger("exnode")

# Small packets (receipts, acks) must not wait for Nagle's algorithm.
NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
WIRE_CACHE_BYTES = 128 * 1024 * 1024
DEFAULT_SUITE = "x25519-hkdf-sha256-aes256gcm-ed25519"
RECEIPT = "receipt"


class _StopOrdered(Exception):
    """A package was deferred: apply nothing after it in this (source, resource)."""


@dataclass
class Directory:
    """Who the members are: from the signed global configuration (bureau) or from the
    registry (center). Only approved, unrevoked members are in ``members``."""

    members: dict[str, idn.Member] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    version: int = 0
    expires: float = 0.0

    @property
    def valid(self) -> bool:
        return bool(self.members) and self.expires > time.time()

    def get(self, node_id: str) -> idn.Member | None:
        return self.members.get(node_id) if self.valid else None


@dataclass
class ApplyContext:
    """What a package-kind handler gets (see ``plugins/hookspecs.py``)."""

    node: Node
    conn: Connection
    header: envelope.Header
    payload: bytes
    replies: list[tuple[str, str, str, bytes]] = field(default_factory=list)
    after: list[Callable[[], None]] = field(default_factory=list)

    def reply(self, kind: str, payload: bytes, resource: str | None = None) -> None:
        """Send a package back to the sender, queued in this same transaction."""
        self.replies.append((self.header.src, kind, self.header.res if resource is None
                             else resource, payload))

    def send(self, dest: str, kind: str, payload: bytes, resource: str | None = None) -> None:
        """Send a package to any member, queued in this same transaction."""
        self.replies.append((dest, kind, self.header.res if resource is None else resource,
                             payload))

    def after_commit(self, fn: Callable[[], None]) -> None:
        self.after.append(fn)


@dataclass
class BatchResult:
    publishes: list[tuple[str, bytes, str]] = field(default_factory=list)  # topic, wire, id
    after: list[Callable[[], None]] = field(default_factory=list)
    wake_outbox: bool = False


class Node:
    """A running exnode: identity, state DB, plugins, broker connection, control API."""

    def __init__(self, cfg: Config) -> None:
        from exnode.plugins.manager import Registry, make_manager

        from .state import open_state

        self.cfg = cfg
        self.id = cfg.node.id
        self.role = cfg.node.role
        self.is_center = self.role == "center"
        self.center_id = cfg.center_id
        self.identity = idn.Identity(self.id, cfg.keys_dir)
        self.pm = make_manager(cfg.plugins.disable)
        self.plugins = Registry(self.pm)
        if DEFAULT_SUITE not in self.plugins.suites:
            raise IdentityError(f"crypto suite {DEFAULT_SUITE} is not loaded (plugin disabled?)")
        self.suite = self.plugins.suites[DEFAULT_SUITE]
        self.engine = open_state(cfg.state_url)
        self.topics = Topics(cfg.broker.topic_prefix)
        self.directory = Directory()
        self.max_pkg = cfg.delivery.max_package_bytes
        self._db = ThreadPoolExecutor(1, thread_name_prefix="exnode-db")
        self._client: aiomqtt.Client | None = None
        self._protocol: str = ""
        self._connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._inq: asyncio.Queue[aiomqtt.Message] = asyncio.Queue(maxsize=10_000)
        self._reasm = Reassembler(self.max_pkg)
        self._pings: dict[str, asyncio.Future[float]] = {}
        self._ping_started: dict[str, float] = {}
        self._batches: dict[tuple[str, str], list[bytes]] = defaultdict(list)
        self._batch_bytes: dict[tuple[str, str], int] = defaultdict(int)
        self._batch_task: asyncio.Task[None] | None = None
        self._gconf_blob: bytes | None = None
        self._spawned: list[asyncio.Task[Any]] = []
        self._wire_cache: OrderedDict[str, bytes] = OrderedDict()
        self._wire_cache_bytes = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = time.time()
        self.last_error = ""
        self.counters: dict[str, int] = defaultdict(int)

    # --- small helpers ------------------------------------------------------------------

    async def db(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the state-DB worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    def _log(self, conn: Connection, entries: list[dict[str, Any]]) -> None:
        exlog.append(conn, entries, self.identity.sign)

    def _topic_for(self, dest: str) -> str:
        # Bureaus talk only to the center's inbox; the center writes each bureau's inbox.
        return self.topics.inbox(dest if self.is_center else self.center_id)

    # --- directory ----------------------------------------------------------------------

    def load_directory(self) -> None:
        """Center: from the registry. Bureau: from the cached global configuration."""
        if self.is_center:
            registry.ensure_self(self.engine, self.identity)
            self._directory_from_registry()
            return
        cache = self.cfg.keys_dir / idn.GCONF_CACHE
        if cache.exists():
            try:
                self._apply_gconf(cache.read_bytes(), save=False)
            except IdentityError as e:
                log.warning("gconf_cache_unusable", reason=str(e))

    def _directory_from_registry(self) -> None:
        ca = self.identity.ca_cert
        assert ca is not None
        # The version and expiry are those of the last published global configuration.
        d = Directory(version=self.directory.version,
                      expires=self.directory.expires or time.time() + 3600)
        with self.engine.connect() as conn:
            for r in conn.execute(select(members)).mappings():
                if r["status"] == "approved" and r["cert"]:
                    try:
                        d.members[r["id"]] = idn.member_from_cert(r["cert"], ca)
                    except IdentityError as e:
                        log.warning("member_cert_invalid", member=r["id"], reason=str(e))
                elif r["status"] == "revoked":
                    d.revoked.add(r["id"])
        self.directory = d

    def _apply_gconf(self, blob: bytes, save: bool = True) -> bool:
        ca = self.identity.ca_cert
        if ca is None:
            raise IdentityError("no CA certificate: run 'exnode register TOKEN' first")
        g = idn.verify_gconf(blob, ca)
        if g["version"] < self.directory.version:
            return False
        d = Directory(version=int(g["version"]), expires=float(g["expires"]),
                      revoked={r["id"] for r in g.get("revoked", [])})
        for m in g.get("members", []):
            try:
                mem = idn.member_from_cert(bytes(m["cert"]), ca)
            except IdentityError as e:
                log.warning("member_cert_invalid", member=m.get("id"), reason=str(e))
                continue
            if mem.id not in d.revoked:
                d.members[mem.id] = mem
        self.directory = d
        me = d.members.get(self.id)
        cert_path = self.cfg.keys_dir / idn.NODE_CERT
        if me is not None and me.sign_pub.public_bytes_raw() == self.identity.sign_pub \
                and not cert_path.exists():
            cert_path.write_bytes(me.cert_der)
        if save:
            idn.write_private(self.cfg.keys_dir / idn.GCONF_CACHE, blob)
        return True

    # --- sending ------------------------------------------------------------------------

    def enqueue_sync(self, conn: Connection, dest: str, kind: str, resource: str,
                     payload: bytes, extra: dict[str, Any] | None = None) -> str:
        """Seal and sign a package and write it to the outbox, inside ``conn``'s txn."""
        member = self.directory.get(dest)
        if member is None:
            raise PackageError("unknown-recipient", f"'{dest}' is not an approved member "
                               "(is the global configuration current?)")
        seq = 0
        if kind in self.plugins.ordered:
            cur = conn.execute(select(seq_out.c.last_seq).where(
                seq_out.c.dest == dest, seq_out.c.resource == resource)).scalar()
            seq = (cur or 0) + 1
            if cur is None:
                conn.execute(seq_out.insert().values(dest=dest, resource=resource, last_seq=seq))
            else:
                conn.execute(seq_out.update().where(seq_out.c.dest == dest,
                                                    seq_out.c.resource == resource)
                             .values(last_seq=seq))
        ttl = self.cfg.delivery.package_ttl_s
        pkg = envelope.build(suite=self.suite, sign_key=self.identity.sign_key, src=self.id,
                             kind=kind, rcpt={dest: member.enc_pub}, resource=resource,
                             seq=seq, payload=payload, ttl_s=ttl, extra=extra)
        now = time.time()
        conn.execute(outbox.insert().values(
            pkg_id=pkg.header.id, dest=dest, kind=kind, resource=resource, seq=seq,
            size=len(pkg.wire), created=now, expires=pkg.header.expires / 1000,
            next_attempt=now, attempts=0, status="pending"))
        conn.execute(outbox_blobs.insert().values(pkg_id=pkg.header.id, blob=pkg.wire))
        self._log(conn, [{"pkg_id": pkg.header.id, "event": "created", "peer": dest,
                          "resource": resource, "kind": kind, "size": len(pkg.wire)}])
        self._cache_wire(pkg.header.id, pkg.wire)
        return pkg.header.id

    def _enqueue_many(self, items: list[tuple[str, str, str, bytes]]) -> list[str]:
        with self.engine.begin() as conn:
            ids = [self.enqueue_sync(conn, *it) for it in items]
        return ids

    async def send(self, dest: str, kind: str, resource: str, payload: bytes) -> str:
        """Queue one package for ``dest``; returns its id once it is in the outbox."""
        ids = await self.db(self._enqueue_many, [(dest, kind, resource, payload)])
        self._wake.set()
        return ids[0]

    async def send_many(self, items: list[tuple[str, str, str, bytes]]) -> list[str]:
        """Queue several packages in one transaction."""
        ids = await self.db(self._enqueue_many, items)
        self._wake.set()
        return ids

    async def submit(self, dest: str, resource: str, item: bytes) -> None:
        """Queue one small message; messages for the same (dest, resource) are packed into
        one ``data`` package up to ``delivery.batch_bytes`` or ``batch_linger_ms``."""
        key = (dest, resource)
        self._batches[key].append(item)
        self._batch_bytes[key] += len(item)
        if self._batch_bytes[key] >= self.cfg.delivery.batch_bytes:
            await self._flush_batch(key)
        elif self._batch_task is None or self._batch_task.done():
            self._batch_task = asyncio.create_task(self._linger())

    async def _linger(self) -> None:
        await asyncio.sleep(self.cfg.delivery.batch_linger_ms / 1000)
        await self.flush()

    async def flush(self) -> None:
        """Send every partly filled batch now."""
        keys = list(self._batches)
        items = []
        for key in keys:
            batch = self._batches.pop(key, [])
            self._batch_bytes.pop(key, None)
            if batch:
                items.append((key[0], "data", key[1], cbor2.dumps(batch)))
        if items:
            await self.send_many(items)

    async def _flush_batch(self, key: tuple[str, str]) -> None:
        batch = self._batches.pop(key, [])
        self._batch_bytes.pop(key, None)
        if batch:
            await self.send(key[0], "data", key[1], cbor2.dumps(batch))

    async def ping(self, dest: str, timeout: float = 30.0) -> float:
        """A signed round trip to ``dest`` (through the center); returns milliseconds."""
        nonce = os.urandom(8).hex()
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pings[nonce] = fut
        self._ping_started[nonce] = time.perf_counter()
        try:
            await self.send(dest, "ping", "", cbor2.dumps({"nonce": nonce, "t": time.time()}))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pings.pop(nonce, None)
            self._ping_started.pop(nonce, None)

    def pong_arrived(self, nonce: str, src: str) -> None:
        """Called (from the DB thread) when a pong was applied."""
        started = self._ping_started.get(nonce)
        fut = self._pings.get(nonce)
        if started is None or fut is None or self._loop is None:
            return
        rtt = (time.perf_counter() - started) * 1000

        def done() -> None:
            if not fut.done():
                fut.set_result(rtt)

        self._loop.call_soon_threadsafe(done)
        with self.engine.begin() as conn:
            conn.execute(peers.update().where(peers.c.node_id == src).values(last_rtt_ms=rtt))

    # --- outbox pump --------------------------------------------------------------------

    def _due(self, limit: int) -> list[dict[str, Any]]:
        """Packages to publish now: retries that are due, then fresh ones as far as the
        flow-control window allows. Blobs are read only for the rows chosen."""
        now = time.time()
        d = self.cfg.delivery
        cols = (outbox.c.pkg_id, outbox.c.dest, outbox.c.attempts, outbox.c.kind,
                outbox.c.resource, outbox.c.size)
        with self.engine.begin() as conn:
            inflight_n, inflight_b = conn.execute(
                select(func.count(), func.coalesce(func.sum(outbox.c.size), 0)).where(
                    outbox.c.status == "pending", outbox.c.attempts > 0)).one()
            rows = [dict(r) for r in conn.execute(
                select(*cols).where(outbox.c.status == "pending", outbox.c.attempts > 0,
                                    outbox.c.next_attempt <= now)
                .order_by(outbox.c.created, outbox.c.pkg_id).limit(limit)).mappings()]
            room_n = min(limit, d.window_packages - inflight_n)
            room_b = d.window_bytes - inflight_b
            if room_n > 0 and room_b > 0:
                for r in conn.execute(
                        select(*cols).where(outbox.c.status == "pending",
                                            outbox.c.attempts == 0)
                        .order_by(outbox.c.created, outbox.c.pkg_id).limit(room_n)).mappings():
                    if room_b <= 0:
                        break
                    rows.append(dict(r))
                    room_b -= r["size"]
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
            if rows:
                # Claimed in the same transaction: attempts and the next retry time move now,
                # so the pump never needs a second round trip per batch.
                self._mark_attempted(conn, rows)
        return rows

    def _expire_outbox(self) -> None:
        """Give up on packages whose lifetime ended without a receipt (checked every few
        seconds by ``_periodic``, not on every pump of the outbox)."""
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
            self._log(conn, [{"pkg_id": e["pkg_id"], "event": "expired", "peer": e["dest"],
                              "resource": e["resource"], "kind": e["kind"], "size": e["size"],
                              "status": "expired",
                              "reason": "no receipt before the package expired"}
                             for e in expired])

    def _cache_wire(self, pkg_id: str, wire: bytes) -> None:
        """Keep a just-queued package in memory so its first publish needs no read."""
        # When full, the newest stay out: the oldest are the next to be published.
        if self._wire_cache_bytes + len(wire) <= WIRE_CACHE_BYTES:
            self._wire_cache[pkg_id] = wire
            self._wire_cache_bytes += len(wire)

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
            self._log(conn, first)

    def _retry_soon(self, pkg_ids: list[str]) -> None:
        """Publishing failed (the connection dropped): try these again shortly."""
        with self.engine.begin() as conn:
            conn.execute(outbox.update().where(outbox.c.pkg_id.in_(pkg_ids),
                                               outbox.c.status == "pending")
                         .values(next_attempt=time.time() + 0.5))

    def outbox_depth(self) -> int:
        """Packages waiting for their receipt."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).where(
                outbox.c.status == "pending")).scalar() or 0)

    def _next_due_in(self) -> float:
        with self.engine.connect() as conn:
            t = conn.execute(select(func.min(outbox.c.next_attempt)).where(
                outbox.c.status == "pending")).scalar()
        return 5.0 if t is None else max(0.0, t - time.time())

    async def _outbox_loop(self) -> None:
        while not self._stop.is_set():
            await self._connected.wait()
            self._wake.clear()  # before looking, so a wake-up during the look is not lost
            t0 = time.perf_counter()
            rows = await self.db(self._due, 512)
            if rows:
                t1 = time.perf_counter()
                ok = await self._publish_many([(self._topic_for(r["dest"]), r["blob"],
                                                r["pkg_id"]) for r in rows])
                log.debug("outbox_published", n=len(rows), due_ms=round((t1 - t0) * 1000, 1),
                          publish_ms=round((time.perf_counter() - t1) * 1000, 1))
                failed = [r["pkg_id"] for r, good in zip(rows, ok, strict=True) if not good]
                self.counters["published"] += len(rows) - len(failed)
                if failed:
                    await self.db(self._retry_soon, failed)
                    await asyncio.sleep(0.5)
                continue
            wait = min(await self.db(self._next_due_in), 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.01))

    async def _publish_many(self, items: list[tuple[str, bytes, str]]) -> list[bool]:
        client = self._client
        if client is None:
            return [False] * len(items)
        limit = self.cfg.broker.max_message_bytes

        async def one(topic: str, wire: bytes, pkg_id: str) -> bool:
            try:
                for fr in frames(pkg_id, wire, limit):
                    await client.publish(topic, fr, qos=1)
                return True
            except aiomqtt.MqttError as e:
                self.last_error = f"publish failed: {e}"
                return False

        # QoS 1 publishes are written to the socket in call order, so order per topic holds.
        return list(await asyncio.gather(*(one(*it) for it in items)))

    # --- receiving ----------------------------------------------------------------------

    async def _inbound_loop(self) -> None:
        while not self._stop.is_set():
            first = await self._inq.get()
            msgs = [first]
            while len(msgs) < 256 and not self._inq.empty():
                msgs.append(self._inq.get_nowait())
            wires: list[bytes] = []
            for m in msgs:
                topic = m.topic.value
                payload = bytes(m.payload) if isinstance(m.payload, (bytes, bytearray)) else b""
                try:
                    if topic == self.topics.gconf:
                        await self._on_gconf(payload)
                    elif self.topics.is_enrol(topic):
                        await self._on_enrol(topic, payload)
                    else:
                        wire = self._reasm.feed(payload)
                        if wire is not None:
                            wires.append(wire)
                except PackageError as e:
                    await self.db(self._log_refusal, None, e, len(payload))
                except Exception as e:  # never let one bad message stop the node
                    log.error("message_failed", topic=topic, error=f"{type(e).__name__}: {e}")
            if wires:
                try:
                    t0 = time.perf_counter()
                    res: BatchResult = await self.db(self._process_batch, wires)
                    log.debug("batch_processed", n=len(wires),
                              ms=round((time.perf_counter() - t0) * 1000, 1))
                except Exception as e:
                    log.error("batch_failed", error=f"{type(e).__name__}: {e}", n=len(wires))
                    continue
                for fn in res.after:
                    try:
                        fn()
                    except Exception as e:
                        log.error("after_commit_failed", error=str(e))
                if res.publishes:
                    await self._publish_many(res.publishes)
                if res.wake_outbox:
                    self._wake.set()

    def _log_refusal(self, pkg: envelope.Package | None, e: PackageError, size: int,
                     conn: Connection | None = None) -> None:
        h = pkg.header if pkg is not None else None
        entry = {"pkg_id": h.id if h else "", "event": "refused",
                 "peer": h.src if h else "?", "resource": h.res if h else "",
                 "kind": h.kind if h else "", "size": size, "status": "refused",
                 "reason": str(e)[:500]}
        self.counters["refused"] += 1
        log.warning("package_refused", pkg_id=entry["pkg_id"], peer=entry["peer"],
                    reason=e.reason)
        if conn is not None:
            self._log(conn, [entry])
        else:
            with self.engine.begin() as c:
                self._log(c, [entry])

    def _authenticate(self, pkg: envelope.Package) -> idn.Member:
        h = pkg.header
        if h.src in self.directory.revoked:
            raise PackageError("revoked-sender", f"'{h.src}' has been revoked")
        sender = self.directory.get(h.src)
        if sender is None:
            raise PackageError("unknown-sender", f"'{h.src}' is not an approved member")
        envelope.verify(pkg, self.plugins.suites, sender.sign_pub)
        return sender

    def _process_batch(self, wires: list[bytes]) -> BatchResult:
        res = BatchResult()
        acks: dict[str, list[list[Any]]] = defaultdict(list)
        with self.engine.begin() as conn:
            for wire in wires:
                pkg = None
                try:
                    pkg = envelope.parse(wire, self.max_pkg)
                    self._authenticate(pkg)
                    h = pkg.header
                    self._touch_peer(conn, h.src)
                    if self.is_center and any(r != self.id for r in h.rcpt):
                        self._relay(conn, pkg, res)
                    if self.id in h.rcpt:
                        self._custody(conn, pkg, acks, res)
                    elif not self.is_center:
                        raise PackageError("misaddressed",
                                           f"addressed to {','.join(h.rcpt)}, not to {self.id}")
                except PackageError as e:
                    self._log_refusal(pkg, e, len(wire), conn)
            for src, items in acks.items():
                self._send_receipt(src, items, res)
        return res

    def _touch_peer(self, conn: Connection, node_id: str) -> None:
        now = time.time()
        n = conn.execute(peers.update().where(peers.c.node_id == node_id)
                         .values(last_contact=now)).rowcount
        if n == 0:
            conn.execute(peers.insert().values(node_id=node_id, last_contact=now))

    def _relay(self, conn: Connection, pkg: envelope.Package, res: BatchResult) -> None:
        """Forward a package for another member, still sealed, after checking both ends."""
        h = pkg.header
        targets = [r for r in h.rcpt if r != self.id]
        for r in targets:
            if r in self.directory.revoked or self.directory.get(r) is None:
                raise PackageError("unknown-recipient", f"'{r}' is not an approved member")
        entries = []
        for r in targets:
            res.publishes.append((self.topics.inbox(r), pkg.wire, h.id))
            entries.append({"pkg_id": h.id, "event": "relayed", "peer": f"{h.src}>{r}",
                            "resource": h.res, "kind": h.kind, "size": len(pkg.wire)})
        self.counters["relayed"] += len(targets)
        self._log(conn, entries)

    def _custody(self, conn: Connection, pkg: envelope.Package,
                 acks: dict[str, list[list[Any]]], res: BatchResult) -> None:
        h = pkg.header
        size = len(pkg.wire)
        if h.kind == RECEIPT:
            self._on_receipt(conn, pkg, res)
            return
        prev = conn.execute(select(inbox.c.status, inbox.c.reason, inbox.c.received_at)
                            .where(inbox.c.pkg_id == h.id)).first()
        if prev is not None:
            if prev.status == "waiting":
                return
            # A duplicate: acknowledged again, never processed again.
            self._log(conn, [{"pkg_id": h.id, "event": "duplicate", "peer": h.src,
                              "resource": h.res, "kind": h.kind, "size": size,
                              "status": "duplicate",
                              "reason": f"already {prev.status}; acknowledged again"}])
            self.counters["duplicates"] += 1
            acks[h.src].append([h.id, prev.status, prev.reason or ""])
            return
        ordered = h.kind in self.plugins.ordered and h.seq > 0
        if ordered:
            last = conn.execute(select(seq_in.c.last_seq).where(
                seq_in.c.src == h.src, seq_in.c.resource == h.res)).scalar() or 0
            if h.seq <= last:
                self._refuse_custody(conn, pkg, PackageError(
                    "stale-sequence", f"sequence {h.seq} <= {last} already applied"), acks)
                return
            if h.seq > last + 1:
                conn.execute(inbox.insert().values(
                    pkg_id=h.id, src=h.src, kind=h.kind, resource=h.res, seq=h.seq,
                    status="waiting", received_at=time.time(), reason=f"waiting for {last + 1}",
                    blob=pkg.wire))
                return
        try:
            self._apply_one(conn, pkg, acks, res)
        except _StopOrdered:
            return
        if ordered:
            self._drain_waiting(conn, h.src, h.res, h.seq, acks, res)

    def _drain_waiting(self, conn: Connection, src: str, resource: str, seq: int,
                       acks: dict[str, list[list[Any]]], res: BatchResult) -> None:
        while True:
            nxt = conn.execute(select(inbox.c.pkg_id, inbox.c.blob).where(
                inbox.c.status == "waiting", inbox.c.src == src, inbox.c.resource == resource,
                inbox.c.seq == seq + 1)).first()
            if nxt is None:
                return
            pkg = envelope.parse(nxt.blob, self.max_pkg)
            try:
                with conn.begin_nested():
                    conn.execute(inbox.delete().where(inbox.c.pkg_id == nxt.pkg_id))
                    self._apply_one(conn, pkg, acks, res)
            except _StopOrdered:
                return  # still waiting, still stored
            seq += 1

    def _refuse_custody(self, conn: Connection, pkg: envelope.Package, e: PackageError,
                        acks: dict[str, list[list[Any]]]) -> None:
        h = pkg.header
        conn.execute(inbox.insert().values(
            pkg_id=h.id, src=h.src, kind=h.kind, resource=h.res, seq=h.seq, status="refused",
            received_at=time.time(), reason=str(e)[:500], blob=None))
        self._log_refusal(pkg, e, len(pkg.wire), conn)
        acks[h.src].append([h.id, "refused", str(e)[:500]])

    def _apply_one(self, conn: Connection, pkg: envelope.Package,
                   acks: dict[str, list[list[Any]]], res: BatchResult) -> None:
        h = pkg.header
        try:
            handler = self.plugins.kinds.get(h.kind)
            if handler is None:
                raise PackageError("unknown-kind", f"no handler for kind '{h.kind}'")
            payload = envelope.open_payload(pkg, self.plugins.suites, self.id,
                                            self.identity.enc_key, self.max_pkg)
            ctx = ApplyContext(self, conn, h, payload)
            with conn.begin_nested():
                handler(ctx)
                for dest, kind, resource, body in ctx.replies:
                    self.enqueue_sync(conn, dest, kind, resource, body)
        except Deferred as e:
            # Not applied and not acknowledged: the sender keeps it and tries again.
            self._log(conn, [{"pkg_id": h.id, "event": "deferred", "peer": h.src,
                              "resource": h.res, "kind": h.kind, "size": len(pkg.wire),
                              "status": "deferred", "reason": str(e)[:500]}])
            raise _StopOrdered() from None
        except PackageError as e:
            self._refuse_custody(conn, pkg, e, acks)
            return
        conn.execute(inbox.insert().values(
            pkg_id=h.id, src=h.src, kind=h.kind, resource=h.res, seq=h.seq, status="applied",
            received_at=time.time(), reason=None, blob=None))
        if h.kind in self.plugins.ordered and h.seq > 0:
            n = conn.execute(seq_in.update().where(seq_in.c.src == h.src,
                                                   seq_in.c.resource == h.res)
                             .values(last_seq=h.seq)).rowcount
            if n == 0:
                conn.execute(seq_in.insert().values(src=h.src, resource=h.res, last_seq=h.seq))
        self._log(conn, [{"pkg_id": h.id, "event": "applied", "peer": h.src,
                          "resource": h.res, "kind": h.kind, "size": len(pkg.wire)}])
        self.counters["applied"] += 1
        acks[h.src].append([h.id, "applied", ""])
        res.after.extend(ctx.after)
        if ctx.replies:
            res.wake_outbox = True

    def _send_receipt(self, dest: str, items: list[list[Any]], res: BatchResult) -> None:
        """Receipts are the acknowledgements themselves: published, not queued, and
        regenerated whenever a duplicate arrives."""
        member = self.directory.get(dest)
        if member is None:
            return
        pkg = envelope.build(suite=self.suite, sign_key=self.identity.sign_key, src=self.id,
                             kind=RECEIPT, rcpt={dest: member.enc_pub}, resource="", seq=0,
                             payload=cbor2.dumps({"acks": items}),
                             ttl_s=self.cfg.delivery.package_ttl_s)
        res.publishes.append((self._topic_for(dest), pkg.wire, pkg.header.id))

    def _on_receipt(self, conn: Connection, pkg: envelope.Package, res: BatchResult) -> None:
        h = pkg.header
        payload = envelope.open_payload(pkg, self.plugins.suites, self.id,
                                        self.identity.enc_key, self.max_pkg)
        try:
            acks = cbor2.loads(payload)["acks"]
        except Exception:
            raise PackageError("malformed", "receipt payload is not readable") from None
        now = time.time()
        entries = []
        ids = [str(a[0]) for a in acks]
        pending = {r.pkg_id: r for r in conn.execute(
            select(outbox.c.pkg_id, outbox.c.dest, outbox.c.kind, outbox.c.resource,
                   outbox.c.size).where(outbox.c.pkg_id.in_(ids), outbox.c.status == "pending",
                                        outbox.c.dest == h.src))}
        settled = []
        for pkg_id, status, reason in acks:
            row = pending.get(pkg_id)
            if row is None:
                continue  # already settled, or not ours to settle
            final = "delivered" if status == "applied" else "refused"
            settled.append({"k": pkg_id, "s": final, "r": reason or None})
            entries.append({"pkg_id": pkg_id, "event": "receipt", "peer": h.src,
                            "resource": row.resource, "kind": row.kind, "size": row.size,
                            "status": final, "reason": reason})
        if settled:
            # The package's bytes are no longer needed once settled; its trace is in the log.
            conn.execute(outbox.update().where(outbox.c.pkg_id == bindparam("k")).values(
                status=bindparam("s"), done_at=now, reason=bindparam("r")), settled)
            conn.execute(outbox_blobs.delete().where(outbox_blobs.c.pkg_id.in_(
                [x["k"] for x in settled])))
        if entries:
            self._log(conn, entries)
            self.counters["receipts"] += len(entries)
        # The peer is reachable again: bring its waiting retries forward.
        n = conn.execute(outbox.update().where(
            outbox.c.status == "pending", outbox.c.dest == h.src, outbox.c.attempts > 0,
            outbox.c.next_attempt > now + 1.0).values(next_attempt=now)).rowcount
        # Settled packages free room in the flow-control window: wake the pump either way.
        res.wake_outbox = res.wake_outbox or bool(n) or bool(settled)

    # --- global configuration and enrolment ---------------------------------------------

    async def _on_gconf(self, blob: bytes) -> None:
        if self.is_center or not blob:
            return
        try:
            changed = await self.db(self._apply_gconf, blob)
        except IdentityError as e:
            log.warning("gconf_refused", reason=str(e))
            return
        if changed:
            log.info("gconf_loaded", version=self.directory.version,
                     members=sorted(self.directory.members))
            self._wake.set()

    async def publish_gconf(self) -> int:
        """Center: sign and publish (retained) a new global configuration version."""
        await self.db(self._directory_from_registry)
        blob, g = await self.db(registry.build_gconf, self.engine, self.identity,
                                self.cfg.gconf.validity_h * 3600,
                                {"host": self.cfg.broker.host, "port": self.cfg.broker.port})
        self._gconf_blob = blob
        self.directory.version = g["version"]
        self.directory.expires = float(g["expires"])
        client = self._client
        if client is not None:
            try:
                await client.publish(self.topics.gconf, blob, qos=1, retain=True)
            except aiomqtt.MqttError as e:
                self.last_error = f"gconf publish failed: {e}"
        log.info("gconf_published", version=g["version"], members=len(g["members"]),
                 revoked=len(g["revoked"]))
        return int(g["version"])

    async def _on_enrol(self, topic: str, payload: bytes) -> None:
        if not self.is_center or topic.endswith("/reply"):
            return
        node_id = topic.rsplit("/", 1)[-1]
        try:
            req = cbor2.loads(payload)
            if not isinstance(req, dict) or req.get("id") != node_id:
                raise IdentityError("enrolment request does not match its topic")
            reply, secret = await self.db(registry.handle_enrol, self.engine, self.identity, req)
        except (IdentityError, PackageError, ValueError, KeyError, TypeError,
                cbor2.CBORDecodeError) as e:
            log.warning("enrol_refused", node=node_id, reason=str(e))
            await self.db(self._log_event, "enrol", node_id, "refused", str(e))
            # Say so at once (unauthenticated: we may not share a secret with the asker),
            # so that the bureau does not wait out its timeout.
            if self._client is not None and self.topics.enrol(node_id) == topic:
                with contextlib.suppress(aiomqtt.MqttError):
                    await self._client.publish(self.topics.enrol_reply(node_id),
                                               cbor2.dumps({"refused": str(e)[:200]}), qos=1)
            return
        reply["ts"] = time.time()
        body = cbor2.dumps(reply, canonical=True)
        msg = cbor2.dumps({"body": body, "mac": idn.enrol_mac(secret, body)})
        await self.db(self._log_event, "enrol", node_id, reply["status"], "")
        log.info("enrol_request", node=node_id, status=reply["status"])
        if self._client is not None:
            await self._client.publish(self.topics.enrol_reply(node_id), msg, qos=1)
        if reply["status"] == "approved":
            await self.publish_gconf()

    def _log_event(self, event: str, peer: str, status: str, reason: str) -> None:
        with self.engine.begin() as conn:
            self._log(conn, [{"event": event, "peer": peer, "kind": "control",
                              "status": status, "reason": reason}])

    # --- status -------------------------------------------------------------------------

    def status_sync(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            depth = conn.execute(select(func.count()).where(outbox.c.status == "pending")) \
                .scalar()
            waiting = conn.execute(select(func.count()).where(inbox.c.status == "waiting")) \
                .scalar()
            prs = [dict(r) for r in conn.execute(select(peers).order_by(peers.c.node_id))
                   .mappings()]
        return {
            "node": self.id, "role": self.role, "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "broker": {"host": self.cfg.broker.host, "port": self.cfg.broker.port,
                       "connected": self._connected.is_set(), "protocol": self._protocol},
            "gconf": {"version": self.directory.version, "expires": self.directory.expires,
                      "valid": self.directory.valid},
            "members": sorted(self.directory.members),
            "outbox_pending": depth, "inbox_waiting": waiting,
            "peers": prs, "counters": dict(self.counters), "last_error": self.last_error,
            "resources": self.sync.status() if getattr(self, "sync", None) else [],
        }

    # --- running ------------------------------------------------------------------------

    async def _mqtt_loop(self) -> None:
        b = self.cfg.broker
        versions = {"5": [aiomqtt.ProtocolVersion.V5], "3.1.1": [aiomqtt.ProtocolVersion.V311],
                    "auto": [aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311]}[b.protocol]
        attempt = 0
        backoff = 0.5
        password, tls = broker_credentials(self.cfg)
        while not self._stop.is_set():
            if len(versions) > 1:
                versions = await self._probe_protocol(versions, password, tls)
                if len(versions) > 1:
                    # Inconclusive (broker down, or it dropped the probe): ask again later
                    # rather than try a 5 connect with properties that may never be answered.
                    log.warning("broker_unreachable", host=b.host, port=b.port,
                                reason=self.last_error)
                    await self._sleep_or_stop(backoff)
                    backoff = min(backoff * 2, 15.0)
                    continue
            proto = versions[attempt % len(versions)]
            kwargs: dict[str, Any] = {}
            if proto == aiomqtt.ProtocolVersion.V5:
                from paho.mqtt.packettypes import PacketTypes
                from paho.mqtt.properties import Properties

                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = b.session_expiry_s
                kwargs.update(clean_start=False, properties=props)
            else:
                kwargs.update(clean_session=False)
            try:
                async with aiomqtt.Client(
                    b.host, b.port, identifier=client_id(self.id, self.identity.sign_pub),
                    protocol=proto,
                    username=b.username, password=password, keepalive=b.keepalive,
                    tls_context=tls, max_inflight_messages=self.cfg.delivery.max_in_flight,
                    socket_options=NODELAY,
                    timeout=30, **kwargs,
                ) as client:
                    self._client = client
                    self._protocol = "5" if proto == aiomqtt.ProtocolVersion.V5 else "3.1.1"
                    versions = [proto]
                    attempt = 0
                    backoff = 0.5
                    subs = [(self.topics.inbox(self.id), 1), (self.topics.gconf, 1)]
                    if self.is_center:
                        subs.append((self.topics.enrol_all, 1))
                    await client.subscribe(subs)
                    self._connected.set()
                    log.info("broker_connected", host=b.host, port=b.port,
                             protocol=self._protocol)
                    if self.is_center:
                        await self.publish_gconf()
                    await self.db(self._retry_all_now)
                    self._wake.set()
                    async for msg in client.messages:
                        await self._inq.put(msg)
            except (aiomqtt.MqttError, OSError) as e:
                was = self._connected.is_set()
                self._connected.clear()
                self._client = None
                self.last_error = f"broker: {e}"
                if was:
                    log.warning("broker_disconnected", reason=str(e))
                else:
                    log.warning("broker_unreachable", host=b.host, port=b.port, reason=str(e))
                attempt += 1
                await self._sleep_or_stop(backoff)
                backoff = min(backoff * 2, 15.0)
            finally:
                self._connected.clear()
                self._client = None

    async def _probe_protocol(self, versions: list[Any], password: str | None,
                              tls: Any) -> list[Any]:
        """'auto': ask the broker with a plain MQTT 5 connect whether it speaks 5 (some
        brokers, amqtt among them, never answer a 5 connect that carries properties)."""
        b = self.cfg.broker
        try:
            async with aiomqtt.Client(b.host, b.port, protocol=aiomqtt.ProtocolVersion.V5,
                                      identifier=client_id(self.id, self.identity.sign_pub)
                                      + "-probe", username=b.username, password=password,
                                      tls_context=tls, timeout=5):
                return [aiomqtt.ProtocolVersion.V5]
        except aiomqtt.MqttCodeError as e:
            if getattr(e, "rc", None) in (1, 132):  # unacceptable / unsupported version
                return [aiomqtt.ProtocolVersion.V311]
            self.last_error = f"broker: {e}"
            return versions
        except aiomqtt.MqttError as e:
            self.last_error = f"broker: {e}"
            return versions

    def _retry_all_now(self) -> None:
        """After a (re)connect, packages that were sent into a dead connection go again."""
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(outbox.update().where(outbox.c.status == "pending",
                                               outbox.c.attempts > 0,
                                               outbox.c.next_attempt > now)
                         .values(next_attempt=now))

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def _periodic(self) -> None:
        while not self._stop.is_set():
            await self._sleep_or_stop(10.0)
            if self._stop.is_set():
                return
            try:
                await self.db(self._expire_outbox)
                if self.is_center:
                    before = set(self.directory.members), set(self.directory.revoked)
                    await self.db(self._directory_from_registry)
                    after = set(self.directory.members), set(self.directory.revoked)
                    stale = self._gconf_blob is None
                    if before != after or stale:
                        await self.publish_gconf()
                elif self.directory.members and not self.directory.valid:
                    log.error("gconf_expired", version=self.directory.version)
            except Exception as e:
                log.error("periodic_failed", error=f"{type(e).__name__}: {e}")

    async def _gconf_refresh(self) -> None:
        while self.is_center and not self._stop.is_set():
            await self._sleep_or_stop(self.cfg.gconf.refresh_h * 3600)
            if not self._stop.is_set():
                await self.publish_gconf()

    def spawn(self, coro: Any, name: str = "") -> asyncio.Task[Any]:
        """Start a background task (for plugins); it is cancelled when the node stops."""
        task = asyncio.get_running_loop().create_task(self._guard(coro, name))
        self._spawned.append(task)
        task.add_done_callback(lambda t: t in self._spawned and self._spawned.remove(t))
        return task

    async def _guard(self, coro: Any, name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.error("task_failed", task=name, error=f"{type(e).__name__}: {e}")

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Run until ``request_stop`` (SIGTERM/SIGINT in ``exnode run``)."""
        from .control import ControlServer

        self._loop = asyncio.get_running_loop()
        await self.db(self.load_directory)
        self.pm.hook.exnode_startup(node=self)
        control = ControlServer(self)
        await control.start()
        tasks = [asyncio.create_task(c) for c in (self._mqtt_loop(), self._outbox_loop(),
                                                  self._inbound_loop(), self._periodic(),
                                                  self._gconf_refresh())]
        tasks += self._spawned
        log.info("node_started", node=self.id, role=self.role, pid=os.getpid(),
                 socket=str(self.cfg.socket_path), members=len(self.directory.members))
        if ready:
            ready()
        try:
            await self._stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await self.flush()
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await control.stop()
            self.pm.hook.exnode_shutdown(node=self)
            self._db.shutdown(wait=True)
            self.engine.dispose()
            log.info("node_stopped", node=self.id)


def broker_credentials(cfg: Config) -> tuple[str | None, Any]:
    """The broker password (from its file) and TLS context that the config asks for."""
    from .errors import ConfigError

    b = cfg.broker
    try:
        password = cfg.resolve(b.password_file).read_text().strip() if b.password_file else None
        tls = None
        if b.tls is not None:
            import ssl

            tls = ssl.create_default_context(cafile=str(cfg.resolve(b.tls.ca)))
            if b.tls.cert:
                tls.load_cert_chain(str(cfg.resolve(b.tls.cert)),
                                    str(cfg.resolve(b.tls.key)) if b.tls.key else None)
            if b.tls.insecure:
                tls.check_hostname = False
    except OSError as e:
        raise ConfigError(f"{cfg.source}: broker credentials: {e.strerror}: "
                          f"{e.filename}") from None
    except ValueError as e:  # ssl.SSLError is an OSError; bad PEM data is a ValueError
        raise ConfigError(f"{cfg.source}: broker TLS files: {e}") from None
    return password, tls


def client_id(node_id: str, sign_pub: bytes) -> str:
    """A stable MQTT client id, unique per node identity (so persistent sessions of two
    nodes that share a name never collide)."""
    import hashlib

    return f"exn-{node_id}-{hashlib.sha256(sign_pub).hexdigest()[:8]}"


def configure_logging(level: str = "info", json: bool = True) -> None:
    """structlog JSON lines on stdout (no secrets or personal data are ever logged)."""
    import logging
    import sys

    lvl = getattr(logging, level.upper())
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.JSONRenderer() if json
                    else structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    # aiomqtt warns about every queue of pending publishes; our own counters say more.
    logging.getLogger("aiomqtt").setLevel(logging.ERROR)
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # aiomqtt's default logger name


def tune_malloc() -> bool:
    """Keep large buffers on glibc's heap instead of a fresh mmap for each.

    A package is copied several times on its way (socket, MQTT decoding, CBOR, crypto);
    with glibc's defaults every copy of a megabyte is a new mapping that is faulted in
    page by page and unmapped again, which measured as half of a node's CPU time for
    1 MiB packages. Returns False where this is not glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)
                    and libc.mallopt(m_trim_threshold, 64 << 20)
                    and libc.mallopt(m_top_pad, 16 << 20))
    except (OSError, AttributeError):
        return False


def run_node(cfg: Config) -> None:
    """``exnode run``: the foreground daemon, stopped cleanly by SIGTERM or SIGINT."""
    configure_logging(cfg.log.level)
    tune_malloc()

    from .control import _answers
    from .errors import ExnodeError

    if _answers(cfg.socket_path):
        raise ExnodeError(f"another exnode is already running on {cfg.socket_path}")

    async def main() -> None:
        node = Node(cfg)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, node.request_stop)
        await node.run()

    asyncio.run(main())
