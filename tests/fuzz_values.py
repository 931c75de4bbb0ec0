"""Hypothesis strategies shared by the fuzz tests: arbitrary YAML/CBOR-like values."""

from __future__ import annotations

from hypothesis import strategies as st

SCALARS = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
           | st.floats(allow_nan=False) | st.text(max_size=40))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=12), inner, max_size=5),
                      max_leaves=20)
