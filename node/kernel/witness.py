"""Witnesses of the exchange log's head, so that a log cut short and given an old head
is still found out.

The signed head in the state DB proves that the rows up to it are the node's and are
unchanged; it cannot prove that nothing came after it. Two copies held elsewhere do:

- the head file beside the keys (``keys/log-head``), rewritten from the committed head
  every few seconds and when the daemon stops. It only moves forward: a state DB that
  went back leaves the file where it was, as evidence;
- the center's witness. A bureau sends its signed head to the center (``log-head``,
  every ``log.witness_every_s`` while its log grows, and when ``log verify`` asks); the
  center checks the signature, keeps the highest head per node, logs an alert when a
  node's head goes back or forks, and answers with what it keeps (``log-witness``).

``exnode log verify`` then fails when the log ends before either copy or differs from
it at that row. What this does not prove: that rows written after the last copy was
taken were not cut off together with the head (the window is the copy interval), nor
anything against someone who holds the node's signing key.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import structlog
from sqlalchemy import Connection, Engine, select

from exnode.node.base.config import Config
from exnode.node.base.errors import ExnodeError, PackageError, UsageError
from exnode.node.kernel import exlog
from exnode.node.kernel import identity as idn
from exnode.node.kernel.api import ApplyContext, KindSpec
from exnode.node.kernel.directory import Members
from exnode.node.kernel.state import log_witness

log = structlog.get_logger("exnode")

LOG_HEAD = "log-head"
LOG_WITNESS = "log-witness"
HEAD_FILE = "log-head"
_HASH = re.compile(r"^[0-9a-f]{64}$")
_MAX_ID = 2**62


# --- the head file -------------------------------------------------------------------------

def head_path(cfg: Config) -> Path:
    return cfg.keys_dir / HEAD_FILE


def read_head_file(path: Path) -> exlog.Head | None:
    """The head kept in the file, or None when there is none; raises ``ExnodeError``
    when the file is there but unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ExnodeError(f"{path}: cannot read the log head file: {e.strerror}") from None
    try:
        return _parse_head(cbor2.loads(raw))
    except Exception:
        raise ExnodeError(f"{path}: the log head file is not readable (damaged?)") from None


def write_head_file(path: Path, head: exlog.Head) -> None:
    """Replace the file atomically (0600); the caller writes only a higher head."""
    idn.write_private(path, cbor2.dumps({"id": head.id, "hash": head.hash, "sig": head.sig,
                                         "ts": time.time()}))


def _parse_head(d: Any) -> exlog.Head:
    if not isinstance(d, dict):
        raise ValueError("not a map")
    hid, hsh, sig = d.get("id"), d.get("hash"), d.get("sig")
    if (not isinstance(hid, int) or isinstance(hid, bool) or not 0 < hid < _MAX_ID
            or not isinstance(hsh, str) or not _HASH.match(hsh)
            or not isinstance(sig, bytes) or not 0 < len(sig) <= 256):
        raise ValueError("bad head")
    return exlog.Head(hid, hsh, sig)


def signed_by(pub: Any, head: exlog.Head) -> bool:
    try:
        pub.verify(head.sig, exlog.head_body(head.id, head.hash))
        return True
    except Exception:
        return False


# --- the service ---------------------------------------------------------------------------

