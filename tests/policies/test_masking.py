"""Masking rules (脱敏): each rule, CJK by characters, None, the salted hash, the tuple
fast path, and strict rule parsing."""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest

from exnode.node.base.errors import UsageError
from exnode.policies.masking import Masker, MaskError, Rule, UnknownMaskField, parse_rules

SALT = b"grant-7f3a"


def mask(rule: str, value: Any) -> Any:
    return Masker({"f": rule}, salt=SALT).apply({"f": value})["f"]


@pytest.mark.parametrize("rule, value, expected", [
    ("last:4", "13812345678", "*******5678"),
    ("last:4", 13812345678, "*******5678"),  # not a string: str() first
    ("first:3", "13812345678", "138********"),
    ("first:1", "张三丰", "张**"),
    ("first:1", "张三", "张*"),
    ("last:1", "欧阳娜娜", "***娜"),
    ("edges:3,4", "13812345678", "138****5678"),
    ("edges:6,4", "110101199003074514", "110101********4514"),
    ("edges:1,1", "张三丰", "张*丰"),
    ("edges:0,2", "abcdef", "****ef"),
    ("edges:2,0", "abcdef", "ab****"),
    ("all", "张三丰", "***"),
    ("all", Decimal("12.50"), "*****"),
    ("null", "张三", None),
    ("null", 42, None),
    ("year", date(1990, 5, 17), 1990),
    ("year", datetime(1990, 5, 17, 8, 30), 1990),
    ("year", "1990-05-17", "1990"),
    ("year", "1990-05-17 08:30:00", "1990"),
    ("year", "1990-05-17T08:30:00+08:00", "1990"),
    ("year", "17/05/1990", None),  # unreadable: withheld, not passed through
    ("year", 19900517, None),
    # A value no longer than what a rule keeps is masked whole.
    ("last:4", "1234", "****"),
    ("last:4", "123", "***"),
    ("first:1", "张", "*"),
    ("edges:3,4", "1234567", "*******"),
    ("first:2", "", ""),
    ("all", "", ""),
])
def test_rules(rule: str, value: Any, expected: Any) -> None:
    assert mask(rule, value) == expected


@pytest.mark.parametrize("rule", ["last:4", "first:1", "edges:1,1", "all", "null", "hash", "year"])
def test_none_stays_none(rule: str) -> None:
    assert mask(rule, None) is None
    assert Masker({"f": rule}, SALT).apply_tuples(["f"], [(None,)]) == [(None,)]


def test_hash_is_stable_within_a_salt_and_differs_across_salts() -> None:
    a, b = Masker({"id_no": "hash"}, salt=b"grant-a"), Masker({"id_no": "hash"}, salt=b"grant-b")
    token = a.apply({"id_no": "110101199003074514"})["id_no"]
    assert token == hashlib.sha256(b"grant-a" + b"110101199003074514").hexdigest()[:16]
    assert len(token) == 16 and int(token, 16) >= 0
    assert a.apply({"id_no": "110101199003074514"})["id_no"] == token
    assert Masker({"x": "hash"}, salt=b"grant-a").apply({"x": "110101199003074514"})["x"] == token
    assert b.apply({"id_no": "110101199003074514"})["id_no"] != token
    assert a.apply({"id_no": "110101199003074515"})["id_no"] != token
    assert a.apply({"id_no": "张三"})["id_no"] == hashlib.sha256(
        b"grant-a" + "张三".encode()).hexdigest()[:16]
    assert a.apply({"id_no": 42})["id_no"] == a.apply({"id_no": "42"})["id_no"]


def test_hash_needs_a_salt() -> None:
    with pytest.raises(MaskError, match=r"hash rule needs the grant's salt.*id_no"):
        Masker({"id_no": "hash", "name": "first:1"})
    assert Masker({"name": "first:1"}).apply({"name": "张三"}) == {"name": "张*"}
    with pytest.raises(MaskError, match="salt must be bytes"):
        Masker({"name": "hash"}, salt="text")  # type: ignore[arg-type]


def test_apply_returns_a_new_row_and_leaves_the_rest() -> None:
    m = Masker({"name": "first:1", "phone": "edges:3,4", "absent": "all"})
    payload = {"k": [1, 2]}
    row = {"id": 7, "name": "张三丰", "phone": "13812345678", "extra": payload}
    out = m.apply(row)
    assert out == {"id": 7, "name": "张**", "phone": "138****5678", "extra": payload}
    assert out is not row and row["name"] == "张三丰"  # the input is not changed
    assert out["extra"] is payload and "absent" not in out
    assert m.apply_rows([row, {"name": None}]) == [out, {"name": None}]


