"""Identifier validators backed by python-stdnum, and masking for log-safe reasons.

* citizen ID (公民身份号码, GB 11643): :mod:`stdnum.cn.ric`
* unified social credit code (统一社会信用代码, GB 32100): :mod:`stdnum.cn.uscc`

The answers are exactly those of ``stdnum``'s ``is_valid``. For values already in
canonical form (18 ASCII characters, upper case) the steps of ``validate`` are
called one by one so that the expensive birth-place lookup of ``stdnum.cn.ric``
can be memoised per (area code, birth year); anything else goes to ``is_valid``.
"""

from __future__ import annotations

import re
from typing import Any

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

_CACHE_LIMIT = 1 << 17
_birth_date_ok: dict[str, bool] = {}
_birth_place_ok: dict[str, bool] = {}


def _remember(cache: dict[str, bool], key: str, value: bool) -> bool:
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


def _ric_place_ok(number: str) -> bool:
    # get_birth_place depends on the area code and the birth year only.
    key = number[:10]
    hit = _birth_place_ok.get(key)
    if hit is not None:
        return hit
    try:
        ric.get_birth_place(number)
    except ValidationError:
        return _remember(_birth_place_ok, key, False)
    return _remember(_birth_place_ok, key, True)


_ric_check_digit = ric.calc_check_digit


def is_citizen_id(value: Any) -> bool:
    """True if ``value`` is a valid 18-digit citizen ID, as ``stdnum.cn.ric.is_valid``."""
    if type(value) is not str:
        return isinstance(value, str) and ric.is_valid(value)
    if len(value) == 18 and value.isascii() and value[:17].isdigit():
        last = value[17]
        if last != "x":
            return last == _ric_check_digit(value) and _ric_date_ok(value) and _ric_place_ok(value)
    return ric.is_valid(value)


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
    except Exception:  # stdnum raises plain errors on some odd inputs
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

    Values of 8 characters or fewer are masked completely.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= 8:
        return "*" * len(text)
    return text[:6] + "*" * (len(text) - 8) + text[-2:]


_ID_LIKE = re.compile(r"(?<![0-9A-Za-z])(?:[0-9]{17}[0-9Xx]|[0-9]{15})(?![0-9A-Za-z])")


def scrub_ids(text: str) -> str:
    """Mask every substring of ``text`` shaped like a 15- or 18-digit citizen ID."""
    return _ID_LIKE.sub(lambda m: mask_id(m.group(0)), text)
