"""Exactness checkers: whether a target column keeps a value exactly.

A database that cannot hold a value as it is either refuses it (an error the applier
turns into a quarantined row) or, worse, changes it silently: SQLite keeps a DECIMAL as
an 8-byte float, PostgreSQL rounds a NUMERIC to the column's scale and a timestamp to
its precision, MariaDB truncates microseconds in a DATETIME. Each dialect builds one
:data:`Checker` per target column when the adapter reflects the table (no per-row
reflection); the adapter calls it on every value it is about to write, already
converted for the column. A checker returns None when the value is kept exactly, else
the reason, worded to follow the value ("cannot be stored exactly in ...").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

#: A column's exactness check: None if the value is kept exactly, else why not.
Checker = Callable[[Any], str | None]


def _number(v: Any) -> Decimal | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, Decimal):
        return v if v.is_finite() else None
    if isinstance(v, int):
        return Decimal(v)
    return None


def decimal_places(d: Decimal) -> tuple[int, int]:
    """(digits before the point, digits after it) of a finite decimal, trailing zeros
    of the fraction not counted: ``12.3400`` is (2, 2), ``0.001`` is (0, 3)."""
    _sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    ds = list(digits)
    while len(ds) > 1 and ds[-1] == 0 and exp < 0:
        ds.pop()
        exp += 1
    while len(ds) > 1 and ds[0] == 0:
        ds.pop(0)
    if ds == [0]:
        return 0, 0
    n = len(ds)
    if exp >= 0:
        return n + exp, 0
    return max(0, n + exp), -exp


def decimal_checker(precision: int | None, scale: int | None, where: str) -> Checker | None:
    """DECIMAL(precision, scale): more decimal places than ``scale`` are rounded away,
    more integer digits than ``precision - scale`` do not fit."""
    if precision is None and scale is None:
        return None
    whole = None if precision is None else precision - (scale or 0)

    def check(v: Any) -> str | None:
        d = _number(v)
        if d is None:
            return None
        before, after = decimal_places(d)
        if scale is not None and after > scale:
            return (f"cannot be stored exactly in {where}: it has {after} decimal places, "
                    f"the column keeps {scale}")
        if whole is not None and before > whole:
            return (f"cannot be stored in {where}: it has {before} digits before the "
                    f"point, the column keeps {whole}")
        return None

    return check


def float_checker(where: str) -> Checker:
    """An 8-byte binary float column: a decimal or an integer is kept exactly only if it
    reads back as the same number (at most 15 significant digits, or an integer up to
    2**53 and some beyond)."""

    def check(v: Any) -> str | None:
        d = _number(v)
        if d is None:
            return None
        try:
            f = float(d)
            same = f not in (float("inf"), float("-inf")) and Decimal(repr(f)) == d
        except (OverflowError, InvalidOperation, ValueError):
            same = False
        return None if same else f"cannot be stored exactly in {where}"

    return check


def int_checker(lo: int, hi: int, where: str) -> Checker:
    """An integer column holding ``lo`` to ``hi``."""

    def check(v: Any) -> str | None:
        if isinstance(v, int) and not isinstance(v, bool) and not lo <= v <= hi:
            return f"cannot be stored in {where}: it holds {lo} to {hi}"
        return None

    return check


def length_checker(length: int, where: str) -> Checker:
    """A VARCHAR(n)/CHAR(n) column: at most ``length`` characters."""

    def check(v: Any) -> str | None:
        if isinstance(v, str) and len(v) > length:
            return f"({len(v)} characters) is too long for {where}: it keeps {length}"
        return None

    return check


def fraction_checker(digits: int, where: str) -> Checker | None:
    """A timestamp or time of day with ``digits`` fractional-second digits (0-6)."""
    if digits >= 6:
        return None
    step = 10 ** (6 - max(0, digits))

    def check(v: Any) -> str | None:
        if isinstance(v, dt.datetime | dt.time) and v.microsecond % step:
            kept = "whole seconds" if digits <= 0 else f"{digits} fractional digits"
            return f"cannot be stored exactly in {where}: it keeps {kept}"
        return None

    return check


def combine(*checkers: Checker | None) -> Checker | None:
    """One checker running ``checkers`` in turn (None if there is none)."""
    cs = [c for c in checkers if c is not None]
    if not cs:
        return None
    if len(cs) == 1:
        return cs[0]

    def check(v: Any) -> str | None:
        for c in cs:
            why = c(v)
            if why is not None:
                return why
        return None

    return check
