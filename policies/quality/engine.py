"""Compiling a rule set, and checking batches of rows against it.

Checking works column by column, with no per-row objects: each field's values are
cleaned, then its value checks (closures built once by compile_ruleset) run over
the column's values -- once per *distinct* value where the column repeats values,
so a code, a status or an employer's USCC is validated once per batch however many
rows carry it -- and only failing values are mapped back to rows. Batch checks
(uniqueness, shared-library and reference lookups, cross-field consistency) see
whole columns, so a lookup is one call per chunk of distinct values, not per row.
"""

from __future__ import annotations

import difflib
import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from functools import partial
from itertools import compress, repeat
from operator import is_, is_not, itemgetter, ne, not_
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
from .spec import (
    CleanerSpec,
    CompileContext,
    RuleSetSpec,
    RuleSpec,
    StrCleaner,
    load_code_table,
)

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


def _bad_values(check: ValueCheck, values: list[Any]) -> list[Any]:
    """The failing ones among distinct non-NULL values; a check that raises fails the value."""
    if check.many is not None:
        try:
            return list(check.many(values))
        except Exception:
            pass
    ok = check.ok
    try:
        return [v for v in values if not ok(v)]
    except Exception:
        return [v for v in values if not _safe_ok(ok, v)]


# A column's values are checked through a "value list": its non-NULL values, each
# once where the column repeats values (a citizen ID or a status is validated once per
# batch however many rows carry it), plus whether the column has NULLs. Distinct
# values are collected as dict keys rather than in a set: a dict keeps the column's
# order, roughly the values' order in memory, and iterating in that order is several
# times faster than in hash order on large batches. Columns whose values look unique
# are not de-duplicated at all, which would only cost time.
#
# A value list is (values, has_null, by_identity). by_identity: the values are the
# column's own objects, not de-duplicated, so failures map back to rows by id().
Values = tuple[list[Any], bool, bool]

_SAMPLE = 4096
_not_none = partial(is_not, None)


def _numeric_mix(col: list[Any]) -> bool:
    """True if the column has numbers of several types (1, 1.0 and True are equal keys)."""
    types = set(map(type, col))
    return len(types) > 1 and sum(1 for t in types if issubclass(t, numbers.Number)) > 1


def _looks_unique(col: list[Any]) -> bool | None:
    """Whether the column's values look all distinct; None if unhashable.

    By the birthday paradox, even a column with ten rows per value shows only a few
    percent of repeats in a sample of a few thousand rows, so the bar is strict.
    """
    sample = col[:_SAMPLE]
    try:
        return len(sample) - len(set(sample)) <= len(sample) // 500
    except TypeError:
        return None


def _values(col: list[Any]) -> Values | None:
    """The value list of a column, or None if it must be checked row by row.

    Row by row is for unhashable values and for numbers of mixed types, which
    would be merged as keys although a check may tell them apart.
    """
    unique = _looks_unique(col)
    if unique is None:
        return None
    if unique:
        if _numeric_mix(col):
            return None
        # Identity tests in C: ``None in col`` would call __eq__ on every value.
        has_null = any(map(is_, col, repeat(None)))
        return (list(filter(_not_none, col)) if has_null else col), has_null, True
    try:
        distinct = dict.fromkeys(col)
    except TypeError:
        return None
    if _numeric_mix(col):
        return None
    has_null = None in distinct
    todo = [v for v in distinct if v is not None] if has_null else list(distinct)
    return todo, has_null, False


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


def _field_failures(
    col: list[Any], checks: list[ValueCheck], values: Values | None
) -> dict[int, Violation]:
    """Row index -> first violation of the field's checks, run over its value list.

    A value that fails one check is not given to the field's later checks.
    """
    if values is None:
        return _rowwise(col, checks)
    todo, has_null, by_identity = values
    bad: dict[Any, Violation] = {}  # keyed by value, or by id(value)
    key = id if by_identity else None
    null_violation = None
    try:
        for n, check in enumerate(checks, start=1):
            if has_null and check.sees_null and not _safe_ok(check.ok, None):
                null_violation = _violation(check, None)
                has_null = False
            if not todo:
                continue
            failing = _bad_values(check, todo)
            if not failing:
                continue
            for v in failing:
                k = v if key is None else key(v)
                if k not in bad:
                    bad[k] = _violation(check, v)
            if n < len(checks):
                keys = todo if key is None else map(key, todo)
                todo = list(compress(todo, map(not_, map(bad.__contains__, keys))))
        out: dict[int, Violation] = {}
        if bad:
            keys = col if key is None else map(key, col)
            for i in compress(range(len(col)), map(bad.__contains__, keys)):
                out[i] = bad[col[i] if key is None else key(col[i])]
        if null_violation is not None:
            for i in compress(range(len(col)), map(is_, col, repeat(None))):
                out[i] = null_violation
        return out
    except TypeError:  # an unhashable value in a column that looked unique
        return _rowwise(col, checks)


Step = Cleaner | StrCleaner


def _clean_one(steps: list[Step], v: Any) -> Any:
    """Run a chain of cleaning steps on one value; a step that raises leaves it as it was."""
    for step in steps:
        if v is None:
            return None
        try:
            if isinstance(step, StrCleaner):
                if isinstance(v, str):
                    v = step.fn(v)
            else:
                v = step(v)
        except Exception:
            continue
    return v


