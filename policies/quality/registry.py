"""The registry of rule and cleaning-step types: built-ins and plugins use the same calls.

A factory is a pydantic model class: a :class:`RuleSpec` subclass for a rule, a
:class:`CleanerSpec` subclass for a cleaning step. Validating a declaration with
the class gives its parameters; the instance's ``compile`` builds the checks. A
plugin hook can therefore hand over either kind with one ``register(name, factory)``.
"""

from __future__ import annotations

import re

from .cleaners import DateStep, EmptyToNullStep, HalfwidthStep, LowerStep, TrimStep, UpperStep
from .rules import (
    CitizenIdMatchesRule,
    CitizenIdRule,
    CodeTableRule,
    DateRangeRule,
    DateValidRule,
    EnumRule,
    LengthRule,
    PatternRule,
    RangeRule,
    ReferenceRule,
    RequiredRule,
    TypeRule,
    UniqueRule,
    UniqueSharedRule,
    UsccRule,
)
from .spec import CleanerSpec, RuleSpec

__all__ = ["RuleRegistry", "builtin_registry"]

_NAME = re.compile(r"[a-z][a-z0-9_.-]*")


class RuleRegistry:
    """Rule types and cleaning-step types by name."""

    def __init__(self) -> None:
        self._rules: dict[str, type[RuleSpec]] = {}
        self._cleaners: dict[str, type[CleanerSpec]] = {}

    @staticmethod
    def _check_name(name: str) -> None:
        if not isinstance(name, str) or _NAME.fullmatch(name) is None:
            raise ValueError(
                f"invalid name {name!r}: use lower case letters, digits, '_', '.' or '-'"
            )

    def register_rule(self, name: str, factory: type[RuleSpec], *, replace: bool = False) -> None:
        """Register a rule type: ``factory`` is a RuleSpec subclass with compile()."""
        self._check_name(name)
        if not (isinstance(factory, type) and issubclass(factory, RuleSpec)):
            raise TypeError(f"rule {name!r}: factory must be a RuleSpec subclass, not {factory!r}")
        if name in self._rules and not replace:
            raise ValueError(f"rule {name!r} is already registered")
        self._rules[name] = factory

    def register_cleaner(
        self, name: str, factory: type[CleanerSpec], *, replace: bool = False
    ) -> None:
        """Register a cleaning step: ``factory`` is a CleanerSpec subclass with compile()."""
        self._check_name(name)
        if not (isinstance(factory, type) and issubclass(factory, CleanerSpec)):
            raise TypeError(
                f"cleaning step {name!r}: factory must be a CleanerSpec subclass, not {factory!r}"
            )
        if name in self._cleaners and not replace:
            raise ValueError(f"cleaning step {name!r} is already registered")
        self._cleaners[name] = factory

    def register(self, name: str, factory: type[RuleSpec] | type[CleanerSpec]) -> None:
        """Register either kind, told apart by the factory's base class (for plugin hooks)."""
        if isinstance(factory, type) and issubclass(factory, CleanerSpec):
            self.register_cleaner(name, factory)
        else:
            self.register_rule(name, factory)  # type: ignore[arg-type]

    def rule_factory(self, name: str) -> type[RuleSpec] | None:
        """The model registered for rule type ``name``, or None."""
        return self._rules.get(name)

    def cleaner_factory(self, name: str) -> type[CleanerSpec] | None:
        """The model registered for cleaning step ``name``, or None."""
        return self._cleaners.get(name)

    @property
    def rule_names(self) -> list[str]:
        """Registered rule type names, sorted."""
        return sorted(self._rules)

    @property
    def cleaner_names(self) -> list[str]:
        """Registered cleaning step names, sorted."""
        return sorted(self._cleaners)

    def copy(self) -> RuleRegistry:
        """An independent registry with the same entries."""
        other = RuleRegistry()
        other._rules = dict(self._rules)
        other._cleaners = dict(self._cleaners)
        return other


def _register_builtins(registry: RuleRegistry) -> None:
    for name, rule in (
        ("required", RequiredRule),
        ("type", TypeRule),
        ("length", LengthRule),
        ("pattern", PatternRule),
        ("enum", EnumRule),
        ("code_table", CodeTableRule),
        ("range", RangeRule),
        ("date_range", DateRangeRule),
        ("date_valid", DateValidRule),
        ("unique", UniqueRule),
        ("unique_shared", UniqueSharedRule),
        ("reference", ReferenceRule),
        ("citizen_id", CitizenIdRule),
        ("citizen_id_matches", CitizenIdMatchesRule),
        ("uscc", UsccRule),
    ):
        registry.register_rule(name, rule)
    for name, step in (
        ("trim", TrimStep),
        ("halfwidth", HalfwidthStep),
        ("upper", UpperStep),
        ("lower", LowerStep),
        ("date", DateStep),
        ("empty_to_null", EmptyToNullStep),
    ):
        registry.register_cleaner(name, step)


def builtin_registry() -> RuleRegistry:
    """A new registry holding the built-in rules and cleaning steps; add plugins to it."""
    registry = RuleRegistry()
    _register_builtins(registry)
    return registry
