"""Fuzzing the configuration loader: any YAML document gives a Config or the project's
own one-line ConfigError, never another exception."""

from __future__ import annotations

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from exnode.node.base.config import parse_config
from exnode.node.base.errors import ConfigError

from ...fuzz_values import VALUES

SECTIONS = ["node", "broker", "center", "delivery", "state", "control", "gconf", "log",
            "plugins", "crypto", "databases", "resources", "extra"]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(SECTIONS), VALUES, max_size=6))
def test_any_document_is_a_config_or_a_config_error(doc):
    doc.setdefault("node", {"id": "b1", "role": "bureau"})
    text = yaml.safe_dump(doc, allow_unicode=True)
    try:
        parse_config(text, "fuzz.yaml")
    except ConfigError as e:
        assert "\n" not in str(e)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_config_or_a_config_error(text):
    try:
        parse_config(text, "fuzz.yaml")
    except ConfigError as e:
        assert "\n" not in str(e)
