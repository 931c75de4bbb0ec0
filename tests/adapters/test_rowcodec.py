"""Row codec: every value type survives encode/decode unchanged; bad input is refused
as PackageError('malformed') and nothing else."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import cbor2
import pytest

from exnode.adapters.rowcodec import decode_batch, encode_batch
from exnode.node.base.errors import PackageError
from exnode.policies.changes import Change, ChangeBatch

CST = dt.timezone(dt.timedelta(hours=8))


def roundtrip(row: dict[str, Any]) -> dict[str, Any]:
    batch = ChangeBatch("people", [Change("upsert", (1,), row)])
    out = decode_batch(encode_batch(batch, list(row)))
    assert out.resource == "people" and len(out) == 1
    assert out.changes[0].op == "upsert" and out.changes[0].key == (1,)
    got = out.changes[0].row
    assert got is not None and list(got) == list(row)
    return got


def assert_identical(a: Any, b: Any) -> None:
    """Same type, same value, same representation (keeps Decimal scale, tz offset)."""
    assert type(a) is type(b), (a, b)
    assert repr(a) == repr(b)


VALUES: list[Any] = [
    None, "", "张三", "a\x00b", "\U0001f600 emoji", 0, 1, -1, 2**63 - 1, -(2**63),
    2**64, -(2**100), 10**40, 0.0, 1.5, -2.75, 0.1, 1e-300, 1e300, float("inf"),
    float("-inf"), Decimal("12.3400"), Decimal("-12.34"), Decimal("0"), Decimal("0.0000"),
    Decimal("-99999999999.9999"), Decimal("1E+5"), Decimal("123456789012345678901234567890.5"),
    Decimal("-0.00"), Decimal("Infinity"), Decimal("-Infinity"), True, False, b"",
    b"\x00\xff" * 10, bytes(range(256)), dt.date(2024, 2, 29), dt.date(1, 1, 1),
    dt.date(9999, 12, 31), dt.date(1969, 12, 31),
    dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
    dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
    dt.datetime(1969, 12, 31, 23, 59, 59, 999999),
    dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=CST),
    dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    dt.datetime(2024, 6, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=-9, minutes=-30))),
    dt.datetime(1, 1, 1, tzinfo=CST), dt.datetime(9999, 12, 31, 23, 59,
                                                  tzinfo=dt.timezone(dt.timedelta(hours=-14))),
    dt.time(0, 0), dt.time(23, 59, 59, 999999), dt.time(8, 30, tzinfo=CST),
    dt.timedelta(days=-3, microseconds=7), uuid.UUID("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"),
    {"a": [1, "x", None, {"b": Decimal("1.50")}]}, [1, 2.5, "三"],
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: f"{type(v).__name__}:{v!r}"[:40])
def test_every_type_round_trips(value: Any) -> None:
    got = roundtrip({"v": value})["v"]
    assert_identical(got, value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        assert got.utcoffset() == value.utcoffset() and got == value  # same instant


def test_nan_round_trips() -> None:
    got = roundtrip({"f": float("nan"), "d": Decimal("NaN")})
    assert type(got["f"]) is float and got["f"] != got["f"]
    assert type(got["d"]) is Decimal and got["d"].is_nan()


def test_null_and_empty_string_stay_apart() -> None:
    got = roundtrip({"a": None, "b": "", "c": b"", "d": None})
    assert got == {"a": None, "b": "", "c": b"", "d": None}
    assert got["b"] is not None and got["a"] is None


def test_decimal_keeps_scale_and_sign() -> None:
    got = roundtrip({"a": Decimal("12.3400"), "b": Decimal("-0.0001"),
                     "c": Decimal("-12345678901234.5678")})
    assert str(got["a"]) == "12.3400"
    assert str(got["b"]) == "-0.0001"
    assert str(got["c"]) == "-12345678901234.5678"


def test_timezone_offset_kept_and_naive_stays_naive() -> None:
    aware = dt.datetime(2024, 3, 1, 8, 0, tzinfo=CST)
    zoned = dt.datetime(2024, 3, 1, 8, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    naive = dt.datetime(2024, 3, 1, 8, 0)
    got = roundtrip({"a": aware, "z": zoned, "n": naive})
    assert got["a"].utcoffset() == dt.timedelta(hours=8)
    assert got["a"] == dt.datetime(2024, 3, 1, 0, 0, tzinfo=dt.UTC)  # the same instant
    assert got["a"].isoformat() == "2024-03-01T08:00:00+08:00"
    assert got["z"] == zoned and got["z"].utcoffset() == dt.timedelta(hours=8)
    assert got["n"].tzinfo is None and got["n"] == naive


def test_five_megabytes_of_text() -> None:
    text = ("数据共享交换" * 300_000)[:1_750_000]  # 3 bytes each in UTF-8: ~5 MB
    assert len(text.encode()) > 5_000_000
    got = roundtrip({"notes": text})
    assert got["notes"] == text


def test_column_layout_is_compact() -> None:
    fields = ["id", "name", "amount", "updated_at"]
    rows = [{"id": i, "name": f"n{i}", "amount": Decimal("1.5"),
             "updated_at": dt.datetime(2024, 1, 1, tzinfo=CST)} for i in range(1000)]
    batch = ChangeBatch("r", [Change("upsert", (r["id"],), r) for r in rows])
    data = encode_batch(batch, fields)
    # Field names once, not per row: a row costs far less than its names would.
    assert data.count(b"updated_at") == 1
    assert len(data) < 1000 * 40


def test_batch_shape_round_trips() -> None:
    batch = ChangeBatch("org.people", [
        Change("upsert", ("a", 1), {"region": "a", "seq": 1, "v": "x"}),
        Change("delete", ("b", 2)),
        Change("upsert", ("a", 1), {"region": "a", "seq": 1, "v": "y"}),
    ], checkpoint={"watermark": 5}, initial=True)
    out = decode_batch(encode_batch(batch, ["region", "seq", "v"]))
    assert out.resource == "org.people" and out.initial is True
    assert out.checkpoint == {}  # bookkeeping never travels
    assert [(c.op, c.key, c.row) for c in out.changes] == \
        [(c.op, c.key, c.row) for c in batch.changes]
    empty = decode_batch(encode_batch(ChangeBatch("r"), []))
    assert empty.changes == [] and empty.initial is False


def test_encode_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(ValueError, match="no field 'b'"):
        encode_batch(ChangeBatch("r", [Change("upsert", (1,), {"a": 1})]), ["a", "b"])
    with pytest.raises(ValueError, match="type set"):
        encode_batch(ChangeBatch("r", [Change("upsert", (1,), {"a": {1, 2}})]), ["a"])


def _doc(*items: Any) -> bytes:
    return cbor2.dumps(list(items))


MALFORMED = [
    b"", b"\xff", b"\x85", b"not cbor at all", _doc(1, "r", False, ["a"]),
    _doc(2, "r", False, ["a"], []), _doc(True, "r", False, ["a"], []),
    _doc(1, 5, False, ["a"], []), _doc(1, "r", 0, ["a"], []), _doc(1, "r", False, [1], []),
    _doc(1, "r", False, ["a", "a"], []), _doc(1, "r", False, ["a"], {}),
    _doc(1, "r", False, ["a"], [[0, [1], [1, 2]]]), _doc(1, "r", False, ["a"], [[0, [1]]]),
    _doc(1, "r", False, ["a"], [[7, [1]]]), _doc(1, "r", False, ["a"], [[1, []]]),
    _doc(1, "r", False, ["a"], [[1, [1]], [1, [1, 2]]]),
    _doc(1, "r", False, ["a"], [[0, [1], [cbor2.CBORTag(258, [1])]]]),     # a set
    _doc(1, "r", False, ["a"], [[0, [1], [cbor2.CBORTag(35, "a+")]]]),     # a regex
    _doc(1, "r", False, ["a"], [[0, [1], [cbor2.CBORTag(99999, 1)]]]),     # unknown tag
    _doc(1, "r", False, ["a"], [[0, [1], [cbor2.CBORTag(48001, "x")]]]),
    _doc(1, "r", False, ["a"], [[0, [1], [cbor2.CBORTag(48002, [1, 86400])]]]),
    _doc(1, "r", False, ["a"], [[0, [1], [cbor2.CBORTag(48003, 86400 * 10**6)]]]),
    _doc(1, "r", False, ["a"], [[0, [1], [cbor2.CBORTag(48004, "1.5")]]]),
    _doc(1, "r", False, ["a"], [[0, [1], [cbor2.CBORTag(48001, 10**20)]]]),
    _doc(1, "r", False, ["a"], [[0, [1], [{1: 2}]]]),
    _doc(1, "r", False, ["a"], []) + b"\x00",                               # trailing
    b"\x9a\xff\xff\xff\xff",                                                # huge array
    b"\x81" * 100_000,                                                      # deep nesting
    bytes.fromhex("85016172f481616181830081018181d81c81d81d00"),          # self-reference
    bytes.fromhex("850162fffef481616180"),                                # bad UTF-8
]


@pytest.mark.parametrize("data", MALFORMED, ids=range(len(MALFORMED)))
def test_bad_input_is_malformed(data: bytes) -> None:
    with pytest.raises(PackageError) as err:
        decode_batch(data)
    assert err.value.reason == "malformed"


def test_truncated_valid_batch_is_malformed() -> None:
    batch = ChangeBatch("r", [Change("upsert", (i,), {"a": i, "b": "张三" * 10})
                              for i in range(50)])
    data = encode_batch(batch, ["a", "b"])
    for cut in (1, len(data) // 3, len(data) - 1):
        with pytest.raises(PackageError, match="malformed"):
            decode_batch(data[:cut])
