"""Built-in rules. Each is a pydantic model (its schema) whose ``compile`` builds checks."""

from __future__ import annotations

import math
import operator
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from itertools import compress, count, repeat
from operator import is_, ne
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .dates import as_date, as_datetime, date_bound, parse_loose_date, shift
from .ids import citizen_id_error, is_citizen_id, is_uscc, uscc_error
from .model import BatchCheck, CheckEnv, ValueCheck
from .spec import CompileContext, RuleSpec

__all__ = [
    "CitizenIdMatchesRule",
    "CitizenIdRule",
    "CodeTableRule",
    "DateRangeRule",
    "DateValidRule",
    "EnumRule",
    "LengthRule",
    "PatternRule",
    "RangeRule",
    "ReferenceRule",
    "RequiredRule",
    "TypeRule",
    "UniqueRule",
    "UniqueSharedRule",
    "UsccRule",
]

Checks = list[ValueCheck | BatchCheck]


def _preview(values: Iterable[Any], limit: int = 6) -> str:
    items = list(values)
    text = ", ".join(repr(v) for v in items[:limit])
    return text + (", …" if len(items) > limit else "")


# --- presence, type, shape -----------------------------------------------------------


class RequiredRule(RuleSpec):
    """The field must be present and not NULL (必填); blank strings count as missing."""

    allow_blank: bool = Field(
        False, description="Accept empty or whitespace-only strings as present."
    )

    def compile(self, ctx: CompileContext) -> Checks:
        if self.allow_blank:

            def ok(v: Any) -> bool:
                return v is not None
        else:

            def ok(v: Any) -> bool:
                return v is not None and not (isinstance(v, str) and (not v or v.isspace()))

        def reason(v: Any) -> str:
            return "value is missing" if v is None else "value is blank"

        def many(values: Iterable[Any]) -> list[Any]:
            if self.allow_blank:
                return []
            return [v for v in values if isinstance(v, str) and (not v or v.isspace())]

        return [self.value_check(f, ok, reason, sees_null=True, many=many) for f in self.targets()]


_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BOOL_TEXT = frozenset({"true", "false", "t", "f", "yes", "no", "y", "n", "1", "0"})


def to_number(v: Any) -> int | float | Decimal | None:
    """``v`` as a finite number (numeric strings become Decimal); None if it is not one."""
    t = type(v)
    if t is int:
        return v
    if t is Decimal:
        return v if v.is_finite() else None
    if t is float:
        return v if math.isfinite(v) else None
    if isinstance(v, str):
        if _DECIMAL_TEXT.fullmatch(v) is None:
            return None
        try:
            d = Decimal(v)
        except InvalidOperation:
            return None
        return d if d.is_finite() else None
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return int(v)
    if isinstance(v, Decimal):
        return v if v.is_finite() else None
    if isinstance(v, float):
        return float(v) if math.isfinite(v) else None
    return None


def _is_int(v: Any) -> bool:
    t = type(v)
    if t is int:
        return True
    if t is str:
        return _INT_TEXT.fullmatch(v) is not None
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, str) and _INT_TEXT.fullmatch(v) is not None)


def _is_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return True
    if isinstance(v, int):
        return v in (0, 1)
    return isinstance(v, str) and v.lower() in _BOOL_TEXT


def _decimal_shape(v: Any) -> tuple[int, int] | None:
    """(integer digits, decimal places) of a number, trailing zeros ignored."""
    n = to_number(v)
    if n is None:
        return None
    d = Decimal(repr(n)) if isinstance(n, float) else Decimal(n)
    _, digits, exp = d.normalize().as_tuple()
    assert isinstance(exp, int)
    if exp >= 0:
        return (0 if digits == (0,) else len(digits) + exp, 0)
    places = -exp
    return (max(len(digits) - places, 0), places)


