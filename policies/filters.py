"""Row filters: the conditions of a data query or a grant, kept as data, never as SQL.

A filter is a list of ``Cond(field, op, value)``, all of which must hold. It comes from
the CLI (``parse``: ``age >= 18``, ``city in 北京,上海``), or from another node inside a
package (``from_wire``), so it is compiled to SQLAlchemy Core expressions whose values
are bound parameters: ``' OR 1=1 --`` is a name nobody has, not a clause. Field names
are checked against the table (and the grant's allowed columns) before any SQL exists.
``from_wire`` is strict and bounded because a forged package must not be able to send
an unbounded or oddly typed filter to a database.

The same filter is also evaluated in Python (``matches``), for rows already read: a
grant's row filter selects a snapshot in SQL and then checks each change row before it
is forwarded. The two must select the same rows, so both follow SQL's rules:

- NULL matches nothing but ``is null``: ``x != 5`` is false when x is NULL, as in SQL.
- Values are coerced to the column's type before comparing ('18' against an integer
  column is 18; 'abc' is refused rather than compared as text, which the databases
  would each do differently). ``matches`` coerces to the type of the row's value.
- ``like`` has two wildcards, ``%`` and ``_``, and no escape character (a backslash is
  a backslash, on PostgreSQL too), and it is case-sensitive. SQLite's LIKE ignores the
  case of ASCII letters, so there the pattern is compiled to the equivalent GLOB.

Where the database decides and Python cannot follow: ``<``/``>`` between strings use
the database's collation (code-point order, as in Python, only under C/C.UTF-8 or
binary collations), and MariaDB's default ``_ci`` collations compare ``=`` and ``like``
without case. There ``compile`` can select more rows than ``matches`` accepts.
"""

from __future__ import annotations

import math
import operator
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from exnode.node.base.errors import UsageError

__all__ = [
    "MAX_CONDS",
    "MAX_IN_VALUES",
    "MAX_STR",
    "MAX_VALUES",
    "OPS",
    "Cond",
    "FilterError",
    "UnknownField",
    "compile",
    "compile_order",
    "from_wire",
    "matches",
    "parse",
    "parse_order",
    "to_wire",
]

OPS = ("=", "!=", "<", "<=", ">", ">=", "like", "in", "is null", "is not null", "between")
NULL_OPS = frozenset({"is null", "is not null"})
LIST_OPS = frozenset({"in", "between"})

MAX_CONDS = 64  # conditions in one filter from the wire
MAX_IN_VALUES = 10_000  # values of one ``in``
MAX_VALUES = 20_000  # values in one filter: below SQLite's 32,766 bound parameters
MAX_STR = 4_096  # characters in one string value
MAX_FIELD = 128  # characters in a field name
_INT64 = 2**63
_LISTED = 20  # fields named in an UnknownField message

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYMBOL_OP = re.compile(r"[!<>=]+")
_WORD_OP = re.compile(r"(is\s+not\s+null|is\s+null|between|like|in)(?=\s|$)", re.IGNORECASE)
_INT = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})

_SCALARS = (str, bool, int, float, Decimal, date, time, uuid.UUID)  # datetime is a date


class FilterError(UsageError):
    """A filter that cannot be read, is too large, or does not fit the table."""


class UnknownField(FilterError):
    """A filter or an order names a field the table (or the grant) does not offer."""


