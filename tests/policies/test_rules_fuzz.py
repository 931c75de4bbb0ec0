"""Fuzzing rule-set declarations: any declaration compiles or is a RuleSpecError."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from exnode.policies.quality import compile_ruleset
from exnode.policies.quality.model import RuleSpecError

from ..fuzz_values import SCALARS, VALUES

RULES = ["required", "type", "length", "pattern", "enum", "code_table", "range",
         "date_range", "date_valid", "unique", "reference", "citizen_id",
         "citizen_id_matches", "uscc", "nosuch"]
RULE = st.fixed_dictionaries({"rule": st.sampled_from(RULES) | SCALARS},
                             optional={"field": st.sampled_from(["name", "id"]) | SCALARS,
                                       "fields": VALUES, "min": VALUES, "max": VALUES,
                                       "values": VALUES, "regex": VALUES, "table": VALUES})


@settings(max_examples=300, deadline=None)
@given(st.lists(RULE, max_size=4), st.dictionaries(st.sampled_from(
    ["clean", "code_tables", "extra"]), VALUES, max_size=2))
def test_any_rule_set_compiles_or_is_a_rule_spec_error(rules, more):
    try:
        compile_ruleset({"resource": "people", "rules": rules, **more},
                        exists=lambda f, v: set(), lookup=lambda r, f, v: set(v))
    except RuleSpecError:
        pass
