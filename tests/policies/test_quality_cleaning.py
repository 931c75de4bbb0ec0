"""Every built-in cleaning step, and how cleaning feeds the rules."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from exnode.policies.quality import (
    CleanerSpec,
    CompileContext,
    StrCleaner,
    builtin_registry,
    compile_ruleset,
)


def clean(steps: list[dict[str, Any]], values: list[Any], field: str = "f") -> list[Any]:
    """Values after the cleaning steps (no rules: every row passes)."""
    rows = [{field: v} for v in values]
    result = compile_ruleset({"resource": "t", "clean": steps}).check(rows)
    assert result.failed == []
    return [row[field] for row in result.passed]


def test_trim() -> None:
    assert clean([{"step": "trim"}], ["  a b ", "\u3000张三\u3000", "\tx\n", "", 5, None]) == [
        "a b",
        "张三",
        "x",
        "",
        5,
        None,
    ]
    assert clean([{"step": "trim", "chars": "*"}], ["**a**", " a "]) == ["a", " a "]


def test_halfwidth() -> None:
    assert clean(
        [{"step": "halfwidth"}],
        ["ＡＢＣ１２３", "１１０１０１１９９００３０７４５１Ｘ", "张\u3000三", "（北京）", "plain"],
    ) == ["ABC123", "11010119900307451X", "张 三", "(北京)", "plain"]


def test_upper_and_lower() -> None:
    assert clean([{"step": "upper"}], ["11010119900307451x", "abc", 1]) == [
        "11010119900307451X",
        "ABC",
        1,
    ]
    assert clean([{"step": "lower"}], ["ABC", "Äb"]) == ["abc", "äb"]


@pytest.mark.parametrize(
    ("raw", "iso"),
    [
        ("2024-01-05", "2024-01-05"),
        ("2024-1-5", "2024-01-05"),
        ("2024/1/5", "2024-01-05"),
        ("2024/01/05", "2024-01-05"),
        ("2024.1.5", "2024-01-05"),
        ("20240105", "2024-01-05"),
        ("2024年1月5日", "2024-01-05"),
        ("2024 年 1 月 5 日", "2024-01-05"),
        ("２０２４年１月５日", "2024-01-05"),
        ("2024-01-05 00:00:00", "2024-01-05"),
        (" 2024/1/5 ", "2024-01-05"),
        # Left alone for the rules to report:
        ("2024/2/30", "2024/2/30"),
        ("2024-01-05 12:30:00", "2024-01-05 12:30:00"),
        ("2024/01-05", "2024/01-05"),
        ("05/01/2024", "05/01/2024"),
        ("yesterday", "yesterday"),
        ("2024-13-45", "2024-13-45"),
    ],
)
def test_date_normalization(raw: str, iso: str) -> None:
    assert clean([{"step": "date"}], [raw]) == [iso]


def test_date_extra_formats_and_date_objects() -> None:
    step = {"step": "date", "formats": ["%d/%m/%Y"], "as_date": True}
    assert clean([step], ["05/01/2024", "2024/1/6", "2024-01-07", date(2024, 1, 8), "x"]) == [
        date(2024, 1, 5),
        date(2024, 1, 6),
        date(2024, 1, 7),
        date(2024, 1, 8),
        "x",
    ]


def test_empty_to_null() -> None:
    assert clean([{"step": "empty_to_null"}], ["", "  ", "\u3000", "a", 0, None]) == [
        None,
        None,
        None,
        "a",
        0,
        None,
    ]
    assert clean([{"step": "empty_to_null", "whitespace": False}], ["", " "]) == [None, " "]


def test_steps_run_in_order_and_feed_the_rules() -> None:
    spec = {
        "resource": "person",
        "clean": [
            {"step": "trim"},
            {"step": "halfwidth", "fields": ["citizen_id"]},
            {"step": "upper", "fields": "citizen_id"},
            {"step": "empty_to_null", "fields": ["name"]},
        ],
        "rules": [
            {"rule": "required", "field": "name"},
            {"rule": "citizen_id", "field": "citizen_id"},
        ],
    }
    rows = [
        {"name": " 张三 ", "citizen_id": " １１０１０１１９９００３０７１６８ｘ ", "n": Decimal(1)},
        {"name": "  ", "citizen_id": "110101199003074514"},
    ]
    original_second = rows[1]
    result = compile_ruleset(spec).check(rows)
    assert result.passed == [{"name": "张三", "citizen_id": "11010119900307168X", "n": Decimal(1)}]
    assert result.passed[0] is rows[0]  # cleaned in place
    assert [v.reason for v in result.failed[0][1]] == ["value is missing"]
    assert result.failed[0][0] is original_second
    assert original_second["name"] is None


def test_wildcard_cleans_every_field_present_even_in_uneven_rows() -> None:
    rows: list[dict[str, Any]] = [{"a": " x "}, {"b": " y ", "c": 3}, {}]
    result = compile_ruleset({"resource": "t", "clean": [{"step": "trim"}]}).check(rows)
    assert result.passed == [{"a": "x"}, {"b": "y", "c": 3}, {}]


def test_cleaning_handles_unhashable_and_mixed_values() -> None:
    values: list[Any] = [" a ", ["x"], {"k": 1}, 1, True, 1.0, None]
    assert clean([{"step": "trim"}], values) == ["a", ["x"], {"k": 1}, 1, True, 1.0, None]


def test_repeated_values_are_cleaned_once_and_written_to_every_row() -> None:
    calls: list[str] = []
    rows = [{"f": v} for v in [" a ", "b", "  ", " a ", "b", None] * 500]

    class Counting(CleanerSpec):
        """Test step that records its calls."""

        def compile(self, ctx: CompileContext) -> StrCleaner:
            def fn(s: str) -> str:
                calls.append(s)
                return s

            return StrCleaner(fn)

    reg = builtin_registry()
    reg.register_cleaner("counting", Counting)
    spec = {
        "resource": "t",
        "clean": [{"step": "counting"}, {"step": "trim"}, {"step": "empty_to_null"}],
        "rules": [{"rule": "length", "field": "f", "max": 1}],
    }
    result = compile_ruleset(spec, registry=reg).check(rows)
    assert sorted(calls) == ["  ", " a ", "b"]  # once per distinct value, not per row
    assert [r["f"] for r in result.passed[:6]] == ["a", "b", None, "a", "b", None]
    assert len(result.passed) == 3000
    assert sum(1 for r in rows if r["f"] is None) == 1000


def test_many_distinct_values_are_cleaned_row_by_row() -> None:
    rows = [{"f": f" {i:06d}\u3000"} for i in range(10_000)] + [{"f": None}, {"f": 7}]
    spec = {
        "resource": "t",
        "clean": [{"step": "trim"}, {"step": "upper"}],
        "rules": [{"rule": "pattern", "field": "f", "regex": "[0-9]{6}"}],
    }
    result = compile_ruleset(spec).check(rows)
    assert rows[123]["f"] == "000123"
    assert [r["f"] for r, _ in result.failed] == [7]
    assert len(result.passed) == 10_001
