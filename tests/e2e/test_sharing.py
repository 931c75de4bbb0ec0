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

from ..helpers import db_rows

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
    def __init__(self, make_star, broker, people_share="conditional", center_extra=None,
                 settings=None):
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
        self.star = make_star(broker, node_settings=nodes, settings=settings or {})

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


def _rows(engine, table="people"):
    with engine.connect() as c:
        return {r[0]: r._asdict() for r in c.execute(sa.text(f"SELECT * FROM {table}"))}


def _insert(s, rows, table="people"):
    with s.engines["b1"].begin() as c:
        for r in rows:
            c.execute(sa.text(f"INSERT INTO {table} ({', '.join(r)}) VALUES "
                              f"({', '.join(':' + k for k in r)})"), r)


def _catalog_everywhere(s):
    for node in ("center", "b2", "b1"):
        wait_until(lambda n=node: len(s.json(n, "catalog", "list")) == 2, 30,
                   what=f"the catalog at {node}")


def test_sync_grant_with_review_answer_fields_masks_and_revocation(sharing):
    """A conditional resource: the center reviews, the provider answers with narrower
    fields and a mask; the subscriber receives only those, masked; a revocation stops
    the changes at once. No grant, no changes."""
    import datetime as dt

    s = sharing
    s.up()
    _catalog_everywhere(s)
    _insert(s, [{"citizen_id": "110101199001011234", "name": "张三", "phone": "13800001111",
                 "birth_date": dt.date(1990, 1, 1), "district": "东城"}])
    wait_until(lambda: len(_rows(s.engines["center"])) == 1, 30, what="the shared library")
    assert _rows(s.engines["b2"]) == {}  # b2 holds no grant: it receives nothing

    r = s.cli("b2", "access", "request", "people", "--service", "sync", "--fields",
              "citizen_id,name,phone,birth_date", "--purpose", "社保资格核查",
              "--basis", "《社会保险法》", "--json")
    assert r.returncode == 0, r.stderr
    req = json.loads(r.stdout)
    assert req["status"] == "review" and req["due"] > req["created"]
    rid = req["id"]
    # the provider cannot answer before the center's review
    r = s.cli("b1", "access", "answer", rid, "--approve")
    assert r.returncode != 0
    assert "not waiting" in r.stderr or "no access request" in r.stderr, r.stderr
    r = s.cli("center", "access", "review", rid, "--approve", "--reason", "合规")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: s.json("b1", "access", "show", rid)["status"] == "provider", 30,
               what="the request at the provider")
    r = s.cli("b1", "access", "answer", rid, "--approve", "--fields",
              "citizen_id,name,phone", "--mask", "phone=last:4")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: s.json("b2", "access", "show", rid)["status"] == "granted", 30,
               what="the grant at b2")
    grants = s.json("b2", "access", "grants")
    assert len(grants) == 1 and grants[0]["fields"] == ["citizen_id", "name", "phone"]
    assert grants[0]["masks"] == {"phone": "last:4"}
    # new and changed rows now reach b2: granted fields only, masked
    _insert(s, [{"citizen_id": "110101199202023456", "name": "李四", "phone": "13900002222",
                 "birth_date": dt.date(1992, 2, 2), "district": "西城"}])
    wait_until(lambda: "110101199202023456" in _rows(s.engines["b2"]), 30,
               what="the row at b2")
    got = _rows(s.engines["b2"])["110101199202023456"]
    assert got["name"] == "李四"
    assert got["phone"] == "*******2222"
    assert got["birth_date"] is None and got["district"] is None  # outside the grant
    # the center's log records the steps
    # revocation at the center stops the changes at once
    gid = grants[0]["id"]
    r = s.cli("center", "access", "revoke", gid, "--reason", "用途结束")
    assert r.returncode == 0, r.stderr
    _insert(s, [{"citizen_id": "110101199303034567", "name": "王五", "phone": "13700003333"}])
    wait_until(lambda: "110101199303034567" in _rows(s.engines["center"]), 30,
               what="the third row at the center")
    import time as _t

    _t.sleep(3)
    assert "110101199303034567" not in _rows(s.engines["b2"])
    wait_until(lambda: s.json("b2", "access", "grants") == [], 30,
               what="the revocation at b2")
    assert s.json("b2", "access", "grants", "--all")[0]["state"] == "grant-revoked"


