"""Result and check types shared by the engine, the built-in rules and plugins."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, NamedTuple

__all__ = [
    "BatchCheck",
    "CheckEnv",
    "CheckResult",
    "ExistsFn",
    "LookupFn",
    "RuleSpecError",
    "ValueCheck",
    "Violation",
]

#: ``exists(field, values) -> values already present in the shared library``
ExistsFn = Callable[[str, list[Any]], "set[Any] | frozenset[Any]"]
#: ``lookup(resource, field, values) -> values present in that resource``
LookupFn = Callable[[str, str, list[Any]], "set[Any] | frozenset[Any]"]


class RuleSpecError(ValueError):
    """A rule set declaration is invalid; the message names the resource and the rule."""

    def __init__(self, message: str, *, resource: str | None = None, rule: str | None = None):
        super().__init__(message)
        self.resource = resource
        self.rule = rule


class Violation(NamedTuple):
    """One broken rule on one row: rule label, field name and a one-line, log-safe reason."""

    rule: str
    field: str
    reason: str


@dataclass(slots=True)
class CheckResult:
    """Outcome of :meth:`RuleSet.check`: cleaned rows that passed, and rows that did not."""

    passed: list[dict[str, Any]]
    failed: list[tuple[dict[str, Any], list[Violation]]]

    def counts(self) -> dict[str, int]:
        """Number of violations per ``"rule:field"``, for logs and metrics."""
        out: dict[str, int] = {}
        for _row, violations in self.failed:
            for v in violations:
                key = f"{v.rule}:{v.field}"
                out[key] = out.get(key, 0) + 1
        return out


@dataclass(slots=True)
class CheckEnv:
    """What a batch check may use at check time: the caller's callables and today's date."""

    resource: str
    today: date
    exists: ExistsFn | None = None
    lookup: LookupFn | None = None


@dataclass(frozen=True, slots=True)
class ValueCheck:
    """A check on one field that looks at one value at a time.

    ``ok(value)`` says whether a value passes; ``reason(value)`` explains a failure
    in one line. NULL values (None) are skipped unless ``sees_null`` is set. The
    engine runs ``ok`` once per distinct value of a batch where it can, so it must
    be a pure function of the value. Optional: ``many(values)`` returns the failing
    ones among a list of non-NULL values at once (a faster equivalent of filtering
    with ``ok``; it must return the very objects it was given); ``prepare()`` is
    called at the start of every batch, e.g. to refresh "today".
    """

    rule: str
    field: str
    ok: Callable[[Any], bool]
    reason: Callable[[Any], str]
    sees_null: bool = False
    prepare: Callable[[], None] | None = None
    many: Callable[[Iterable[Any]], list[Any]] | None = None


@dataclass(frozen=True, slots=True)
class BatchCheck:
    """A check that sees whole columns of a batch (uniqueness, lookups, cross-field).

    ``run(columns, env)`` gets one list per name in ``inputs`` (same order, one item
    per row, None for NULL or for values that already failed a value check on that
    field) and yields ``(row_index, reason)`` for each failing row. ``needs`` names
    the caller callables it uses: ``"exists"`` and/or ``"lookup"``.
    """

    rule: str
    field: str
    inputs: tuple[str, ...]
    run: Callable[[Sequence[list[Any]], CheckEnv], Iterable[tuple[int, str]]]
    needs: frozenset[str] = field(default_factory=frozenset)
