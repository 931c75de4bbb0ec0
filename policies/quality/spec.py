"""Declaration models for rule sets (the models are the schema) and the compile context.

A rule set (规则集) is declared per resource as a YAML-shaped dict::

    resource: person
    sensitive: [citizen_id]
    code_tables:
      division: {csv: codes/division.csv, column: code}
    clean:
      - {step: trim}
      - {step: date, fields: [birth_date]}
    rules:
      - {rule: required, fields: [id, citizen_id]}
      - {rule: citizen_id, field: citizen_id}
      - {rule: code_table, field: division_code, table: division}

Each ``clean`` entry is validated by the :class:`CleanerSpec` subclass registered
under its ``step`` name, each ``rules`` entry by the :class:`RuleSpec` subclass
registered under its ``rule`` name.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .ids import mask_id
from .model import BatchCheck, ValueCheck

__all__ = [
    "CleanerSpec",
    "CodeTableSpec",
    "CompileContext",
    "RuleSetSpec",
    "RuleSpec",
    "StrCleaner",
    "load_code_table",
]

_SHOW_MAX = 40


class CompileContext:
    """What a rule or cleaner model may use while compiling: resource, code tables, masking."""

    def __init__(
        self,
        resource: str,
        code_tables: Mapping[str, frozenset[str]],
        sensitive: Iterable[str] = (),
    ) -> None:
        self.resource = resource
        self.code_tables = dict(code_tables)
        self.sensitive = frozenset(sensitive)

    def code_table(self, name: str) -> frozenset[str]:
        """The codes of the named code table (代码表); ValueError if it is not declared."""
        try:
            return self.code_tables[name]
        except KeyError:
            known = ", ".join(sorted(self.code_tables)) or "none declared"
            raise ValueError(f"unknown code table {name!r} (known: {known})") from None

    def show(self, field: str, value: Any) -> str:
        """A short one-line rendering of ``value``; masked if the field is sensitive."""
        if value is None:
            return "NULL"
        if field in self.sensitive:
            return repr(mask_id(value if isinstance(value, str) else str(value)))
        if isinstance(value, str):
            text = value if len(value) <= _SHOW_MAX else value[:_SHOW_MAX] + "…"
            return repr(text)
        if isinstance(value, int | float | Decimal | date | datetime):
            return str(value)
        text = repr(value)
        return text if len(text) <= _SHOW_MAX else text[:_SHOW_MAX] + "…"


class RuleSpec(BaseModel):
    """Base of every rule model. Subclass it, add parameters, implement :meth:`compile`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str = Field(description="Rule type, the name it is registered under, e.g. 'length'.")
    field: str | None = Field(
        None, min_length=1, description="The field this rule checks (give this or `fields`)."
    )
    fields: list[str] | None = Field(
        None,
        min_length=1,
        description="Several fields this rule checks, each on its own (give this or `field`).",
    )
    name: str | None = Field(
        None,
        min_length=1,
        description="Label reported as Violation.rule; defaults to the rule type.",
    )

    @model_validator(mode="after")
    def _one_target(self) -> RuleSpec:
        if (self.field is None) == (self.fields is None):
            raise ValueError("give exactly one of `field` or `fields`")
        if self.fields is not None and any(not f for f in self.fields):
            raise ValueError("`fields` must not contain empty names")
        return self

    @property
    def label(self) -> str:
        """The name reported in violations."""
        return self.name or self.rule

    def targets(self) -> list[str]:
        """The fields named by ``field`` or ``fields``."""
        return [self.field] if self.field is not None else list(self.fields or ())

    def describe(self) -> str:
        """Short description for error messages, e.g. ``length on 'name'``."""
        return f"{self.rule} on " + ", ".join(repr(f) for f in self.targets())

    def sensitive_fields(self) -> list[str]:
        """Fields whose values this rule knows to be personal numbers (masked everywhere)."""
        return []

    def compile(self, ctx: CompileContext) -> list[ValueCheck | BatchCheck]:
        """Build the checks for this rule; raise ValueError for a bad declaration."""
        raise NotImplementedError(f"{type(self).__name__} does not implement compile()")

    def value_check(
        self,
        field: str,
        ok: Callable[[Any], bool],
        reason: Callable[[Any], str],
        *,
        sees_null: bool = False,
        prepare: Callable[[], None] | None = None,
        many: Callable[[Iterable[Any]], list[Any]] | None = None,
    ) -> ValueCheck:
        """Helper: a :class:`ValueCheck` labelled with this rule."""
        return ValueCheck(self.label, field, ok, reason, sees_null, prepare, many)


class StrCleaner(NamedTuple):
    """A cleaning function for string values only; any other value passes unchanged.

    ``keeps_str`` promises that ``fn`` always returns a str, which lets the engine
    run a chain of such steps over many values in C-level loops.
    """

    fn: Callable[[str], Any]
    keeps_str: bool = True