def test_unconditional_is_granted_at_once_and_not_shared_is_refused(
        make_star, system_broker):
    s = Sharing(make_star, system_broker, people_share="none")
    s.up()
    _catalog_everywhere(s)
    r = s.cli("b2", "access", "request", "people", "--purpose", "x")
    assert r.returncode == 4 and "not shared" in r.stderr, r.stdout + r.stderr
    r = s.cli("b2", "access", "request", "licences", "--fields", "company,nope",
              "--purpose", "x")
    assert r.returncode == 4 and "unknown field" in r.stderr and "nope" in r.stderr
    req = s.json("b2", "access", "request", "licences", "--fields", "company,status",
                 "--purpose", "招投标资格审查")
    assert req["status"] == "granted", req
    # the holder of licences (b1, it stays there) has the grant too
    wait_until(lambda: [g["grantee"] for g in s.json("b1", "access", "grants")] == ["b2"],
               30, what="the grant at the holder")


def test_an_overdue_step_is_flagged_in_status_list_and_log(sharing):
    s = sharing
    s.up()
    _catalog_everywhere(s)
    req = s.json("b2", "access", "request", "people", "--purpose", "统计分析")
    assert req["status"] == "review"
    r = s.cli("center", "access", "list", "--overdue")
    assert r.returncode == 0 and "no access requests" in r.stdout
    # two working days pass (the state DB is told so: the clock cannot be)
    db = s.star.dir("center") / "state.db"
    import sqlite3

    with sqlite3.connect(db) as c:
        c.execute("UPDATE access_requests SET due = ? WHERE id = ?", (1.0, req["id"]))
    wait_until(lambda: s.cli("center", "access", "list", "--overdue").returncode == 1, 30,
               what="the overdue flag")
    r = s.cli("center", "status", "--check")
    assert r.returncode == 1 and f"access request {req['id']}" in r.stdout, r.stdout
    assert "exnode access review" in r.stdout
    def flagged():
        with sqlite3.connect(db) as c:
            return c.execute("SELECT event, resource FROM exchange_log WHERE event = "
                             "'overdue'").fetchall()

    wait_until(flagged, 30, what="the overdue entry in the exchange log")
    import time as _t

    _t.sleep(11)  # the next look at the deadlines logs it no second time
    assert flagged() == [("overdue", "people")]
    # deciding the step clears it
    r = s.cli("center", "access", "review", req["id"], "--refuse", "--reason", "依据不足")
    assert r.returncode == 0, r.stderr
    assert s.cli("center", "access", "list", "--overdue").returncode == 0
    wait_until(lambda: s.json("b2", "access", "show", req["id"])["status"] == "refused", 30,
               what="the refusal at b2")
    assert s.json("b2", "access", "show", req["id"])["history"][-1]["reason"] == "依据不足"


PEOPLE = [
    {"citizen_id": "110101199001011234", "name": "张三", "phone": "13800001111",
     "district": "东城"},
    {"citizen_id": "110101199202023456", "name": "李四", "phone": "13900002222",
     "district": "西城"},
    {"citizen_id": "110101199303034567", "name": "王五", "phone": "13700003333",
     "district": "朝阳"},
]


