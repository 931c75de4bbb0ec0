"""Fixtures shared by the kernel's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exnode.node.kernel import identity as idn
from exnode.node.kernel import registry
from exnode.node.kernel.state import open_state


@pytest.fixture
def center(tmp_path: Path) -> Iterator[tuple[Any, idn.Identity]]:
    """A center's keys and CA, and its state DB with itself in the registry."""
    keys = tmp_path / "keys"
    idn.generate_node_keys(keys)
    idn.create_ca(keys, "center")
    ident = idn.Identity("center", keys)
    eng = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    registry.ensure_self(eng, ident)
    yield eng, ident
    eng.dispose()