class CleanerSpec(BaseModel):
    """Base of every cleaning step (清洗) model. Subclass it and implement :meth:`compile`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: str = Field(description="Cleaning step type, the name it is registered under.")
    fields: list[str] | Literal["*"] = Field(
        "*", description="Fields to clean, or '*' for every field present in the rows."
    )

    @field_validator("fields", mode="before")
    @classmethod
    def _one_name(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "*":
            return [value]
        return value

    def describe(self) -> str:
        """Short description for error messages."""
        where = "all fields" if self.fields == "*" else ", ".join(repr(f) for f in self.fields)
        return f"{self.step} on {where}"

    def compile(self, ctx: CompileContext) -> Callable[[Any], Any] | StrCleaner:
        """Return ``clean(value) -> value`` (never called with None), or a StrCleaner.

        A cleaner should not raise; if it does, the value is left as it was.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement compile()")


class CodeTableSpec(BaseModel):
    """A named table of allowed codes, e.g. administrative division codes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    codes: dict[str | int, Any] | list[str | int] | None = Field(
        None, description="The codes inline: a list, or a mapping code -> label."
    )
    csv: str | None = Field(None, min_length=1, description="Path of a CSV file holding the codes.")
    column: str | int = Field(
        0, description="CSV column with the codes: a header name, or a 0-based index."
    )
    header: bool = Field(True, description="Whether the CSV file's first row is a header.")
    delimiter: str = Field(",", min_length=1, max_length=1, description="CSV delimiter.")
    encoding: str = Field("utf-8-sig", description="CSV file encoding.")

    @model_validator(mode="after")
    def _one_source(self) -> CodeTableSpec:
        if (self.codes is None) == (self.csv is None):
            raise ValueError("give exactly one of `codes` or `csv`")
        if isinstance(self.column, str) and not self.header:
            raise ValueError("a column name needs `header: true`")
        return self


class RuleSetSpec(BaseModel):
    """The declaration of one resource's cleaning steps and rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resource: str = Field(min_length=1, description="Resource (table / data set) name.")
    sensitive: list[str] = Field(
        default_factory=list,
        description="Fields holding personal numbers, masked in reasons. Fields checked by "
        "`citizen_id` or `citizen_id_matches` are added automatically.",
    )
    code_tables: dict[str, CodeTableSpec] = Field(
        default_factory=dict, description="Code tables by name, for `code_table` rules."
    )
    clean: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Cleaning steps run in order before the rules; each has a `step` key and is "
        "validated by the model registered under that name.",
    )
    rules: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Rules; each has a `rule` key and is validated by the model registered "
        "under that name.",
    )


def _codes_from_csv(
    path: Path, column: str | int, header: bool, delimiter: str, encoding: str
) -> frozenset[str]:
    with path.open(newline="", encoding=encoding) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        index = column if isinstance(column, int) else None
        if header:
            head = next(reader, None)
            if head is None:
                raise ValueError(f"CSV file {str(path)!r} is empty")
            if isinstance(column, str):
                names = [h.strip() for h in head]
                if column not in names:
                    raise ValueError(f"CSV file {str(path)!r} has no column {column!r}")
                index = names.index(column)
        assert index is not None
        codes = set()
        for line, row in enumerate(reader, start=2 if header else 1):
            if not row or all(not cell.strip() for cell in row):
                continue
            if index >= len(row):
                raise ValueError(f"CSV file {str(path)!r} line {line} has no column {column!r}")
            code = row[index].strip()
            if code:
                codes.add(code)
    return frozenset(codes)


def load_code_table(
    source: Mapping[Any, Any] | Iterable[Any] | str | os.PathLike[str] | CodeTableSpec,
    *,
    base_dir: str | os.PathLike[str] | None = None,
) -> frozenset[str]:
    """Load a code table from a mapping (its keys), an iterable, a CSV path or a spec.

    Codes are compared as strings. A CSV path given directly uses its first column
    and skips a header row. Raises ValueError if the source is unreadable or empty.
    """
    if isinstance(source, CodeTableSpec):
        if source.codes is not None:
            return load_code_table(source.codes)
        assert source.csv is not None
        path = Path(source.csv)
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        try:
            codes = _codes_from_csv(
                path, source.column, source.header, source.delimiter, source.encoding
            )
        except (OSError, UnicodeError, csv.Error) as exc:
            raise ValueError(f"cannot read code table CSV {str(path)!r}: {exc}") from None
    elif isinstance(source, str | os.PathLike):
        return load_code_table(CodeTableSpec(csv=os.fspath(source)), base_dir=base_dir)
    elif isinstance(source, Mapping):
        codes = frozenset(str(k).strip() for k in source)
    else:
        codes = frozenset(str(c).strip() for c in source)
    if not codes:
        raise ValueError("code table is empty")
    return codes