class TypeRule(RuleSpec):
    """The value has the given type, or is a string that spells one exactly.

    str: a string. int: an integer or ``[+-]digits``. decimal: a finite number or a
    decimal string. date: a date or ``YYYY-MM-DD``. datetime: a datetime or an ISO
    date-time string. bool: a bool, 0/1, or true/false/yes/no/t/f/y/n.
    """

    type: Literal["str", "int", "decimal", "date", "datetime", "bool"] = Field(
        description="Expected type."
    )
    max_digits: int | None = Field(
        None, gt=0, description="decimal only: most digits in all (NUMERIC precision)."
    )
    decimal_places: int | None = Field(
        None, ge=0, description="decimal only: most digits after the point (NUMERIC scale)."
    )

    @model_validator(mode="after")
    def _decimal_options(self) -> TypeRule:
        if self.type != "decimal" and (self.max_digits or self.decimal_places is not None):
            raise ValueError("max_digits / decimal_places apply to type decimal only")
        if (
            self.max_digits is not None
            and self.decimal_places is not None
            and self.decimal_places > self.max_digits
        ):
            raise ValueError("decimal_places must not exceed max_digits")
        return self

    def compile(self, ctx: CompileContext) -> Checks:
        kind = self.type
        ok: Callable[[Any], bool]
        if kind == "str":

            def ok(v: Any) -> bool:
                return isinstance(v, str)
        elif kind == "int":
            ok = _is_int
        elif kind == "decimal":
            max_digits, places = self.max_digits, self.decimal_places
            if max_digits is None and places is None:

                def ok(v: Any) -> bool:
                    return to_number(v) is not None
            else:

                def ok(v: Any) -> bool:
                    shape = _decimal_shape(v)
                    if shape is None:
                        return False
                    whole, frac = shape
                    if places is not None and frac > places:
                        return False
                    return (
                        max_digits is None
                        or whole + (places if places is not None else frac) <= max_digits
                    )
        elif kind == "date":

            def ok(v: Any) -> bool:
                return as_date(v) is not None
        elif kind == "datetime":

            def ok(v: Any) -> bool:
                return as_datetime(v) is not None
        else:
            ok = _is_bool

        limits = []
        if self.max_digits is not None:
            limits.append(f"at most {self.max_digits} digits")
        if self.decimal_places is not None:
            limits.append(f"at most {self.decimal_places} after the point")
        detail = f" ({', '.join(limits)})" if limits else ""

        def reason(v: Any, field: str) -> str:
            extra = detail if kind == "decimal" and to_number(v) is not None else ""
            return f"{ctx.show(field, v)} is not a valid {kind}{extra}"

        return [self.value_check(f, ok, lambda v, f=f: reason(v, f)) for f in self.targets()]


