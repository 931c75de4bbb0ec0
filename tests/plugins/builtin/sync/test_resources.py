"""The sync service takes each resource's adapter from the adapter kinds the plugins
registered, by ``databases.<name>.kind``; it builds it with the node's dialect registry."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exnode.node.base.config import load_config
from exnode.node.base.errors import ConfigError
from exnode.node.kernel.node import Node

from ....helpers import init_bureau


def node_with(tmp_path: Path, kind: str) -> Node:
    db = tmp_path / "biz.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
    path = init_bureau(tmp_path, databases={"biz": {"url": f"sqlite:///{db}", "kind": kind}},
                       resources={"people": {"database": "biz", "table": "people",
                                             "key": ["id"]}})
    node = Node(load_config(path))
    node.compose()
    return node


@pytest.fixture
def sync_of() -> Iterator[Any]:
    nodes: list[Node] = []

    def get(tmp_path: Path, kind: str) -> Any:
        node = node_with(tmp_path, kind)
        nodes.append(node)
        svc = node.pm.get_plugin("service:exnode.plugins.builtin.sync")
        assert svc is not None, [n for n, _p in node.pm.list_name_plugin()]
        return svc

    yield get
    for n in nodes:
        n.engine.dispose()


def test_the_sql_kind_serves_a_sqlite_table_with_the_sqlite_dialect(tmp_path, sync_of):
    svc = sync_of(tmp_path, "sql")
    ad = svc.res.adapter("people")
    assert type(ad).__name__ == "SqlAdapter"
    assert ad.dialect.name == "sqlite" and ad.fields == ["id", "name"]


def test_an_unknown_kind_names_the_known_ones(tmp_path, sync_of):
    svc = sync_of(tmp_path, "ftp")
    with pytest.raises(ConfigError) as ei:
        svc.res.adapter("people")
    assert str(ei.value) == "databases.biz.kind: no adapter 'ftp' (known: sql)"
