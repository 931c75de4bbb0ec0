"""The node: it only composes the kernel's parts and the services the plugins bring.

Data flows one way through a node: ``send`` (seal, sign, write to the outbox) -> the
outbox pump (publish, republish with backoff until a signed receipt) -> the transport.
On the receiving side: transport -> reassembly -> the inbox (authenticate, relay still
sealed, or take custody and apply exactly once) -> receipts back to the sender.

All state-DB work runs in one worker thread so the event loop stays free for the broker
and the control API.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from exnode.node.base.config import Config
from exnode.node.base.errors import ConfigError, NotFound, PackageError, UsageError
from exnode.node.kernel import dynsec, exlog
from exnode.node.kernel import identity as idn
from exnode.node.kernel.api import CatalogView, ControlRequest, KindSpec, Router
from exnode.node.kernel.batching import Batcher
from exnode.node.kernel.directory import Enrolment, Gconf, Members
from exnode.node.kernel.framing import Reassembler
from exnode.node.kernel.grants import GrantLedger
from exnode.node.kernel.inbox import BatchResult, Inbox
from exnode.node.kernel.login import LoginRotation
from exnode.node.kernel.outbox import EXPRESS_LIMIT, Outbox
from exnode.node.kernel.receipts import Receipts
from exnode.node.kernel.relay import Relay
from exnode.node.kernel.services import KernelAPI, NoCatalog, Status
from exnode.node.kernel.state import open_state
from exnode.node.kernel.topics import Topics
from exnode.node.kernel.tracing import TRACE, Tracer
from exnode.node.kernel.transport import Transport, client_id, sleep_or_stop
from exnode.node.kernel.witness import LOG_HEAD, Witness, require_bureau

log = structlog.get_logger("exnode")

class Node:
    """A running exnode: identity, state DB, plugins, broker connection."""

    def __init__(self, cfg: Config) -> None:
        from exnode.plugins.manager import Registry, make_manager

        self.cfg = cfg
        self.id = cfg.node.id
        self.is_center = cfg.node.role == "center"
        self.identity = idn.Identity(self.id, cfg.keys_dir)
        self.pm = make_manager(cfg.plugins.disable)
        self.plugins = Registry(self.pm)
        missing = [s for s in cfg.crypto.suites if s not in self.plugins.suites]
        if missing:
            raise ConfigError(f"{cfg.source}: crypto.suites: {', '.join(missing)} not loaded "
                              f"(loaded: {', '.join(sorted(self.plugins.suites)) or 'none'}; "
                              "a plugin disabled?)")
        # Only the allowed suites open and verify packages: a header cannot pick another.
        self.suites = {s: self.plugins.suites[s] for s in cfg.crypto.suites}
        suite = self.suites[cfg.crypto.suites[0]]
        self.engine = open_state(cfg.state_url)
        self.topics = Topics(cfg.broker.topic_prefix)
        self.counters: dict[str, int] = defaultdict(int)
        self.started = time.time()
        self.stop = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.spawned: list[asyncio.Task[Any]] = []
        self._db = ThreadPoolExecutor(1, thread_name_prefix="exnode-db")
        self.members = Members(cfg, self.identity, self.engine)
        self.outbox = Outbox(cfg, self.engine, self.identity, suite, self.members,
                             lambda kind: kind in self.plugins.ordered, self.counters)
        self.receipts = Receipts(cfg, self.identity, suite, self.suites, self.members,
                                 self.outbox.log, self.counters)
        self.receipts.window_waiting = lambda: self.outbox.held_back
        self.catalog: CatalogView = NoCatalog()
        self.grants = GrantLedger(self.engine)
        self.grants.load()
        self.relay = relay = Relay(self.id, self.members, self.topics, self.outbox.log,
                                   self.counters, self.plugins.kinds, self.grants)
        self.inbox = Inbox(cfg, self.engine, self.identity, self.suites,
                           self.plugins.kinds, self.members, self.outbox, self.receipts,
                           relay, self.topics, self.counters)
        subs = [self.topics.inbox(self.id), self.topics.gconf]
        if self.is_center:
            subs.append(self.topics.enrol_all)
        if self.is_center and cfg.broker.dynsec:
            subs.append(dynsec.RESPONSE)
        # Nothing retained is taken from the inbox: whoever may write there could leave
        # a message for the broker to hand over again at every subscribe.
        self.transport = Transport(cfg, client_id(self.id, cfg.broker.topic_prefix), subs,
                                   self._connected, cfg.delivery.max_in_flight,
                                   live_only=[self.topics.inbox(self.id)])
        self.outbox.connected = self.transport.connected.is_set
        self.broker_access: dynsec.BrokerAccess | None = None
        if self.is_center and cfg.broker.dynsec:
            self.broker_access = dynsec.BrokerAccess(
                self.id, cfg.broker.username, self.topics, self.transport.publish, self.db,
                self.engine, self.transport.connected)
        self.gconf = Gconf(cfg, self.members, self.db, self.transport.publish, self.topics,
                           self.outbox.wake.set)
        self.enrolment = Enrolment(self.members, self.gconf, self.db, self.transport.publish,
                                   self.topics, self._log_event, self.counters,
                                   self._enrolled)
        self.batcher = Batcher(self.send_many, cfg.delivery.batch_bytes,
                               cfg.delivery.batch_linger_ms)
        self.tracer = Tracer()
        self.witness = Witness(cfg, self.engine, self.identity, self.members, self.outbox.log,
                               self.counters)
        self.login = LoginRotation(cfg, self.engine, self.broker_access.set_password
                                   if self.broker_access is not None else None, self.spawn)
        self._publishing: asyncio.Task[None] | None = None
        self._reasm = Reassembler(cfg.delivery.max_package_bytes, self._authenticate_chunks,
                                  skip=relay.holds if self.is_center else None)
        self.api = KernelAPI(self)

    # --- small helpers ---------------------------------------------------------------------

    async def db(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the state-DB worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    def _log_event(self, event: str, peer: str, status: str, reason: str) -> None:
        with self.engine.begin() as conn:
            exlog.append(conn, [{"event": event, "peer": peer, "kind": "control",
                                 "status": status, "reason": reason}], self.identity.sign)

    async def send_many(self, items: list[tuple[str, str, str, bytes]]) -> list[str]:
        """Queue packages in one transaction; returns their ids once in the outbox."""
        ids, claimed = await self.db(self.outbox.enqueue_claim, items)
        if claimed is None or len(claimed) >= EXPRESS_LIMIT:
            self.outbox.wake.set()
        if claimed:
            # published from here, not by the pump: one turn in the state-DB thread less
            self._publishing = asyncio.get_running_loop().create_task(
                self._publish_after(self._publishing, [], claimed))
        return list(ids)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Task[Any]:
        """A background task; it is cancelled when the node stops."""
        task = asyncio.get_running_loop().create_task(self._guard(coro, name), name=name)
        self.spawned.append(task)
        task.add_done_callback(lambda t: t in self.spawned and self.spawned.remove(t))
        return task

    @staticmethod
    async def _guard(coro: Coroutine[Any, Any, Any], name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.error("task_failed", task=name, error=f"{type(e).__name__}: {e}")

    # --- composing ------------------------------------------------------------------------

    def compose(self) -> None:
        """Create every plugin's per-node service and collect the package kinds."""
        for svc in self.pm.hook.exnode_services(api=self.api):
            if svc is not None:
                self.pm.register(svc, name=f"service:{type(svc).__module__}")
        self.plugins.collect_kinds(KindSpec)
        for spec in [*self.witness.kinds(), *self.login.kinds(),
                     *self.tracer.kinds()]:  # the kernel's own kinds
            if spec.name in self.plugins.kinds:
                raise ConfigError(f"package kind '{spec.name}' is the kernel's; a plugin "
                                  "may not register it")
            self.plugins.kinds[spec.name] = spec

    async def start(self) -> None:
        """Load the directory, compose the services, run their startup hooks."""
        self.loop = asyncio.get_running_loop()
        await self.db(self.members.load)
        self.compose()
        self.pm.hook.exnode_startup(api=self.api)

    def add_routes(self, router: Router) -> None:
        """The kernel's control routes, then every service's."""
        router.get("/status", self._status_route)
        router.post("/gconf/publish", self._gconf_route)
        router.post("/nodes/invite", self._invite_route)
        router.post("/log/witness", self._witness_route)
        router.get("/log/witnesses", self._witnesses_route)
        router.get("/inbox/streams", self._streams_route)
        router.post("/inbox/skip", self._skip_route)
        router.get("/log", self._log_route)
        router.get("/log/trace/{pkg}", self._trace_route)
        router.get("/log/stats", self._log_stats_route)
        router.get("/outbox/backlog", self._backlog_route)
        self.pm.hook.exnode_control_routes(router=router)

    async def _backlog_route(self, _req: ControlRequest) -> Any:
        """Per destination: packages waiting for their receipt, and the oldest's time."""
        return await self.db(self.outbox.backlog_by_dest)

    async def _log_route(self, req: ControlRequest) -> Any:
        q = req.query
        try:
            limit = max(1, min(int(q.get("limit", "100")), 10_000))
            since = float(q["since"]) if q.get("since") else None
            before = int(q["before"]) if q.get("before") else None
        except ValueError:
            raise UsageError("bad request: limit, since and before are numbers") from None
        return await self.db(self._read, exlog.listing, q.get("peer") or None,
                             q.get("resource") or None, since,
                             [k for k in q.get("kind", "").split(",") if k],
                             [e for e in q.get("event", "").split(",") if e], limit, before)

    def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """(state-DB thread) ``fn(conn, *args)`` on a connection of the state DB."""
        with self.engine.connect() as conn:
            return fn(conn, *args)

    async def _trace_route(self, req: ControlRequest) -> Any:
        """A package's trace here; with ``?hops=1`` at a bureau, the center's hop too
        (``hops``: this node's entries, then the center's, or the center's error)."""
        pkg = req.params["pkg"].strip().lower()[:36]
        out = await self.db(self._read, exlog.trace, pkg)
        if out is None:
            raise NotFound(f"package {pkg} is not known to this node")
        if req.query.get("hops") in ("1", "true"):
            hops: list[dict[str, Any]] = [{"node": self.id, "trace": out["trace"]}]
            if not self.is_center:
                hops.append(await self._center_trace(pkg))
            out["hops"] = hops
        return out

    async def _center_trace(self, pkg: str, timeout: float = 10.0) -> dict[str, Any]:
        qid, payload, fut = self.tracer.ask(pkg)
        try:
            await self.send_many([(self.cfg.center_id, TRACE, "", payload)])
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return {"node": self.cfg.center_id, "trace": [],
                    "error": f"the center did not answer within {timeout:g} s"}
        finally:
            self.tracer.forget(qid)

    async def _log_stats_route(self, req: ControlRequest) -> Any:
        try:
            days = max(1, min(int(req.query.get("days", "30")), 366))
        except ValueError:
            raise UsageError("bad request: days is a number") from None
        return await self.db(self._read, exlog.stats, time.time() - days * 86400)

    async def _streams_route(self, _req: ControlRequest) -> Any:
        return await self.db(self.inbox.streams)

    async def _skip_route(self, req: ControlRequest) -> Any:
        out, res = await self.db(self.inbox.skip, req.arg("src"), req.arg("resource"))
        self._after_batch(res)
        return out

    async def _status_route(self, _req: ControlRequest) -> Any:
        return await self.db(self.status)

    async def _gconf_route(self, _req: ControlRequest) -> Any:
        """(center) The registry changed: publish the global configuration and, with
        broker.dynsec, bring the broker accounts in line before answering (so that when
        'nodes revoke' returns, the member is disconnected and cannot log in)."""
        if not self.is_center:
            raise UsageError("only the center publishes the global configuration")
        out: dict[str, Any] = {"version": await self.gconf.publish()}
        if self.broker_access is not None:
            out["broker"] = await self.broker_access.reconcile()
        return out

    async def _invite_route(self, req: ControlRequest) -> Any:
        """(center, broker.dynsec) Record an invitation and create the node's broker
        account; the answer has what the token needs."""
        from exnode.node.kernel import registry

        access = dynsec.require(self.broker_access)
        node_id = req.arg("node")
        ttl_s = req.arg("ttl_s", float)
        approve = bool(req.arg("approve", bool, False))
        secret = await self.db(registry.invite, self.engine, self.id, node_id, ttl_s, approve,
                               bool(req.arg("readmit", bool, False)))
        try:
            password = await access.create(node_id)
        except Exception:
            await self.db(registry.forget_invite, self.engine, node_id)
            raise
        return {"node": node_id, "secret": secret.hex(), "broker_password": password}

    async def _witness_route(self, req: ControlRequest) -> Any:
        """(bureau) Send the log head to the center now; answer what the center keeps."""
        require_bureau(self.cfg)
        timeout = req.arg("timeout", float, 15.0)
        head = await self.db(self.witness.keep_file)
        if head is None:
            return {"id": 0}
        fut = self.witness.waiter()
        try:
            await self.send_many([(self.cfg.center_id, LOG_HEAD, "",
                                   self.witness.payload(head))])
            got = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TimeoutError(f"the center did not answer within {timeout:g} s") from None
        finally:
            self.witness.forget(fut)
        return {"id": got.id, "hash": got.hash, "sent": head.id}

    async def _witnesses_route(self, _req: ControlRequest) -> Any:
        if not self.is_center:
            raise UsageError("only the center keeps witnesses of the members' logs")
        return {"witnesses": await self.db(self.witness.witnesses)}

    def status(self) -> dict[str, Any]:
        """(state-DB thread) The node's status, with every service's sections."""
        st = Status(self).kernel()
        self.pm.hook.exnode_status_sections(status=st)
        return st.data

    # --- running -----------------------------------------------------------------------------

    def _enrolled(self) -> None:
        """(center) An enrolment was answered: the registry changed. The broker account
        follows a moment later: a change of its roles disconnects the bureau, which must
        have had the answer first."""
        if self.broker_access is not None and self.loop is not None:
            self.loop.call_later(1.0, self.broker_access.wake.set)

    async def _connected(self) -> None:
        if self.broker_access is not None:
            self.broker_access.wake.set()
        if self.is_center:
            await self.gconf.publish()
        await self.db(self.outbox.retry_all_now)
        self.outbox.wake.set()

    async def _receive(self) -> None:
        tr = self.transport
        while not self.stop.is_set():
            msgs = [await tr.get()]
            while len(msgs) < 256 and (m := tr.get_nowait()) is not None:
                msgs.append(m)
            wires: list[tuple[bytes, str]] = []
            msgs.reverse()
            while msgs:  # let go of each message once it is taken (chunks are large)
                topic, payload = msgs.pop()
                try:
                    if topic == self.topics.gconf:
                        await self.gconf.received(payload)
                    elif topic == dynsec.RESPONSE and self.broker_access is not None:
                        self.broker_access.received(payload)
                    elif self.topics.is_enrol(topic):
                        await self.enrolment.received(topic, payload)
                    else:
                        wire = self._reasm.feed(payload)
                        if wire is not None:
                            wires.append((wire, topic))
                except PackageError as e:
                    await self.db(self._refused_frame, e.reason, topic, len(payload))
                except Exception as e:  # never let one bad message stop the node
                    log.error("message_failed", topic=topic, error=f"{type(e).__name__}: {e}")
            if wires:
                await self._process(wires)

    def _authenticate_chunks(self, by: str, sig: bytes, message: bytes) -> None:
        """A chunk claim is signed by an approved member, or nothing of it is kept."""
        member = self.members.current.get(by)
        if member is None:
            raise PackageError("unknown-sender", "chunks from a node that is not a member")
        self.outbox.suite.verify(member.sign_pub, sig, message)

    def _refused_frame(self, reason: str, topic: str, size: int) -> None:
        with self.engine.begin() as conn:
            self.inbox.meter.refused(conn, self.outbox.log, None, reason, topic, size)

    async def _process(self, wires: list[tuple[bytes, str]]) -> None:
        try:
            res: BatchResult = await self.db(self.inbox.process, wires)
        except Exception as e:
            log.error("batch_failed", error=f"{type(e).__name__}: {e}", n=len(wires))
            return
        self._after_batch(res)

    def _after_batch(self, res: BatchResult) -> None:
        for fn in res.after:
            try:
                fn()
            except Exception as e:
                log.error("after_commit_failed", error=str(e))
        if res.publishes or res.claimed:
            # Relays, receipts and replies go out in a task of their own, one batch after
            # the other, so that receiving goes on meanwhile: the transport may stop
            # reading the socket while its queue is full, and the acknowledgements of
            # these publishes come in on that socket.
            self._publishing = asyncio.get_running_loop().create_task(
                self._publish_after(self._publishing, res.publishes, res.claimed))
        if res.wake_outbox:
            self.outbox.wake.set()

    async def _publish_after(self, before: asyncio.Task[None] | None,
                             publishes: list[tuple[str, bytes, str]],
                             claimed: list[dict[str, Any]]) -> None:
        if before is not None:
            with contextlib.suppress(Exception):
                await before
        try:
            if claimed:
                await self.outbox.send_claimed(self.transport, self.inbox.topic_for,
                                               self.db, claimed)
            if publishes:
                await self.outbox.publish(self.transport, publishes)
        except Exception as e:
            log.error("publish_failed", error=f"{type(e).__name__}: {e}")
        finally:
            self.relay.sent([pkg_id for _topic, _wire, pkg_id in publishes])

    async def _periodic(self) -> None:
        refresh = self.cfg.gconf.refresh_h * 3600
        last_refresh = time.time()
        while not self.stop.is_set():
            await sleep_or_stop(self.stop, 10.0)
            if self.stop.is_set():
                return
            try:
                await self.db(self.outbox.expire)
                await self.db(self.inbox.expire_waiting)
                if self.broker_access is not None and self.transport.connected.is_set():
                    approved = [m for m in self.members.current.ids() if m != self.id]
                    due = await self.db(self.login.due, approved)
                    if due:
                        await self.send_many(due)
                head = await self.db(self.witness.keep_file)
                if self.witness.due(head, time.time()) and head is not None:
                    await self.send_many([(self.cfg.center_id, LOG_HEAD, "",
                                           self.witness.payload(head))])
                await self.gconf.periodic()
                if self.is_center and time.time() - last_refresh >= refresh:
                    last_refresh = time.time()
                    await self.gconf.publish()
            except Exception as e:
                log.error("periodic_failed", error=f"{type(e).__name__}: {e}")

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Run until ``stop`` is set (SIGTERM/SIGINT in ``exnode run``)."""
        tasks = [asyncio.create_task(c) for c in (
            self.transport.run(self.stop),
            self.outbox.pump(self.transport, self.inbox.topic_for, self.db, self.stop),
            self._receive(), self._periodic())]
        if self.broker_access is not None:
            tasks.append(asyncio.create_task(self.broker_access.run(self.transport.connected)))
        log.info("node_started", node=self.id, role=self.cfg.node.role, pid=os.getpid(),
                 socket=str(self.cfg.socket_path), members=len(self.members.current.members))
        if ready:
            ready()
        try:
            await self.stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await self.batcher.flush()
            if self._publishing is not None:
                tasks.append(self._publishing)
            for t in tasks + self.spawned:
                t.cancel()
            for t in tasks + self.spawned:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    def close(self) -> None:
        """After :meth:`run`: the services' shutdown hooks, then the state DB."""
        self.pm.hook.exnode_shutdown(api=self.api)
        self._db.shutdown(wait=True)
        try:
            self.witness.keep_file()
        except Exception as e:
            log.error("log_head_file_failed", error=f"{type(e).__name__}: {e}")
        self.engine.dispose()
        log.info("node_stopped", node=self.id)
