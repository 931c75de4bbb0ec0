"""Row codec: a change batch as compact CBOR, so rows cross databases unchanged.

A ``rows`` package carries one :class:`~exnode.policies.changes.ChangeBatch` of one
information resource (信息资源). The layout is column-oriented: field names once, then
per change only the operation, the key and the values in field order::

    [1, resource, initial, [field, ...], [[0, [key...], [value...]],   # upsert
                                          [1, [key...]],               # delete
                                          ...]]

Values keep their Python type across databases. Plain CBOR covers None, bool, int (any
size, tags 2/3), float, str, bytes, UUID (tag 37), Decimal (tag 4, exponent and
mantissa, so ``Decimal('12.3400')`` keeps its scale) and dates (tag 100, days since
1970-01-01). Types CBOR has no tag for use private tags of format 1:

- 48001 naive datetime: microseconds since 1970-01-01 (wall clock; stays naive);
- 48002 datetime with time zone: ``[wall microseconds, UTC offset in seconds]``: the
  same instant and the same offset; a zone name (``Asia/Shanghai``) becomes its offset;
- 48003 time of day: microseconds since midnight, or ``[microseconds, offset]``;
- 48004 Decimal that tag 4 cannot hold (NaN, Infinity, -0): its string;
- 48005 timedelta: microseconds.

JSON-like values (lists, maps with text keys) of the types above pass as CBOR arrays
and maps. Anything else is refused when encoding (ValueError naming the field).
"""

from __future__ import annotations

import datetime as dt
import io
import uuid
from decimal import Decimal
from typing import Any

import cbor2

from exnode.node.base.errors import PackageError
from exnode.policies.changes import Change, ChangeBatch

FORMAT = 1
OP_UPSERT, OP_DELETE = 0, 1

TAG_DATE = 100
TAG_NAIVE_DATETIME = 48001
TAG_DATETIME = 48002
TAG_TIME = 48003
TAG_DECIMAL_SPECIAL = 48004
TAG_TIMEDELTA = 48005

_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_DATE = dt.date(1970, 1, 1)
_US = dt.timedelta(microseconds=1)
_MAX_DEPTH = 64


def _wall_us(value: dt.datetime) -> int:
    return (value.replace(tzinfo=None) - _EPOCH) // _US


def _zoned(naive_tag: int, aware_tag: int, us: int, value: dt.datetime | dt.time,
           what: str) -> cbor2.CBORTag:
    """A wall-clock value in microseconds, with its UTC offset when it has one."""
    off = value.utcoffset()
    if off is None:
        return cbor2.CBORTag(naive_tag, us)
    return cbor2.CBORTag(aware_tag, [us, _offset_s(off, what)])


def _offset_s(off: dt.timedelta | None, what: str) -> int:
    assert off is not None
    if off.microseconds:
        raise ValueError(f"{what}: a UTC offset with fractions of a second cannot be sent")
    return int(off.total_seconds())


def _time_us(value: dt.time) -> int:
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 \
        + value.microsecond


_PLAIN = (bool, int, float, str, bytes, uuid.UUID)  # a tuple: built once, not per value
_PLAIN_TYPES = frozenset((type(None), bool, int, float, str, bytes, uuid.UUID))


