"""Built-in cleaning steps, run before the rules. Non-string values pass unchanged."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from operator import methodcaller

from pydantic import Field, field_validator

from .dates import parse_loose_date
from .spec import CleanerSpec, CompileContext, StrCleaner

__all__ = [
    "DateStep",
    "EmptyToNullStep",
    "HalfwidthStep",
    "LowerStep",
    "TrimStep",
    "UpperStep",
]


class TrimStep(CleanerSpec):
    """Strip leading and trailing whitespace (including the ideographic space U+3000)."""

    chars: str | None = Field(
        None, min_length=1, description="Strip these characters instead of whitespace."
    )

    def compile(self, ctx: CompileContext) -> StrCleaner:
        return StrCleaner(str.strip if self.chars is None else methodcaller("strip", self.chars))


def _nfkc(text: str) -> str:
    return text if text.isascii() else unicodedata.normalize("NFKC", text)


class HalfwidthStep(CleanerSpec):
    """Full-width to half-width (全角转半角) by Unicode NFKC: ＡＢＣ１２３ -> ABC123.

    NFKC also folds other compatibility characters (① -> 1, ㎡ -> m2).
    """

    def compile(self, ctx: CompileContext) -> StrCleaner:
        return StrCleaner(_nfkc)


class UpperStep(CleanerSpec):
    """Convert to upper case (e.g. the check letter x of a citizen ID)."""

    def compile(self, ctx: CompileContext) -> StrCleaner:
        return StrCleaner(str.upper)


class LowerStep(CleanerSpec):
    """Convert to lower case."""

    def compile(self, ctx: CompileContext) -> StrCleaner:
        return StrCleaner(str.lower)


def _iso_shaped(v: str) -> bool:
    return (
        len(v) == 10
        and v[4] == "-"
        and v[7] == "-"
        and v.isascii()
        and v[:4].isdigit()
        and v[5:7].isdigit()
        and v[8:].isdigit()
    )


class DateStep(CleanerSpec):
    """Rewrite dates in common shapes to ISO ``YYYY-MM-DD``.

    Understood: 2024-01-05, 2024-1-5, 2024/1/5, 2024.1.5, 20240105, 2024年1月5日,
    each optionally followed by a midnight time (``00:00:00``), plus any ``formats``.
    Strings that are none of these, or not a real date, are left as they are for the
    rules to report.
    """

    formats: list[str] = Field(
        default_factory=list,
        description="Extra strptime formats to try after the built-in shapes, e.g. '%d/%m/%Y'.",
    )
    as_date: bool = Field(False, description="Produce datetime.date objects instead of strings.")

    @field_validator("formats")
    @classmethod
    def _directives(cls, value: list[str]) -> list[str]:
        for fmt in value:
            if "%" not in fmt:
                raise ValueError(f"format {fmt!r} has no strptime directive such as %Y")
        return value

    def compile(self, ctx: CompileContext) -> StrCleaner:
        formats = tuple(self.formats)
        as_date = self.as_date

        def clean(v: str) -> object:
            if not as_date and _iso_shaped(v):
                return v  # already ISO-shaped; validity is the rules' business
            d = parse_loose_date(v)
            if d is None:
                for fmt in formats:
                    try:
                        d = datetime.strptime(v.strip(), fmt).date()
                    except ValueError:
                        continue
                    break
            if d is None:
                return v
            return d if as_date else d.isoformat()

        return StrCleaner(clean, keeps_str=not as_date)


class EmptyToNullStep(CleanerSpec):
    """Empty strings become NULL (空串转 NULL); by default whitespace-only ones too."""

    whitespace: bool = Field(True, description="Also turn whitespace-only strings into NULL.")

    def compile(self, ctx: CompileContext) -> StrCleaner:
        if self.whitespace:

            def clean(v: str) -> str | None:
                return v if v and not v.isspace() else None
        else:

            def clean(v: str) -> str | None:
                return v or None

        return StrCleaner(clean, keeps_str=False)