def test_verification_answers_found_and_match_without_a_value(make_star, system_broker):
    import datetime as dt

    from ..helpers import craft, publish_package, refusals

    s = Sharing(make_star, system_broker, people_share="unconditional", center_extra={
        "quality": {"clean": [{"step": "trim", "fields": ["name"]},
                              {"step": "halfwidth", "fields": ["name"]}]}})
    _insert(s, [{**p, "birth_date": dt.date(1990 + i, 1 + i, 1 + i)}
                for i, p in enumerate(PEOPLE)])
    s.up()
    _catalog_everywhere(s)
    wait_until(lambda: len(_rows(s.engines["center"])) == 3, 30, what="the shared library")
    csv_in = s.root / "records.csv"
    csv_in.write_text("citizen_id,name,birth_date\n"
                      "110101199001011234, 张三 ,1990-01-01\n"  # trimmed: a match
                      "110101199202023456,李四,1999-09-09\n"  # birth date differs
                      "110101199999999999,赵六,2000-01-01\n"  # not there
                      "' OR 1=1 --,x,\n", encoding="utf-8")
    # no grant: refused at the consumer, and a forged request gets nothing either
    r = s.cli("b2", "verify", "people", "--input", str(csv_in), "--key", "citizen_id",
              "--check", "name,birth_date")
    assert r.returncode == 4 and "no verify grant" in r.stderr, r.stdout + r.stderr
    import cbor2

    body = cbor2.dumps({"id": "forged", "key": ["citizen_id"], "check": ["name"],
                        "records": [["110101199001011234", "张三"]]})
    pkg = craft(s.star, src="b2", to="center", kind="check-req", resource="people",
                payload=body)
    publish_package(s.star, s.star.topics.inbox("center"), pkg.wire)
    # and with the center bypassed: straight to the holder of licences, b1
    pkg = craft(s.star, src="b2", to="b1", kind="check-req", resource="licences",
                payload=cbor2.dumps({"id": "f2", "key": ["id"], "check": ["company"],
                                     "records": [["1", "x"]]}))
    publish_package(s.star, s.star.topics.inbox("b1"), pkg.wire)
    wait_until(lambda: any("no verify grant" in x[2] for x in refusals(s.star, "center")),
               30, what="the center's refusal")
    wait_until(lambda: any("no verify grant" in x[2] for x in refusals(s.star, "b1")),
               30, what="the holder's refusal")

    req = s.json("b2", "access", "request", "people", "--service", "verify", "--fields",
                 "citizen_id,name,birth_date", "--purpose", "身份核验")
    assert req["status"] == "granted"
    wait_until(lambda: s.json("b2", "access", "grants") != [], 30, what="the grant at b2")
    r = s.cli("b2", "verify", "people", "--input", str(csv_in), "--key", "citizen_id",
              "--check", "name,birth_date", "--json")
    assert r.returncode == 1, r.stderr  # not everything matched
    out = json.loads(r.stdout)
    assert out["records"] == 4 and out["found"] == 2 and out["all_match"] == 1
    res = out["results"]
    assert res[0] == {"key": "110101199001011234", "found": True,
                      "fields": {"name": True, "birth_date": True}}
    assert res[1]["fields"] == {"name": True, "birth_date": False}
    assert not res[2]["found"] and not res[3]["found"] and res[3]["fields"] == {}
    # the answer holds no value of the resource but the keys the asker sent
    held = {str(v) for row in _rows(s.engines["center"]).values() for k, v in row.items()
            if v is not None and k != "citizen_id"}
    answer = json.dumps(out, ensure_ascii=False)
    leaked = [v for v in held if v in answer and v not in csv_in.read_text()]
    assert leaked == [], leaked
    # a field outside the grant is refused
    phones = s.root / "phones.csv"
    phones.write_text("citizen_id,name,phone\n110101199001011234,张三,13800001111\n",
                      encoding="utf-8")
    r = s.cli("b2", "verify", "people", "--input", str(phones), "--key", "citizen_id",
              "--check", "name,phone")
    assert r.returncode == 4 and "outside the grant" in r.stderr, r.stderr
    # the holder logged who asked and how many, not what
    rows = db_rows(s.star, "center", "SELECT peer, status FROM exchange_log WHERE "
                   "event = 'verify'")
    assert ("b2", "4 records, 2 found") in rows
    assert not any("张三" in str(x) for x in db_rows(s.star, "center",
                                                    "SELECT * FROM exchange_log"))


def _grant_people_query(s, fields, masks=()):
    req = s.json("b2", "access", "request", "people", "--service", "query", "--fields",
                 fields, "--purpose", "统计")
    assert s.cli("center", "access", "review", req["id"], "--approve").returncode == 0
    wait_until(lambda: s.json("b1", "access", "show", req["id"])["status"] == "provider",
               30, what="the request at the provider")
    args = [a for m in masks for a in ("--mask", m)]
    r = s.cli("b1", "access", "answer", req["id"], "--approve", *args)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: s.json("b2", "access", "grants") != [], 30, what="the grant at b2")
    return s.json("b2", "access", "grants")[0]


