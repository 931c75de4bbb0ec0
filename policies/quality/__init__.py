"""Data rule-check engine (数据规则约束检查): clean rows, then check them against declared rules.

Usage::

    from exnode.policies.quality import compile_ruleset

    ruleset = compile_ruleset(spec_dict, exists=shared_exists, lookup=reference_lookup)
    result = ruleset.check(rows)          # rows are cleaned in place
    load(result.passed)
    for row, violations in result.failed:
        log.warning("rejected", reasons=[v.reason for v in violations])

Rule and cleaning-step types live in a :class:`RuleRegistry`; the built-ins register
themselves through the same ``register_rule`` / ``register_cleaner`` calls that
plugins use (``register(name, factory)`` accepts either kind).
"""

from __future__ import annotations

from .engine import RuleSet, compile_ruleset
from .ids import citizen_id_error, is_citizen_id, is_uscc, mask_id, scrub_ids, uscc_error
from .model import (
    BatchCheck,
    CheckEnv,
    CheckResult,
    ExistsFn,
    LookupFn,
    RuleSpecError,
    ValueCheck,
    Violation,
)
from .registry import RuleRegistry, builtin_registry
from .spec import (
    CleanerSpec,
    CodeTableSpec,
    CompileContext,
    RuleSetSpec,
    RuleSpec,
    StrCleaner,
    load_code_table,
)

__all__ = [
    "BatchCheck",
    "CheckEnv",
    "CheckResult",
    "CleanerSpec",
    "CodeTableSpec",
    "CompileContext",
    "ExistsFn",
    "LookupFn",
    "RuleRegistry",
    "RuleSet",
    "RuleSetSpec",
    "RuleSpec",
    "RuleSpecError",
    "StrCleaner",
    "ValueCheck",
    "Violation",
    "builtin_registry",
    "citizen_id_error",
    "compile_ruleset",
    "is_citizen_id",
    "is_uscc",
    "load_code_table",
    "mask_id",
    "scrub_ids",
    "uscc_error",
]
