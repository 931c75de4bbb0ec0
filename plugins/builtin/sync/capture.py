"""Capture strategies (采集策略): find what changed in a resource since the last
committed checkpoint and hand it over as a :class:`ChangeBatch`.

Every strategy has the same two steps:

1. ``capture(limit_rows)`` reads the business database and returns a batch of at most
   about ``limit_rows`` changes plus a ``checkpoint``. It changes nothing: calling it
   again before a commit finds the same changes.
2. ``commit(checkpoint, conn)`` records the checkpoint with ``conn``, a transaction on
   the state DB that the caller commits together with the outbox insert of the batch.
   So a batch is either in the outbox and checkpointed, or neither: capture is exactly
   once. Commit every batch's checkpoint, the empty ones too.

An empty batch means nothing changed (the caller then sends a zero-update report,
零更新上报). Call ``capture`` outside any open state-DB transaction.

Strategies:

- :class:`SnapshotCapture` (快照比对): reads the whole resource in key order, chunk by
  chunk, hashes every row and merges that stream with the stored row hashes, also read
  in key order. New or changed rows become upserts, stored keys the source no longer
  has become deletes. Works on any database and on query resources; memory stays
  bounded by the chunk size, not the table size.
- :class:`IncrementalCapture` (增量): a watermark (水位) on a timestamp or version column;
  rows come ordered by (column, key), so rows that share a watermark value are neither
  lost nor sent twice when a batch ends among them. It cannot see deletes.
- :class:`TriggerCapture` (触发器): reads the change table that the triggers of
  :mod:`exnode.adapters.triggers` fill.

Loop prevention: a change that exnode itself applied is never captured again.
Triggers skip writes made while ``exnode_applying`` holds a row (only the applying
transaction sees it). Snapshot and incremental capture take ``applied_hashes``: for a
list of keys, the row hash exnode last applied for each (``APPLIED_DELETE`` when it
deleted the key). A row whose current hash equals it, or a missing key whose last
applied change was a delete, is not captured; its stored hash or the watermark still
moves on.

Capture state lives behind the small :class:`CaptureState` protocol;
:class:`SqlCaptureState` keeps it in the state DB tables ``capture_state`` and
``snapshot_rows`` (``tables.py``).
"""

from __future__ import annotations

import json
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from datetime import time as dtime
from decimal import Decimal
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import (
    Connection,
    Engine,
    Table,
)

from exnode.adapters import triggers
from exnode.node.base.config import CaptureSpec, ResourceSpec
from exnode.node.base.errors import ExnodeError
from exnode.policies.changes import Change, ChangeBatch, RowSource

from .tables import capture_state, snapshot_rows
from .tables import metadata as state_metadata

Key = tuple[Any, ...]
Row = dict[str, Any]

#: What ``applied_hashes`` returns for a key whose last change applied by exnode was
#: a delete.
APPLIED_DELETE = b""

AppliedHashes = Mapping[Key, bytes] | Callable[[list[Key]], Mapping[Key, bytes]]


class CaptureError(ExnodeError):
    """Changes cannot be captured from a resource."""


# --- What the strategies need from the adapter and the state DB ---------------------


class CaptureStrategy(Protocol):
    """What the daemon drives: capture, then commit with the outbox insert."""

    def capture(self, limit_rows: int) -> ChangeBatch:
        """Changes since the last committed checkpoint (about ``limit_rows`` at most)."""
        ...

    def commit(self, checkpoint: dict[str, Any], conn: Connection) -> None:
        """Record ``checkpoint`` in the caller's state-DB transaction ``conn``."""
        ...