def _q(value: Any, limit: int = 60) -> str:
    """A value quoted for a one-line message, shortened."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("…" if len(value) > limit else "")
    text = str(value)
    return repr(text[:limit]) if "\n" in text or len(text) > limit else text


@dataclass(frozen=True)
class Cond:
    """One condition: ``field op value``. ``value`` is a tuple for ``in`` (one or more
    values) and ``between`` (low, high), None for ``is null`` / ``is not null``."""

    field: str
    op: str
    value: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.field, str) or len(self.field) > MAX_FIELD \
                or not _FIELD.fullmatch(self.field):
            raise FilterError(f"bad field name {_q(self.field)} (letters, digits and _)")
        op = " ".join(self.op.lower().split()) if isinstance(self.op, str) else self.op
        if op not in OPS:
            raise FilterError(f"unknown operator {_q(self.op)} (operators: {', '.join(OPS)})")
        object.__setattr__(self, "op", op)
        value = self.value
        if op in NULL_OPS:
            if value is not None:
                raise FilterError(f"{op} takes no value (field {self.field})")
        elif op in LIST_OPS:
            if not isinstance(value, list | tuple):
                raise FilterError(f"{op} needs a list of values (field {self.field})")
            if op == "between" and len(value) != 2:
                raise FilterError(f"between needs two values, LOW,HIGH (field {self.field})")
            if op == "in" and not 1 <= len(value) <= MAX_IN_VALUES:
                raise FilterError(f"in needs 1 to {MAX_IN_VALUES:,} values, not "
                                  f"{len(value):,} (field {self.field})")
            for v in value:
                _check_scalar(v, self.field)
            object.__setattr__(self, "value", tuple(value))
        else:
            _check_scalar(value, self.field)
            if op == "like" and not isinstance(value, str):
                raise FilterError(f"like needs a text pattern, not {_q(value)} "
                                  f"(field {self.field})")


def _check_scalar(v: Any, field: str) -> None:
    if v is None:
        raise FilterError(f"a value cannot be null (field {field}; use 'is null')")
    if not isinstance(v, _SCALARS):
        raise FilterError(f"a value of type {type(v).__name__} is not allowed (field {field})")
    if isinstance(v, str) and len(v) > MAX_STR:
        raise FilterError(f"a value longer than {MAX_STR:,} characters (field {field})")
    if isinstance(v, float | Decimal) and not math.isfinite(v):
        raise FilterError(f"{v} is not a usable number (field {field})")


# ---------------------------------------------------------------- CLI text

def parse(text: str) -> Cond:
    """Read ``FIELD OP VALUE`` (``age >= 18``, ``city in 北京,上海``, ``id_no is null``,
    ``born between 1990-01-01,1999-12-31``). Quote a value with ' or " to keep spaces
    or commas; inside quotes, a doubled quote is one quote. Values stay strings here;
    ``compile`` coerces them to the column's type."""
    s = text.strip()
    if not s:
        raise FilterError("empty filter: expected FIELD OP VALUE, e.g. 'age >= 18'")
    m = _FIELD.match(s)
    if m is None:
        raise FilterError(f"filter {_q(s)} must start with a field name (letters, digits, _)")
    field, rest = m.group(), s[m.end():]
    after = rest.lstrip()
    sm = _SYMBOL_OP.match(after)
    wm = _WORD_OP.match(after) if rest[:1].isspace() else None
    if sm is not None:
        op, value_text = sm.group(), after[sm.end():]
        if op not in OPS:
            raise FilterError(f"unknown operator {_q(op)} in {_q(s)} "
                              f"(operators: {', '.join(OPS)})")
    elif wm is not None:
        op, value_text = " ".join(wm.group().lower().split()), after[wm.end():]
    else:
        bad = after.split()[0] if after.split() else ""
        what = f"unknown operator {_q(bad)}" if bad else "no operator"
        raise FilterError(f"{what} in {_q(s)} (operators: {', '.join(OPS)})")
    value_text = value_text.strip()
    if op in NULL_OPS:
        if value_text:
            raise FilterError(f"nothing may follow {op!r}, found {_q(value_text)}")
        return Cond(field, op)
    if not value_text:
        raise FilterError(f"no value after {op!r} in {_q(s)}")
    if op in LIST_OPS:
        values = _read_list(value_text)
        if op == "between" and len(values) != 2:
            raise FilterError(f"between needs two values, LOW,HIGH; found {len(values)} "
                              f"in {_q(value_text)}")
        return Cond(field, op, tuple(values))
    return Cond(field, op, _read_one(value_text))


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    """The quoted string starting at ``text[i]`` and the index after its closing quote."""
    quote, out, j = text[i], [], i + 1
    while True:
        k = text.find(quote, j)
        if k < 0:
            raise FilterError(f"unclosed quote in {_q(text[i:])}")
        out.append(text[j:k])
        if text[k + 1:k + 2] == quote:  # a doubled quote is one quote
            out.append(quote)
            j = k + 2
            continue
        return "".join(out), k + 1


