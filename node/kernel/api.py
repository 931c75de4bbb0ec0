"""The narrow, typed interface between the exchange kernel and its services.

A service (a built-in or third-party plugin) never sees the ``Node``. It gets:

- :class:`ServiceAPI` when the node composes its services (``exnode_services``): send
  and reply, exchange-log entries, state-DB access, the node's configuration and the
  directory of members;
- :class:`ApplyContext` in each package handler;
- :class:`Router` to add control routes and :class:`ControlRequest` in each of them;
- :class:`StatusBuilder` for its section of ``exnode status``;
- :class:`CommandContext` (``click``'s ``ctx.obj``) in its CLI commands.

Everything here is data classes and protocols; the kernel and the app implement them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import cbor2

from exnode.node.base.config import Config
from exnode.node.base.errors import NotFound, PackageError, Refused

if TYPE_CHECKING:  # SQLAlchemy only in annotations: a CLI command starts without it
    from sqlalchemy import Connection, Engine, MetaData

    from exnode.node.kernel.envelope import Header
    from exnode.node.kernel.grants import GrantLedger

Party = Literal["center", "bureau", "any"]


# --- package kinds -------------------------------------------------------------------------

@dataclass(frozen=True)
class KindSpec:
    """A package kind and its rules.

    ``senders``/``recipients``: which role may send the kind, and to which role
    ("center", "bureau" or "any"). ``relay``: whether the center forwards it from one
    bureau to another, still sealed. ``ordered``: packages of the kind are applied in
    sequence order per (source, resource). ``grant``: the service whose grant on the
    package's resource is needed (``query``, ``verify``...), held by the sender
    (``grant_of="sender"``, a request) or by every recipient (``"recipient"``, an answer);
    the kernel checks it when the center relays the package and again at the recipient.
    """

    name: str
    handler: Callable[[ApplyContext], None]
    ordered: bool = False
    senders: Party = "any"
    recipients: Party = "any"
    relay: bool = True
    grant: str | None = None
    grant_of: Literal["sender", "recipient"] = "sender"


@dataclass
class ApplyContext:
    """What a package-kind handler gets. It runs in the state-DB worker thread inside the
    transaction that records the package as applied: whatever it writes through
    ``conn``, and every package it queues with ``reply``/``send``, commits exactly once
    with that record."""

    conn: Connection
    header: Header
    payload: bytes
    replies: list[tuple[str, str, str, bytes]] = field(default_factory=list)
    after: list[Callable[[], None]] = field(default_factory=list)

    def reply(self, kind: str, payload: bytes, resource: str | None = None) -> None:
        """Queue a package back to the sender (same transaction)."""
        self.send(self.header.src, kind, payload, resource)

    def send(self, dest: str, kind: str, payload: bytes, resource: str | None = None) -> None:
        """Queue a package to any member (same transaction)."""
        self.replies.append((dest, kind, self.header.res if resource is None else resource,
                             payload))

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (in the event loop's thread) once the transaction has committed."""
        self.after.append(fn)


# --- state tables ----------------------------------------------------------------------------

@dataclass(frozen=True)
class StateTables:
    """A service's own tables in the state DB: its SQLAlchemy ``metadata`` and the folder
    of its Alembic revisions (a branch of its own, labelled ``name``)."""

    name: str
    metadata: MetaData
    versions: Path


# --- the kernel as a service sees it ---------------------------------------------------------

class DirectoryView(Protocol):
    """Who the members are (from the signed global configuration or the registry)."""

    version: int
    revoked: set[str]

    @property
    def valid(self) -> bool: ...

    def ids(self) -> list[str]: ...

    def has(self, node_id: str) -> bool: ...


