"""The sharing services end to end (目录, 目录授权, 数据访问下载, 核验, 校核纠错): a star whose
b1 owns `people` (uploaded to the center's shared library) and `licences` (kept at b1,
answered through the center), and b2 a consumer. Real daemons, real databases."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from exnode.node.tools.cluster import wait_until

ABSTRACT_PEOPLE = "本市常住人口的户籍登记信息，包括姓名、身份证号和出生日期。"
ABSTRACT_LICENCES = "市场主体营业执照登记信息，由市场监管局维护。"


def people(md: sa.MetaData) -> sa.Table:
    return sa.Table("people", md,
                    sa.Column("citizen_id", sa.String(18), primary_key=True),
                    sa.Column("name", sa.String(50)),
                    sa.Column("birth_date", sa.Date),
                    sa.Column("phone", sa.String(20)),
                    sa.Column("district", sa.String(20)))


def licences(md: sa.MetaData) -> sa.Table:
    return sa.Table("licences", md,
                    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("company", sa.String(100)),
                    sa.Column("credit_code", sa.String(18)),
                    sa.Column("status", sa.String(10)))


PEOPLE_CATALOG = {
    "name": "人口基本信息", "abstract": ABSTRACT_PEOPLE, "classification": "A01",
    "provider": "市公安局", "share": "conditional", "keywords": ["人口", "户籍"],
    "update_frequency": "daily",
    "elements": [{"name": "citizen_id", "cn_name": "公民身份号码", "standard": "GB 11643"},
                 {"name": "name", "cn_name": "姓名"}],
}
LICENCES_CATALOG = {
    "name": "营业执照信息", "abstract": ABSTRACT_LICENCES, "classification": "B02",
    "share": "unconditional", "held_at": "owner", "keywords": ["企业"],
}


class Sharing:
    def __init__(self, make_star, broker, people_share="conditional", center_extra=None):
        self.root = Path(f"/tmp/exn-share-{uuid.uuid4().hex[:6]}")
        self.root.mkdir()
        self.urls = {n: f"sqlite:///{self.root}/{n}-data.db" for n in ("b1", "center", "b2")}
        self.engines = {n: sa.create_engine(u) for n, u in self.urls.items()}
        for n, eng in self.engines.items():
            md = sa.MetaData()
            people(md)
            if n == "b1":
                licences(md)
            md.create_all(eng)
        cap = {"strategy": "snapshot", "schedule": {"every": "1s"}}
        cat = {**PEOPLE_CATALOG, "share": people_share}
        nodes = {
            "b1": {"databases": {"db": {"url": self.urls["b1"]}},
                   "resources": {
                       "people": {"database": "db", "table": "people", "key": ["citizen_id"],
                                  "owner": "b1", "capture": cap, "catalog": cat},
                       "licences": {"database": "db", "table": "licences", "key": ["id"],
                                    "owner": "b1", "catalog": LICENCES_CATALOG}}},
            "center": {"databases": {"db": {"url": self.urls["center"]}},
                       "resources": {"people": {"database": "db", "table": "people",
                                                "key": ["citizen_id"], "owner": "b1",
                                                "direction": "both",
                                                **(center_extra or {})}}},
            "b2": {"databases": {"db": {"url": self.urls["b2"]}},
                   "resources": {"people": {"database": "db", "table": "people",
                                            "key": ["citizen_id"]}}},
        }
        self.star = make_star(broker, node_settings=nodes)

    def up(self):
        self.star.up()

    def cli(self, node, *args, timeout=120):
        return self.star.cli(node, *args, timeout=timeout)

    def json(self, node, *args):
        r = self.cli(node, *args, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout)


@pytest.fixture
def sharing(make_star, system_broker):
    s = Sharing(make_star, system_broker)
    yield s
    for e in s.engines.values():
        e.dispose()


def test_catalog_is_published_versioned_distributed_and_searchable_in_chinese(sharing):
    s = sharing
    s.up()
    # the owner's entries reach the center and from there every member
    for node in ("center", "b2", "b1"):
        wait_until(lambda n=node: len(s.json(n, "catalog", "list")) == 2, 30,
                   what=f"the catalog at {node}")
    e = s.json("b2", "catalog", "show", "people")
    assert e["provider_node"] == "b1" and e["version"] == 1 and e["share"] == "conditional"
    els = {el["name"]: el for el in e["elements"]}
    # declared elements keep what the owner wrote; the others come from the table
    assert els["citizen_id"]["cn_name"] == "公民身份号码"
    assert els["citizen_id"]["standard"] == "GB 11643"
    assert set(els) == {"citizen_id", "name", "birth_date", "phone", "district"}
    assert "varchar" in els["phone"]["type"] and els["phone"]["length"] == 20
    # search by a Chinese word of the abstract, 2 characters (LIKE) and 3+ (trigram FTS)
    for word in ("户籍", "常住人口", "营业执照"):
        found = s.json("b2", "catalog", "search", word)
        want = "licences" if word == "营业执照" else "people"
        assert [f["resource"] for f in found] == [want], word
    assert s.json("b2", "catalog", "search", "不存在的词") == []
    r = s.cli("b2", "catalog", "search", "不存在的词")
    assert r.returncode == 0 and "nothing found" in r.stdout
    # a change at the owner is a new version; the old one stays readable
    s.star.stop("b1")
    import yaml

    p = s.star.config_path("b1")
    cfg = yaml.safe_load(p.read_text(encoding="utf-8"))
    cfg["resources"]["people"]["catalog"]["abstract"] = "人口信息，第二版摘要。"
    p.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    s.star.start("b1")
    wait_until(lambda: s.json("b2", "catalog", "show", "people")["version"] == 2, 30,
               what="version 2 at b2")
    old = s.json("b2", "catalog", "show", "people", "--version", "1")
    assert old["abstract"] == ABSTRACT_PEOPLE
    assert [f["resource"] for f in s.json("b2", "catalog", "search", "第二版")] == ["people"]
    assert s.json("b2", "catalog", "search", "常住人口") == []  # only current versions
    # export
    out = s.root / "catalog.csv"
    r = s.cli("b2", "catalog", "export", "--format", "csv", "--bom", "-o", str(out))
    assert r.returncode == 0, r.stderr
    raw = out.read_bytes()
    assert raw.startswith("\ufeff".encode()) and "营业执照信息".encode() in raw
    r = s.cli("b2", "catalog", "show", "nothing-here")
    assert r.returncode == 3 and "no resource 'nothing-here'" in r.stderr