def _read_one(text: str) -> str:
    if text[0] not in "'\"":
        return text
    value, end = _read_quoted(text, 0)
    if text[end:].strip():
        raise FilterError(f"unexpected {_q(text[end:].strip())} after the quoted value")
    return value


def _read_list(text: str) -> list[str]:
    values: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] in "'\"":
            value, i = _read_quoted(text, i)
            while i < n and text[i].isspace():
                i += 1
            if i < n and text[i] != ",":
                raise FilterError(f"unexpected {_q(text[i:])} after a quoted value")
        else:
            k = text.find(",", i)
            k = n if k < 0 else k
            value, i = text[i:k].strip(), k
            if not value:
                raise FilterError(f"empty value in the list {_q(text)}")
        values.append(value)
        if len(values) > MAX_IN_VALUES:
            raise FilterError(f"more than {MAX_IN_VALUES:,} values in a list")
        if i >= n:
            return values
        i += 1  # the comma
        if i >= n:
            raise FilterError(f"empty value at the end of the list {_q(text)}")


# ---------------------------------------------------------------- wire form

def to_wire(conds: Iterable[Cond]) -> list[list[Any]]:
    """``[[field, op, value], ...]`` of JSON/CBOR types only (dates and decimals become
    ISO and decimal strings; ``compile`` coerces them back by the column's type)."""
    out = []
    for c in conds:
        if c.op in NULL_OPS:
            value: Any = None
        elif c.op in LIST_OPS:
            value = [_wire_scalar(v) for v in c.value]
        else:
            value = _wire_scalar(c.value)
        out.append([c.field, c.op, value])
    return out


def _wire_scalar(v: Any) -> str | bool | int | float:
    if isinstance(v, str | bool | int | float):
        return v
    if isinstance(v, date | time):
        return v.isoformat()
    return str(v)  # Decimal, UUID


def from_wire(obj: Any) -> list[Cond]:
    """The conditions of a filter received from another node. Everything is checked:
    the shape, the types, the operator, and the sizes (``MAX_CONDS`` conditions,
    ``MAX_IN_VALUES`` per ``in``, ``MAX_VALUES`` in all, ``MAX_STR`` per string)."""
    if not isinstance(obj, list | tuple):
        raise FilterError(f"a filter must be a list of conditions, not {type(obj).__name__}")
    if len(obj) > MAX_CONDS:
        raise FilterError(f"a filter has at most {MAX_CONDS} conditions, not {len(obj):,}")
    conds = []
    for n, item in enumerate(obj, 1):
        if not isinstance(item, list | tuple) or len(item) != 3:
            raise FilterError(f"condition {n} must be [field, op, value]")
        field, op, value = item
        if not isinstance(field, str):
            raise FilterError(f"condition {n}: the field must be a string")
        if not isinstance(op, str) or op not in OPS:  # the canonical spelling only
            raise FilterError(f"condition {n}: unknown operator {_q(op)}")
        if op in LIST_OPS:
            if not isinstance(value, list | tuple):
                raise FilterError(f"condition {n}: {op} needs a list of values")
            if len(value) > MAX_IN_VALUES:
                raise FilterError(f"condition {n}: more than {MAX_IN_VALUES:,} values")
            for v in value:
                _check_wire_scalar(v, n)
        elif op not in NULL_OPS:
            _check_wire_scalar(value, n)
        conds.append(Cond(field, op, value))
    _check_total(conds)
    return conds


