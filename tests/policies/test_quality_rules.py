"""Every built-in rule type, with values that pass and values that fail."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from exnode.policies.quality import CheckResult, compile_ruleset

VALID_ID = "110101199003074514"  # male, born 1990-03-07
VALID_ID_F = "11010119900307168X"  # female, check character X
VALID_USCC = "91110000600037341L"


def run(rules: list[dict[str, Any]], rows: list[dict[str, Any]], **kw: Any) -> CheckResult:
    spec: dict[str, Any] = {"resource": "t", "rules": rules}
    spec.update(kw.pop("spec", {}))
    return compile_ruleset(spec, **kw).check(rows)


def failing(rule: dict[str, Any], values: list[Any], field: str = "f") -> list[Any]:
    """The values (one row each) that the rule rejects."""
    rule = {"field": field, **rule}
    result = run([rule], [{field: v} for v in values])
    return [row[field] for row, _ in result.failed]


def test_ruleset_check_ids_are_valid_fixtures() -> None:
    from stdnum.cn import ric, uscc

    assert ric.is_valid(VALID_ID) and ric.is_valid(VALID_ID_F) and uscc.is_valid(VALID_USCC)


def test_required() -> None:
    assert failing({"rule": "required"}, ["a", 0, None, "", "  ", "\u3000", False]) == [
        None,
        "",
        "  ",
        "\u3000",
    ]
    assert failing({"rule": "required", "allow_blank": True}, ["a", "", None]) == [None]
    # A missing key counts as NULL.
    result = run([{"rule": "required", "fields": ["a", "b"]}], [{"a": 1}, {"a": 1, "b": 2}])
    assert len(result.failed) == 1
    row, violations = result.failed[0]
    assert row == {"a": 1}
    assert [(v.rule, v.field, v.reason) for v in violations] == [
        ("required", "b", "value is missing")
    ]


def test_null_is_skipped_by_other_rules() -> None:
    assert failing({"rule": "length", "max": 2}, [None, "abc"]) == ["abc"]
    assert failing({"rule": "citizen_id"}, [None, "x"]) == ["x"]


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("str", ["a", ""], [1, b"a", 1.5]),
        ("int", [1, -3, "42", "+7", "-0"], [True, 1.5, "1.0", "x", "", Decimal(1)]),
        (
            "decimal",
            [1, 1.5, Decimal("2.25"), "3.10", "-.5", "1e3"],
            [True, "abc", "NaN", "Infinity", float("nan"), Decimal("NaN"), "1,5"],
        ),
        ("date", [date(2024, 1, 5), "2024-01-05"], ["2024-02-30", "2024/01/05", "20240105", 5]),
        (
            "datetime",
            [datetime(2024, 1, 5, 8), "2024-01-05 08:30:00", "2024-01-05T08:30"],
            ["2024-01-05", "2024-01-05 25:00:00", date(2024, 1, 5)],
        ),
        ("bool", [True, False, 0, 1, "true", "No", "Y", "0"], [2, "maybe", 1.0, None and 1]),
    ],
)
def test_type(kind: str, good: list[Any], bad: list[Any]) -> None:
    bad = [b for b in bad if b is not None]
    assert failing({"rule": "type", "type": kind}, good + bad) == bad


def test_type_decimal_precision_and_scale() -> None:
    rule = {"rule": "type", "type": "decimal", "max_digits": 5, "decimal_places": 2}
    good = ["123.45", Decimal("0.5"), "1.500", 999, "-12.3"]
    bad = ["1234.5", "1.234", 123456, "12345"]
    assert failing(rule, good + bad) == bad
    result = run([{"field": "f", **rule}], [{"f": "1.234"}])
    assert result.failed[0][1][0].reason == (
        "'1.234' is not a valid decimal (at most 5 digits, at most 2 after the point)"
    )
    only_scale = {"rule": "type", "type": "decimal", "decimal_places": 0, "field": "f"}
    result = run([only_scale], [{"f": "1.5"}, {"f": "15"}])
    assert [v.reason for _, (v,) in result.failed] == [
        "'1.5' is not a valid decimal (at most 0 after the point)"
    ]


def test_length() -> None:
    assert failing({"rule": "length", "min": 2, "max": 4}, ["ab", "abcd", "a", "abcde", 12345]) == [
        "a",
        "abcde",
        12345,
    ]
    # Bytes in an encoding: two Chinese characters are 4 bytes in GBK.
    rule = {"rule": "length", "max": 4, "encoding": "gbk"}
    assert failing(rule, ["张三", "张三丰", "abcd"]) == ["张三丰"]
    result = run([{"field": "f", "rule": "length", "max": 3}], [{"f": "abcdef"}])
    assert result.failed[0][1][0].reason == "length 6 is above the maximum 3"


def test_pattern() -> None:
    rule = {"rule": "pattern", "regex": r"1[3-9]\d{9}"}
    assert failing(
        rule, ["13800138000", "1380013800", "23800138000", "13800138000x", 13800138000]
    ) == [
        "1380013800",
        "23800138000",
        "13800138000x",
    ]


def test_enum() -> None:
    rule = {"rule": "enum", "values": ["A", "B", 3]}
    assert failing(rule, ["A", "B", 3, "3", "a", "C", 4]) == ["a", "C", 4]
    folded = {"rule": "enum", "values": ["A", "B"], "ignore_case": True}
    assert failing(folded, ["a", "b", "c"]) == ["c"]
    result = run([{"field": "f", **rule}], [{"f": "C"}])
    assert result.failed[0][1][0].reason == "'C' is not one of 'A', 'B', 3"


def test_code_table_from_dict_and_csv(tmp_path: Path) -> None:
    divisions = {"110101": "东城区", "110102": "西城区", 310101: "黄浦区"}
    rule = {"rule": "code_table", "table": "division"}
    rows = [{"f": v} for v in ["110101", "310101", 110102, "999999", "11010"]]
    result = run([{"field": "f", **rule}], rows, code_tables={"division": divisions})
    assert [r["f"] for r, _ in result.failed] == ["999999", "11010"]
    assert result.failed[0][1][0].reason == "'999999' is not in code table 'division'"

    csv_file = tmp_path / "division.csv"
    csv_file.write_text("name,code\n东城区,110101\n西城区, 110102 \n\n", encoding="utf-8")
    spec = {"code_tables": {"division": {"csv": "division.csv", "column": "code"}}}
    result = run([{"field": "f", **rule}], rows, spec=spec, base_dir=tmp_path)
    assert [r["f"] for r, _ in result.failed] == ["310101", "999999", "11010"]
    # A CSV path given directly: first column, header skipped.
    codes = tmp_path / "codes.csv"
    codes.write_text("code\n310101\n", encoding="utf-8")
    result = run([{"field": "f", **rule}], rows, code_tables={"division": codes})
    assert [r["f"] for r, _ in result.failed] == ["110101", 110102, "999999", "11010"]


def test_range() -> None:
    rule = {"rule": "range", "min": 0, "max": "100.5"}
    good = [0, 100, Decimal("100.5"), "50", 12.5, "0.0"]
    bad = [-1, Decimal("100.51"), "101", "abc", float("inf"), Decimal("NaN"), True, None]
    assert failing(rule, good + bad) == bad[:-1]
    exclusive = {"rule": "range", "min": 0, "max": 10, "exclusive_min": True, "exclusive_max": True}
    assert failing(exclusive, [0, 1, 9, 10, Decimal("0.001")]) == [0, 10]
    only_min = {"rule": "range", "min": 5}
    assert failing(only_min, [5, 10**30, Decimal("Infinity"), 4]) == [Decimal("Infinity"), 4]
    # The fast paths (all Decimals or all ints, compared in C loops) agree with the rule.
    decimals = [Decimal(n) / 4 for n in range(-8, 420)]
    assert failing(rule, decimals) == [d for d in decimals if not 0 <= d <= Decimal("100.5")]
    assert failing(rule, [Decimal(n) / 4 for n in range(0, 403)]) == []
    ints = list(range(-5, 15)) * 3
    assert failing(exclusive, ints) == [i for i in ints if not 0 < i < 10]
    nan = Decimal("NaN")
    assert failing(rule, [*ints, nan]) == [*(i for i in ints if i < 0), nan]
    result = run([{"field": "f", **rule}], [{"f": -1}, {"f": "x"}])
    assert [v.reason for _, (v,) in result.failed] == [
        "-1 is below the minimum 0",
        "'x' is not a number",
    ]


def test_date_range_with_relative_bounds() -> None:
    today = date.today()
    rule = {"rule": "date_range", "min": "1900-01-01", "max": "today"}
    good = ["1900-01-01", today, datetime(2000, 5, 1, 12), today.isoformat(), "2000-05-01 12:00:00"]
    bad = ["1899-12-31", today + timedelta(days=1), "not a date", "2024-02-30"]
    assert failing(rule, good + bad) == bad
    adult = {"rule": "date_range", "max": "today-18y"}
    born_18_years_ago = (
        today.replace(year=today.year - 18)
        if not (today.month == 2 and today.day == 29)
        else date(today.year - 18, 2, 28)
    )
    assert failing(adult, [born_18_years_ago, born_18_years_ago + timedelta(days=1)]) == [
        born_18_years_ago + timedelta(days=1)
    ]
    result = run([{"field": "f", **rule}], [{"f": "1899-12-31"}])
    assert result.failed[0][1][0].reason == (
        "'1899-12-31' is before the earliest allowed date 1900-01-01"
    )


def test_date_valid() -> None:
    rule = {"rule": "date_valid"}
    assert failing(
        rule, ["2024-02-29", "2023-02-29", "2024-13-01", date(2024, 1, 1), "20240101"]
    ) == [
        "2023-02-29",
        "2024-13-01",
        "20240101",
    ]
    custom = {"rule": "date_valid", "format": "%d/%m/%Y"}
    assert failing(custom, ["05/01/2024", "31/02/2024", "2024-01-05"]) == [
        "31/02/2024",
        "2024-01-05",
    ]


def test_citizen_id_and_uscc_rules() -> None:
    assert failing({"rule": "citizen_id"}, [VALID_ID, VALID_ID_F, VALID_ID[:-1] + "5", 12]) == [
        VALID_ID[:-1] + "5",
        12,
    ]
    bad_uscc = VALID_USCC[:-1] + "M"
    assert failing({"rule": "uscc"}, [VALID_USCC, bad_uscc, "short"]) == [bad_uscc, "short"]
    result = run([{"field": "f", "rule": "uscc"}], [{"f": bad_uscc}])
    assert result.failed[0][1][0].reason == (
        "invalid unified social credit code '91110000600037341M': "
        "the number's checksum or check digit is invalid"
    )


def test_unique_within_batch() -> None:
    rows = [{"k": v} for v in ["a", "b", "a", None, None, "c", "a"]]
    result = run([{"rule": "unique", "field": "k"}], rows)
    assert [i for i, r in enumerate(rows) if any(r is f for f, _ in result.failed)] == [0, 2, 6]
    assert result.failed[0][1][0].reason == "duplicate in batch: k 'a' occurs 3 times"
    result = run([{"rule": "unique", "field": "k", "keep_first": True}], rows)
    assert [r is rows[2] or r is rows[6] for r, _ in result.failed] == [True, True]
    assert len(result.passed) == 5


def test_unique_composite_key() -> None:
    rows = [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 1, "b": "x"},
        {"a": 2, "b": None},
        {"a": 2, "b": None},
    ]
    result = run([{"rule": "unique", "fields": ["a", "b"]}], rows)
    assert [r for r, _ in result.failed] == [rows[0], rows[2]]
    assert result.failed[0][1][0].reason == "duplicate in batch: (a, b) (1, 'x') occurs 2 times"


def test_unique_without_duplicates_and_with_unhashable_values() -> None:
    rows = [{"k": i} for i in range(1000)]
    assert run([{"rule": "unique", "field": "k"}], rows).failed == []
    rows = [{"k": [1]}, {"k": [1]}, {"k": [2]}]
    result = run([{"rule": "unique", "field": "k"}], rows)
    assert [r for r, _ in result.failed] == rows[:2]


def test_unique_shared_uses_exists_in_chunks() -> None:
    calls: list[tuple[str, list[Any]]] = []
    library = {"A1", "A7"}

    def exists(field: str, values: list[Any]) -> set[Any]:
        calls.append((field, list(values)))
        return {v for v in values if v in library}

    rows = [{"code": f"A{i % 10}"} for i in range(50)] + [{"code": None}]
    rule = {"rule": "unique_shared", "field": "code", "shared_field": "uscc", "chunk_size": 4}
    result = run([rule], rows, exists=exists)
    assert sorted({r["code"] for r, _ in result.failed}) == ["A1", "A7"]
    assert len(result.failed) == 10
    assert result.failed[0][1][0].reason == "'A1' already exists in the shared library"
    # One call per chunk of distinct values, never per row, and never for NULL.
    assert [len(v) for _, v in calls] == [4, 4, 2]
    assert {f for f, _ in calls} == {"uscc"}
    assert sorted(v for _, vs in calls for v in vs) == [f"A{i}" for i in range(10)]


def test_reference_uses_batched_lookup() -> None:
    calls: list[tuple[str, str, int]] = []

    def lookup(resource: str, field: str, values: list[Any]) -> set[Any]:
        calls.append((resource, field, len(values)))
        return {v for v in values if v in {VALID_USCC, "X2"}}

    rows = [{"org": VALID_USCC}, {"org": "X2"}, {"org": "X3"}, {"org": "X3"}, {"org": None}]
    rule = {"rule": "reference", "field": "org", "resource": "org", "to_field": "uscc"}
    compiled = compile_ruleset({"resource": "person", "rules": [rule]})
    result = compiled.check(rows, lookup=lookup)
    assert [r for r, _ in result.failed] == [rows[2], rows[3]]
    assert result.failed[0][1][0].reason == "'X3' not found in org.uscc"
    assert calls == [("org", "uscc", 3)]
    assert len(result.passed) == 3


def test_citizen_id_matches_birth_date_and_sex() -> None:
    rule = {"rule": "citizen_id_matches", "field": "id", "birth_date": "born", "sex": "sex"}
    rows = [
        {"id": VALID_ID, "born": "1990-03-07", "sex": "1"},  # ok
        {"id": VALID_ID_F, "born": date(1990, 3, 7), "sex": "女"},  # ok
        {"id": VALID_ID, "born": "1990-03-08", "sex": "1"},  # birth date differs
        {"id": VALID_ID, "born": "1990-03-07", "sex": "2"},  # sex differs
        {"id": VALID_ID_F, "born": "1990/3/7", "sex": 1},  # sex differs (int code)
        {"id": VALID_ID, "born": "19900307", "sex": "9"},  # 9 = unstated: not compared
        {"id": "not an id", "born": "2000-01-01", "sex": "2"},  # no ID to compare with
        {"id": VALID_ID, "born": None, "sex": None},  # nothing to compare
        {"id": VALID_ID, "born": "yesterday", "sex": "M"},  # birth date unreadable
    ]
    result = run([rule], rows)
    reasons = {rows.index(r): [v.reason for v in vs] for r, vs in result.failed}
    assert sorted(reasons) == [2, 3, 4, 8]
    assert reasons[2] == ["born does not match the birth date in id '110101**********14'"]
    assert reasons[3] == ["sex '2' (female) does not match id '110101**********14' (male)"]
    assert reasons[4] == ["sex 1 (male) does not match id '110101**********8X' (female)"]
    assert reasons[8] == ["born is not a date, cannot compare with id"]


def test_citizen_id_matches_skips_ids_that_failed_validation() -> None:
    bad_id = VALID_ID[:-1] + "5"
    rules = [
        {"rule": "citizen_id", "field": "id"},
        {"rule": "citizen_id_matches", "field": "id", "birth_date": "born"},
    ]
    result = run(rules, [{"id": bad_id, "born": "2001-01-01"}])
    assert [v.rule for v in result.failed[0][1]] == ["citizen_id"]


def test_rule_name_labels_violations_and_rules_run_in_order() -> None:
    rules = [
        {"rule": "required", "field": "f", "name": "f-present"},
        {"rule": "length", "field": "f", "max": 3, "name": "f-short"},
        {"rule": "pattern", "field": "f", "regex": "[a-z]+", "name": "f-letters"},
    ]
    result = run(rules, [{"f": None}, {"f": "abcdef"}, {"f": "AB"}, {"f": "ab"}])
    got = [[(v.rule, v.field) for v in vs] for _, vs in result.failed]
    # A value that failed one rule of its field is not checked again by later ones.
    assert got == [[("f-present", "f")], [("f-short", "f")], [("f-letters", "f")]]
    assert result.counts() == {"f-present:f": 1, "f-short:f": 1, "f-letters:f": 1}
