"""Receiving: authenticate every package, relay the ones for other members still sealed
(center), and take custody of the ones addressed here: exactly once, in sequence order
per (source, resource) for ordered kinds, with the handler's writes, the inbox record
and the replies in one transaction. Runs in the state-DB worker thread."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, func, select

from exnode.node.base.config import Config
from exnode.node.base.errors import Deferred, NotFound, PackageError
from exnode.node.kernel import envelope
from exnode.node.kernel import identity as idn
from exnode.node.kernel.api import ApplyContext, KindSpec
from exnode.node.kernel.directory import Members
from exnode.node.kernel.outbox import EXPRESS_LIMIT, Outbox
from exnode.node.kernel.receipts import RECEIPT, Receipts
from exnode.node.kernel.relay import Relay, check_grant, check_parties
from exnode.node.kernel.state import inbox, peers, seq_in
from exnode.node.kernel.topics import Topics

log = structlog.get_logger("exnode")

Acks = dict[str, list[list[Any]]]
TOUCH_EVERY_S = 1.0


class _StopOrdered(Exception):
    """A package was deferred: apply nothing after it in this (source, resource)."""


@dataclass
class BatchResult:
    """What a processed batch leaves for the event loop: publishes (relayed packages and
    receipts), after-commit callbacks, and whether new packages wait in the outbox."""

    publishes: list[tuple[str, bytes, str]] = field(default_factory=list)  # topic, wire, id
    after: list[Callable[[], None]] = field(default_factory=list)
    wake_outbox: bool = False
    claimed: list[dict[str, Any]] = field(default_factory=list)  # outbox rows to publish


class RefusalMeter:
    """Refusals before authentication, logged with bounded values only (peer ``?``, the
    reason code, the topic it came on, and the package id only when the header decoded
    as valid) and rate-limited: per (reason, topic), the first ``burst`` in a window go
    to the exchange log one by one, the rest as one entry that counts them."""

    def __init__(self, counters: dict[str, int], window_s: float = 10.0,
                 burst: int = 20) -> None:
        self.counters = counters
        self.window_s = window_s
        self.burst = burst
        self._windows: dict[tuple[str, str], list[float]] = {}  # start, seen, bytes

    def refused(self, conn: Connection, log_entries: Any, pkg: envelope.Package | None,
                reason: str, topic: str, size: int) -> None:
        self.counters["refused"] += 1
        self.counters["refused_unauthenticated"] += 1
        now = time.monotonic()
        key = (reason, topic)
        w = self._windows.get(key)
        if w is None or now - w[0] > self.window_s:
            self._close(conn, log_entries, key)
            w = self._windows[key] = [now, 0, 0]
        w[1] += 1
        w[2] += size
        if w[1] > self.burst:
            return
        if w[1] == 1 or w[1] == self.burst:
            log.warning("package_refused", peer="?", reason=reason, topic=topic,
                        note="before authentication" + ("; further ones this window are "
                                                        "counted" if w[1] == self.burst
                                                        else ""))
        log_entries(conn, [{"pkg_id": pkg.header.id if pkg is not None else "",
                            "event": "refused", "peer": "?", "resource": "", "kind": "",
                            "size": size, "status": "refused",
                            "reason": f"{reason} (before authentication, on {topic})"}])

    def flush(self, conn: Connection, log_entries: Any) -> None:
        """Close the windows that have ended (one counting entry each)."""
        now = time.monotonic()
        for key in [k for k, w in self._windows.items() if now - w[0] > self.window_s]:
            self._close(conn, log_entries, key)

    def _close(self, conn: Connection, log_entries: Any, key: tuple[str, str]) -> None:
        w = self._windows.pop(key, None)
        if w is None or w[1] <= self.burst:
            return
        n = int(w[1]) - self.burst
        reason, topic = key
        log.warning("packages_refused", peer="?", reason=reason, topic=topic, count=n)
        log_entries(conn, [{"pkg_id": "", "event": "refused", "peer": "?", "resource": "",
                            "kind": "", "size": int(w[2]), "status": "refused",
                            "reason": f"{reason} x{n} more (before authentication, on "
                                      f"{topic}, within {self.window_s:g} s)"}])


class Inbox:
    def __init__(self, cfg: Config, engine: Engine, identity: idn.Identity,
                 suites: dict[str, Any], kinds: dict[str, KindSpec], members: Members,
                 outbox_: Outbox, receipts: Receipts, relay: Relay, topics: Topics,
                 counters: dict[str, int]) -> None:
        self.cfg = cfg
        self.engine = engine
        self.identity = identity
        self.id = identity.node_id
        self.is_center = cfg.node.role == "center"
        self.suites = suites
        self.kinds = kinds
        self.members = members
        self.outbox = outbox_
        self.receipts = receipts
        self.relay = relay
        self.topics = topics
        self.counters = counters
        self.max_pkg = cfg.delivery.max_package_bytes
        self.meter = RefusalMeter(counters)
        self._touched: dict[str, float] = {}  # peer -> when its last contact was written

    def topic_for(self, dest: str) -> str:
        # Bureaus talk only to the center's inbox; the center writes each bureau's inbox.
        return self.topics.inbox(dest if self.is_center else self.cfg.center_id)

    def _ordered(self, h: envelope.Header) -> bool:
        spec = self.kinds.get(h.kind)
        return spec is not None and spec.ordered and h.seq > 0

    # --- a batch ----------------------------------------------------------------------------

    def process(self, items: list[tuple[bytes, str]]) -> BatchResult:
        """A batch of packages (wire bytes and the topic each came on), each in its own
        savepoint: whatever one package does, or fails to do, never touches another."""
        res = BatchResult()
        acks: Acks = defaultdict(list)
        with self.engine.begin() as conn:
            self.meter.flush(conn, self.outbox.log)
            for wire, topic in items:
                self._one(conn, wire, topic, res, acks)
            self._receipts(acks, res)
            if res.wake_outbox:
                # replies queued by this batch go out with its receipts, after the
                # commit, unless the pump is at work
                claimed = self.outbox.claim_now(conn)
                if claimed is not None:
                    res.claimed = claimed
                    res.wake_outbox = len(claimed) >= EXPRESS_LIMIT
        return res

    def _receipts(self, acks: Acks, res: BatchResult) -> None:
        """One signed receipt per sender for what this batch settled."""
        for src, done in acks.items():
            receipt = self.receipts.build(src, done)
            if receipt is not None:
                res.publishes.append((self.topic_for(src), *receipt))

    @staticmethod
    def _last_seq(conn: Connection, src: str, resource: str) -> int:
        """The last sequence of (src, resource) dealt with here (0: none yet)."""
        return conn.execute(select(seq_in.c.last_seq).where(
            seq_in.c.src == src, seq_in.c.resource == resource)).scalar() or 0

    @staticmethod
    def _set_last_seq(conn: Connection, src: str, resource: str, seq: int) -> None:
        n = conn.execute(seq_in.update().where(seq_in.c.src == src,
                                               seq_in.c.resource == resource)
                         .values(last_seq=seq)).rowcount
        if n == 0:
            conn.execute(seq_in.insert().values(src=src, resource=resource, last_seq=seq))

    def _one(self, conn: Connection, wire: bytes, topic: str, res: BatchResult,
             acks: Acks) -> None:
        pkg: envelope.Package | None = None
        authenticated = False
        mine, my_acks = BatchResult(), defaultdict(list)
        try:
            with conn.begin_nested():
                pkg = envelope.parse(wire, self.max_pkg)
                self._authenticate(pkg)
                authenticated = True
                h = pkg.header
                self._touch_peer(conn, h.src)
                if self.is_center and any(r != self.id for r in h.rcpt):
                    mine.publishes += self.relay.forward(conn, pkg)
                if self.id in h.rcpt:
                    self._custody(conn, pkg, my_acks, mine)
                elif not self.is_center:
                    raise PackageError("misaddressed",
                                       f"addressed to {','.join(h.rcpt)}, not to {self.id}")
        except PackageError as e:
            if authenticated:
                self.log_refusal(conn, pkg, e)
            else:
                self.meter.refused(conn, self.outbox.log, pkg, e.reason, topic, len(wire))
            return
        except Exception as e:  # a poison input, or a bug: this package only
            log.error("package_failed", error=type(e).__name__, authenticated=authenticated)
            err = PackageError("malformed", f"the package could not be processed "
                               f"({type(e).__name__})")
            if not authenticated or pkg is None:
                self.meter.refused(conn, self.outbox.log, pkg, err.reason, topic, len(wire))
            elif self.id in pkg.header.rcpt and pkg.header.kind != RECEIPT:
                self._refuse(conn, pkg, err, acks)  # acknowledged: the sender stops retrying
            else:
                self.log_refusal(conn, pkg, err)
            return
        res.publishes += mine.publishes
        res.after += mine.after
        res.wake_outbox = res.wake_outbox or mine.wake_outbox
        for src, done in my_acks.items():
            acks[src] += done

    def log_refusal(self, conn: Connection, pkg: envelope.Package, e: PackageError) -> None:
        """Log the refusal of an authenticated package (its header can be trusted)."""
        h = pkg.header
        self.counters["refused"] += 1
        log.warning("package_refused", pkg_id=h.id, peer=h.src, reason=e.reason)
        self.outbox.log(conn, [{"pkg_id": h.id, "event": "refused", "peer": h.src,
                                "resource": h.res, "kind": h.kind, "size": len(pkg.wire),
                                "status": "refused", "reason": str(e)[:500]}])

    def _authenticate(self, pkg: envelope.Package) -> idn.Member:
        h = pkg.header
        d = self.members.current
        if h.src in d.revoked:
            raise PackageError("revoked-sender", f"'{h.src}' has been revoked")
        sender = d.get(h.src)
        if sender is None:
            raise PackageError("unknown-sender", f"'{h.src}' is not an approved member")
        envelope.verify(pkg, self.suites, sender.sign_pub)
        return sender

    def _touch_peer(self, conn: Connection, node_id: str) -> None:
        """Record the last contact with a peer, at most once a second per peer (a
        write per package would cost every package an UPDATE)."""
        now = time.time()
        if now - self._touched.get(node_id, 0.0) < TOUCH_EVERY_S:
            return
        self._touched[node_id] = now
        n = conn.execute(peers.update().where(peers.c.node_id == node_id)
                         .values(last_contact=now)).rowcount
        if n == 0:
            conn.execute(peers.insert().values(node_id=node_id, last_contact=now))

    # --- custody ---------------------------------------------------------------------------

    def _custody(self, conn: Connection, pkg: envelope.Package, acks: Acks,
                 res: BatchResult) -> None:
        h = pkg.header
        if h.kind == RECEIPT:
            res.wake_outbox = self.receipts.settle(conn, pkg) or res.wake_outbox
            return
        prev = conn.execute(select(inbox.c.status, inbox.c.reason, inbox.c.received_at)
                            .where(inbox.c.pkg_id == h.id)).first()
        if prev is not None:
            if prev.status == "waiting":
                return
            # A duplicate: acknowledged again, never processed again.
            self.outbox.log(conn, [{"pkg_id": h.id, "event": "duplicate", "peer": h.src,
                                    "resource": h.res, "kind": h.kind, "size": len(pkg.wire),
                                    "status": "duplicate",
                                    "reason": f"already {prev.status}; acknowledged again"}])
            self.counters["duplicates"] += 1
            acks[h.src].append([h.id, prev.status, prev.reason or ""])
            return
        ordered = self._ordered(h)
        if ordered:
            last = self._last_seq(conn, h.src, h.res)
            if h.seq <= last:
                self._refuse(conn, pkg, PackageError(
                    "stale-sequence", f"sequence {h.seq} <= {last} already applied"), acks)
                return
            if h.seq > last + 1:
                self._wait(conn, pkg, last)
                return
        try:
            self._apply(conn, pkg, acks, res)
        except _StopOrdered:
            return
        if ordered:
            self._drain_waiting(conn, h.src, h.res, h.seq, acks, res)

    def _drain_waiting(self, conn: Connection, src: str, resource: str, seq: int, acks: Acks,
                       res: BatchResult) -> None:
        while True:
            nxt = conn.execute(select(inbox.c.pkg_id, inbox.c.blob).where(
                inbox.c.status == "waiting", inbox.c.src == src, inbox.c.resource == resource,
                inbox.c.seq == seq + 1)).first()
            if nxt is None:
                return
            pkg = envelope.parse(nxt.blob, self.max_pkg)
            try:
                # authenticated again: it may have expired, or its sender been revoked,
                # while it waited
                self._authenticate(pkg)
            except PackageError as e:
                conn.execute(inbox.delete().where(inbox.c.pkg_id == nxt.pkg_id))
                self._refuse(conn, pkg, e, acks)
                seq += 1
                continue
            try:
                with conn.begin_nested():
                    conn.execute(inbox.delete().where(inbox.c.pkg_id == nxt.pkg_id))
                    self._apply(conn, pkg, acks, res)
            except _StopOrdered:
                return  # still waiting, still stored
            seq += 1

    def _wait(self, conn: Connection, pkg: envelope.Package, last: int) -> None:
        """Keep a package that came before its turn, within the bounds; beyond them it is
        left unacknowledged and its sender sends it again later."""
        h = pkg.header
        d = self.cfg.delivery
        stream = conn.execute(select(func.count()).where(
            inbox.c.status == "waiting", inbox.c.src == h.src, inbox.c.resource == h.res)) \
            .scalar() or 0
        total = conn.execute(select(func.count()).where(inbox.c.status == "waiting")) \
            .scalar() or 0
        if stream >= d.waiting_per_stream or total >= d.waiting_total:
            self.counters["waiting_full"] += 1
            self.outbox.log(conn, [{"pkg_id": h.id, "event": "deferred", "peer": h.src,
                                    "resource": h.res, "kind": h.kind, "size": len(pkg.wire),
                                    "status": "deferred",
                                    "reason": f"waiting room full ({stream} for this stream, "
                                              f"{total} in all); the sender sends it again"}])
            return
        conn.execute(inbox.insert().values(
            pkg_id=h.id, src=h.src, kind=h.kind, resource=h.res, seq=h.seq, status="waiting",
            received_at=time.time(), reason=f"waiting for {last + 1}", blob=pkg.wire,
            expires=h.expires / 1000))

    def streams(self) -> list[dict[str, Any]]:
        """Ordered streams with packages waiting for an earlier one: the sequence they
        wait for, how many wait and since when."""
        with self.engine.connect() as conn:
            q = (select(inbox.c.src, inbox.c.resource, func.count(), func.min(inbox.c.seq),
                        func.min(inbox.c.received_at))
                 .where(inbox.c.status == "waiting").group_by(inbox.c.src, inbox.c.resource))
            out = []
            for src, rid, n, first, since in conn.execute(q).all():
                last = self._last_seq(conn, src, rid)
                out.append({"src": src, "resource": rid, "waiting": int(n),
                            "missing_from": last + 1, "missing_to": int(first) - 1,
                            "since": since})
        return out

    def skip(self, src: str, resource: str) -> tuple[dict[str, Any], BatchResult]:
        """(operator) Give up on the sequences a stream waits for (they will not come: they
        expired at the sender, or its outbox was lost) and apply what waited behind them.
        Logged; the rows those packages carried are brought back with
        ``exnode sync repair``."""
        res = BatchResult()
        acks: Acks = defaultdict(list)
        with self.engine.begin() as conn:
            first = conn.execute(select(func.min(inbox.c.seq)).where(
                inbox.c.status == "waiting", inbox.c.src == src,
                inbox.c.resource == resource)).scalar()
            if first is None:
                raise NotFound(f"nothing from '{src}' for '{resource}' waits for an earlier "
                                 "sequence")
            last = self._last_seq(conn, src, resource)
            self._set_last_seq(conn, src, resource, first - 1)
            self.outbox.log(conn, [{"pkg_id": "", "event": "skipped", "peer": src,
                                    "resource": resource, "kind": "", "size": 0,
                                    "status": "skipped",
                                    "reason": f"operator skipped sequence {last + 1}"
                                              + (f"-{first - 1}" if first - 1 > last + 1
                                                 else "")}])
            self._drain_waiting(conn, src, resource, first - 1, acks, res)
            applied = self._last_seq(conn, src, resource)
            self._receipts(acks, res)
        return ({"src": src, "resource": resource, "skipped_from": last + 1,
                 "skipped_to": first - 1, "applied_to": applied}, res)

    def expire_waiting(self) -> int:
        """Drop waiting packages whose lifetime ended (their sender has given up on them
        too); returns how many."""
        now = time.time()
        with self.engine.begin() as conn:
            gone = conn.execute(select(inbox.c.pkg_id, inbox.c.src, inbox.c.kind,
                                       inbox.c.resource).where(
                inbox.c.status == "waiting", inbox.c.expires < now).limit(10_000)).all()
            if not gone:
                return 0
            conn.execute(inbox.update().where(inbox.c.pkg_id.in_([g.pkg_id for g in gone]))
                         .values(status="expired", blob=None,
                                 reason="expired while waiting for an earlier sequence"))
            self.outbox.log(conn, [{"pkg_id": g.pkg_id, "event": "expired", "peer": g.src,
                                    "resource": g.resource, "kind": g.kind, "size": 0,
                                    "status": "expired",
                                    "reason": "expired while waiting for an earlier sequence"}
                                   for g in gone])
        return len(gone)

    def _advance(self, conn: Connection, h: envelope.Header) -> None:
        """An ordered stream has dealt with ``h.seq`` (applied or refused for good)."""
        if not self._ordered(h):
            return
        self._set_last_seq(conn, h.src, h.res, h.seq)

    def _refuse(self, conn: Connection, pkg: envelope.Package, e: PackageError,
                acks: Acks) -> None:
        h = pkg.header
        conn.execute(inbox.insert().values(
            pkg_id=h.id, src=h.src, kind=h.kind, resource=h.res, seq=h.seq, status="refused",
            received_at=time.time(), reason=str(e)[:500], blob=None))
        self.log_refusal(conn, pkg, e)
        acks[h.src].append([h.id, "refused", str(e)[:500]])

    def _authorize(self, spec: KindSpec, h: envelope.Header) -> None:
        """Authority at the recipient, before any handler: the kind's roles, and a kind
        the center never relays comes to a bureau only from the center."""
        center = self.cfg.center_id
        check_parties(spec, h.src, [self.id], center)
        check_grant(spec, h, [self.id], self.relay.grants)
        if not spec.relay and not self.is_center and h.src != center:
            raise PackageError("not-from-center", f"'{h.kind}' packages come to a bureau "
                               f"only from the center, not from {h.src}")

    def _apply(self, conn: Connection, pkg: envelope.Package, acks: Acks,
               res: BatchResult) -> None:
        h = pkg.header
        try:
            spec = self.kinds.get(h.kind)
            if spec is None:
                raise PackageError("unknown-kind", f"no handler for kind '{h.kind}'")
            self._authorize(spec, h)
            payload = envelope.open_payload(pkg, self.suites, self.id,
                                            self.identity.enc_key, self.max_pkg)
            ctx = ApplyContext(conn, h, payload)
            with conn.begin_nested():
                spec.handler(ctx)
                for dest, kind, resource, body in ctx.replies:
                    self.outbox.enqueue(conn, dest, kind, resource, body)
        except Deferred as e:
            # Not applied and not acknowledged: the sender keeps it and tries again.
            self.outbox.log(conn, [{"pkg_id": h.id, "event": "deferred", "peer": h.src,
                                    "resource": h.res, "kind": h.kind, "size": len(pkg.wire),
                                    "status": "deferred", "reason": str(e)[:500]}])
            raise _StopOrdered() from None
        except Exception as e:
            # Refused for good (and acknowledged, so the sender stops): in an ordered
            # stream the next package must not wait for this one for ever, so the stream
            # moves past it. The refusal is logged and goes back to the sender.
            if not isinstance(e, PackageError):  # a poison input, or a bug
                log.error("package_failed", kind=h.kind, error=type(e).__name__,
                          authenticated=True)
                e = PackageError("malformed", f"the package could not be processed "
                                 f"({type(e).__name__})")
            self._refuse(conn, pkg, e, acks)
            self._advance(conn, h)
            return
        conn.execute(inbox.insert().values(
            pkg_id=h.id, src=h.src, kind=h.kind, resource=h.res, seq=h.seq, status="applied",
            received_at=time.time(), reason=None, blob=None))
        self._advance(conn, h)
        self.outbox.log(conn, [{"pkg_id": h.id, "event": "applied", "peer": h.src,
                                "resource": h.res, "kind": h.kind, "size": len(pkg.wire)}])
        self.counters["applied"] += 1
        acks[h.src].append([h.id, "applied", ""])
        res.after.extend(ctx.after)
        if ctx.replies:
            res.wake_outbox = True