def _check_wire_scalar(v: Any, n: int) -> None:
    if isinstance(v, bool) or (isinstance(v, int) and -_INT64 <= v < _INT64):
        return
    if isinstance(v, float) and math.isfinite(v):
        return
    if isinstance(v, str) and len(v) <= MAX_STR:
        return
    if isinstance(v, str):
        raise FilterError(f"condition {n}: a string longer than {MAX_STR:,} characters")
    raise FilterError(f"condition {n}: a value of type {type(v).__name__} is not allowed"
                      + (" (out of range)" if isinstance(v, int | float) else ""))


def _check_total(conds: Sequence[Cond]) -> None:
    total = sum(len(c.value) for c in conds if c.op in LIST_OPS) + len(conds)
    if total > MAX_VALUES:
        raise FilterError(f"a filter has at most {MAX_VALUES:,} values, not {total:,}")


# ---------------------------------------------------------------- coercion

def _to_int(v: Any) -> int | None:
    if isinstance(v, bool | int):
        out = int(v)
    elif isinstance(v, float) and v.is_integer():
        out = int(v)
    elif isinstance(v, Decimal) and v.is_finite() and v == v.to_integral_value():
        out = int(v)
    elif isinstance(v, str) and _INT.fullmatch(v.strip()):
        out = int(v.strip())
    else:
        return None
    return out if -_INT64 <= out < _INT64 else None


def _to_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        if isinstance(v, int | float | Decimal):
            out = float(v)
        elif isinstance(v, str) and _NUMBER.fullmatch(v.strip()):
            out = float(v.strip())
        else:
            return None
    except OverflowError:
        return None
    return out if math.isfinite(out) else None


def _to_decimal(v: Any) -> Decimal | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, Decimal | int):
        return Decimal(v)
    if isinstance(v, float):
        return Decimal(repr(v))
    if isinstance(v, str) and _NUMBER.fullmatch(v.strip()):
        try:
            return Decimal(v.strip())
        except InvalidOperation:
            return None
    return None


def _to_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        t = v.strip().lower()
        return True if t in _TRUE else False if t in _FALSE else None
    return None


def _to_date(v: Any) -> date | None:
    if isinstance(v, datetime):
        return None  # a time of day would be dropped silently
    if isinstance(v, date):
        return v
    if isinstance(v, str) and _DATE.fullmatch(v.strip()):
        try:
            return date.fromisoformat(v.strip())
        except ValueError:
            return None
    return None


def _to_datetime(v: Any) -> datetime | None:
    if isinstance(v, datetime):
        return v
    if isinstance(v, date):
        return datetime(v.year, v.month, v.day)
    if isinstance(v, str) and _DATE.match(v.strip()):
        try:
            return datetime.fromisoformat(v.strip())
        except ValueError:
            return None
    return None


def _to_time(v: Any) -> time | None:
    if isinstance(v, time):
        return v
    if isinstance(v, str):
        try:
            return time.fromisoformat(v.strip())
        except ValueError:
            return None
    return None


def _to_uuid(v: Any) -> uuid.UUID | None:
    if isinstance(v, uuid.UUID):
        return v
    if isinstance(v, str):
        try:
            return uuid.UUID(v.strip())
        except ValueError:
            return None
    return None


def _to_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, date | time):
        return v.isoformat()
    return str(v)


# Python type -> (what the message calls it, converter returning None when it cannot).
# Looked up along the MRO, so bool before int and datetime before date.
_COERCE: dict[type, tuple[str, Callable[[Any], Any]]] = {
    bool: ("boolean", _to_bool),
    int: ("integer", _to_int),
    float: ("number", _to_float),
    Decimal: ("number", _to_decimal),
    datetime: ("date-time", _to_datetime),
    date: ("date", _to_date),
    time: ("time", _to_time),
    uuid.UUID: ("uuid", _to_uuid),
    str: ("text", _to_str),
}


def _coercer(pytype: type | None) -> tuple[str, Callable[[Any], Any]] | None:
    if pytype is None:
        return None
    for t in pytype.__mro__:
        if t in _COERCE:
            return _COERCE[t]
    return None