def test_apply_tuples_is_apply_on_tuples() -> None:
    m = Masker({"name": "first:1", "id_no": "hash", "born": "year"}, salt=SALT)
    fields = ["id", "born", "name", "note", "id_no"]
    note = object()
    rows = [(1, date(1990, 5, 17), "张三丰", note, "110101199003074514"),
            (2, None, None, None, None),
            (3, "1985-02-01", "李四", "x", "11010119900307168X")]
    got = m.apply_tuples(fields, rows)
    want = [tuple(m.apply(dict(zip(fields, r, strict=True))).values()) for r in rows]
    assert got == want
    assert got[0][:3] == (1, 1990, "张**") and got[0][3] is note
    assert got[2][1] == "1985" and len(got[2][4]) == 16
    assert all(isinstance(r, tuple) for r in got)
    assert rows[0][2] == "张三丰"  # the input is not changed


def test_apply_tuples_without_masked_columns() -> None:
    m = Masker({"name": "all"})
    rows = [(1, "a"), (2, "b")]
    assert m.apply_tuples(["id", "city"], rows) == rows
    assert m.apply_tuples(["id", "city"], [[1, "a"]]) == [(1, "a")]
    assert m.apply_tuples(["city", "name"], [("北京", "张三")]) == [("北京", "**")]


def test_check_fields() -> None:
    m = Masker({"name": "first:1", "phone": "last:4", "mail": "all"})
    m.check_fields(["id", "name", "phone", "mail"])
    with pytest.raises(UnknownMaskField) as e:
        m.check_fields(["id", "name", "phone"])
    assert str(e.value) == "masking rules name unknown field 'mail' (fields: id, name, phone)"
    with pytest.raises(UnknownMaskField, match="'phone' and 1 more"):
        m.check_fields(["name"])
    assert issubclass(UnknownMaskField, MaskError) and issubclass(MaskError, UsageError)


def test_parse_rules() -> None:
    assert parse_rules({"a": "last:4", "b": "first:1", "c": "edges:3,4", "d": "all",
                        "e": "null", "f": "hash", "g": "year", "h": "edges:0,2"}) == {
        "a": Rule("last", tail=4), "b": Rule("first", head=1), "c": Rule("edges", 3, 4),
        "d": Rule("all"), "e": Rule("null"), "f": Rule("hash"), "g": Rule("year"),
        "h": Rule("edges", 0, 2)}
    assert str(Rule("edges", 3, 4)) == "edges:3,4" and str(Rule("last", tail=4)) == "last:4"
    assert parse_rules({}) == {}


@pytest.mark.parametrize("spec, part", [
    ({"a": "last"}, "'last'"),
    ({"a": "last:"}, "'last:'"),
    ({"a": "last:0"}, "must keep 1 to 1,000"),
    ({"a": "edges:0,0"}, "must keep 1 to 1,000"),
    ({"a": "first:1001"}, "must keep 1 to 1,000"),
    ({"a": "edges:600,600"}, "must keep 1 to 1,000"),
    ({"a": "last:04"}, "'last:04'"),
    ({"a": "last:-1"}, "'last:-1'"),
    ({"a": "last:99999"}, "'last:99999'"),
    ({"a": "LAST:4"}, "'LAST:4'"),
    ({"a": "last:4 "}, "'last:4 '"),
    ({"a": "edges:1"}, "'edges:1'"),
    ({"a": "edges:1,2,3"}, "'edges:1,2,3'"),
    ({"a": "hash:1"}, "'hash:1'"),
    ({"a": "mask"}, "'mask' for field a (rules: first:N"),
    ({"a": ""}, "''"),
    ({"a": "all\nnull"}, "'all\\nnull'"),
    ({"a": 4}, "not int for field a"),
    ({"": "all"}, "bad field name ''"),
    ({1: "all"}, "bad field name '1'"),
    ({"a\nb": "all"}, "bad field name"),
    (["a", "all"], "not list"),
    ({f"f{i}": "all" for i in range(1001)}, "at most 1,000"),
])
def test_parse_rules_refuses(spec: Any, part: str) -> None:
    with pytest.raises(MaskError) as e:
        parse_rules(spec)
    assert part in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(MaskError):
        Masker(spec, SALT)
