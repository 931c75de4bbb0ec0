"""Masking (脱敏): the rules of a grant that hide parts of values before rows leave the
data holder.

Masking runs at the holder, on the rows it has just read, so an unmasked value never
enters a package, the center or the recipient's logs. A grant names a rule per field:

- ``first:N`` / ``last:N`` keep the first / last N characters, ``edges:A,B`` the first
  A and the last B; every other character becomes ``*``. Characters are code points,
  so ``张三丰`` with ``first:1`` is ``张**``. A value no longer than what would be kept
  is masked whole (``last:4`` of ``123`` is ``***``): a rule never lets a whole value
  through because it happens to be short.
- ``all`` replaces every character with ``*`` (the length stays visible).
- ``null`` sends None.
- ``hash`` sends the first 16 hex digits of SHA-256(salt + value). The salt is the
  grant's, so the same value gives the same token within one grant (joins and counts
  still work) but different tokens in two grants, which therefore cannot be linked.
  The salt must stay secret from recipients: ID numbers and phone numbers are few
  enough to be hashed exhaustively. A hash rule without a salt is refused.
- ``year`` keeps the year of a date, a datetime or an ISO date string (``1990-05-17``):
  an int for a date, a ``'1990'`` string for a string; a value it cannot read becomes
  None rather than passing through.

None stays None under every rule. Values that are not strings are turned into text
with ``str()`` for the character rules (and for ``hash``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from exnode.node.base.errors import UsageError

__all__ = ["MASK", "RULES", "MaskError", "Masker", "Rule", "UnknownMaskField", "parse_rule",
           "parse_rules"]

MASK = "*"
RULES = ("first:N", "last:N", "edges:A,B", "all", "null", "hash", "year")
MAX_KEEP = 1_000  # characters a rule may keep
MAX_RULES = 1_000  # rules in one grant
MAX_FIELD = 128  # characters in a field name
HASH_HEX = 16  # hex digits of the hash token (64 bits)

_N = r"(0|[1-9][0-9]{0,3})"
_RULE = re.compile(rf"(first|last):{_N}|edges:{_N},{_N}|(all|null|hash|year)")
_ISO_DATE = re.compile(r"([0-9]{4})-[0-9]{2}-[0-9]{2}(?:[ T].*)?", re.DOTALL)


class MaskError(UsageError):
    """Masking rules that cannot be read or cannot be used."""


class UnknownMaskField(MaskError):
    """The rules name a field the rows do not have."""


def _q(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else str(value)
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


@dataclass(frozen=True)
class Rule:
    """One parsed rule: ``kind`` is first, last, edges, all, null, hash or year;
    ``head``/``tail`` are the characters kept at the start and the end."""

    kind: str
    head: int = 0
    tail: int = 0

    def __str__(self) -> str:
        if self.kind == "first":
            return f"first:{self.head}"
        if self.kind == "last":
            return f"last:{self.tail}"
        if self.kind == "edges":
            return f"edges:{self.head},{self.tail}"
        return self.kind


def parse_rule(text: str, field: str = "") -> Rule:
    """One rule string (see ``RULES``)."""
    where = f" for field {field}" if field else ""
    if not isinstance(text, str):
        raise MaskError(f"a masking rule must be a string, not {type(text).__name__}{where}")
    m = _RULE.fullmatch(text)
    if m is None:
        raise MaskError(f"unknown masking rule {_q(text)}{where} (rules: {', '.join(RULES)})")
    if m.group(1):
        n = int(m.group(2))
        rule = Rule("first", head=n) if m.group(1) == "first" else Rule("last", tail=n)
    elif m.group(3) is not None:
        rule = Rule("edges", head=int(m.group(3)), tail=int(m.group(4)))
    else:
        return Rule(m.group(5))
    keep = rule.head + rule.tail
    if keep < 1 or keep > MAX_KEEP:
        raise MaskError(f"masking rule {_q(text)}{where} must keep 1 to {MAX_KEEP:,} "
                        "characters (use 'all' to keep none)")
    return rule


def parse_rules(spec: Mapping[str, str]) -> dict[str, Rule]:
    """``{field: rule string}`` parsed and checked; the first problem is a MaskError."""
    if not isinstance(spec, Mapping):
        raise MaskError(f"masking rules must be a mapping of field to rule, "
                        f"not {type(spec).__name__}")
    if len(spec) > MAX_RULES:
        raise MaskError(f"at most {MAX_RULES:,} masking rules, not {len(spec):,}")
    rules: dict[str, Rule] = {}
    for field, text in spec.items():
        if not isinstance(field, str) or not field or len(field) > MAX_FIELD \
                or not field.isprintable():
            raise MaskError(f"bad field name {_q(field)} in the masking rules")
        rules[field] = parse_rule(text, field)
    return rules


def _keep(value: Any, head: int, tail: int) -> str:
    s = value if isinstance(value, str) else str(value)
    n = len(s)
    if n <= head + tail:
        return MASK * n
    return s[:head] + MASK * (n - head - tail) + (s[n - tail:] if tail else "")


def _year(value: Any) -> int | str | None:
    if isinstance(value, date):  # and datetime
        return value.year
    if isinstance(value, str) and (m := _ISO_DATE.fullmatch(value.strip())):
        return m.group(1)
    return None


def _function(rule: Rule, salt: bytes) -> Callable[[Any], Any]:
    """The masking function of one rule; it is never called with None."""
    if rule.kind in ("first", "last", "edges"):
        head, tail = rule.head, rule.tail
        return lambda v: _keep(v, head, tail)
    if rule.kind == "all":
        return lambda v: MASK * len(v if isinstance(v, str) else str(v))
    if rule.kind == "null":
        return lambda v: None
    if rule.kind == "hash":
        def token(v: Any) -> str:
            text = v if isinstance(v, str) else str(v)
            return hashlib.sha256(salt + text.encode("utf-8")).hexdigest()[:HASH_HEX]
        return token
    assert rule.kind == "year"
    return _year


class Masker:
    """Applies a grant's masking rules to rows. Fields without a rule pass untouched;
    rules for fields a row lacks are ignored (``check_fields`` reports them)."""

    def __init__(self, rules: Mapping[str, str], salt: bytes = b"") -> None:
        self.rules = parse_rules(rules)
        if not isinstance(salt, bytes):
            raise MaskError(f"the masking salt must be bytes, not {type(salt).__name__}")
        hashed = sorted(f for f, r in self.rules.items() if r.kind == "hash")
        if hashed and not salt:
            raise MaskError(f"the hash rule needs the grant's salt (fields: {', '.join(hashed)})")
        self._fns = {f: _function(r, salt) for f, r in self.rules.items()}

    def check_fields(self, fields: Iterable[str]) -> None:
        """Raise UnknownMaskField if a rule names a field that is not in ``fields``."""
        names = list(fields)
        present = set(names)
        missing = [f for f in self.rules if f not in present]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            shown = ", ".join(names[:20]) or "none"
            raise UnknownMaskField(f"masking rules name unknown field {missing[0]!r}{more} "
                                   f"(fields: {shown})")

    def apply(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A new dict: ``row`` with its masked fields masked."""
        out = dict(row)
        for field, fn in self._fns.items():
            if field in out and out[field] is not None:
                out[field] = fn(out[field])
        return out

    def apply_rows(self, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``apply`` to each row."""
        return [self.apply(r) for r in rows]

    def apply_tuples(self, fields: Sequence[str],
                     rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """Rows as tuples in the order of ``fields``: the masked columns are found once,
        the others are not touched."""
        masked = [(i, self._fns[f]) for i, f in enumerate(fields) if f in self._fns]
        if not masked:
            return [tuple(r) for r in rows]
        out = []
        for r in rows:
            values = list(r)
            for i, fn in masked:
                v = values[i]
                if v is not None:
                    values[i] = fn(v)
            out.append(tuple(values))
        return out
