"""The exchange log (交换信息库): every package sent, received, relayed, applied or
refused, hash-chained so that an edited or deleted row is detected.

Each row's hash covers its own fields and the previous row's hash. The newest row's
id and hash (the head) are kept in ``meta`` and signed with the node's key, so that
cutting rows off the end is detected too. Copies of the head kept elsewhere (the head
file beside the keys, the center's witness) are *anchors*: a log that ends before an
anchor, or differs from it at the anchor's row, was cut or rewritten.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import cbor2
from sqlalchemy import Connection, Engine, event, select

from exnode.node.kernel.state import exchange_log, meta
from exnode.policies import chain

GENESIS = chain.GENESIS
HEAD_KEY = "log_head"
FIELDS = ("pkg_id", "event", "peer", "resource", "kind", "size", "status", "reason")


def row_hash(row_id: int, ts: float, fields: dict[str, Any], prev: str) -> str:
    return chain.link([row_id, f"{ts:.6f}", *(fields[f] for f in FIELDS)], prev)


def _head_body(last_id: int, last_hash: str) -> bytes:
    return f"exnode-log-head:{last_id}:{last_hash}".encode()


head_body = _head_body


@dataclass(frozen=True)
class Head:
    """A signed log head: the newest row's id and hash, and the node's signature."""

    id: int
    hash: str
    sig: bytes


@dataclass(frozen=True)
class Anchor:
    """A head held somewhere else (``source`` names where, for the messages)."""

    source: str
    id: int
    hash: str


def read_head(conn: Connection) -> Head | None:
    """The signed head in ``meta`` (None before the first row)."""
    v = conn.execute(select(meta.c.value).where(meta.c.key == HEAD_KEY)).scalar()
    if v is None:
        return None
    d = cbor2.loads(v)
    if not d["id"]:
        return None
    return Head(int(d["id"]), str(d["hash"]), bytes(d["sig"]))


def _read_head(conn: Connection, lock: bool) -> tuple[int, str]:
    q = select(meta.c.value).where(meta.c.key == HEAD_KEY)
    if lock and conn.dialect.name != "sqlite":
        q = q.with_for_update()
    v = conn.execute(q).scalar()
    if v is None:
        return 0, GENESIS
    d = cbor2.loads(v)
    return int(d["id"]), str(d["hash"])


_deferring: weakref.WeakSet[Engine] = weakref.WeakSet()
_KEY = "exnode.exlog"


class _TxnHead:
    """The log's head as the current transaction has moved it: read at its first
    append, moved by each append, signed and written once, just before the commit.
    ``marks`` holds the head as it was when each open savepoint began (None: not
    read yet)."""

    __slots__ = ("dirty", "head", "marks", "sign", "txn")

    def __init__(self, txn: Any) -> None:
        self.txn = txn
        self.head: tuple[int, str] | None = None
        self.sign: Callable[[bytes], bytes] | None = None
        self.dirty = False
        self.marks: list[tuple[tuple[int, str] | None, bool]] = []


def defer_heads(engine: Engine) -> None:
    """Let the log's appends on ``engine`` move the signed head once per transaction
    instead of once per append (a read, a signature and a write saved for every
    further append of a transaction). Savepoints are followed: rolling one back takes
    the head back to where it was when the savepoint began."""
    if engine in _deferring:
        return
    _deferring.add(engine)
    event.listen(engine, "commit", _before_commit)
    event.listen(engine, "rollback", _forget)
    event.listen(engine, "savepoint", _savepoint)
    event.listen(engine, "rollback_savepoint", _rollback_savepoint)
    event.listen(engine, "release_savepoint", _release_savepoint)


def _txn_head(conn: Connection, create: bool) -> _TxnHead | None:
    t = conn.info.get(_KEY)
    txn = conn.get_transaction()
    if t is not None and t.txn is not txn:
        t = None  # left from a transaction that ended without the hooks seeing it
        conn.info.pop(_KEY, None)
    if t is None and create and txn is not None:
        t = conn.info[_KEY] = _TxnHead(txn)
    return t


def _before_commit(conn: Connection) -> None:
    t = _txn_head(conn, create=False)
    conn.info.pop(_KEY, None)
    if t is not None and t.dirty and t.head is not None and t.sign is not None:
        _write_head(conn, *t.head, t.sign)


def _forget(conn: Connection) -> None:
    conn.info.pop(_KEY, None)


def _savepoint(conn: Connection, _name: str) -> None:
    t = _txn_head(conn, create=True)
    if t is not None:
        t.marks.append((t.head, t.dirty))


def _rollback_savepoint(conn: Connection, _name: str, _ctx: Any) -> None:
    t = _txn_head(conn, create=False)
    if t is not None and t.marks:
        t.head, t.dirty = t.marks.pop()


def _release_savepoint(conn: Connection, _name: str, _ctx: Any) -> None:
    t = _txn_head(conn, create=False)
    if t is not None and t.marks:
        t.marks.pop()


def _write_head(conn: Connection, last_id: int, last_hash: str,
                sign: Callable[[bytes], bytes]) -> None:
    head = cbor2.dumps({"id": last_id, "hash": last_hash,
                        "sig": sign(_head_body(last_id, last_hash))})
    n = conn.execute(meta.update().where(meta.c.key == HEAD_KEY).values(value=head)).rowcount
    if n == 0:
        conn.execute(meta.insert().values(key=HEAD_KEY, value=head))


def append(conn: Connection, entries: Iterable[dict[str, Any]],
           sign: Callable[[bytes], bytes]) -> None:
    """Append log rows inside the caller's transaction and move the signed head (at
    once, or just before the commit on an engine given to :func:`defer_heads`)."""
    entries = list(entries)
    if not entries:
        return
    t = _txn_head(conn, create=True) if conn.engine in _deferring else None
    if t is not None and t.head is not None:
        last_id, last_hash = t.head
    else:
        if conn.dialect.name != "sqlite":
            # Make sure the head row exists so that FOR UPDATE has something to lock.
            _ensure_head(conn)
        last_id, last_hash = _read_head(conn, lock=True)
    rows = []
    now = time.time()
    for e in entries:
        last_id += 1
        fields = {"pkg_id": e.get("pkg_id", ""), "event": e["event"],
                  "peer": e.get("peer", ""), "resource": e.get("resource", ""),
                  "kind": e.get("kind", ""), "size": int(e.get("size", 0)),
                  "status": e.get("status", "ok"), "reason": e.get("reason", "")}
        h = row_hash(last_id, now, fields, last_hash)
        rows.append({"id": last_id, "ts": now, **fields, "prev_hash": last_hash, "hash": h})
        last_hash = h
    conn.execute(exchange_log.insert(), rows)
    if t is None:
        _write_head(conn, last_id, last_hash, sign)
    else:
        t.head, t.sign, t.dirty = (last_id, last_hash), sign, True


def _ensure_head(conn: Connection) -> None:
    exists = conn.execute(select(meta.c.key).where(meta.c.key == HEAD_KEY)).first()
    if exists is None:
        from sqlalchemy.exc import IntegrityError

        try:
            with conn.begin_nested():
                conn.execute(meta.insert().values(
                    key=HEAD_KEY, value=cbor2.dumps({"id": 0, "hash": GENESIS, "sig": b""})))
        except IntegrityError:
            pass


@contextlib.contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection that reads the log's rows and its head as of one moment, while the
    daemon goes on writing (PostgreSQL: REPEATABLE READ; SQLite: one transaction)."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.execution_options(exnode_snapshot=True)  # a deferred BEGIN, see state
        else:
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


@dataclass
class VerifyResult:
    ok: bool
    rows: int
    bad_row: int | None = None
    problem: str = ""


def verify(conn: Connection, verify_sig: Callable[[bytes, bytes], bool] | None = None,
           progress: Callable[[int], None] | None = None,
           anchors: Iterable[Anchor] = ()) -> VerifyResult:
    """Recompute the chain; name the first row that does not fit. Every anchor must
    name a row the log still has, with the same hash."""
    at: dict[int, list[Anchor]] = {}
    for a in anchors:
        if a.id > 0:
            at.setdefault(a.id, []).append(a)
    prev = GENESIS
    expected_id = 1
    n = 0
    q = select(exchange_log).order_by(exchange_log.c.id).execution_options(yield_per=5000)
    for r in conn.execute(q).mappings():
        n += 1
        if r["id"] != expected_id:
            return VerifyResult(False, n, expected_id,
                                f"row {expected_id} is missing (deleted); next row is {r['id']}")
        if r["prev_hash"] != prev:
            return VerifyResult(False, n, r["id"], f"row {r['id']} does not follow row "
                                f"{r['id'] - 1} (an earlier row was edited or deleted)")
        if row_hash(r["id"], r["ts"], dict(r), prev) != r["hash"]:
            return VerifyResult(False, n, r["id"], f"row {r['id']} was edited: its contents "
                                "do not match its hash")
        for a in at.pop(r["id"], ()):
            if a.hash != r["hash"]:
                return VerifyResult(False, n, r["id"], f"row {r['id']} is not the row "
                                    f"{a.source} holds (the log was rewritten from there)")
        prev = r["hash"]
        expected_id += 1
        if progress and n % 5000 == 0:
            progress(n)
    if at:
        a = at[max(at)][0]
        return VerifyResult(False, n, None, f"{a.source} holds a head at row {a.id}, but "
                            f"the log ends at row {expected_id - 1} (rows were cut off, or "
                            "an older copy of the log was restored)")
    head_raw = conn.execute(select(meta.c.value).where(meta.c.key == HEAD_KEY)).scalar()
    if head_raw is None:
        if n:
            return VerifyResult(False, n, None, "the signed log head is missing")
        return VerifyResult(True, 0)
    head = cbor2.loads(head_raw)
    if head["id"] != expected_id - 1 or head["hash"] != prev:
        return VerifyResult(False, n, head["id"] or None,
                            f"the signed head names row {head['id']} but the log ends at row "
                            f"{expected_id - 1} (rows were cut off or added)")
    if verify_sig and n and not verify_sig(head["sig"], _head_body(head["id"], head["hash"])):
        return VerifyResult(False, n, head["id"], "the log head's signature is not this node's")
    return VerifyResult(True, n)


# --- reading the log (``exnode log``, ``log show`` and the console) ---------------------------

def listing(conn: Connection, peer: str | None = None, resource: str | None = None,
            since: float | None = None, kinds: Iterable[str] = (),
            events: Iterable[str] = (), limit: int = 100,
            before: int | None = None) -> list[dict[str, Any]]:
    """The newest ``limit`` entries that match, oldest first, without their hashes."""
    t = exchange_log
    q = select(t)
    if peer:
        q = q.where((t.c.peer == peer) | t.c.peer.like(f"{peer}>%") | t.c.peer.like(f"%>{peer}"))
    if resource:
        q = q.where(t.c.resource == resource)
    if since:
        q = q.where(t.c.ts >= since)
    kinds, events = list(kinds), list(events)
    if kinds:
        q = q.where(t.c.kind.in_(kinds))
    if events:
        q = q.where(t.c.event.in_(events))
    if before:
        q = q.where(t.c.id < before)
    q = q.order_by(t.c.id.desc()).limit(limit)
    rows = [dict(r) for r in conn.execute(q).mappings()][::-1]
    for r in rows:
        r.pop("prev_hash", None)
        r.pop("hash", None)
    return rows


TRACE_FIELDS = ("id", "ts", "event", "peer", "kind", "resource", "size", "status", "reason")


def entries(conn: Connection, pkg_id: str, limit: int | None = None) -> list[dict[str, Any]]:
    """A package's log entries at this node, oldest first (:data:`TRACE_FIELDS`)."""
    q = select(*(exchange_log.c[f] for f in TRACE_FIELDS)).where(
        exchange_log.c.pkg_id == pkg_id).order_by(exchange_log.c.id)
    return [dict(r) for r in conn.execute(q if limit is None else q.limit(limit)).mappings()]