class ServiceAPI(Protocol):
    """The kernel as a service sees it."""

    @property
    def node_id(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def is_center(self) -> bool: ...

    @property
    def center_id(self) -> str: ...

    @property
    def config(self) -> Config: ...

    @property
    def directory(self) -> DirectoryView: ...

    @property
    def state(self) -> Engine:
        """The state DB (use it in the state-DB thread: see :meth:`db`)."""
        ...

    @property
    def started(self) -> float: ...

    @property
    def plugins(self) -> PluginRegistry: ...

    @property
    def grants(self) -> GrantLedger:
        """The grants this node knows (目录授权): check them before reading data for
        anyone; the access service writes them."""
        ...

    @property
    def catalog(self) -> CatalogView:
        """The catalog as the catalog service keeps it (empty when it is not loaded)."""
        ...

    def provide_catalog(self, view: CatalogView) -> None:
        """(the catalog service) Be the catalog other services read."""
        ...

    async def db(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the state-DB worker thread (one writer, in order)."""
        ...

    def enqueue(self, conn: Connection, dest: str, kind: str, resource: str, payload: bytes,
                extra: dict[str, Any] | None = None, ttl_s: int | None = None) -> str:
        """Seal, sign and queue a package inside ``conn``'s transaction; returns its id.
        ``ttl_s`` gives it a shorter lifetime than ``delivery.package_ttl_s``."""
        ...

    def backlog(self, conn: Connection, kinds: list[str]) -> dict[tuple[str, str],
                                                                  tuple[int, float]]:
        """(dest, resource) -> how many packages of ``kinds`` wait for their receipt, and
        when the oldest of them was queued."""
        ...

    def waiting(self, conn: Connection) -> dict[tuple[str, str], int]:
        """(source, resource) -> packages received early, waiting for an earlier one."""
        ...

    def contacts(self, conn: Connection) -> dict[str, float]:
        """node -> when anything (a package, a receipt) last came from it."""
        ...

    def members_since(self, conn: Connection) -> dict[str, float]:
        """(center) approved member -> when it was approved (or last changed in the
        registry)."""
        ...

    def notify(self, alert: dict[str, Any]) -> None:
        """Hand a new alert to the notification plugins (the ``exnode_alert`` hook; in the
        event loop's thread). A plugin's failure is logged, never raised here."""
        ...

    async def send(self, dest: str, kind: str, resource: str, payload: bytes) -> str: ...

    async def send_many(self, items: list[tuple[str, str, str, bytes]]) -> list[str]: ...

    async def submit(self, dest: str, resource: str, item: bytes) -> None:
        """Queue one small message; messages are packed into ``data`` packages."""
        ...

    async def flush(self) -> None: ...

    def wake_outbox(self) -> None:
        """New packages are in the outbox: publish them now (thread-safe)."""
        ...

    def outbox_depth(self) -> int:
        """Packages waiting for their receipt (state-DB thread)."""
        ...

    def log(self, conn: Connection, entries: list[dict[str, Any]]) -> None:
        """Append entries to the exchange log inside ``conn``'s transaction."""
        ...

    def record_rtt(self, conn: Connection, peer: str, rtt_ms: float) -> None:
        """Note a measured round trip to ``peer`` (shown by ``exnode status``)."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A background task, cancelled when the node stops; its failure is logged."""
        ...

    def running(self, name: str) -> bool:
        """Whether a task spawned under ``name`` is still running."""
        ...

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` in the event loop (thread-safe; for handlers in the DB thread)."""
        ...

    def sign(self, purpose: str, data: bytes) -> bytes:
        """Sign ``data`` with this node's Ed25519 key, for a document a service issues
        (a monthly ledger, say). What is signed is :func:`service_signed_message`
        (``purpose`` and ``data`` behind a fixed prefix), never ``data`` alone, so that
        such a signature can never pass for a package's or the log head's."""
        ...

    @property
    def signer(self) -> Signer:
        """Who signs with :meth:`sign`: this node's id, public key and certificate."""
        ...


SERVICE_SIG_PREFIX = b"exnode-service-signature:v1\x00"


def service_signed_message(purpose: str, data: bytes) -> bytes:
    """The bytes :meth:`ServiceAPI.sign` signs: a fixed prefix, ``purpose``, NUL, data.
    A verifier rebuilds them to check a signature with the signer's public key."""
    if not purpose or "\x00" in purpose:
        raise ValueError("purpose: a non-empty text without NUL")
    return SERVICE_SIG_PREFIX + purpose.encode() + b"\x00" + data


@dataclass(frozen=True)
class Signer:
    """A node as the signer of service documents: ``public_key`` is the raw Ed25519
    key (32 bytes); ``cert`` the member certificate (DER) the center's CA issued for
    it, None until the node has one."""

    node_id: str
    algorithm: str
    public_key: bytes
    cert: bytes | None


class CatalogView(Protocol):
    """The resource catalog (目录) as other services read it: the current entry of each
    resource (a JSON-able dict: name, provider node, share type, where it is held, its
    fields...), or None for a resource the catalog does not list."""

    def entry(self, resource: str) -> dict[str, Any] | None: ...

    def entries(self) -> list[dict[str, Any]]: ...


class HolderRequests:
    """A service's requests to the holder of a resource, and the answers it waits for
    (query pages, verification results): the holder named by the catalog (the center's
    shared library, or the owner for ``held_at: owner``), one id per request, the
    answer matched by that id once its package has committed, and a refusal as soon as
    this node's own copy of the grant says it was revoked or expired (a holder that
    refuses in the kernel sends no answer, only a refusal receipt)."""

    def __init__(self, api: ServiceAPI, service: str, request_kind: str,
                 answer_name: str) -> None:
        self.api = api
        self.service = service  # the grant's service: "query", "verify"
        self.request_kind = request_kind
        self.answer_name = answer_name  # for the malformed-answer message
        self._waiting: dict[str, asyncio.Future[Any]] = {}

    def holder(self, rid: str) -> str:
        entry = self.api.catalog.entry(rid)
        if entry is None:
            raise NotFound(f"the catalog lists no resource '{rid}'")
        return entry["provider_node"] if entry["held_at"] == "owner" else self.api.center_id

    def answered(self, ctx: ApplyContext) -> None:
        """The answer kind's handler: hand the answer to the request waiting for it."""
        try:
            b = cbor2.loads(ctx.payload)
            qid = b["id"]
        except Exception:
            raise PackageError("malformed", f"{self.answer_name} without an id") from None
        fut = self._waiting.get(qid) if isinstance(qid, str) else None
        if fut is not None:
            ctx.after_commit(lambda: fut.done() or fut.set_result(b))

    async def ask(self, rid: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send ``body`` (with a fresh ``id``) to the holder of ``rid`` and wait for its
        answer; a refusal in the answer raises :class:`Refused`."""
        qid = str(uuid.uuid4())
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[qid] = fut
        try:
            await self.api.send(self.holder(rid), self.request_kind, rid,
                                cbor2.dumps({**body, "id": qid}))
            b: dict[str, Any] = await self._answer_or_revoked(fut, rid, timeout)
        finally:
            self._waiting.pop(qid, None)
        if "error" in b:
            raise Refused(str(b.get("reason") or "refused"), str(b["error"])[:500]
                          .split(": ", 1)[-1])
        return b

    async def _answer_or_revoked(self, fut: asyncio.Future[Any], rid: str,
                                 timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from the holder of {rid} within "
                                   f"{timeout:.0f} s")
            try:
                return await asyncio.wait_for(asyncio.shield(fut), min(0.5, left))
            except TimeoutError:
                self.api.grants.check(rid, self.api.node_id, self.service)


class PluginRegistry(Protocol):
    """What the load-phase hooks registered (read-only for services)."""

    suites: Mapping[str, Any]
    kinds: Mapping[str, KindSpec]
    dialects: Any
    adapters: Mapping[str, Callable[..., Any]]
    rules: list[tuple[str, Any]]
    tables: Mapping[str, StateTables]


# --- control routes ---------------------------------------------------------------------------

@dataclass
class ControlRequest:
    """A control-API request as a route handler sees it. ``body`` is the parsed JSON body
    (``{}`` when there is none), ``params`` the path parameters, ``query`` the query."""

    body: dict[str, Any]
    params: Mapping[str, str]
    query: Mapping[str, str]

    def arg(self, name: str, kind: Callable[[Any], Any] = str, default: Any = ...) -> Any:
        """A body field converted with ``kind``; a missing or bad one is a 400 answer."""
        from exnode.node.base.errors import UsageError

        if name not in self.body or (self.body[name] is None and default is not ...):
            if default is ...:
                raise UsageError(f"bad request: '{name}' is missing")
            return default
        try:
            return kind(self.body[name])
        except (TypeError, ValueError):
            raise UsageError(f"bad request: '{name}' is not a valid {kind.__name__}") from None


@dataclass(frozen=True)
class Blob:
    """A route's answer that carries bytes (a page of a download, say): ``meta`` is
    JSON-able, ``data`` goes as it is, neither base64 nor JSON. The control client
    returns ``{**meta, "blob": data}``."""

    meta: dict[str, Any]
    data: bytes


RouteHandler = Callable[[ControlRequest], Awaitable[Any]]


class Router(Protocol):
    """Where a service adds control routes. A handler returns JSON-able data; raising an
    ``ExnodeError`` (or ``TimeoutError``) becomes a 4xx (504) answer with one line."""

    def get(self, path: str, handler: RouteHandler) -> None: ...

    def post(self, path: str, handler: RouteHandler) -> None: ...


# --- status -------------------------------------------------------------------------------------

class StatusBuilder(Protocol):
    """A service's sections of ``exnode status``: ``data`` goes into ``--json`` under
    ``name``; ``lines`` are what the text form prints."""

    def add(self, name: str, data: Any, lines: list[str] | None = None) -> None: ...

    def problem(self, text: str) -> None:
        """Something an operator must act on (a resource stopped, stale, a subscriber
        behind): one line, listed by ``status`` and failing ``status --check``."""
        ...


# --- CLI ------------------------------------------------------------------------------------------

class CommandContext(Protocol):
    """``ctx.obj`` of every ``exnode`` command: the one way to reach the daemon."""

    def config(self) -> Config:
        """The node's configuration (``-c``, ``$EXNODE_CONFIG``, ./exnode.yaml, /etc)."""
        ...

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = 60.0) -> Any:
        """Call the daemon's control API; a one-line error when it is not there."""
        ...

    def show(self, data: Any, as_json: bool, text: str | Callable[[Any], str] = "") -> None:
        """Print ``data`` as one JSON line, or as ``text`` (or ``text(data)``)."""
        ...