def _clean_many(steps: list[Step], values: list[Any], all_str: bool) -> list[Any]:
    """Run a chain of cleaning steps over many values (None passes), step by step."""
    cur = values
    for step in steps:
        if isinstance(step, StrCleaner):
            fn = step.fn
            if all_str:
                cur = list(map(fn, cur))
            else:
                cur = [fn(x) if isinstance(x, str) else x for x in cur]
            all_str = all_str and step.keeps_str
        else:
            cur = [x if x is None else step(x) for x in cur]
            all_str = False
    return cur


def _changed(before: list[Any], after: list[Any]) -> list[int]:
    """Positions where a cleaned value differs from the original (C loops first)."""
    try:
        maybe: Iterable[int] = list(compress(range(len(before)), map(ne, before, after)))
    except Exception:
        maybe = range(len(before))
    out = []
    for k in maybe:
        v, c = before[k], after[k]
        try:
            same = c is v or (type(c) is type(v) and bool(c == v))
        except Exception:
            same = False
        if not same:
            out.append(k)
    return out


def _clean_column(
    rows: list[dict[str, Any]], field: str, steps: list[Step]
) -> tuple[list[Any], Values | None]:
    """Clean one field of every row in place; return the cleaned column and its value list.

    Repeated values are cleaned once; only rows whose value changed are written.
    """
    col = _column(rows, field)
    str_only = all(isinstance(step, StrCleaner) for step in steps)
    unique = _looks_unique(col)
    distinct: dict[Any, None] | None = None
    if unique is False:
        try:
            distinct = dict.fromkeys(col)
        except TypeError:
            distinct = None
    if distinct is None:
        # Values look unique (or are unhashable): clean every row.
        all_str = str_only and set(map(type, col)) == {str}
        try:
            new = _clean_many(steps, col, all_str)
        except Exception:
            new = [v if v is None else _clean_one(steps, v) for v in col]
        for i in _changed(col, new):
            rows[i][field] = new[i]
        return new, _values(new)

    strings = [v for v in distinct if isinstance(v, str)]
    if len(strings) + (None in distinct) < len(distinct) and _numeric_mix(col):
        new = [v if v is None else _clean_one(steps, v) for v in col]
        for i in _changed(col, new):
            rows[i][field] = new[i]
        return new, None
    todo = strings if str_only else [v for v in distinct if v is not None]
    try:
        out = _clean_many(steps, todo, str_only)
    except Exception:
        out = [_clean_one(steps, v) for v in todo]
    changes = {todo[k]: out[k] for k in _changed(todo, out)}
    if changes:
        for i in list(compress(range(len(col)), map(changes.__contains__, col))):
            col[i] = value = changes[col[i]]
            rows[i][field] = value
        if any(c is not None and not isinstance(c, str) for c in changes.values()):
            return col, _values(col)  # non-strings came out: start afresh
        for v in changes:
            del distinct[v]
        distinct.update(dict.fromkeys(changes.values()))
    has_null = None in distinct
    todo = [v for v in distinct if v is not None] if has_null else list(distinct)
    return col, (todo, has_null, False)


class RuleSet:
    """The compiled rules of one resource; :meth:`check` is safe to call on any data."""

    def __init__(
        self,
        resource: str,
        steps: list[tuple[list[str] | Literal["*"], Step]],
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

    def cleaner(self, field: str) -> Callable[[Any], Any]:
        """The field's cleaning steps as one function of a value (identity when there
        are none): verification (核验) cleans what it is asked and what it holds alike."""
        steps = dict(self._plan({field})).get(field) or []
        if not steps:
            return lambda v: v
        return lambda v: _clean_one(steps, v)

    def _plan(self, present: set[str]) -> list[tuple[str, list[Step]]]:
        per_field: dict[str, list[Step]] = {}
        for fields, fn in self._steps:
            targets = sorted(present) if fields == "*" else fields
            for f in targets:
                per_field.setdefault(f, []).append(fn)
        return list(per_field.items())

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

        # 1. Cleaning, column by column.
        cols: dict[str, list[Any]] = {}
        value_lists: dict[str, Values | None] = {}
        if self._fixed_plan is not None:
            plan = self._fixed_plan
        else:
            first = rows[0].keys()
            present = set(first)
            for r in rows:
                if r.keys() != first:
                    present.update(r.keys())
            plan = self._plan(present)
        for field, field_steps in plan:
            cols[field], value_lists[field] = _clean_column(rows, field, field_steps)

        # 2. Value checks, over each field's value list.
        failures: dict[int, list[Violation]] = {}
        for field, checks in self._value.items():
            col = cols.get(field)
            if col is None:
                col = _column(rows, field)
                values = _values(col)
            else:
                values = value_lists[field]
            fails = _field_failures(col, checks, values)
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

        # 3. Batch checks on whole columns (values that failed above are None here).
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

    compiled_steps: list[tuple[list[str] | Literal["*"], Step]] = []
    for where, step in steps:
        try:
            fn = step.compile(ctx)
        except (ValueError, TypeError, KeyError) as exc:
            raise RuleSpecError(f"{where}: {exc}", resource=resource, rule=step.step) from None
        if not (isinstance(fn, StrCleaner) or callable(fn)):
            raise RuleSpecError(
                f"{where}: compile() must return a callable or a StrCleaner",
                resource=resource,
                rule=step.step,
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