def trace(conn: Connection, pkg_id: str) -> dict[str, Any] | None:
    """A package's entries at this node, with its outbox and inbox records (None when
    the node knows nothing of it)."""
    from exnode.node.kernel.state import inbox, outbox

    rows = entries(conn, pkg_id)
    ob = conn.execute(select(outbox.c.dest, outbox.c.status, outbox.c.attempts,
                             outbox.c.seq).where(outbox.c.pkg_id == pkg_id)).mappings().first()
    ib = conn.execute(select(inbox.c.src, inbox.c.status, inbox.c.seq, inbox.c.reason)
                      .where(inbox.c.pkg_id == pkg_id)).mappings().first()
    if not rows and ob is None and ib is None:
        return None
    return {"pkg_id": pkg_id, "trace": rows,
            "outbox": dict(ob) if ob else None, "inbox": dict(ib) if ib else None}


def stats(conn: Connection, since: float) -> dict[str, Any]:
    """Packages and bytes since ``since``, per resource, per peer and per day (UTC+8
    days), counting each package once where it was sent or received here; and rows, from
    the entries a service writes per package with ``size`` = rows (event ``sync``: the
    sync service's rows sent and applied)."""
    from sqlalchemy import Integer, case, cast, func

    t = exchange_log
    moved = t.c.event.in_(("sent", "applied", "relayed"))
    base = (t.c.ts >= since) & (moved | (t.c.event == "sync")) & (t.c.pkg_id != "")
    pkgs = func.sum(case((moved, 1), else_=0))
    size = func.sum(case((moved, t.c.size), else_=0))
    rows = func.sum(case((t.c.event == "sync", t.c.size), else_=0))
    day = (cast((t.c.ts + 8 * 3600) / 86400, Integer) if conn.dialect.name == "sqlite"
           else func.floor((t.c.ts + 8 * 3600) / 86400))  # SQLite's cast truncates
    out: dict[str, Any] = {}
    for name, col in (("resource", t.c.resource), ("peer", t.c.peer), ("day", day)):
        q = select(col, pkgs, size, rows).where(base).group_by(col)
        q = q.order_by(col) if name == "day" else q.order_by(pkgs.desc()).limit(30)
        out[f"by_{name}"] = [{"key": (int(k) if name == "day" else k or "-"),
                              "packages": int(n or 0), "bytes": int(b or 0),
                              "rows": int(r or 0)} for k, n, b, r in conn.execute(q)]
    return out
