"""Compiling a rule set, and checking batches of rows against it (数据规则约束检查).

Checking works column by column: each field's values are cleaned, then its value
checks run once per *distinct* value of the batch (a citizen ID, a code or a
status is validated once however many rows carry it), and only failing values are
mapped back to rows. Batch checks (uniqueness, shared-library and reference
lookups, cross-field consistency) see whole columns, so each lookup is one call
per chunk of distinct values rather than one per row.
"""

from __future__ import annotations

import difflib
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from operator import itemgetter
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from .ids import scrub_ids
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
from .spec import CleanerSpec, CompileContext, RuleSetSpec, RuleSpec, load_code_table

__all__ = ["RuleSet", "compile_ruleset"]

Cleaner = Callable[[Any], Any]
CodeTableSource = (
    Mapping[Any, Any] | Sequence[Any] | set[Any] | frozenset[Any] | str | os.PathLike[str]
)
_REASON_MAX = 300


def _tidy(reason: Any) -> str:
    """One line, bounded, with anything shaped like a citizen ID masked."""
    text = " ".join(str(reason).split())
    if len(text) > _REASON_MAX:
        text = text[: _REASON_MAX - 1] + "…"
    return scrub_ids(text)


def _column(rows: Sequence[Mapping[str, Any]], field: str) -> list[Any]:
    try:
        return list(map(itemgetter(field), rows))
    except KeyError:
        return [r.get(field) for r in rows]


