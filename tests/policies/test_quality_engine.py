"""Rule set compilation: spec errors, the registry and custom rules, masking, robustness."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from exnode.policies.quality import (
    BatchCheck,
    CheckEnv,
    CleanerSpec,
    CompileContext,
    RuleRegistry,
    RuleSpec,
    RuleSpecError,
    StrCleaner,
    ValueCheck,
    builtin_registry,
    compile_ruleset,
)

VALID_ID = "110101199003074514"

BUILTIN_RULES = [
    "citizen_id",
    "citizen_id_matches",
    "code_table",
    "date_range",
    "date_valid",
    "enum",
    "length",
    "pattern",
    "range",
    "reference",
    "required",
    "type",
    "unique",
    "unique_shared",
    "uscc",
]


def spec_error(rules: list[Any], **extra: Any) -> str:
    spec = {"resource": "person", "rules": rules, **extra}
    with pytest.raises(RuleSpecError) as info:
        compile_ruleset(spec)
    return str(info.value)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            {"rule": "lenght", "field": "name", "max": 3},
            "resource 'person', rules[0] (lenght on 'name'): unknown rule type 'lenght'; "
            "did you mean 'length'?",
        ),
        ({"rule": "length", "max": 3}, "give exactly one of `field` or `fields`"),
        (
            {"rule": "length", "field": "a", "fields": ["b"], "max": 3},
            "give exactly one of `field` or `fields`",
        ),
        (
            {"rule": "length", "field": "name", "min": 5, "max": 3},
            "rules[0] (length on 'name'): min (5) is greater than max (3)",
        ),
        ({"rule": "length", "field": "name"}, "give `min`, `max` or both"),
        (
            {"rule": "length", "field": "name", "max": 3, "maxx": 4},
            "rules[0] (length on 'name'): maxx: Extra inputs are not permitted",
        ),
        ({"rule": "length", "field": "name", "max": "many"}, "max: Input should be a valid"),
        ({"rule": "pattern", "field": "p", "regex": "([a-z"}, "invalid regex '([a-z'"),
        ({"rule": "enum", "field": "s", "values": []}, "values: List should have at least 1"),
        (
            {"rule": "code_table", "field": "d", "table": "nope"},
            "rules[0] (code_table on 'd'): unknown code table 'nope' (known: none declared)",
        ),
        ({"rule": "range", "field": "n", "min": 3, "max": 1}, "min (3) is greater than max (1)"),
        ({"rule": "date_range", "field": "d", "min": "last week"}, "'last week' is not a date"),
        ({"rule": "type", "field": "x", "type": "float"}, "type: Input should be 'str'"),
        (
            {"rule": "type", "field": "x", "type": "int", "decimal_places": 2},
            "apply to type decimal only",
        ),
        (
            {"rule": "citizen_id_matches", "field": "id"},
            "rules[0] (citizen_id_matches on 'id'): give `birth_date`, `sex` or both",
        ),
        (
            {"rule": "reference", "fields": ["a", "b"], "resource": "r", "to_field": "x"},
            "this rule takes one `field`, not `fields`",
        ),
        ("required", "resource 'person': rules.0: Input should be a valid dictionary"),
        ({"field": "x"}, "rules[0]: missing `rule` (the type name)"),
    ],
)
def test_bad_rule_specs_name_resource_and_rule(rule: Any, expected: str) -> None:
    message = spec_error([rule])
    assert expected in message
    assert message.startswith("resource 'person'")
    assert "\n" not in message


def test_bad_rule_set_and_code_table_specs(tmp_path: Path) -> None:
    with pytest.raises(RuleSpecError, match=r"resource \(unnamed\): resource: Field required"):
        compile_ruleset({"rules": []})
    with pytest.raises(RuleSpecError, match="resource 'p': rulez: Extra inputs"):
        compile_ruleset({"resource": "p", "rulez": []})
    message = spec_error([], code_tables={"div": {"csv": str(tmp_path / "missing.csv")}})
    assert message.startswith("resource 'person', code table 'div': cannot read code table CSV")
    (tmp_path / "c.csv").write_text("code\n1\n", encoding="utf-8")
    message = spec_error([], code_tables={"div": {"csv": str(tmp_path / "c.csv"), "column": "x"}})
    assert "has no column 'x'" in message
    message = spec_error([], code_tables={"div": {"codes": []}})
    assert "code table 'div': code table is empty" in message
    message = spec_error([], clean=[{"step": "trimm"}])
    assert "clean[0] (trimm): unknown step type 'trimm'; did you mean 'trim'?" in message
    message = spec_error([], clean=[{"step": "date", "formats": ["dd/mm"]}])
    assert "clean[0] (date): formats: Value error" not in message
    assert "format 'dd/mm' has no strptime directive" in message


def test_rule_spec_error_is_a_value_error_with_context() -> None:
    with pytest.raises(ValueError) as info:
        compile_ruleset({"resource": "org", "rules": [{"rule": "x", "field": "a"}]})
    err = info.value
    assert isinstance(err, RuleSpecError)
    assert err.resource == "org" and err.rule == "x"


def test_builtin_registry_lists_builtins_and_is_fresh_each_time() -> None:
    reg = builtin_registry()
    assert reg.rule_names == BUILTIN_RULES
    assert reg.cleaner_names == ["date", "empty_to_null", "halfwidth", "lower", "trim", "upper"]
    reg.register_rule("custom", _NoWordRule)
    assert "custom" not in builtin_registry().rule_names
    with pytest.raises(ValueError, match="already registered"):
        reg.register_rule("length", _NoWordRule)
    with pytest.raises(TypeError, match="must be a RuleSpec subclass"):
        reg.register_rule("bad", object)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a CleanerSpec subclass"):
        reg.register_cleaner("bad", _NoWordRule)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid name"):
        reg.register_rule("Bad Name", _NoWordRule)


class _NoWordRule(RuleSpec):
    """Test rule: the value must not contain a word."""

    word: str = Field(description="The forbidden word.")

    def compile(self, ctx: CompileContext) -> list[ValueCheck | BatchCheck]:
        word = self.word
        return [
            self.value_check(
                f,
                lambda v: word not in str(v),
                lambda v, f=f: f"{ctx.show(f, v)} contains {word!r}",
            )
            for f in self.targets()
        ]


class _SameLengthRule(RuleSpec):
    """Test batch rule: every value in the batch has the length of the first."""

    def compile(self, ctx: CompileContext) -> list[ValueCheck | BatchCheck]:
        def run(cols: list[list[Any]], env: CheckEnv) -> Iterable[tuple[int, str]]:
            col = cols[0]
            size = len(col[0] or "")
            return [(i, "length differs") for i, v in enumerate(col) if v and len(v) != size]

        return [BatchCheck(self.label, self.targets()[0], tuple(self.targets()), run)]


class _RemoveDashes(CleanerSpec):
    """Test cleaning step."""

    def compile(self, ctx: CompileContext) -> StrCleaner:
        return StrCleaner(lambda s: s.replace("-", ""))


class _Double(CleanerSpec):
    """Test cleaning step on any value (not only strings)."""

    def compile(self, ctx: CompileContext) -> Any:
        return lambda v: v * 2


def test_custom_rules_and_cleaners_through_the_registry() -> None:
    reg = builtin_registry()
    # One call for either kind, as a plugin hook would do it.
    hook_impl = [("no_word", _NoWordRule), ("same_length", _SameLengthRule)]
    hook_impl += [("no_dashes", _RemoveDashes), ("double", _Double)]
    for name, factory in hook_impl:
        reg.register(name, factory)
    assert reg.cleaner_factory("no_dashes") is _RemoveDashes
    assert reg.rule_factory("no_word") is _NoWordRule
    spec = {
        "resource": "t",
        "clean": [{"step": "no_dashes", "fields": ["code"]}, {"step": "double", "fields": ["n"]}],
        "rules": [
            {"rule": "no_word", "field": "code", "word": "test"},
            {"rule": "same_length", "field": "code"},
        ],
    }
    rows = [{"code": "ab-cd", "n": 2}, {"code": "te-st", "n": "x"}, {"code": "abcde", "n": None}]
    result = compile_ruleset(spec, registry=reg).check(rows)
    assert [r["code"] for r in result.passed] == ["abcd"]
    assert [r["n"] for r in result.passed] == [4]
    assert [[(v.rule, v.reason) for v in vs] for _, vs in result.failed] == [
        [("no_word", "'test' contains 'test'")],
        [("same_length", "length differs")],
    ]
    assert rows[1]["n"] == "xx"
    with pytest.raises(RuleSpecError, match="unknown rule type 'no_word'"):
        compile_ruleset(spec)  # not in the default registry
    with pytest.raises(RuleSpecError, match="rules\\[0\\] \\(no_word on 'code'\\): word: Field"):
        compile_ruleset(
            {"resource": "t", "rules": [{"rule": "no_word", "field": "code"}]}, registry=reg
        )


def test_registry_copy_is_independent() -> None:
    reg = RuleRegistry()
    reg.register("no_word", _NoWordRule)
    other = reg.copy()
    other.register("same_length", _SameLengthRule)
    assert reg.rule_names == ["no_word"]
    assert other.rule_names == ["no_word", "same_length"]


def test_reasons_never_echo_full_citizen_ids() -> None:
    bad = VALID_ID[:-1] + "5"
    spec = {
        "resource": "person",
        "sensitive": ["passport"],
        "rules": [
            {"rule": "citizen_id", "field": "cid"},
            {"rule": "unique", "field": "cid2"},
            {"rule": "length", "field": "note", "max": 5},
            {"rule": "no_word", "field": "passport", "word": "E"},
            {"rule": "enum", "field": "old", "values": ["x"]},
        ],
    }
    reg = builtin_registry()
    reg.register_rule("no_word", _NoWordRule)
    rows = [
        {
            "cid": bad,
            "cid2": VALID_ID,
            "note": f"id {VALID_ID}",
            "passport": "E12345678",
            "old": "110101900307451",
        },
        {"cid": VALID_ID, "cid2": VALID_ID},
    ]
    result = compile_ruleset(spec, registry=reg).check(rows)
    reasons = [v.reason for _, vs in result.failed for v in vs]
    assert len(reasons) == 6
    joined = " | ".join(reasons)
    for secret in (bad, VALID_ID, "E12345678", "110101900307451"):
        assert secret not in joined
    assert "invalid citizen ID '110101**********15': the number's checksum" in joined
    assert "duplicate in batch: cid2 '110101**********14' occurs 2 times" in joined
    assert "'E1*****78' contains 'E'" in joined  # declared sensitive; short: keeps 2 + 2
    assert "110101*******51" in joined  # scrubbed although the field is not declared


def test_check_never_raises_on_bad_data() -> None:
    spec = {
        "resource": "t",
        "clean": [{"step": "trim"}, {"step": "date", "fields": ["d"]}, {"step": "upper"}],
        "rules": [
            {"rule": "required", "fields": ["a", "d"]},
            {"rule": "type", "field": "a", "type": "int"},
            {"rule": "length", "field": "a", "max": 3},
            {"rule": "pattern", "field": "a", "regex": "[0-9]+"},
            {"rule": "enum", "field": "e", "values": ["1"]},
            {"rule": "range", "field": "n", "min": 0},
            {"rule": "date_range", "field": "d", "min": "2000-01-01"},
            {"rule": "date_valid", "field": "d"},
            {"rule": "citizen_id", "field": "c"},
            {"rule": "uscc", "field": "u"},
            {"rule": "unique", "fields": ["a", "e"]},
            {"rule": "citizen_id_matches", "field": "c", "birth_date": "d", "sex": "e"},
        ],
    }
    rnd = random.Random(7)
    junk: list[Any] = [
        None, "", " ", "x" * 500, "\n\t", b"bytes", 0, -1, 10**40, 1.5, math.nan, math.inf,
        Decimal("NaN"), Decimal("sNaN"), Decimal("-Infinity"), True, [1, 2], {"k": "v"}, (1,),
        object(), date(2024, 1, 1), "1990-03-07", VALID_ID, "２０２４年１月５日", "\x00",
    ]  # fmt: skip
    rows = [{k: rnd.choice(junk) for k in "adenucx" if rnd.random() < 0.9} for _ in range(3000)]
    result = compile_ruleset(spec).check(rows)
    assert len(result.passed) + len(result.failed) == len(rows)
    assert result.failed
    for _, violations in result.failed:
        for v in violations:
            assert v.reason and "\n" not in v.reason and len(v.reason) <= 300


def test_missing_lookup_callables_are_reported_clearly() -> None:
    compiled = compile_ruleset(
        {"resource": "p", "rules": [{"rule": "unique_shared", "field": "cid"}]}
    )
    with pytest.raises(RuleSpecError, match="rule 'unique_shared' on 'cid' needs an `exists`"):
        compiled.check([{"cid": "1"}])
    # Given at check time instead:
    result = compiled.check([{"cid": "1"}, {"cid": "2"}], exists=lambda f, vs: {"2"})
    assert [r["cid"] for r, _ in result.failed] == ["2"]


def test_lookup_errors_propagate_rather_than_rejecting_rows() -> None:
    def broken(resource: str, field: str, values: list[Any]) -> set[Any]:
        raise ConnectionError("db down")

    spec = {"resource": "p", "rules": [{"rule": "reference", "field": "o", "resource": "org"}]}
    with pytest.raises(ConnectionError):
        compile_ruleset(spec, lookup=broken).check([{"o": "x"}])


def test_result_shape_and_order() -> None:
    spec = {"resource": "p", "rules": [{"rule": "range", "field": "n", "max": 10}]}
    rows = [{"n": n} for n in [1, 20, 3, 40, 5]]
    compiled = compile_ruleset(spec)
    result = compiled.check(iter(rows))  # any iterable of rows
    assert result.passed == [{"n": 1}, {"n": 3}, {"n": 5}]
    assert [r for r, _ in result.failed] == [{"n": 20}, {"n": 40}]
    assert compiled.check([]).passed == []
    assert compiled.fields == ["n"]
    assert "RuleSet 'p'" in repr(compiled)


def test_mixed_numeric_types_are_not_merged() -> None:
    # 1, 1.0 and True are equal as dict keys; a type rule must still tell them apart.
    rule = {"rule": "type", "field": "v", "type": "int"}
    rows = [{"v": 1}, {"v": True}, {"v": 1.0}, {"v": Decimal(1)}]
    result = compile_ruleset({"resource": "t", "rules": [rule]}).check(rows)
    assert [r["v"] for r, _ in result.failed] == [True, 1.0, Decimal(1)]
    assert [type(r["v"]) for r, _ in result.failed] == [bool, float, Decimal]


def test_rules_from_yaml_text() -> None:
    import yaml

    text = """
    resource: person
    sensitive: [citizen_id]
    code_tables:
      division: {codes: {110101: 东城区, 110102: 西城区}}
    clean:
      - {step: trim}
      - {step: upper, fields: [citizen_id]}
    rules:
      - {rule: required, fields: [citizen_id, division]}
      - {rule: citizen_id, field: citizen_id}
      - {rule: code_table, field: division, table: division}
      - {rule: date_range, field: born, min: 1900-01-01, max: today}
    """
    compiled = compile_ruleset(yaml.safe_load(text))
    rows = [
        {"citizen_id": VALID_ID, "division": "110101", "born": date(1990, 3, 7)},
        {"citizen_id": VALID_ID, "division": "110199", "born": date(1890, 3, 7)},
    ]
    result = compiled.check(rows)
    assert len(result.passed) == 1
    assert [v.rule for v in result.failed[0][1]] == ["code_table", "date_range"]


def test_large_columns_with_mixed_numbers_or_unhashables_are_checked_row_by_row() -> None:
    rule = {"rule": "type", "field": "v", "type": "int"}
    compiled = compile_ruleset({"resource": "t", "rules": [rule]})
    values: list[Any] = [*range(5000), True, 2.0, Decimal(3), "4", "x", [5], {"k": 6}]
    result = compiled.check([{"v": v} for v in values])
    assert [r["v"] for r, _ in result.failed] == [True, 2.0, Decimal(3), "x", [5], {"k": 6}]
    # An unhashable value far into a column whose first rows look unique.
    values = [*(str(i) for i in range(5000)), ["x"]]
    result = compiled.check([{"v": v} for v in values])
    assert [r["v"] for r, _ in result.failed] == [["x"]]


def test_failures_map_back_to_every_row_holding_the_value() -> None:
    rule = {"rule": "enum", "field": "s", "values": ["1", "2"]}
    rows = [{"s": s} for s in ["1", "3", "2", "3", None, "1"] * 1000]
    result = compile_ruleset({"resource": "t", "rules": [rule]}).check(rows)
    assert len(result.failed) == 2000
    assert {r["s"] for r, _ in result.failed} == {"3"}
    assert len({id(vs[0]) for _, vs in result.failed}) == 1  # one Violation object shared
