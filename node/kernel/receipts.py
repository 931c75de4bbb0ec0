"""Receipts: the final recipient's signed acknowledgements, and settling the outbox when
they arrive. Receipts are published, not queued, and made again whenever a duplicate
arrives, so they need no outbox of their own."""

from __future__ import annotations

import time
from typing import Any

import cbor2
from sqlalchemy import Connection, bindparam, select

from exnode.node.base.config import Config
from exnode.node.base.errors import PackageError
from exnode.node.kernel import envelope
from exnode.node.kernel import identity as idn
from exnode.node.kernel.directory import Members
from exnode.node.kernel.relay import RECEIPT
from exnode.node.kernel.state import outbox, outbox_blobs

__all__ = ["RECEIPT", "Receipts"]


class Receipts:
    def __init__(self, cfg: Config, identity: idn.Identity, suite: Any, suites: dict[str, Any],
                 members: Members, log: Any, counters: dict[str, int]) -> None:
        self.cfg = cfg
        self.identity = identity
        self.suite = suite
        self.suites = suites
        self.members = members
        self.log = log
        self.counters = counters
        # whether packages wait for room in the flow-control window (the outbox says)
        self.window_waiting: Any = lambda: True

    def build(self, dest: str, items: list[list[Any]]) -> tuple[bytes, str] | None:
        """A signed receipt for ``dest`` acknowledging ``items`` ([id, status, reason])."""
        member = self.members.current.get(dest)
        if member is None:
            return None
        pkg = envelope.build(suite=self.suite, sign_key=self.identity.sign_key,
                             src=self.identity.node_id, kind=RECEIPT,
                             rcpt={dest: member.enc_pub}, resource="", seq=0,
                             payload=cbor2.dumps({"acks": items}),
                             ttl_s=self.cfg.delivery.package_ttl_s)
        return pkg.wire, pkg.header.id

    def settle(self, conn: Connection, pkg: envelope.Package) -> bool:
        """Settle the outbox rows a receipt acknowledges; True if the pump should wake."""
        h = pkg.header
        payload = envelope.open_payload(pkg, self.suites, self.identity.node_id,
                                        self.identity.enc_key,
                                        self.cfg.delivery.max_package_bytes)
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
            self.log(conn, entries)
            self.counters["receipts"] += len(entries)
        # The peer is reachable again: bring its waiting retries forward.
        n = conn.execute(outbox.update().where(
            outbox.c.status == "pending", outbox.c.dest == h.src, outbox.c.attempts > 0,
            outbox.c.next_attempt > now + 1.0).values(next_attempt=now)).rowcount
        # Settled packages free room in the flow-control window: wake the pump if
        # packages wait for that room.
        return bool(n) or (bool(settled) and bool(self.window_waiting()))