def _coerce(value: Any, pytype: type | None, field: str) -> Any:
    found = _coercer(pytype)
    if found is None:  # a type we do not know: the database or Python decides
        return value
    kind, convert = found
    out = convert(value)
    if out is None:
        raise FilterError(f"{_q(value)} is not a valid {kind} for field {field}")
    return out


def _column_type(col: sa.ColumnElement[Any]) -> type | None:
    try:
        return col.type.python_type
    except NotImplementedError:
        return None


# ---------------------------------------------------------------- SQL

_ESC = "!"  # the explicit ESCAPE character, so that a backslash stays a backslash


def _glob(pattern: str) -> str:
    """A LIKE pattern (``%``, ``_``, nothing escaped) as the equivalent SQLite GLOB."""
    table = {"%": "*", "_": "?", "*": "[*]", "?": "[?]", "[": "[[]"}
    return "".join(table.get(ch, ch) for ch in pattern)


class _LikePattern(sa.types.TypeDecorator[str]):
    """The pattern's bound value, rewritten for the dialect when the statement runs (so
    a compiled statement stays cacheable: the rewriting is not part of the SQL)."""

    impl = sa.String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: sa.Dialect) -> str | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return _glob(value)
        return value.replace(_ESC, _ESC + _ESC)


class _Like(ColumnElement[bool]):
    """``column LIKE pattern``, case-sensitive and without an escape character."""

    __visit_name__ = "exnode_like"
    inherit_cache = True
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("pattern", InternalTraversal.dp_clauseelement),
    ]
    type = sa.Boolean()

    def __init__(self, column: sa.ColumnElement[Any], pattern: str) -> None:
        self.column = column
        self.pattern = sa.bindparam(None, pattern, type_=_LikePattern())

    @property
    def _from_objects(self) -> list[Any]:  # so that select(count()).where(...) has a FROM
        return self.column._from_objects


@compiles(_Like)
def _compile_like(el: _Like, compiler: Any, **kw: Any) -> str:
    return (f"({compiler.process(el.column, **kw)} LIKE "
            f"{compiler.process(el.pattern, **kw)} ESCAPE '{_ESC}')")


@compiles(_Like, "sqlite")
def _compile_like_sqlite(el: _Like, compiler: Any, **kw: Any) -> str:
    # SQLite's LIKE ignores the case of ASCII letters; GLOB does not.
    return f"({compiler.process(el.column, **kw)} GLOB {compiler.process(el.pattern, **kw)})"


def _fields_text(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_LISTED])
    more = f", and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return f"{shown}{more}" if names else "none"


def _column(table: sa.Table, field: str,
            allowed: Collection[str] | None) -> sa.ColumnElement[Any]:
    if field in table.c and (allowed is None or field in allowed):
        return table.c[field]
    offered = [c.name for c in table.c if allowed is None or c.name in allowed]
    raise UnknownField(f"unknown field {field!r} (fields: {_fields_text(offered)})")


def compile(conds: Sequence[Cond], table: sa.Table,
            allowed: Collection[str] | None = None) -> ColumnElement[bool]:
    """The AND of ``conds`` as a SQLAlchemy expression on ``table``'s columns, every
    value a bound parameter coerced to its column's type; ``sa.true()`` when empty.
    ``allowed`` limits the fields (a grant's columns); others are UnknownField."""
    _check_total(conds)
    clauses = [_compile_one(c, table, allowed) for c in conds]
    if not clauses:
        return sa.true()
    return clauses[0] if len(clauses) == 1 else sa.and_(*clauses)


def _compile_one(c: Cond, table: sa.Table,
                 allowed: Collection[str] | None) -> ColumnElement[bool]:
    col = _column(table, c.field, allowed)
    if c.op == "is null":
        return col.is_(None)
    if c.op == "is not null":
        return col.is_not(None)
    pytype = _column_type(col)
    if c.op == "like":
        if pytype is not None and not issubclass(pytype, str):
            raise FilterError(f"like needs a text field; {c.field} holds {pytype.__name__}")
        return _Like(col, c.value)
    if c.op == "in":
        return col.in_([_coerce(v, pytype, c.field) for v in c.value])
    if c.op == "between":
        lo, hi = (_bind(col, _coerce(v, pytype, c.field)) for v in c.value)
        return col.between(lo, hi)
    return _COMPARE[c.op](col, _bind(col, _coerce(c.value, pytype, c.field)))