def _enc(value: Any, what: str, depth: int = 0) -> Any:
    """One value as something cbor2 encodes the way format 1 wants."""
    if value is None or isinstance(value, _PLAIN):
        return value
    if isinstance(value, Decimal):
        if value.is_finite() and not (value.is_zero() and value.is_signed()):
            return value
        return cbor2.CBORTag(TAG_DECIMAL_SPECIAL, str(value))
    if isinstance(value, dt.datetime):
        return _zoned(TAG_NAIVE_DATETIME, TAG_DATETIME, _wall_us(value), value, what)
    if isinstance(value, dt.date):
        return cbor2.CBORTag(TAG_DATE, (value - _EPOCH_DATE).days)
    if isinstance(value, dt.time):
        return _zoned(TAG_TIME, TAG_TIME, _time_us(value), value, what)
    if isinstance(value, dt.timedelta):
        return cbor2.CBORTag(TAG_TIMEDELTA, value // _US)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if depth < _MAX_DEPTH:
        if isinstance(value, list | tuple):
            return [_enc(v, what, depth + 1) for v in value]
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {k: _enc(v, what, depth + 1) for k, v in value.items()}
    raise ValueError(f"{what}: cannot send a value of type {type(value).__name__}")


def encode_batch(batch: ChangeBatch, fields: list[str]) -> bytes:
    """The batch as format-1 CBOR. ``fields`` are the fields sent, in this order; a row
    without one of them is a bug in the caller (ValueError), other row keys stay home."""
    if len(set(fields)) != len(fields):
        raise ValueError("encode_batch: duplicate field names")
    changes: list[list[Any]] = []
    key_label = f"{batch.resource} key"
    labels = [f"{batch.resource}.{f}" for f in fields]  # built once, used only on errors
    plain = _PLAIN_TYPES
    for ch in batch.changes:
        key = [v if type(v) in plain else _enc(v, key_label, 0) for v in ch.key]
        if ch.op == "delete":
            changes.append([OP_DELETE, key])
        elif ch.op == "upsert":
            row = ch.row or {}
            try:
                values = [row[f] for f in fields]
            except KeyError:
                missing = [f for f in fields if f not in row]
                raise ValueError(f"{batch.resource} key {ch.key!r}: row has no field "
                                 f"'{missing[0]}'") from None
            # The common types go to cbor2 as they are; only the rest need converting.
            changes.append([OP_UPSERT, key,
                            [v if type(v) in plain else _enc(v, lab)
                             for v, lab in zip(values, labels, strict=True)]])
        else:
            raise ValueError(f"{batch.resource}: unknown change op {ch.op!r}")
    doc = [FORMAT, batch.resource, bool(batch.initial), list(fields), changes]
    return cbor2.dumps(doc)


# ---- decoding ---------------------------------------------------------------------------

class _Bad(Exception):
    pass


def _tag_hook(a: Any, b: Any) -> Any:
    # cbor2 5 calls hook(decoder, tag); cbor2 6 calls hook(tag, immutable).
    tag = a if isinstance(a, cbor2.CBORTag) else b
    v = tag.value
    if tag.tag == TAG_NAIVE_DATETIME and type(v) is int:
        return _EPOCH + dt.timedelta(microseconds=v)
    if tag.tag == TAG_DATETIME and _int_pair(v):
        wall = _EPOCH + dt.timedelta(microseconds=v[0])
        return wall.replace(tzinfo=dt.timezone(dt.timedelta(seconds=v[1])))
    if tag.tag == TAG_TIME:
        if type(v) is int:
            return _time_from_us(v, None)
        if _int_pair(v):
            return _time_from_us(v[0], dt.timezone(dt.timedelta(seconds=v[1])))
    if tag.tag == TAG_DECIMAL_SPECIAL and isinstance(v, str) and len(v) <= 16:
        d = Decimal(v)
        if d.is_finite() and not d.is_zero():
            raise _Bad("tag 48004 holds an ordinary decimal")
        return d
    if tag.tag == TAG_TIMEDELTA and type(v) is int:
        return dt.timedelta(microseconds=v)
    raise _Bad(f"unexpected tag {tag.tag}")


def _int_pair(v: Any) -> bool:
    return isinstance(v, list | tuple) and len(v) == 2 and type(v[0]) is int \
        and type(v[1]) is int


def _time_from_us(us: int, tz: dt.tzinfo | None) -> dt.time:
    if not 0 <= us < 86_400_000_000:
        raise _Bad("time of day out of range")
    s, micro = divmod(us, 1_000_000)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return dt.time(h, m, s, micro, tzinfo=tz)


_SCALARS = (type(None), bool, int, float, str, bytes, Decimal, dt.datetime, dt.date,
            dt.time, dt.timedelta, uuid.UUID)


def _check_value(v: Any, depth: int = 0) -> Any:
    """Only the types format 1 defines may come out of a package (a crafted one could
    hold sets, regular expressions, MIME messages or shared references)."""
    if type(v) in _SCALARS:
        return v
    if depth >= _MAX_DEPTH:
        raise _Bad("values nested too deeply")
    if type(v) is list:
        return [_check_value(x, depth + 1) for x in v]
    if type(v) is dict:
        if not all(type(k) is str for k in v):
            raise _Bad("map keys in a value must be text")
        return {k: _check_value(x, depth + 1) for k, x in v.items()}
    raise _Bad(f"a value of type {type(v).__name__}")


def decode_batch(data: bytes) -> ChangeBatch:
    """Inverse of :func:`encode_batch`. Anything that is not a well-formed format-1
    batch raises ``PackageError('malformed', ...)`` and nothing else."""
    try:
        return _decode(data)
    except PackageError:
        raise
    except (_Bad, cbor2.CBORError, ValueError, TypeError, OverflowError, IndexError,
            KeyError, RecursionError, MemoryError, ArithmeticError) as e:
        raise PackageError("malformed", f"rows payload: {e}") from None
    except Exception as e:  # cbor2's C decoder may raise whatever a bad tag triggers
        raise PackageError("malformed", f"rows payload: {type(e).__name__}: {e}") from None


def _decode(data: bytes) -> ChangeBatch:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _Bad("not bytes")
    fp = io.BytesIO(bytes(data))
    doc = cbor2.CBORDecoder(fp, tag_hook=_tag_hook, allow_duplicate_keys=False,
                            strict_hashable_types=True, max_depth=_MAX_DEPTH + 8).decode()
    if fp.tell() != len(data):
        raise _Bad("trailing bytes after the batch")
    if not (type(doc) is list and len(doc) == 5):
        raise _Bad("not a 5-item array")
    fmt, resource, initial, fields, changes = doc
    if fmt != FORMAT or type(fmt) is not int:
        raise _Bad(f"unknown format {fmt!r}")
    if type(resource) is not str or type(initial) is not bool:
        raise _Bad("bad resource or initial flag")
    if type(fields) is not list or not all(type(f) is str for f in fields) \
            or len(set(fields)) != len(fields):
        raise _Bad("bad field list")
    if type(changes) is not list:
        raise _Bad("bad change list")
    out: list[Change] = []
    width: int | None = None
    for i, ch in enumerate(changes):
        if type(ch) is not list or len(ch) < 2 or type(ch[0]) is not int \
                or type(ch[1]) is not list or not ch[1]:
            raise _Bad(f"change {i} is not [op, key, ...]")
        if width is None:
            width = len(ch[1])
        elif len(ch[1]) != width:
            raise _Bad(f"change {i} has a key of another length")
        key = tuple(_check_value(v) for v in ch[1])
        if ch[0] == OP_DELETE and len(ch) == 2:
            out.append(Change("delete", key))
        elif ch[0] == OP_UPSERT and len(ch) == 3 and type(ch[2]) is list \
                and len(ch[2]) == len(fields):
            out.append(Change("upsert", key,
                              dict(zip(fields, map(_check_value, ch[2]), strict=True))))
        else:
            raise _Bad(f"change {i} is malformed")
    return ChangeBatch(resource=resource, changes=out, initial=initial)
