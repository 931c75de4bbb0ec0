"""Identifier validators backed by python-stdnum, and masking for log-safe reasons.

* citizen ID (公民身份号码, GB 11643): :mod:`stdnum.cn.ric`
* unified social credit code (统一社会信用代码, GB 32100): :mod:`stdnum.cn.uscc`

The answers are those of ``stdnum``'s ``is_valid`` (except that an input on which
``stdnum.cn.ric`` raises KeyError is simply invalid). For values already in
canonical form (18 ASCII characters, upper case) the steps of ``validate`` are
called one by one -- ``calc_check_digit``, ``get_birth_date``, then the birth-place
table -- so that the expensive parts can be memoised: the area table entry per area
code, ``get_birth_place`` per (area code, birth year) where the entry has validity
periods, and ``get_birth_date`` per date. Anything else goes to ``is_valid``.
"""

from __future__ import annotations

import re
from typing import Any

from stdnum import numdb
from stdnum.cn import ric, uscc
from stdnum.exceptions import ValidationError

__all__ = [
    "citizen_id_error",
    "is_citizen_id",
    "is_uscc",
    "mask_id",
    "scrub_ids",
    "uscc_error",
]

_CACHE_LIMIT = 1 << 18
_birth_date_ok: dict[str, bool] = {}
_birth_place_ok: dict[str, bool] = {}
_area_kind: dict[str, int] = {}
_NEVER, _ALWAYS, _BY_YEAR = 0, 1, 2


def _remember(cache: dict[str, Any], key: str, value: Any) -> Any:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


def _ric_date_ok(number: str) -> bool:
    key = number[6:14]
    hit = _birth_date_ok.get(key)
    if hit is not None:
        return hit
    try:
        ric.get_birth_date(number)
    except ValidationError:
        return _remember(_birth_date_ok, key, False)
    return _remember(_birth_date_ok, key, True)


def _area(code: str) -> int:
    """How stdnum's birth-place table treats an area code, looked up once per code.

    An entry whose county has no ``[start-end]`` validity period is accepted for any
    birth year; otherwise the year matters and ``ric.get_birth_place`` decides.
    """
    kind = _area_kind.get(code)
    if kind is None:
        info = {k: v for _, props in numdb.get("cn/loc").info(code) for k, v in props.items()}
        counties = info.get("county")
        if counties is None:
            # Unknown code; stdnum raises InvalidComponent (or KeyError when only
            # the province part is known).
            kind = _NEVER
        elif any(not c.startswith("[") for c in counties.split(",")):
            kind = _ALWAYS
        else:
            kind = _BY_YEAR
        _remember(_area_kind, code, kind)
    return kind


def _ric_place_ok(number: str) -> bool:
    kind = _area(number[:6])
    if kind != _BY_YEAR:
        return kind == _ALWAYS
    # get_birth_place depends on the area code and the birth year only.
    key = number[:10]
    hit = _birth_place_ok.get(key)
    if hit is not None:
        return hit
    try:
        ric.get_birth_place(number)
    except (ValidationError, KeyError):
        return _remember(_birth_place_ok, key, False)
    return _remember(_birth_place_ok, key, True)


_ric_check_digit = ric.calc_check_digit


def is_citizen_id(value: Any) -> bool:
    """True if ``value`` is a valid 18-digit citizen ID, as ``stdnum.cn.ric.is_valid``."""
    if type(value) is str and len(value) == 18 and value.isascii():
        # Canonical form (what stdnum's compact() returns): run validate()'s steps.
        if value.isdigit() or (value[17] == "X" and value[:17].isdigit()):
            if value[17] != _ric_check_digit(value):
                return False
            ok = _birth_date_ok.get(value[6:14])
            if ok is None:
                ok = _ric_date_ok(value)
            if not ok:
                return False
            kind = _area_kind.get(value[:6])
            if kind is None:
                kind = _area(value[:6])
            if kind != _BY_YEAR:
                return kind == _ALWAYS
            return _ric_place_ok(value)
    return isinstance(value, str) and _ric_is_valid(value)


def _ric_is_valid(value: str) -> bool:
    try:
        return ric.is_valid(value)
    except KeyError:  # stdnum 2.2: an area code whose province is known but county is not
        return False


_uscc_check_digit = uscc.calc_check_digit


def is_uscc(value: Any) -> bool:
    """True if ``value`` is a valid unified social credit code, as ``stdnum.cn.uscc``."""
    if type(value) is not str:
        return isinstance(value, str) and uscc.is_valid(value)
    if (
        len(value) == 18
        and value.isascii()
        and value.isalnum()
        and (value.isupper() or value.isdigit())
    ):
        # Canonical already, so stdnum's compact() would not change it.
        if not value[:8].isdigit():
            return False
        try:
            return _uscc_check_digit(value) == value[17]
        except ValueError:  # a character outside the USCC alphabet
            return False
    return uscc.is_valid(value)


def _stdnum_error(module: Any, value: Any) -> str | None:
    try:
        module.validate(value)
    except ValidationError as exc:
        return str(exc.message).rstrip(".").lower()
    except KeyError:  # stdnum.cn.ric: province known, county not
        return "one of the parts of the number are invalid or unknown"
    except Exception:
        return "the number has an invalid format"
    return None


def citizen_id_error(value: Any) -> str | None:
    """Why ``value`` is not a valid citizen ID (stdnum's message), or None if it is."""
    if is_citizen_id(value):
        return None
    if not isinstance(value, str):
        return "not a string"
    return _stdnum_error(ric, value) or "the number is invalid"


def uscc_error(value: Any) -> str | None:
    """Why ``value`` is not a valid unified social credit code, or None if it is."""
    if is_uscc(value):
        return None
    if not isinstance(value, str):
        return "not a string"
    return _stdnum_error(uscc, value) or "the number is invalid"


def mask_id(value: Any) -> str:
    """Mask a personal number for logs: keep the first 6 and last 2 characters.

    That is for ID-length values (15 characters or more); shorter ones keep only the
    first 2 and last 2, and those of 6 characters or fewer are masked completely.
    """
    text = value if isinstance(value, str) else str(value)
    n = len(text)
    if n <= 6:
        return "*" * n
    head = 6 if n >= 15 else 2
    return text[:head] + "*" * (n - head - 2) + text[-2:]


_ID_LIKE = re.compile(r"(?<![0-9A-Za-z])(?:[0-9]{17}[0-9Xx]|[0-9]{15})(?![0-9A-Za-z])")


def scrub_ids(text: str) -> str:
    """Mask every substring of ``text`` shaped like a 15- or 18-digit citizen ID."""
    return _ID_LIKE.sub(lambda m: mask_id(m.group(0)), text)