def _bind(col: sa.ColumnElement[Any], value: Any) -> sa.BindParameter[Any]:
    # Explicit, so that True/False/None are parameters too, never SQL keywords.
    return sa.bindparam(None, value, type_=col.type)


_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt,
    "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}


# ---------------------------------------------------------------- order

_ORDER_SIGN = re.compile(r"([+-]?)([A-Za-z_][A-Za-z0-9_]*)")
_ORDER_WORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s+(asc|desc)", re.IGNORECASE)


def parse_order(items: Sequence[str]) -> list[tuple[str, bool]]:
    """``(field, descending)`` for each of ``name``, ``-age``, ``+age``, ``age desc``,
    ``name asc``; an item may hold several, comma-separated (``name,-age``)."""
    out: list[tuple[str, bool]] = []
    for item in items:
        for part in item.split(","):
            p = part.strip()
            if m := _ORDER_SIGN.fullmatch(p):
                field, desc = m.group(2), m.group(1) == "-"
            elif m := _ORDER_WORD.fullmatch(p):
                field, desc = m.group(1), m.group(2).lower() == "desc"
            else:
                raise FilterError(f"cannot read order {_q(p)} "
                                  "(expected FIELD, -FIELD or 'FIELD desc')")
            if any(f == field for f, _ in out):
                raise FilterError(f"order names field {field!r} twice")
            out.append((field, desc))
            if len(out) > MAX_CONDS:
                raise FilterError(f"an order has at most {MAX_CONDS} fields")
    return out


def compile_order(order: Sequence[tuple[str, bool]], table: sa.Table,
                  allowed: Collection[str] | None = None) -> list[ColumnElement[Any]]:
    """ORDER BY clauses for ``parse_order``'s result; unknown fields are UnknownField.
    NULLs sort where the database puts them (last ascending on PostgreSQL, first on
    SQLite and MariaDB)."""
    out: list[ColumnElement[Any]] = []
    for field, desc in order:
        col = _column(table, field, allowed)
        out.append(col.desc() if desc else col.asc())
    return out


# ---------------------------------------------------------------- Python

@lru_cache(maxsize=256)
def _like_regex(pattern: str) -> re.Pattern[str]:
    parts = (".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts), re.DOTALL)


def matches(conds: Iterable[Cond], row: Mapping[str, Any]) -> bool:
    """Whether ``row`` satisfies every condition, with the semantics of ``compile``:
    NULL matches only ``is null``; the filter's value is coerced to the type of the
    row's value. A field missing from the row is UnknownField."""
    return all(_match(c, row) for c in conds)


def _match(c: Cond, row: Mapping[str, Any]) -> bool:
    if c.field not in row:
        raise UnknownField(f"unknown field {c.field!r} (fields: {_fields_text(row)})")
    rv = row[c.field]
    if c.op == "is null":
        return rv is None
    if c.op == "is not null":
        return rv is not None
    if rv is None:
        return False
    if c.op == "like":
        if not isinstance(rv, str):
            raise FilterError(f"like needs a text field; {c.field} holds {type(rv).__name__}")
        return _like_regex(c.value).fullmatch(rv) is not None
    pytype = type(rv)
    try:
        if c.op == "in":
            return any(rv == _coerce(v, pytype, c.field) for v in c.value)
        if c.op == "between":
            lo, hi = (_coerce(v, pytype, c.field) for v in c.value)
            return bool(lo <= rv <= hi)
        return bool(_COMPARE[c.op](rv, _coerce(c.value, pytype, c.field)))
    except TypeError:
        raise FilterError(f"cannot compare field {c.field} ({pytype.__name__}) "
                          f"with {_q(c.value)}") from None
