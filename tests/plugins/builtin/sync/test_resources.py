"""The sync service takes each resource's adapter from the adapter kinds the plugins
registered, by ``databases.<name>.kind``; it builds it with the node's dialect registry."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exnode.node.base.config import load_config
from exnode.node.base.errors import ConfigError
from exnode.node.kernel.node import Node


def node_with(tmp_path: Path, kind: str) -> Node:
    r = subprocess.run([sys.executable, "-m", "exnode.node", "init", "--role", "bureau",
                        "--id", "b1", "--dir", str(tmp_path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    db = tmp_path / "biz.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
    path = tmp_path / "exnode.yaml"
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg["databases"] = {"biz": {"url": f"sqlite:///{db}", "kind": kind}}
    cfg["resources"] = {"people": {"database": "biz", "table": "people", "key": ["id"]}}
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
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