class Witness:
    """Keeps the head file, sends the head to the center, and (at the center) keeps
    the highest head of every member."""

    def __init__(self, cfg: Config, engine: Engine, identity: idn.Identity, members: Members,
                 log_fn: Callable[[Connection, list[dict[str, Any]]], None],
                 counters: dict[str, int]) -> None:
        self.cfg = cfg
        self.engine = engine
        self.identity = identity
        self.members = members
        self.log = log_fn
        self.counters = counters
        self.is_center = cfg.node.role == "center"
        self.path = head_path(cfg)
        self._file_id = -1  # the id last written to (or found in) the file
        self._sent_id = -1
        self._sent_at = 0.0
        self._waiting: list[asyncio.Future[exlog.Head]] = []

    def kinds(self) -> list[KindSpec]:
        return [KindSpec(LOG_HEAD, self._on_head, senders="bureau", recipients="center",
                         relay=False),
                KindSpec(LOG_WITNESS, self._on_witness, senders="center",
                         recipients="bureau", relay=False)]

    # --- the file (state-DB thread) ----------------------------------------------------------

    def keep_file(self) -> exlog.Head | None:
        """Copy the committed head to the file when it moved forward; returns it."""
        with self.engine.connect() as conn:
            head = exlog.read_head(conn)
        if head is None:
            return None
        if self._file_id < 0:
            try:
                old = read_head_file(self.path)
            except ExnodeError:
                old = None  # damaged: replace it with the real head
            self._file_id = old.id if old else 0
        if head.id > self._file_id:
            write_head_file(self.path, head)
            self._file_id = head.id
        elif head.id < self._file_id:
            self.counters["log_head_behind"] += 1
            if self.counters["log_head_behind"] == 1:
                log.error("log_head_behind", file=self._file_id, db=head.id,
                          hint="the state DB's exchange log is older than the head file: "
                               "run 'exnode log verify'")
        return head

    def due(self, head: exlog.Head | None, now: float) -> bool:
        """(bureau) Is it time to send the head to the center?"""
        if self.is_center or head is None or head.id == self._sent_id:
            return False
        return now - self._sent_at >= self.cfg.log.witness_every_s

    def payload(self, head: exlog.Head) -> bytes:
        self._sent_id, self._sent_at = head.id, time.time()
        return cbor2.dumps({"id": head.id, "hash": head.hash, "sig": head.sig})

    def waiter(self) -> asyncio.Future[exlog.Head]:
        fut: asyncio.Future[exlog.Head] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        return fut

    def forget(self, fut: asyncio.Future[exlog.Head]) -> None:
        with contextlib.suppress(ValueError):
            self._waiting.remove(fut)

    # --- kinds (state-DB thread, inside the batch's transaction) -----------------------------

    def _on_head(self, ctx: ApplyContext) -> None:
        src = ctx.header.src
        head = self._read(ctx.payload)
        member = self.members.current.get(src)
        if member is None or not signed_by(member.sign_pub, head):
            raise PackageError("malformed", "the log head is not signed by its sender")
        conn = ctx.conn
        row = conn.execute(select(log_witness).where(log_witness.c.node_id == src)).first()
        now = time.time()
        if row is None:
            conn.execute(log_witness.insert().values(
                node_id=src, head_id=head.id, head_hash=head.hash, sig=head.sig,
                received_at=now, alerts=0, last_alert=""))
            kept = head
        else:
            kept = exlog.Head(row.head_id, row.head_hash, bytes(row.sig))
            alert = ""
            if head.id > kept.id:
                conn.execute(log_witness.update().where(log_witness.c.node_id == src).values(
                    head_id=head.id, head_hash=head.hash, sig=head.sig, received_at=now))
                kept = head
            elif head.id < kept.id:
                alert = (f"{src}'s exchange log went back from row {kept.id} to row "
                         f"{head.id}")
            elif head.hash != kept.hash:
                alert = f"{src}'s exchange log was rewritten at row {head.id}"
            else:
                conn.execute(log_witness.update().where(log_witness.c.node_id == src)
                             .values(received_at=now))
            if alert:
                self.counters["log_head_alerts"] += 1
                conn.execute(log_witness.update().where(log_witness.c.node_id == src).values(
                    alerts=log_witness.c.alerts + 1, last_alert=alert[:200]))
                self.log(conn, [{"pkg_id": ctx.header.id, "event": "witness", "peer": src,
                                 "kind": LOG_HEAD, "status": "alert", "reason": alert}])
                log.warning("log_head_alert", peer=src, reason=alert)
        ctx.reply(LOG_WITNESS, cbor2.dumps({"id": kept.id, "hash": kept.hash,
                                            "sig": kept.sig}))

    def _on_witness(self, ctx: ApplyContext) -> None:
        head = self._read(ctx.payload)
        if not signed_by(self.identity.sign_key.public_key(), head):
            raise PackageError("malformed", "the center's witness is not of this node's head")
        waiting, self._waiting = self._waiting, []

        def wake() -> None:
            for fut in waiting:
                if not fut.done():
                    fut.set_result(head)
        ctx.after_commit(wake)

    @staticmethod
    def _read(payload: bytes) -> exlog.Head:
        try:
            return _parse_head(cbor2.loads(payload))
        except Exception:
            raise PackageError("malformed", "a log head must be {id, hash, sig}") from None

    # --- the center's view -------------------------------------------------------------------

    def witnesses(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(log_witness).order_by(log_witness.c.node_id)).all()
        return [{"node": r.node_id, "head": r.head_id, "received_at": r.received_at,
                 "alerts": r.alerts, "last_alert": r.last_alert} for r in rows]


def require_bureau(cfg: Config) -> None:
    if cfg.node.role == "center":
        raise UsageError("the center's log has no witness above it; its head file is "
                         "its anchor")