def _safe_ok(ok: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(ok(value))
    except Exception:
        return False


def _violation(check: ValueCheck, value: Any) -> Violation:
    try:
        reason = check.reason(value)
    except Exception as exc:
        reason = f"{check.rule} failed on this value ({type(exc).__name__})"
    return Violation(check.rule, check.field, _tidy(reason))


def _bad_values(ok: Callable[[Any], bool], values: set[Any]) -> list[Any]:
    try:
        return [v for v in values if not ok(v)]
    except Exception:
        return [v for v in values if not _safe_ok(ok, v)]


def _mixed_numbers(values: set[Any]) -> bool:
    """True if equal numbers of different types (1, 1.0, True) may have been merged."""
    types = set(map(type, values))
    if len(types) < 2:
        return False
    return sum(1 for t in types if issubclass(t, numbers.Number)) > 1


def _rowwise(col: list[Any], checks: list[ValueCheck]) -> dict[int, Violation]:
    out: dict[int, Violation] = {}
    for check in checks:
        ok, sees_null = check.ok, check.sees_null
        for i, v in enumerate(col):
            if i in out or (v is None and not sees_null):
                continue
            if not _safe_ok(ok, v):
                out[i] = _violation(check, v)
    return out


def _field_failures(col: list[Any], checks: list[ValueCheck]) -> dict[int, Violation]:
    """Row index -> first violation, running each check once per distinct value."""
    try:
        distinct = set(col)
    except TypeError:
        return _rowwise(col, checks)
    if len(distinct) > 1 and _mixed_numbers(distinct):
        return _rowwise(col, checks)
    has_null = None in distinct
    distinct.discard(None)
    bad: dict[Any, Violation] = {}
    for check in checks:
        if has_null and check.sees_null and not _safe_ok(check.ok, None):
            bad[None] = _violation(check, None)
            has_null = False
        if distinct:
            failing = _bad_values(check.ok, distinct)
            if failing:
                for v in failing:
                    bad[v] = _violation(check, v)
                distinct.difference_update(failing)
    if not bad:
        return {}
    return {i: bad[v] for i, v in enumerate(col) if v in bad}


def _chain(steps: list[Cleaner]) -> Cleaner:
    if len(steps) == 1:
        return steps[0]

    def run(v: Any) -> Any:
        for step in steps:
            v = step(v)
            if v is None:
                return None
        return v

    return run


def _safe_clean(fn: Cleaner, v: Any) -> Any:
    try:
        return fn(v)
    except Exception:
        return v


class RuleSet:
    """The compiled rules of one resource; :meth:`check` is safe to call on any data."""

    def __init__(
        self,
        resource: str,
        steps: list[tuple[list[str] | Literal["*"], Cleaner]],
        checks: list[ValueCheck | BatchCheck],
        *,
        exists: ExistsFn | None = None,
        lookup: LookupFn | None = None,
    ) -> None:
        self.resource = resource
        self._steps = steps
        self._wildcard = any(fields == "*" for fields, _ in steps)
        self._value: dict[str, list[ValueCheck]] = {}
        self._batch: list[BatchCheck] = []
        for check in checks:
            if isinstance(check, ValueCheck):
                self._value.setdefault(check.field, []).append(check)
            else:
                self._batch.append(check)
        self._batch_inputs = {f for b in self._batch for f in b.inputs}
        self._prepare = [c.prepare for cs in self._value.values() for c in cs if c.prepare]
        self._exists = exists
        self._lookup = lookup
        self._fixed_plan = None if self._wildcard else self._plan(set())

    @property
    def fields(self) -> list[str]:
        """Every field named by a rule or a cleaning step (wildcards excluded)."""
        names: dict[str, None] = {}
        for fields, _ in self._steps:
            if fields != "*":
                names.update(dict.fromkeys(fields))
        names.update(dict.fromkeys(self._value))
        for b in self._batch:
            names.update(dict.fromkeys(b.inputs))
        return list(names)

    def __repr__(self) -> str:
        n = sum(len(c) for c in self._value.values()) + len(self._batch)
        return f"<RuleSet {self.resource!r}: {len(self._steps)} cleaning steps, {n} checks>"

    def _plan(self, present: set[str]) -> list[tuple[str, Cleaner]]:
        per_field: dict[str, list[Cleaner]] = {}
        for fields, fn in self._steps:
            targets = sorted(present) if fields == "*" else fields
            for f in targets:
                per_field.setdefault(f, []).append(fn)
        return [(f, _chain(fns)) for f, fns in per_field.items()]

    @staticmethod
    def _clean(rows: list[dict[str, Any]], field: str, fn: Cleaner) -> list[Any]:
        col = _column(rows, field)
        try:
            new = [v if v is None else fn(v) for v in col]
        except Exception:
            new = [v if v is None else _safe_clean(fn, v) for v in col]
        for i in [i for i, a, b in zip(range(len(col)), col, new, strict=True) if a is not b]:
            rows[i][field] = new[i]
        return new

    def check(
        self,
        rows: Sequence[dict[str, Any]],
        *,
        exists: ExistsFn | None = None,
        lookup: LookupFn | None = None,
    ) -> CheckResult:
        """Clean ``rows`` in place, check them, and split them into passed and failed.

        ``exists`` / ``lookup`` override the callables given to compile_ruleset().
        Bad data never raises; a missing callable raises RuleSpecError, and errors
        raised by the callables themselves propagate (retry the batch, don't reject it).
        """
        rows = rows if isinstance(rows, list) else list(rows)
        env = CheckEnv(self.resource, date.today(), exists or self._exists, lookup or self._lookup)
        for b in self._batch:
            for need in b.needs:
                if getattr(env, need, None) is None:
                    raise RuleSpecError(
                        f"resource {self.resource!r}, rule {b.rule!r} on {b.field!r} needs an "
                        f"`{need}` callable: pass {need}= to compile_ruleset() or check()",
                        resource=self.resource,
                        rule=b.rule,
                    )
        if not rows:
            return CheckResult([], [])
        for prepare in self._prepare:
            prepare()

        cols: dict[str, list[Any]] = {}
        if self._fixed_plan is not None:
            plan = self._fixed_plan
        else:
            present: set[str] = set()
            first = rows[0].keys()
            present.update(first)
            for r in rows:
                if r.keys() != first:
                    present.update(r.keys())
            plan = self._plan(present)
        for field, fn in plan:
            cols[field] = self._clean(rows, field, fn)

        failures: dict[int, list[Violation]] = {}
        for field, checks in self._value.items():
            col = cols.get(field)
            if col is None:
                col = _column(rows, field)
            fails = _field_failures(col, checks)
            if fails:
                for i, violation in fails.items():
                    if i in failures:
                        failures[i].append(violation)
                    else:
                        failures[i] = [violation]
                if field in self._batch_inputs:
                    col = list(col)
                    for i in fails:
                        col[i] = None
            cols[field] = col

        for b in self._batch:
            inputs = []
            for f in b.inputs:
                col = cols.get(f)
                if col is None:
                    col = cols[f] = _column(rows, f)
                inputs.append(col)
            tidy: dict[str, str] = {}
            for i, reason in b.run(inputs, env):
                text = tidy.get(reason)
                if text is None:
                    text = tidy[reason] = _tidy(reason)
                violation = Violation(b.rule, b.field, text)
                if i in failures:
                    failures[i].append(violation)
                else:
                    failures[i] = [violation]

        if not failures:
            return CheckResult(list(rows), [])
        passed = [r for i, r in enumerate(rows) if i not in failures]
        failed = [(rows[i], failures[i]) for i in sorted(failures)]
        return CheckResult(passed, failed)


def _pydantic_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _target_text(raw: Mapping[str, Any]) -> str:
    target = raw.get("field", raw.get("fields"))
    if isinstance(target, str):
        return f" on {target!r}"
    if isinstance(target, list) and target:
        return " on " + ", ".join(repr(t) for t in target)
    return ""


def _model(
    raw: Any,
    key: str,
    where: str,
    lookup: Callable[[str], type[BaseModel] | None],
    known: list[str],
    resource: str,
) -> BaseModel:
    if not isinstance(raw, Mapping):
        raise RuleSpecError(
            f"{where}: expected a mapping with a `{key}` key, got {type(raw).__name__}",
            resource=resource,
        )
    kind = raw.get(key)
    if not isinstance(kind, str) or not kind:
        raise RuleSpecError(f"{where}: missing `{key}` (the type name)", resource=resource)
    label = f"{where} ({kind}{_target_text(raw)})"
    factory = lookup(kind)
    if factory is None:
        close = difflib.get_close_matches(kind, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RuleSpecError(
            f"{label}: unknown {key} type {kind!r}{hint} (known: {', '.join(known)})",
            resource=resource,
            rule=kind,
        )
    try:
        return factory.model_validate(dict(raw))
    except ValidationError as exc:
        raise RuleSpecError(
            f"{label}: {_pydantic_message(exc)}",
            resource=resource,
            rule=str(raw.get("name") or kind),
        ) from None


def compile_ruleset(
    spec: Mapping[str, Any] | RuleSetSpec,
    *,
    registry: RuleRegistry | None = None,
    code_tables: Mapping[str, CodeTableSource] | None = None,
    exists: ExistsFn | None = None,
    lookup: LookupFn | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> RuleSet:
    """Validate a resource's rule declaration and compile it into a :class:`RuleSet`.

    ``code_tables`` adds (or overrides) named code tables: a mapping (its keys are
    the codes), a collection of codes, or a CSV path (first column, header row).
    ``exists`` / ``lookup`` are the defaults for ``unique_shared`` / ``reference``.
    Relative CSV paths are resolved against ``base_dir``. Raises RuleSpecError.
    """
    raw_resource = spec.get("resource") if isinstance(spec, Mapping) else None
    if isinstance(spec, RuleSetSpec):
        parsed = spec
    else:
        try:
            parsed = RuleSetSpec.model_validate(spec)
        except ValidationError as exc:
            name = repr(raw_resource) if isinstance(raw_resource, str) else "(unnamed)"
            raise RuleSpecError(
                f"resource {name}: {_pydantic_message(exc)}",
                resource=raw_resource if isinstance(raw_resource, str) else None,
            ) from None
    resource = parsed.resource
    registry = registry if registry is not None else builtin_registry()

    tables: dict[str, frozenset[str]] = {}
    sources: list[tuple[str, Any]] = list(parsed.code_tables.items())
    sources += list((code_tables or {}).items())
    for name, source in sources:
        try:
            tables[name] = load_code_table(source, base_dir=base_dir)
        except (ValueError, TypeError) as exc:
            raise RuleSpecError(
                f"resource {resource!r}, code table {name!r}: {exc}", resource=resource
            ) from None

    rules: list[tuple[str, RuleSpec]] = []
    for i, raw in enumerate(parsed.rules):
        where = f"resource {resource!r}, rules[{i}]"
        model = _model(raw, "rule", where, registry.rule_factory, registry.rule_names, resource)
        assert isinstance(model, RuleSpec)
        rules.append((f"{where} ({model.describe()})", model))
    steps: list[tuple[str, CleanerSpec]] = []
    for i, raw in enumerate(parsed.clean):
        where = f"resource {resource!r}, clean[{i}]"
        model = _model(
            raw, "step", where, registry.cleaner_factory, registry.cleaner_names, resource
        )
        assert isinstance(model, CleanerSpec)
        steps.append((f"{where} ({model.describe()})", model))

    sensitive = set(parsed.sensitive)
    for _, model in rules:
        sensitive.update(model.sensitive_fields())
    ctx = CompileContext(resource, tables, sensitive)

    compiled_steps: list[tuple[list[str] | Literal["*"], Cleaner]] = []
    for where, step in steps:
        try:
            fn = step.compile(ctx)
        except (ValueError, TypeError, KeyError) as exc:
            raise RuleSpecError(f"{where}: {exc}", resource=resource, rule=step.step) from None
        if not callable(fn):
            raise RuleSpecError(
                f"{where}: compile() must return a callable", resource=resource, rule=step.step
            )
        compiled_steps.append((step.fields, fn))

    checks: list[ValueCheck | BatchCheck] = []
    for where, model in rules:
        try:
            out = model.compile(ctx)
        except (ValueError, TypeError, KeyError) as exc:
            raise RuleSpecError(f"{where}: {exc}", resource=resource, rule=model.label) from None
        for item in out:
            if not isinstance(item, ValueCheck | BatchCheck):
                raise RuleSpecError(
                    f"{where}: compile() must return ValueCheck or BatchCheck objects",
                    resource=resource,
                    rule=model.label,
                )
        checks.extend(out)
    return RuleSet(resource, compiled_steps, checks, exists=exists, lookup=lookup)
