"""The kernel as its services see it (:class:`KernelAPI`, the one implementation of
``exnode.node.kernel.api.ServiceAPI``), and the status document they add sections to."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Connection, Engine, func, select

from exnode.node.base.config import Config
from exnode.node.base.fmt import ago
from exnode.node.kernel import exlog
from exnode.node.kernel.api import (
    CatalogView,
    DirectoryView,
    PluginRegistry,
    Signer,
    service_signed_message,
)
from exnode.node.kernel.grants import GrantLedger
from exnode.node.kernel.identity import NODE_CERT
from exnode.node.kernel.state import inbox, members, peers

if TYPE_CHECKING:
    from exnode.node.kernel.node import Node

log = structlog.get_logger("exnode")


class NoCatalog:
    """The catalog when no catalog service is loaded: it lists nothing."""

    def entry(self, resource: str) -> dict[str, Any] | None:
        return None

    def entries(self) -> list[dict[str, Any]]:
        return []


class KernelAPI:
    """What a service may do with the node, and nothing more."""

    def __init__(self, node: Node) -> None:
        self._node = node

    @property
    def node_id(self) -> str:
        return self._node.id

    @property
    def role(self) -> str:
        return self._node.cfg.node.role

    @property
    def is_center(self) -> bool:
        return self._node.is_center

    @property
    def center_id(self) -> str:
        return self._node.cfg.center_id

    @property
    def config(self) -> Config:
        return self._node.cfg

    @property
    def directory(self) -> DirectoryView:
        return self._node.members.current

    @property
    def state(self) -> Engine:
        return self._node.engine

    @property
    def started(self) -> float:
        return self._node.started

    @property
    def plugins(self) -> PluginRegistry:
        return self._node.plugins

    @property
    def grants(self) -> GrantLedger:
        return self._node.grants

    @property
    def catalog(self) -> CatalogView:
        return self._node.catalog

    def provide_catalog(self, view: CatalogView) -> None:
        self._node.catalog = view

    async def db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._node.db(fn, *args)

    def enqueue(self, conn: Connection, dest: str, kind: str, resource: str, payload: bytes,
                extra: dict[str, Any] | None = None, ttl_s: int | None = None) -> str:
        return self._node.outbox.enqueue(conn, dest, kind, resource, payload, extra, ttl_s)

    def backlog(self, conn: Connection, kinds: list[str]) -> dict[tuple[str, str],
                                                                  tuple[int, float]]:
        return self._node.outbox.backlog(conn, kinds)

    def waiting(self, conn: Connection) -> dict[tuple[str, str], int]:
        q = (select(inbox.c.src, inbox.c.resource, func.count())
             .where(inbox.c.status == "waiting").group_by(inbox.c.src, inbox.c.resource))
        return {(s, r): int(n) for s, r, n in conn.execute(q)}

    def contacts(self, conn: Connection) -> dict[str, float]:
        return {n: float(t) for n, t in conn.execute(select(peers.c.node_id,
                                                            peers.c.last_contact))}

    def members_since(self, conn: Connection) -> dict[str, float]:
        return {n: float(t) for n, t in conn.execute(
            select(members.c.id, members.c.updated_at).where(members.c.status == "approved"))}

    def notify(self, alert: dict[str, Any]) -> None:
        try:
            self._node.pm.hook.exnode_alert(alert=alert)
        except Exception as e:  # a notification plugin never breaks the monitor
            log.error("alert_hook_failed", alert=alert.get("id"),
                      error=f"{type(e).__name__}: {e}"[:300])

    async def send(self, dest: str, kind: str, resource: str, payload: bytes) -> str:
        return (await self._node.send_many([(dest, kind, resource, payload)]))[0]

    async def send_many(self, items: list[tuple[str, str, str, bytes]]) -> list[str]:
        return await self._node.send_many(items)

    async def submit(self, dest: str, resource: str, item: bytes) -> None:
        await self._node.batcher.submit(dest, resource, item)

    async def flush(self) -> None:
        await self._node.batcher.flush()

    def wake_outbox(self) -> None:
        loop = self._node.loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._node.outbox.wake.set()
        else:
            loop.call_soon_threadsafe(self._node.outbox.wake.set)

    def outbox_depth(self) -> int:
        return self._node.outbox.depth()

    def log(self, conn: Connection, entries: list[dict[str, Any]]) -> None:
        exlog.append(conn, entries, self._node.identity.sign)

    def record_rtt(self, conn: Connection, peer: str, rtt_ms: float) -> None:
        conn.execute(peers.update().where(peers.c.node_id == peer).values(last_rtt_ms=rtt_ms))

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return self._node.spawn(coro, name)

    def running(self, name: str) -> bool:
        return any(t.get_name() == name and not t.done() for t in self._node.spawned)

    def call_soon(self, fn: Callable[[], Any]) -> None:
        loop = self._node.loop
        assert loop is not None, "the node is not running"
        loop.call_soon_threadsafe(fn)

    def sign(self, purpose: str, data: bytes) -> bytes:
        return self._node.identity.sign(service_signed_message(purpose, data))

    @property
    def signer(self) -> Signer:
        ident = self._node.identity
        me = self._node.members.current.members.get(ident.node_id)
        cert = me.cert_der if me is not None and \
            me.sign_pub.public_bytes_raw() == ident.sign_pub else None
        if cert is None:
            p = ident.keys_dir / NODE_CERT
            cert = p.read_bytes() if p.exists() else None
        return Signer(ident.node_id, "Ed25519", ident.sign_pub, cert)


class Status:
    """The status document: the kernel's part, and sections added by services."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self.data: dict[str, Any] = {}

    def add(self, name: str, data: Any, lines: list[str] | None = None) -> None:
        self.data[name] = data
        if lines:
            self.data.setdefault("text", {})[name] = lines

    def problem(self, text: str) -> None:
        self.data.setdefault("problems", []).append(text)

    def kernel(self) -> Status:
        n = self._node
        depth = n.outbox.depth()
        with n.engine.connect() as conn:
            waiting = conn.execute(select(func.count()).where(inbox.c.status == "waiting")) \
                .scalar()
            prs = [dict(r) for r in conn.execute(select(peers).order_by(peers.c.node_id))
                   .mappings()]
        d = n.members.current
        t = n.transport
        self.data.update({
            "node": n.id, "role": n.cfg.node.role, "pid": os.getpid(),
            "uptime_s": round(time.time() - n.started, 1),
            "broker": {"host": n.cfg.broker.host, "port": n.cfg.broker.port,
                       "connected": t.connected.is_set(), "protocol": t.protocol,
                       **({"dynsec": {"accounts": n.broker_access.accounts,
                                      "last_error": n.broker_access.last_error}}
                          if n.broker_access is not None else {})},
            "gconf": {"version": d.version, "expires": d.expires, "valid": d.valid},
            "members": d.ids(),
            "outbox_pending": depth, "inbox_waiting": waiting,
            "peers": prs, "counters": {**n.counters, "inbound_dropped": t.dropped,
                                       "retained_dropped": t.retained_dropped},
            "receiving": {"queued_bytes": t.queued, "reassembly_held_bytes": n._reasm.held,
                          "reassembly_evicted": n._reasm.evicted,
                          "repeat_chunks_skipped": n._reasm.skipped},
            "last_error": t.last_error or n.gconf.last_error
            or (n.broker_access.last_error if n.broker_access is not None else ""),
            "revoked": n.id in d.revoked,
        })
        self.data.setdefault("problems", [])
        if n.id in d.revoked:
            self.problem(f"this node ({n.id}) is revoked by the center: it is no longer a "
                         "member and nothing it sends is accepted")
        if not t.connected.is_set():
            self.problem("broker not connected" + (f": {t.last_error}" if t.last_error
                                                   else ""))
        lag = n.cfg.monitor.lag_after_s
        for st in n.inbox.streams():
            if time.time() - st["since"] > lag:
                gap = st["missing_from"], st["missing_to"]
                self.problem(f"{st['waiting']} package(s) from {st['src']} for "
                             f"{st['resource']} wait for sequence "
                             + (f"{gap[0]}" if gap[0] == gap[1] else f"{gap[0]}-{gap[1]}")
                             + f" since {ago(st['since'])}; if it will not come: exnode "
                             f"inbox skip {st['src']} {st['resource']}, then exnode sync "
                             f"repair {st['resource']} at {st['src']}")
        if not d.valid:
            self.problem("no valid global configuration (gconf)"
                         + (f": {n.gconf.last_error}" if n.gconf.last_error else ""))
        return self