class LengthRule(RuleSpec):
    """The value's length in characters (or in bytes of an encoding) is within bounds."""

    min: int | None = Field(None, ge=0, description="Shortest allowed length.")
    max: int | None = Field(None, ge=0, description="Longest allowed length.")
    encoding: str | None = Field(
        None, description="Measure bytes in this encoding (e.g. gbk, utf-8) instead of characters."
    )

    @model_validator(mode="after")
    def _bounds(self) -> LengthRule:
        if self.min is None and self.max is None:
            raise ValueError("give `min`, `max` or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.encoding is not None:
            try:
                "".encode(self.encoding)
            except LookupError:
                raise ValueError(f"unknown encoding {self.encoding!r}") from None
        return self

    def compile(self, ctx: CompileContext) -> Checks:
        lo = self.min if self.min is not None else 0
        hi = self.max if self.max is not None else 1 << 62
        enc = self.encoding

        if enc is None:

            def size(v: Any) -> int:
                return len(v if isinstance(v, str) else str(v))

            def ok(v: Any) -> bool:
                return lo <= len(v if type(v) is str else str(v)) <= hi
        else:

            def size(v: Any) -> int:
                return len((v if isinstance(v, str) else str(v)).encode(enc, "replace"))

            def ok(v: Any) -> bool:
                return lo <= size(v) <= hi

        def many(values: Iterable[Any]) -> list[Any]:
            if enc is not None:
                return [v for v in values if not ok(v)]
            return [v for v in values if not lo <= len(v if type(v) is str else str(v)) <= hi]

        unit = f" bytes ({enc})" if enc else ""

        def reason(v: Any) -> str:
            n = size(v)
            if n < lo:
                return f"length {n}{unit} is below the minimum {lo}"
            return f"length {n}{unit} is above the maximum {hi}"

        return [self.value_check(f, ok, reason, many=many) for f in self.targets()]


class PatternRule(RuleSpec):
    """The whole value matches a regular expression (Python ``re`` syntax)."""

    regex: str = Field(min_length=1, description="Regular expression the whole value must match.")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regex {value!r}: {exc}") from None
        return value

    def compile(self, ctx: CompileContext) -> Checks:
        match = re.compile(self.regex).fullmatch
        shown = self.regex if len(self.regex) <= 60 else self.regex[:60] + "…"

        def ok(v: Any) -> bool:
            return match(v if type(v) is str else str(v)) is not None

        def many(values: Iterable[Any]) -> list[Any]:
            return [v for v in values if match(v if type(v) is str else str(v)) is None]

        return [
            self.value_check(
                f, ok, lambda v, f=f: f"{ctx.show(f, v)} does not match pattern {shown}", many=many
            )
            for f in self.targets()
        ]


def _membership(
    allowed: frozenset[Any], fold: bool
) -> tuple[Callable[[Any], bool], Callable[[Iterable[Any]], list[Any]]]:
    """``ok`` and ``many`` for "value is in ``allowed``"; numbers match their strings."""
    as_text = frozenset(str(a) for a in allowed)
    if fold:
        folded = frozenset(a.casefold() for a in as_text)

        def ok(v: Any) -> bool:
            return (v if type(v) is str else str(v)).casefold() in folded

        def many(values: Iterable[Any]) -> list[Any]:
            return [v for v in values if not ok(v)]

        return ok, many

    allowed = allowed | as_text

    def ok(v: Any) -> bool:
        return v in allowed or (type(v) is not str and str(v) in as_text)

    def many(values: Iterable[Any]) -> list[Any]:
        return [v for v in values if v not in allowed and (type(v) is str or str(v) not in as_text)]

    return ok, many


class EnumRule(RuleSpec):
    """The value is one of a fixed list (枚举). Numbers and their strings are the same."""

    values: list[str | int | float | bool] = Field(min_length=1, description="Allowed values.")
    ignore_case: bool = Field(False, description="Compare strings case-insensitively.")

    def compile(self, ctx: CompileContext) -> Checks:
        ok, many = _membership(frozenset(self.values), self.ignore_case)
        listed = _preview(self.values)
        return [
            self.value_check(
                f, ok, lambda v, f=f: f"{ctx.show(f, v)} is not one of {listed}", many=many
            )
            for f in self.targets()
        ]


class CodeTableRule(RuleSpec):
    """The value is a code of a named code table, e.g. division codes (行政区划代码)."""

    table: str = Field(
        min_length=1,
        description="Name of a code table declared in `code_tables` or given to compile_ruleset.",
    )

    def compile(self, ctx: CompileContext) -> Checks:
        ok, many = _membership(ctx.code_table(self.table), False)
        name = self.table
        return [
            self.value_check(
                f, ok, lambda v, f=f: f"{ctx.show(f, v)} is not in code table {name!r}", many=many
            )
            for f in self.targets()
        ]


# --- ranges --------------------------------------------------------------------------


class RangeRule(RuleSpec):
    """The value is a number within bounds (numeric strings are read as decimals)."""

    min: Decimal | None = Field(None, description="Lowest allowed value.")
    max: Decimal | None = Field(None, description="Highest allowed value.")
    exclusive_min: bool = Field(False, description="The value must be strictly above `min`.")
    exclusive_max: bool = Field(False, description="The value must be strictly below `max`.")

    @model_validator(mode="after")
    def _bounds(self) -> RangeRule:
        for bound in (self.min, self.max):
            if bound is not None and not bound.is_finite():
                raise ValueError("bounds must be finite numbers")
        if self.min is None and self.max is None:
            raise ValueError("give `min`, `max` or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    def compile(self, ctx: CompileContext) -> Checks:
        lo = _tight(self.min)
        hi = _tight(self.max)
        above = operator.gt if self.exclusive_min else operator.ge
        below = operator.lt if self.exclusive_max else operator.le
        too_low = operator.le if self.exclusive_min else operator.lt
        too_high = operator.ge if self.exclusive_max else operator.gt

        def ok(v: Any) -> bool:
            x = v if type(v) is int else to_number(v)
            if x is None:
                return False
            return (lo is None or above(x, lo)) and (hi is None or below(x, hi))

        inclusive = not (self.exclusive_min or self.exclusive_max)
        dlo = self.min if self.min is not None else Decimal("-Infinity")
        dhi = self.max if self.max is not None else Decimal("Infinity")
        int_bounds = (lo is None or type(lo) is int) and (hi is None or type(hi) is int)
        ilo = lo if lo is not None else -math.inf
        ihi = hi if hi is not None else math.inf

        def many(values: Iterable[Any]) -> list[Any]:
            vals = values if isinstance(values, set | frozenset | list) else list(values)
            if not vals:
                return []
            # All ints, or all Decimals (no NaN: min() raises on it): if the extremes
            # are finite, compare every value with bounds of its own type in C loops.
            types = set(map(type, vals))
            if types == {int} or types == {Decimal}:
                try:
                    low, high = min(vals), max(vals)
                    if types == {int} or (low.is_finite() and high.is_finite()):
                        bound_lo, bound_hi = (lo, hi) if types == {int} else (self.min, self.max)
                        out: list[Any] = []
                        if bound_lo is not None and not above(low, bound_lo):
                            out += compress(vals, map(too_low, vals, repeat(bound_lo)))
                        if bound_hi is not None and not below(high, bound_hi):
                            out += compress(vals, map(too_high, vals, repeat(bound_hi)))
                        return out
                except ArithmeticError:
                    pass
            if inclusive:
                # Pass finite Decimals and ints within bounds of their own type in one
                # comprehension; whatever is left gets the full ``ok``.
                vals = [
                    v
                    for v in vals
                    if not (
                        ((t := type(v)) is Decimal and v.is_finite() and dlo <= v <= dhi)
                        or (t is int and int_bounds and ilo <= v <= ihi)
                    )
                ]
            return [v for v in vals if not ok(v)]

        def reason(v: Any, field: str) -> str:
            x = to_number(v)
            if x is None:
                return f"{ctx.show(field, v)} is not a number"
            if lo is not None and not above(x, lo):
                word = "at or below" if self.exclusive_min else "below"
                return f"{ctx.show(field, v)} is {word} the minimum {lo}"
            word = "at or above" if self.exclusive_max else "above"
            return f"{ctx.show(field, v)} is {word} the maximum {hi}"

        return [
            self.value_check(f, ok, lambda v, f=f: reason(v, f), many=many) for f in self.targets()
        ]


def _tight(bound: Decimal | None) -> int | Decimal | None:
    """Integral bounds as int: comparing int with int is much faster than with Decimal."""
    if bound is None:
        return None
    return int(bound) if bound == bound.to_integral_value() else bound


def _date_of(v: Any) -> date | None:
    if isinstance(v, datetime):
        return v.date()
    d = as_date(v)
    if d is not None:
        return d
    dt = as_datetime(v)
    return dt.date() if dt is not None else None


class DateRangeRule(RuleSpec):
    """The value is a date (or date-time) between bounds; bounds may be relative to today."""

    min: date | str | None = Field(
        None, description="Earliest date: YYYY-MM-DD, 'today', or e.g. 'today-120y'."
    )
    max: date | str | None = Field(
        None, description="Latest date: YYYY-MM-DD, 'today', or e.g. 'today+30d'."
    )

    @model_validator(mode="after")
    def _bounds(self) -> DateRangeRule:
        if self.min is None and self.max is None:
            raise ValueError("give `min`, `max` or both")
        lo = date_bound(self.min) if self.min is not None else None
        hi = date_bound(self.max) if self.max is not None else None
        if isinstance(lo, date) and isinstance(hi, date) and lo > hi:
            raise ValueError(f"min ({lo}) is after max ({hi})")
        return self

    def compile(self, ctx: CompileContext) -> Checks:
        specs = [date_bound(b) if b is not None else None for b in (self.min, self.max)]
        current: list[date | None] = [None, None]

        def prepare() -> None:
            today = date.today()
            for i, b in enumerate(specs):
                current[i] = shift(today, b[0], b[1]) if isinstance(b, tuple) else b

        prepare()

        def ok(v: Any) -> bool:
            d = _date_of(v)
            if d is None:
                return False
            lo, hi = current
            return (lo is None or d >= lo) and (hi is None or d <= hi)

        def reason(v: Any, field: str) -> str:
            d = _date_of(v)
            lo, hi = current
            if d is None:
                return f"{ctx.show(field, v)} is not a valid date"
            if lo is not None and d < lo:
                return f"{ctx.show(field, v)} is before the earliest allowed date {lo}"
            return f"{ctx.show(field, v)} is after the latest allowed date {hi}"

        relative = any(isinstance(b, tuple) for b in specs)
        return [
            self.value_check(
                f, ok, lambda v, f=f: reason(v, f), prepare=prepare if relative else None
            )
            for f in self.targets()
        ]


class DateValidRule(RuleSpec):
    """The value is a real calendar date: a date object, or a string in the given format."""

    format: str | None = Field(
        None, description="strptime format of string values; default strict ISO YYYY-MM-DD."
    )

    @field_validator("format")
    @classmethod
    def _has_directive(cls, value: str | None) -> str | None:
        if value is not None and "%" not in value:
            raise ValueError(f"format {value!r} has no strptime directive such as %Y")
        return value

    def compile(self, ctx: CompileContext) -> Checks:
        fmt = self.format

        def ok(v: Any) -> bool:
            if isinstance(v, date):
                return True
            if not isinstance(v, str):
                return False
            if fmt is None:
                return as_date(v) is not None
            try:
                datetime.strptime(v, fmt)
            except ValueError:
                return False
            return True

        expected = fmt or "YYYY-MM-DD"
        return [
            self.value_check(
                f,
                ok,
                lambda v, f=f: f"{ctx.show(f, v)} is not a valid date (expected {expected})",
            )
            for f in self.targets()
        ]


# --- identifiers -----------------------------------------------------------------------


class CitizenIdRule(RuleSpec):
    """The value is a valid 18-digit citizen ID (GB 11643), checked with python-stdnum."""

    def sensitive_fields(self) -> list[str]:
        return self.targets()

    def compile(self, ctx: CompileContext) -> Checks:
        return [
            self.value_check(
                f,
                is_citizen_id,
                lambda v, f=f: f"invalid citizen ID {ctx.show(f, v)}: {citizen_id_error(v)}",
            )
            for f in self.targets()
        ]


class UsccRule(RuleSpec):
    """The value is a valid unified social credit code (GB 32100), checked with python-stdnum."""

    def compile(self, ctx: CompileContext) -> Checks:
        return [
            self.value_check(
                f,
                is_uscc,
                lambda v, f=f: (
                    f"invalid unified social credit code {ctx.show(f, v)}: {uscc_error(v)}"
                ),
            )
            for f in self.targets()
        ]


# --- batch rules -------------------------------------------------------------------------


def _distinct(col: Sequence[Any]) -> set[Any]:
    """Distinct hashable non-NULL values of a column."""
    try:
        out = set(col)
    except TypeError:
        out = set()
        for v in col:
            try:
                out.add(v)
            except TypeError:
                continue
    out.discard(None)
    return out


def _hits(col: Sequence[Any], found: set[Any] | dict[Any, Any]) -> list[int]:
    """Indices of the column's values that are in ``found`` (unhashable values never are)."""
    try:
        return [i for i, v in enumerate(col) if v in found]
    except TypeError:
        out = []
        for i, v in enumerate(col):
            try:
                if v in found:
                    out.append(i)
            except TypeError:
                continue
        return out


def _ask(fn: Callable[[list[Any]], Any], values: list[Any], chunk: int) -> set[Any]:
    found: set[Any] = set()
    for start in range(0, len(values), chunk):
        got = fn(values[start : start + chunk])
        if got:
            found.update(got)
    return found


def _single_field(spec: RuleSpec) -> None:
    if spec.field is None:
        raise ValueError("this rule takes one `field`, not `fields`")


class UniqueRule(RuleSpec):
    """No two rows of a batch share a value (or, with ``fields``, a combination of values)."""

    fields: list[str] | None = Field(
        None,
        min_length=1,
        description="For this rule: the fields of one composite key, unique together.",
    )
    keep_first: bool = Field(
        False,
        description="Let the first row of each duplicate group pass; by default all fail.",
    )

    def compile(self, ctx: CompileContext) -> Checks:
        names = tuple(self.targets())
        keep_first = self.keep_first

        def shown(key: Any) -> str:
            if len(names) == 1:
                return f"{names[0]} {ctx.show(names[0], key)}"
            values = ", ".join(ctx.show(n, k) for n, k in zip(names, key, strict=True))
            return f"({', '.join(names)}) ({values})"

        def run(cols: Sequence[list[Any]], env: CheckEnv) -> list[tuple[int, str]]:
            if len(cols) == 1:
                keys: list[Any] = cols[0]
            else:
                keys = [None if None in k else k for k in zip(*cols, strict=True)]
            n = len(keys)
            try:
                last = dict(zip(keys, range(n), strict=True))  # value -> index of last row
            except TypeError:
                keys = [k if _hashable(k) else repr(k) for k in keys]
                last = dict(zip(keys, range(n), strict=True))
            if len(last) - (None in last) == n - sum(map(is_, keys, repeat(None))):
                return []
            # Rows that are not the last of their value carry a duplicated value.
            lasts = map(last.__getitem__, keys)
            repeats = compress(range(n), map(ne, lasts, range(n)))
            counts = Counter(k for k in map(keys.__getitem__, repeats) if k is not None)
            reasons = {
                k: f"duplicate in batch: {shown(k)} occurs {c + 1} times" for k, c in counts.items()
            }
            out = []
            seen: set[Any] = set()
            for i in _hits(keys, reasons):
                k = keys[i]
                if keep_first and k not in seen:
                    seen.add(k)
                    continue
                out.append((i, reasons[k]))
            return out

        return [BatchCheck(self.label, names[0], names, run)]


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


class UniqueSharedRule(RuleSpec):
    """The value does not exist yet in the shared library (共享库), asked via ``exists``.

    The caller supplies ``exists(field, values) -> set of values already present``,
    called once per chunk of distinct values, so it works against any database.
    """

    shared_field: str | None = Field(
        None, min_length=1, description="Field name in the shared library; default: the same."
    )
    chunk_size: int = Field(1000, ge=1, description="Most values per call of `exists`.")

    def compile(self, ctx: CompileContext) -> Checks:
        if self.shared_field is not None:
            _single_field(self)
        chunk = self.chunk_size
        out: Checks = []
        for f in self.targets():
            remote = self.shared_field or f

            def run(
                cols: Sequence[list[Any]], env: CheckEnv, f: str = f, remote: str = remote
            ) -> list[tuple[int, str]]:
                col = cols[0]
                exists = env.exists
                assert exists is not None
                distinct = _distinct(col)
                if not distinct:
                    return []
                present = _ask(lambda chunk_: exists(remote, chunk_), list(distinct), chunk)
                present &= distinct
                return [
                    (i, f"{ctx.show(f, col[i])} already exists in the shared library")
                    for i in _hits(col, present)
                ]

            out.append(BatchCheck(self.label, f, (f,), run, frozenset({"exists"})))
        return out


class ReferenceRule(RuleSpec):
    """The value exists in another resource (引用), asked in batches via ``lookup``.

    The caller supplies ``lookup(resource, field, values) -> set of present values``.
    """

    resource: str = Field(min_length=1, description="The resource that must hold the value.")
    to_field: str | None = Field(
        None, min_length=1, description="Field of that resource; default: the same name."
    )
    chunk_size: int = Field(1000, ge=1, description="Most values per call of `lookup`.")

    def compile(self, ctx: CompileContext) -> Checks:
        if self.to_field is not None:
            _single_field(self)
        chunk = self.chunk_size
        target = self.resource
        out: Checks = []
        for f in self.targets():
            remote = self.to_field or f

            def run(
                cols: Sequence[list[Any]], env: CheckEnv, f: str = f, remote: str = remote
            ) -> list[tuple[int, str]]:
                col = cols[0]
                lookup = env.lookup
                assert lookup is not None
                distinct = _distinct(col)
                if not distinct:
                    return []
                present = _ask(lambda c: lookup(target, remote, c), list(distinct), chunk)
                missing = distinct - present
                return [
                    (i, f"{ctx.show(f, col[i])} not found in {target}.{remote}")
                    for i in _hits(col, missing)
                ]

            out.append(BatchCheck(self.label, f, (f,), run, frozenset({"lookup"})))
        return out


_PARITY = {str(d): d & 1 for d in range(10)}


def _id_shape_ok(cid: Any) -> bool:
    return type(cid) is str and len(cid) == 18 and cid[:17].isdigit() and cid.isascii()


def _birth_key(value: Any) -> str | None:
    if isinstance(value, date):
        return f"{value.year:04d}{value.month:02d}{value.day:02d}"
    if isinstance(value, str):
        d = parse_loose_date(value)
        return None if d is None else f"{d.year:04d}{d.month:02d}{d.day:02d}"
    return None


class CitizenIdMatchesRule(RuleSpec):
    """Birth date and sex fields agree with the citizen ID (GB 11643).

    Digits 7-14 of the ID are the birth date; digit 17 is odd for male, even for
    female. Rows whose ID is not an 18-digit number, or whose sex code is in neither
    list (e.g. 0 unknown, 9 unstated), are not compared.
    """

    birth_date: str | None = Field(None, min_length=1, description="Field with the birth date.")
    sex: str | None = Field(None, min_length=1, description="Field with the sex code.")
    male: list[str | int] = Field(
        default_factory=lambda: ["1", "M", "男"], description="Sex codes meaning male."
    )
    female: list[str | int] = Field(
        default_factory=lambda: ["2", "F", "女"], description="Sex codes meaning female."
    )

    @model_validator(mode="after")
    def _something_to_compare(self) -> CitizenIdMatchesRule:
        if self.birth_date is None and self.sex is None:
            raise ValueError("give `birth_date`, `sex` or both")
        if self.fields is not None:
            raise ValueError("this rule takes one `field` (the citizen ID), not `fields`")
        if set(map(str, self.male)) & set(map(str, self.female)):
            raise ValueError("a sex code cannot be both male and female")
        return self

    def sensitive_fields(self) -> list[str]:
        return self.targets()

    def compile(self, ctx: CompileContext) -> Checks:
        id_field = self.targets()[0]
        birth, sex = self.birth_date, self.sex
        sex_parity: dict[Any, int] = {}
        for parity, codes in ((1, self.male), (0, self.female)):
            for code in codes:
                text = str(code)
                sex_parity[text] = parity
                if text.isdecimal() and text.isascii():
                    sex_parity[int(text)] = parity  # "1" in the spec matches 1 in the data
        inputs = (id_field,) + ((birth,) if birth else ()) + ((sex,) if sex else ())

        def birth_mismatches(ids: list[Any], births: list[Any]) -> Iterable[tuple[int, str]]:
            # Fast pass for ISO strings; each candidate is then checked properly.
            try:
                candidates = [
                    i
                    for i, c, b in zip(count(), ids, births, strict=False)
                    if b is not None
                    and type(c) is str
                    and c[6:14] != (b.replace("-", "") if type(b) is str else None)
                ]
            except TypeError:
                candidates = range(len(ids))
            for i in candidates:
                c, b = ids[i], births[i]
                if b is None or not _id_shape_ok(c):
                    continue
                key = _birth_key(b)
                if key is None:
                    yield i, f"{birth} is not a date, cannot compare with {id_field}"
                elif key != c[6:14]:
                    yield (
                        i,
                        (
                            f"{birth} does not match the birth date in {id_field} "
                            f"{ctx.show(id_field, c)}"
                        ),
                    )

        def sex_mismatches(ids: list[Any], sexes: list[Any]) -> Iterable[tuple[int, str]]:
            get = sex_parity.get
            try:
                candidates = [
                    i
                    for i, c, s in zip(count(), ids, sexes, strict=False)
                    if s is not None
                    and type(c) is str
                    and len(c) == 18
                    and (p := get(s)) is not None
                    and _PARITY.get(c[16]) != p
                ]
            except TypeError:
                candidates = range(len(ids))
            for i in candidates:
                c, s = ids[i], sexes[i]
                if s is None or not _id_shape_ok(c) or not _hashable(s):
                    continue
                p = get(s)
                if p is None or _PARITY[c[16]] == p:
                    continue
                said = "male" if p else "female"
                id_says = "male" if _PARITY[c[16]] else "female"
                yield (
                    i,
                    (
                        f"{sex} {ctx.show(sex, s)} ({said}) does not match {id_field} "
                        f"{ctx.show(id_field, c)} ({id_says})"
                    ),
                )

        def run(cols: Sequence[list[Any]], env: CheckEnv) -> list[tuple[int, str]]:
            ids = cols[0]
            out: list[tuple[int, str]] = []
            k = 1
            if birth:
                out.extend(birth_mismatches(ids, cols[k]))
                k += 1
            if sex:
                out.extend(sex_mismatches(ids, cols[k]))
            return out

        return [BatchCheck(self.label, id_field, inputs, run)]