class CaptureState(Protocol):
    """Capture bookkeeping per resource: named values (watermark, cursors) and, for
    snapshots, one hash per row under its encoded key (:func:`encode_key`). Writes go
    through ``conn`` when given (the caller's transaction), else their own."""

    def get(self, resource: str, key: str) -> bytes | None:
        """The value stored under ``key``, or None."""
        ...

    def put(self, resource: str, key: str, value: bytes | None,
            conn: Connection | None = None) -> None:
        """Store ``value`` under ``key``; None deletes it."""
        ...

    def iter_hashes(self, resource: str, after: bytes | None = None) -> Iterator[
            tuple[bytes, bytes]]:
        """(encoded key, row hash) in encoded-key order, after ``after``."""
        ...

    def get_hashes(self, resource: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The stored hashes of those encoded keys that have one."""
        ...

    def has_hashes(self, resource: str) -> bool:
        """True when any row hash is stored for ``resource``."""
        ...

    def apply_hashes(self, resource: str, updates: Sequence[tuple[bytes, bytes | None]],
                     conn: Connection | None = None) -> None:
        """Set (or with None, delete) row hashes, later entries winning."""
        ...


# --- The state tables (capture_state, snapshot_rows) ---

# Defined with the rest of the state DB (and migrated with it) in exnode.node.kernel.state.
_TABLES = [capture_state, snapshot_rows]

_IN_CHUNK = 500


class SqlCaptureState:
    """:class:`CaptureState` on SQLAlchemy Core (SQLite or PostgreSQL state DB)."""

    def __init__(self, engine: Engine, *, create_tables: bool = True,
                 batch_rows: int = 2000) -> None:
        self.engine = engine
        self.batch_rows = batch_rows
        if create_tables:
            state_metadata.create_all(engine, tables=_TABLES, checkfirst=True)

    def _write(self, conn: Connection | None, fn: Callable[[Connection], None]) -> None:
        if conn is not None:
            fn(conn)
        else:
            with self.engine.begin() as c:
                fn(c)

    def get(self, resource: str, key: str) -> bytes | None:
        t = capture_state
        with self.engine.connect() as c:
            v = c.execute(sa.select(t.c.value).where(t.c.resource == resource,
                                                     t.c.name == key)).scalar()
        return bytes(v) if v is not None else None

    def put(self, resource: str, key: str, value: bytes | None,
            conn: Connection | None = None) -> None:
        t = capture_state

        def go(c: Connection) -> None:
            c.execute(t.delete().where(t.c.resource == resource, t.c.name == key))
            if value is not None:
                c.execute(t.insert().values(resource=resource, name=key, value=value,
                                            updated_at=time.time()))

        self._write(conn, go)

    def iter_hashes(self, resource: str, after: bytes | None = None) -> Iterator[
            tuple[bytes, bytes]]:
        t = snapshot_rows
        while True:
            q = sa.select(t.c.key, t.c.hash).where(t.c.resource == resource)
            if after is not None:
                q = q.where(t.c.key > after)
            q = q.order_by(t.c.key).limit(self.batch_rows)
            # A short read per batch: no long transaction on the state DB.
            with self.engine.connect() as c:
                batch = [(bytes(k), bytes(h)) for k, h in c.execute(q)]
            yield from batch
            if len(batch) < self.batch_rows:
                return
            after = batch[-1][0]

    def get_hashes(self, resource: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        t = snapshot_rows
        out: dict[bytes, bytes] = {}
        with self.engine.connect() as c:
            for i in range(0, len(keys), _IN_CHUNK):
                part = list(keys[i:i + _IN_CHUNK])
                for k, h in c.execute(sa.select(t.c.key, t.c.hash).where(
                        t.c.resource == resource, t.c.key.in_(part))):
                    out[bytes(k)] = bytes(h)
        return out

    def has_hashes(self, resource: str) -> bool:
        t = snapshot_rows
        with self.engine.connect() as c:
            return c.execute(sa.select(t.c.key).where(t.c.resource == resource)
                             .limit(1)).first() is not None

    def apply_hashes(self, resource: str, updates: Sequence[tuple[bytes, bytes | None]],
                     conn: Connection | None = None) -> None:
        last: dict[bytes, bytes | None] = {}
        for k, h in updates:
            last[k] = h
        if not last:
            return
        t = snapshot_rows

        def go(c: Connection) -> None:
            keys = list(last)
            for i in range(0, len(keys), _IN_CHUNK):
                c.execute(t.delete().where(t.c.resource == resource,
                                           t.c.key.in_(keys[i:i + _IN_CHUNK])))
            rows = [{"resource": resource, "key": k, "hash": h}
                    for k, h in last.items() if h is not None]
            for i in range(0, len(rows), self.batch_rows):
                c.execute(t.insert(), rows[i:i + self.batch_rows])

        self._write(conn, go)

    def forget(self, resource: str, conn: Connection | None = None) -> None:
        """Drop all capture state of ``resource`` (the next capture is an initial one)."""
        def go(c: Connection) -> None:
            c.execute(capture_state.delete().where(capture_state.c.resource == resource))
            c.execute(snapshot_rows.delete().where(snapshot_rows.c.resource == resource))

        self._write(conn, go)


# --- Keys as order-preserving bytes -------------------------------------------------
#
# Each value: a type tag, then bytes that sort like the value. Strings and bytes end
# with 0x00 (0x00 inside is escaped as 00 ff), so tuples sort element by element.

_T_NONE, _T_BYTES, _T_STR = 0x00, 0x01, 0x02
_T_NEG_BIG, _T_ZERO, _T_POS_BIG = 0x0B, 0x14, 0x1D
_T_FLOAT, _T_FALSE, _T_TRUE = 0x21, 0x26, 0x27
_T_DEC_NEG, _T_DEC_ZERO, _T_DEC_POS = 0x2F, 0x30, 0x31
_T_DATE, _T_DATETIME, _T_DATETIME_TZ, _T_TIME, _T_UUID = 0x40, 0x41, 0x42, 0x43, 0x50
_EXP_BIAS = 2 ** 31


def _term(b: bytes) -> bytes:
    return b.replace(b"\x00", b"\x00\xff") + b"\x00"


def encode_key(values: Sequence[Any]) -> bytes:
    """Key values -> bytes that sort as the values do (per type) and decode back."""
    out = bytearray()
    for v in values:
        if v is None:
            out.append(_T_NONE)
        elif isinstance(v, bool):
            out.append(_T_TRUE if v else _T_FALSE)
        elif isinstance(v, int):
            _encode_int(out, v)
        elif isinstance(v, str):
            out.append(_T_STR)
            out += _term(v.encode("utf-8"))
        elif isinstance(v, bytes | bytearray | memoryview):
            out.append(_T_BYTES)
            out += _term(bytes(v))
        elif isinstance(v, float):
            b = struct.pack(">d", v)
            b = bytes(x ^ 0xFF for x in b) if b[0] & 0x80 else bytes([b[0] ^ 0x80]) + b[1:]
            out.append(_T_FLOAT)
            out += b
        elif isinstance(v, Decimal):
            _encode_decimal(out, v)
        elif isinstance(v, datetime):
            if v.tzinfo is None:
                out.append(_T_DATETIME)
            else:
                out.append(_T_DATETIME_TZ)
                v = v.astimezone(UTC).replace(tzinfo=None)
            out += v.isoformat(timespec="microseconds").encode()
        elif isinstance(v, date):
            out.append(_T_DATE)
            out += v.isoformat().encode()
        elif isinstance(v, dtime) and v.tzinfo is None:
            out.append(_T_TIME)
            out += v.isoformat(timespec="microseconds").encode()
        elif isinstance(v, uuid.UUID):
            out.append(_T_UUID)
            out += v.bytes
        else:
            raise CaptureError(f"a key value of type {type(v).__name__} cannot be stored "
                               "as a capture key")
    return bytes(out)


def _encode_int(out: bytearray, v: int) -> None:
    if v == 0:
        out.append(_T_ZERO)
        return
    m = abs(v)
    n = (m.bit_length() + 7) // 8
    if n > 255:
        raise CaptureError("integer key too large")
    b = m.to_bytes(n, "big")
    if v > 0:
        out += bytes([_T_ZERO + n]) + b if n <= 8 else bytes([_T_POS_BIG, n]) + b
    else:
        nb = bytes(x ^ 0xFF for x in b)
        out += bytes([_T_ZERO - n]) + nb if n <= 8 else bytes([_T_NEG_BIG, n ^ 0xFF]) + nb


def _encode_decimal(out: bytearray, v: Decimal) -> None:
    if not v.is_finite():
        raise CaptureError(f"key value {v} cannot be stored")
    if v == 0:
        out.append(_T_DEC_ZERO)
        return
    sign, digits, _ = v.as_tuple()
    ds = "".join(map(str, digits)).rstrip("0").encode()
    e = v.adjusted() + _EXP_BIAS
    if sign == 0:
        out.append(_T_DEC_POS)
        out += e.to_bytes(4, "big") + ds + b"\x00"
    else:
        out.append(_T_DEC_NEG)
        out += (0xFFFFFFFF - e).to_bytes(4, "big") + bytes(0xFF - c for c in ds) + b"\xff"


def decode_key(data: bytes) -> Key:
    """Inverse of :func:`encode_key`."""
    out: list[Any] = []
    i, n = 0, len(data)
    while i < n:
        t = data[i]
        i += 1
        if t == _T_NONE:
            out.append(None)
        elif t in (_T_BYTES, _T_STR):
            buf = bytearray()
            while True:
                c = data[i]
                if c == 0:
                    if i + 1 < n and data[i + 1] == 0xFF:
                        buf.append(0)
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(c)
                i += 1
            out.append(bytes(buf) if t == _T_BYTES else buf.decode("utf-8"))
        elif t == _T_ZERO:
            out.append(0)
        elif _T_ZERO < t <= _T_ZERO + 8 or t == _T_POS_BIG:
            if t == _T_POS_BIG:
                ln, i = data[i], i + 1
            else:
                ln = t - _T_ZERO
            out.append(int.from_bytes(data[i:i + ln], "big"))
            i += ln
        elif _T_ZERO - 8 <= t < _T_ZERO or t == _T_NEG_BIG:
            if t == _T_NEG_BIG:
                ln, i = data[i] ^ 0xFF, i + 1
            else:
                ln = _T_ZERO - t
            out.append(-int.from_bytes(bytes(x ^ 0xFF for x in data[i:i + ln]), "big"))
            i += ln
        elif t == _T_FLOAT:
            b = data[i:i + 8]
            b = bytes([b[0] ^ 0x80]) + b[1:] if b[0] & 0x80 else bytes(x ^ 0xFF for x in b)
            out.append(struct.unpack(">d", b)[0])
            i += 8
        elif t in (_T_FALSE, _T_TRUE):
            out.append(t == _T_TRUE)
        elif t == _T_DEC_ZERO:
            out.append(Decimal(0))
        elif t in (_T_DEC_POS, _T_DEC_NEG):
            e = int.from_bytes(data[i:i + 4], "big")
            i += 4
            end = data.index(b"\x00" if t == _T_DEC_POS else b"\xff", i)
            raw = data[i:end]
            i = end + 1
            if t == _T_DEC_NEG:
                e = 0xFFFFFFFF - e
                raw = bytes(0xFF - c for c in raw)
            digits = tuple(c - 48 for c in raw)
            exp = e - _EXP_BIAS - (len(digits) - 1)
            d = Decimal((1 if t == _T_DEC_NEG else 0, digits, exp))
            out.append(Decimal(int(d)) if exp > 0 else d)
        elif t == _T_DATE:
            out.append(date.fromisoformat(data[i:i + 10].decode()))
            i += 10
        elif t in (_T_DATETIME, _T_DATETIME_TZ):
            d = datetime.fromisoformat(data[i:i + 26].decode())
            out.append(d if t == _T_DATETIME else d.replace(tzinfo=UTC))
            i += 26
        elif t == _T_TIME:
            out.append(dtime.fromisoformat(data[i:i + 15].decode()))
            i += 15
        elif t == _T_UUID:
            out.append(uuid.UUID(bytes=bytes(data[i:i + 16])))
            i += 16
        else:
            raise CaptureError(f"corrupt capture key (tag {t:#x})")
    return tuple(out)


# --- Helpers shared by the strategies -----------------------------------------------


def _key_of(key: Sequence[str]) -> Callable[[Mapping[str, Any]], Key]:
    cols = tuple(key)

    def f(row: Mapping[str, Any]) -> Key:
        try:
            return tuple(row[k] for k in cols)
        except KeyError as e:
            raise CaptureError(f"rows lack key field {e.args[0]!r}") from None

    return f


def _lookup(applied: AppliedHashes | None) -> Callable[[list[Key]], Mapping[Key, bytes]] | None:
    if applied is None:
        return None
    if isinstance(applied, Mapping):
        m = applied
        return lambda keys: {k: m[k] for k in keys if k in m}
    return applied


def _rows(source: RowSource, chunk_rows: int, after: Key | None,
          keyf: Callable[[Mapping[str, Any]], Key]) -> Iterator[Row]:
    """Every row after ``after`` in key order, whichever way the source chunks."""
    it = iter(source.read_chunks(chunk_rows, after))
    head = next(it, None)
    if head is None:
        return
    if isinstance(head, Mapping):  # one chunk per call: page on with keyset
        chunk: list[Row] = [head, *it]
        while chunk:
            yield from chunk
            if len(chunk) < chunk_rows:
                return
            chunk = list(source.read_chunks(chunk_rows, keyf(chunk[-1])))
        return
    yield from head
    for c in it:
        yield from c


class _Peek:
    def __init__(self, it: Iterator[tuple[bytes, bytes]]) -> None:
        self._it = it
        self._head: tuple[bytes, bytes] | None = next(it, None)

    def peek(self) -> tuple[bytes, bytes] | None:
        return self._head

    def pop(self) -> tuple[bytes, bytes]:
        h = self._head
        assert h is not None
        self._head = next(self._it, None)
        return h


# --- Snapshot -----------------------------------------------------------------------

_SNAP_CURSOR = "snapshot.cursor"


class SnapshotCapture:
    """Full read, hash and diff against the stored row hashes (see module docstring).

    Source and stored hashes are merged in encoded-key order. The database may sort
    keys differently (e.g. strings under a case-insensitive collation): then a key the
    merge takes for new is looked up in the stored hashes, and a stored key it takes
    for gone is looked up in the source before a delete is sent. A different order
    costs lookups, never correctness.

    A pass that finds more than ``limit_rows`` changes stops there (having found at
    most ``limit_rows // 8`` more); its checkpoint carries a cursor and the next capture
    resumes the same pass. A change behind the cursor is found by the next pass.
    """

    def __init__(self, resource: str, key: Sequence[str], source: RowSource,
                 state: CaptureState, *, chunk_rows: int = 5000,
                 applied_hashes: AppliedHashes | None = None) -> None:
        self.resource = resource
        self.source = source
        self.state = state
        self.chunk_rows = chunk_rows
        self._key = _key_of(key)
        self._applied = _lookup(applied_hashes)
        self._flush_at = max(1, min(chunk_rows, 1000))

    def capture(self, limit_rows: int) -> ChangeBatch:
        """Changes found by (the rest of) one pass over the resource."""
        limit = max(1, limit_rows)
        src_after: Key | None = None
        st_after: bytes | None = None
        raw = self.state.get(self.resource, _SNAP_CURSOR)
        if raw:
            src_enc, st_after, initial = decode_key(raw)
            src_after = decode_key(src_enc) if src_enc is not None else None
        else:
            initial = not self.state.has_hashes(self.resource)

        updates: dict[bytes, bytes | None] = {}
        changes: list[Change] = []
        direct: list[tuple[bytes, Key, Row | None, bytes | None]] = []
        new_c: list[tuple[bytes, Key, Row, bytes]] = []
        gone_c: list[bytes] = []

        def pending() -> int:
            return len(direct) + len(new_c) + len(gone_c)

        def flush() -> None:
            found = direct[:]
            direct.clear()
            if new_c:
                # In an initial pass nothing is stored beyond the cursor: no lookup.
                known = {} if initial else self.state.get_hashes(
                    self.resource, [e for e, *_ in new_c])
                found += [(e, k, r, h) for e, k, r, h in new_c if known.get(e) != h]
                new_c.clear()
            if gone_c:
                keys = [decode_key(e) for e in gone_c]
                present = {encode_key(self._key(r)) for r in self.source.fetch(keys).values()}
                found += [(e, k, None, None) for e, k in zip(gone_c, keys, strict=True)
                          if e not in present]
                gone_c.clear()
            self._emit(found, changes, updates)

        # Near the limit flush early, but not row by row: a batch ends with at most
        # limit/8 changes more than asked.
        floor = max(1, min(self._flush_at, limit // 8))

        def full() -> bool:
            p = pending()
            if p >= self._flush_at or (len(updates) + p >= limit and p >= floor):
                flush()
            return len(updates) >= limit

        stored = _Peek(self.state.iter_hashes(self.resource, st_after))
        last_src, last_src_enc, last_st = src_after, None, st_after
        complete = True
        for row in _rows(self.source, self.chunk_rows, src_after, self._key):
            k = self._key(row)
            e = encode_key(k)
            h = self.source.row_hash(row)
            while (t := stored.peek()) is not None and t[0] < e:
                gone_c.append(stored.pop()[0])
                last_st = t[0]
            t = stored.peek()
            if t is not None and t[0] == e:
                stored.pop()
                last_st = e
                if t[1] != h:
                    direct.append((e, k, row, h))
            else:
                new_c.append((e, k, row, h))
            last_src, last_src_enc = k, e
            if full():
                complete = False
                break
        if complete:
            while stored.peek() is not None:
                last_st = stored.pop()[0]
                gone_c.append(last_st)
                if full():
                    complete = stored.peek() is None
                    break
        flush()

        cursor = None
        if not complete:
            # Every stored key up to the last source key has been merged.
            marks = [x for x in (last_st, last_src_enc) if x is not None]
            st = max(marks) if marks else None
            cursor = encode_key((encode_key(last_src) if last_src is not None else None,
                                 st, initial))
        return ChangeBatch(self.resource, changes, initial=initial,
                           checkpoint={"hashes": list(updates.items()), "cursor": cursor})

    def _emit(self, found: list[tuple[bytes, Key, Row | None, bytes | None]],
              changes: list[Change], updates: dict[bytes, bytes | None]) -> None:
        if not found:
            return
        applied = self._applied([k for _, k, _, _ in found]) if self._applied else {}
        for e, k, row, h in found:
            updates.pop(e, None)
            updates[e] = h
            last = applied.get(k)
            if row is None:
                if last != APPLIED_DELETE:
                    changes.append(Change("delete", k))
            elif last is None or last != h:
                changes.append(Change("upsert", k, row))

    def commit(self, checkpoint: dict[str, Any], conn: Connection) -> None:
        """Store the new row hashes and the pass cursor in ``conn``'s transaction."""
        if not checkpoint:
            return
        self.state.apply_hashes(self.resource, checkpoint.get("hashes", []), conn)
        self.state.put(self.resource, _SNAP_CURSOR, checkpoint.get("cursor"), conn)


# --- Incremental --------------------------------------------------------------------

_WATERMARK = "incremental.watermark"


class IncrementalCapture:
    """Rows whose ``column`` moved past the watermark (value, key).

    Limits, by design: deletes are not seen (use snapshot or trigger capture), rows
    with NULL in ``column`` are never captured, and a row whose timestamp is older than
    the watermark when its transaction commits (a long transaction stamping the start
    time) is missed; a version column set from a sequence at commit avoids that.
    """

    def __init__(self, resource: str, key: Sequence[str], column: str, source: RowSource,
                 state: CaptureState, *, applied_hashes: AppliedHashes | None = None) -> None:
        self.resource = resource
        self.column = column
        self.source = source
        self.state = state
        self._key = _key_of(key)
        self._applied = _lookup(applied_hashes)

    def watermark(self) -> tuple[Any, Key] | None:
        """The committed (value, key), or None before the first commit."""
        raw = self.state.get(self.resource, _WATERMARK)
        if not raw:
            return None
        v = decode_key(raw)
        return v[0], tuple(v[1:])

    def capture(self, limit_rows: int) -> ChangeBatch:
        """Up to ``limit_rows`` rows after the watermark, as upserts."""
        wm = self.watermark()
        after_value, after_key = wm if wm is not None else (None, None)
        rows = list(self.source.read_since(self.column, after_value, after_key,
                                           max(1, limit_rows)))
        if rows and self.column not in rows[0]:
            raise CaptureError(f"resource {self.resource}: the watermark column "
                               f"{self.column!r} must be one of the resource's fields")
        rows = [r for r in rows if r[self.column] is not None]
        keys = [self._key(r) for r in rows]
        applied = self._applied(keys) if self._applied and rows else {}
        changes = []
        for k, r in zip(keys, rows, strict=True):
            last = applied.get(k)
            if last is None or last != self.source.row_hash(r):
                changes.append(Change("upsert", k, r))
        checkpoint: dict[str, Any] = {}
        if rows:
            checkpoint["watermark"] = encode_key((rows[-1][self.column], *keys[-1]))
        return ChangeBatch(self.resource, changes, checkpoint=checkpoint, initial=wm is None)

    def commit(self, checkpoint: dict[str, Any], conn: Connection) -> None:
        """Move the watermark in ``conn``'s transaction."""
        if checkpoint.get("watermark"):
            self.state.put(self.resource, _WATERMARK, checkpoint["watermark"], conn)


# --- Trigger ------------------------------------------------------------------------

_CONSUMED = "trigger.consumed"


def _runs(ids: Iterable[int]) -> list[list[int]]:
    """Sorted ids -> [first, last] runs of consecutive integers."""
    out: list[list[int]] = []
    for i in sorted(ids):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


class TriggerCapture:
    """Changes recorded by the capture triggers in ``exnode_changes``, in id order.

    Several changes of one key in a batch collapse to the last; for an upsert the
    current row is fetched (a row deleted meanwhile becomes a delete).

    The checkpoint is the set of change ids the batch consumed (as runs), not a
    high-water mark: ids are taken when a row is written but become visible when its
    transaction commits, so a smaller id can appear after a larger one was read. Each
    capture first deletes the change rows that the last commit consumed (``purge``), and
    then reads whatever remains, so a late commit is still captured.

    On PostgreSQL the first capture opens a connection of its own that LISTENs for
    NOTIFY (see :meth:`wait`); :meth:`close` it when done.
    """

    def __init__(self, resource: str, key: Sequence[str], source: RowSource,
                 state: CaptureState, engine: Engine, table: str,
                 schema: str | None = None) -> None:
        self.resource = resource
        self.source = source
        self.state = state
        self.engine = engine
        self.table = triggers.check_identifier(table)
        self.key = list(key)
        self._schema_arg = schema
        self._key = _key_of(key)
        self._label = triggers.label(self.table, schema)
        self._types: list[type | None] = []
        self._listener: Any = None
        self._changes: Table | None = None

    def _prepare(self) -> Table:
        if self._changes is not None:
            return self._changes
        schema = self._schema_arg if self._schema_arg != "main" or \
            self.engine.dialect.name != "sqlite" else None
        if not triggers.installed(self.engine, self.table, schema):
            raise CaptureError(f"resource {self.resource}: capture triggers are not "
                               f"installed on {triggers.label(self.table, schema)}")
        cols = {c["name"]: c["type"] for c in
                sa.inspect(self.engine).get_columns(self.table, schema=schema)}
        for k in self.key:
            try:
                self._types.append(cols[k].python_type)
            except (KeyError, NotImplementedError):
                self._types.append(None)
        self._label = triggers.label(self.table, schema)
        self._changes = triggers.changes_table(triggers.home_schema(self.engine))
        if self.engine.dialect.name == "postgresql":
            self._listen()
        return self._changes

    def _coerce(self, values: list[Any]) -> Key:
        """JSON key values -> the column types (dates and decimals arrive as text)."""
        out = []
        for v, t in zip(values, self._types, strict=True):
            if v is not None and t is not None and not isinstance(v, t):
                if t is datetime:
                    v = datetime.fromisoformat(v)
                elif t is date:
                    v = date.fromisoformat(str(v)[:10])
                elif t is dtime:
                    v = dtime.fromisoformat(v)
                elif t is Decimal:
                    v = Decimal(str(v))
                elif t is uuid.UUID:
                    v = uuid.UUID(str(v))
                elif t in (int, float, str):
                    v = t(v)
            out.append(v)
        return tuple(out)

    def capture(self, limit_rows: int) -> ChangeBatch:
        """Up to ``limit_rows`` change rows, collapsed per key."""
        ch = self._prepare()
        self.purge()
        with self.engine.connect() as c:
            rows = c.execute(sa.select(ch.c.id, ch.c.op, ch.c.key)
                             .where(ch.c.tbl == self._label)
                             .order_by(ch.c.id).limit(max(1, limit_rows))).all()
        if not rows:
            return ChangeBatch(self.resource, [], checkpoint={"ids": [], "last_id": None})
        last: dict[bytes, tuple[str, Key]] = {}
        for _, op, jkey in rows:
            k = self._coerce(json.loads(jkey, parse_float=Decimal))
            e = encode_key(k)
            last.pop(e, None)  # re-insert: the batch keeps the order of last changes
            last[e] = (op, k)
        want = [k for op, k in last.values() if op != "D"]
        current = {encode_key(self._key(r)): r
                   for r in (self.source.fetch(want).values() if want else ())}
        changes = []
        for e, (op, k) in last.items():
            row = current.get(e) if op != "D" else None
            if row is None:
                changes.append(Change("delete", k))
            else:
                changes.append(Change("upsert", self._key(row), row))
        ids = [r[0] for r in rows]
        return ChangeBatch(self.resource, changes,
                           checkpoint={"ids": _runs(ids), "last_id": ids[-1]})

    def commit(self, checkpoint: dict[str, Any], conn: Connection) -> None:
        """Record the consumed change ids in ``conn``'s transaction."""
        runs = checkpoint.get("ids")
        self.state.put(self.resource, _CONSUMED, json.dumps(runs).encode() if runs else None,
                       conn)

    def purge(self, upto_id: int | None = None) -> int:
        """Delete the change rows consumed by the last committed batch (only ids up to
        ``upto_id`` when given). Idempotent; ``capture`` calls it first anyway."""
        raw = self.state.get(self.resource, _CONSUMED)
        if not raw:
            return 0
        ch = self._prepare()
        conn = self.engine.connect()
        if self.engine.dialect.name in ("mysql", "mariadb"):
            # No gap locks: triggers keep appending while we delete.
            conn = conn.execution_options(isolation_level="READ COMMITTED")
        n = 0
        with conn, conn.begin():
            for a, b in json.loads(raw):
                if upto_id is not None:
                    b = min(b, upto_id)
                if a <= b:
                    n += conn.execute(ch.delete().where(ch.c.tbl == self._label,
                                                        ch.c.id.between(a, b))).rowcount
        return n

    # PostgreSQL: wake on NOTIFY instead of polling.

    def _listen(self) -> None:
        raw = self.engine.raw_connection()
        pg = raw.driver_connection
        assert pg is not None
        raw.detach()  # ours alone from now on; never handed back to the pool
        pg.rollback()  # a pool ping may have opened a transaction
        pg.autocommit = True
        pg.execute(f"LISTEN {triggers.CHANNEL}")
        self._listener = pg

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True when woken early by a NOTIFY for this
        table (PostgreSQL only; elsewhere this just sleeps and returns False)."""
        if self.engine.dialect.name != "postgresql":
            time.sleep(max(0.0, timeout))
            return False
        import psycopg

        self._prepare()
        deadline = time.monotonic() + max(0.0, timeout)
        woke = False
        try:
            while not woke and (left := deadline - time.monotonic()) > 0:
                for n in self._listener.notifies(timeout=left, stop_after=1):
                    woke = woke or n.payload == self._label
            if woke:
                # Several commits may have queued notices: one capture takes them all.
                for _ in self._listener.notifies(timeout=0.0):
                    pass
        except psycopg.OperationalError:
            # Lost the connection (notices may be lost too): listen again and capture.
            self.close()
            self._listen()
            return True
        return woke

    def close(self) -> None:
        """Close the NOTIFY connection, if any."""
        if self._listener is not None:
            try:
                self._listener.close()
            finally:
                self._listener = None


# --- Factory ------------------------------------------------------------------------


def make_capture(resource: str, spec: ResourceSpec, source: RowSource, state: CaptureState,
                 *, engine: Engine | None = None,
                 applied_hashes: AppliedHashes | None = None) -> CaptureStrategy:
    """The strategy ``spec.capture`` asks for. Trigger capture needs the business
    database's ``engine`` (default: ``source.engine``)."""
    cap = spec.capture or CaptureSpec()
    if cap.strategy == "snapshot":
        return SnapshotCapture(resource, spec.key, source, state, chunk_rows=cap.chunk_rows,
                               applied_hashes=applied_hashes)
    if cap.strategy == "incremental":
        assert cap.column is not None  # the config validator insists
        return IncrementalCapture(resource, spec.key, cap.column, source, state,
                                  applied_hashes=applied_hashes)
    engine = engine if engine is not None else getattr(source, "engine", None)
    if engine is None or spec.table is None:
        raise CaptureError(f"resource {resource}: trigger capture needs a table and its "
                           "database engine")
    return TriggerCapture(resource, spec.key, source, state, engine, spec.table,
                          spec.db_schema)