def test_query_grants_fields_masks_injection_relay_and_revocation(sharing):
    import csv
    import subprocess
    import time as _t

    s = sharing
    _insert(s, [{"citizen_id": f"1101011990{i:08d}", "name": f"人{i}", "phone":
                 f"138{i:08d}", "district": "东城" if i % 2 else "西城"} for i in range(3000)])
    _insert(s, [{"id": i, "company": f"公司{i}", "credit_code": f"9111{i:014d}",
                 "status": "存续"} for i in range(5)], table="licences")
    s.up()
    _catalog_everywhere(s)
    wait_until(lambda: len(_rows(s.engines["center"])) == 3000, 60, what="the shared library")
    out = s.root / "p.csv"
    r = s.cli("b2", "query", "people", "-o", str(out))
    assert r.returncode == 4 and "no query grant" in r.stderr, r.stderr
    g = _grant_people_query(s, "citizen_id,name,phone,district", ["phone=last:4"])
    # fields outside the grant never come back
    r = s.cli("b2", "query", "people", "--fields", "name,birth_date", "-o", str(out))
    assert r.returncode == 4 and "outside the grant" in r.stderr, r.stderr
    r = s.cli("b2", "query", "people", "--where", "birth_date is null", "-o", str(out))
    assert r.returncode == 4 and "outside the grant" in r.stderr, r.stderr
    # filters, order, limit, masking at the holder, CSV with a BOM
    r = s.cli("b2", "query", "people", "--where", "district = 东城", "--order", "-citizen_id",
              "--limit", "5", "--bom", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    raw = out.read_bytes()
    assert raw.startswith("\ufeff".encode())
    rows = list(csv.DictReader(raw.decode("utf-8-sig").splitlines()))
    assert len(rows) == 5 and list(rows[0]) == ["citizen_id", "name", "phone", "district"]
    assert rows[0]["citizen_id"] == "110101199000002999"
    assert all(r["district"] == "东城" for r in rows)
    assert rows[0]["phone"] == "*******2999"
    assert not any(str(2999).zfill(8) in r["phone"][:-4] for r in rows)
    # injection-shaped values are data
    for bad in ("' OR 1=1 --", "x'; DROP TABLE people; --", "%' OR '1'='1"):
        r = s.cli("b2", "query", "people", "--where", f'name = "{bad}"', "--format", "jsonl")
        assert r.returncode == 0 and r.stdout == "", (bad, r.stdout[:200], r.stderr)
    assert len(_rows(s.engines["center"])) == 3000
    # a resource that stays at its owner is answered by it, through the center
    r = s.json("b2", "access", "request", "licences", "--purpose", "招投标")
    assert r["status"] == "granted"
    wait_until(lambda: len(s.json("b1", "access", "grants")) == 2, 30,
               what="the licences grant at its holder")
    lic = s.root / "l.jsonl"
    r = s.cli("b2", "query", "licences", "--format", "jsonl", "-o", str(lic))
    assert r.returncode == 0, r.stderr
    got = [json.loads(x) for x in lic.read_text(encoding="utf-8").splitlines()]
    assert [x["company"] for x in got] == [f"公司{i}" for i in range(5)]
    assert db_rows(s.star, "center", "SELECT count(*) FROM exchange_log WHERE event = "
                   "'relayed' AND kind = 'query-req'")[0][0] >= 1
    assert db_rows(s.star, "b1", "SELECT peer, status FROM exchange_log WHERE event = "
                   "'query' ORDER BY id DESC LIMIT 1") == [("b2", "5 rows")]
    # a revocation stops a running download; what came is kept for a resume
    big = s.root / "all.csv"
    cmd = [*__import__("exnode.node.tools.cluster", fromlist=["x"]).exnode_cmd(), "-c",
           str(s.star.config_path("b2")), "query", "people", "--page", "20", "-o", str(big)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    part = Path(str(big) + ".part")
    wait_until(lambda: part.exists() and part.stat().st_size > 2000, 60,
               what="the download under way")
    r = s.cli("center", "access", "revoke", g["id"], "--reason", "停止")
    assert r.returncode == 0, r.stderr
    _out, err = p.communicate(timeout=240)
    assert p.returncode == 4 and "revoked" in err and "--resume" in err, err
    assert part.exists() and not big.exists()
    n = len(part.read_text(encoding="utf-8").splitlines()) - 1
    assert 0 < n < 3000
    _t.sleep(0.1)
