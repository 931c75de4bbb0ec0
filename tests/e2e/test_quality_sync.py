"""Data rule checks in the sync pipeline: quarantine at the owner, quarantine at the center
with a notice to the owner, and retry after the source row is fixed."""

from __future__ import annotations

import json
import sqlite3

import pytest
from stdnum.cn import ric

from exnode.node.tools.cluster import wait_until

from ..helpers import db_rows

DDL = ("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, citizen_id TEXT, "
       "birth TEXT, sex TEXT, amount NUMERIC, district TEXT)")


def valid_id(seq: int, birth: str = "19900307", male: bool = True) -> str:
    body = f"110101{birth}{seq:02d}{1 if male else 2}"
    return body + ric.calc_check_digit(body + "0")  # stdnum wants a placeholder digit


OWNER_RULES = {
    "clean": [{"step": "trim", "fields": ["name", "citizen_id"]},
              {"step": "empty_to_null", "fields": ["name"]}],
    "rules": [{"rule": "required", "field": "name"},
              {"rule": "citizen_id", "field": "citizen_id"}],
}
CENTER_RULES = {
    "rules": [*OWNER_RULES["rules"],
              {"rule": "range", "field": "amount", "min": 0, "max": 1000}],
}


def people_dbs(tmp_path) -> dict[str, object]:
    """An empty SQLite business database with the people table for each node."""
    dbs = {n: tmp_path / f"{n}.db" for n in ("b1", "center", "b2")}
    for p in dbs.values():
        db = sqlite3.connect(p)
        db.execute(DDL)
        db.commit()
        db.close()
    return dbs


@pytest.fixture
def star(make_star, system_broker, tmp_path):
    dbs = people_dbs(tmp_path)
    res = {"database": "db", "table": "people", "key": ["id"], "owner": "b1"}
    from ..console_helpers import free_port

    console_port = free_port()
    s = make_star(system_broker, node_settings={
        "b1": {"databases": {"db": {"url": f"sqlite:///{dbs['b1']}"}},
               "resources": {"people": {**res, "quality": OWNER_RULES, "capture": {
                   "strategy": "snapshot", "schedule": {"every": "1h"}}}}},
        "center": {"databases": {"db": {"url": f"sqlite:///{dbs['center']}"}},
                   "resources": {"people": {**res, "quality": CENTER_RULES,
                                            "subscribers": ["b2"]}},
                   "console": {"listen": f"127.0.0.1:{console_port}"}},
        "b2": {"databases": {"db": {"url": f"sqlite:///{dbs['b2']}"}},
               "resources": {"people": res}},
    })
    s.up()
    s.dbs = dbs
    s.console_port = console_port
    return s


def rows(star, node):
    db = sqlite3.connect(star.dbs[node])
    try:
        return {r[0]: r for r in db.execute("SELECT * FROM people ORDER BY id")}
    finally:
        db.close()


def write(star, sql, args=()):
    db = sqlite3.connect(star.dbs["b1"])
    db.execute(sql, args)
    db.commit()
    db.close()


def test_rules_at_owner_and_center_quarantine_notice_and_retry(star):
    good = (1, "  张三  ", valid_id(1), "1990-03-07", "M", 100, "东城区")
    bad_at_owner = (2, "李四", valid_id(2)[:-1] + ("0" if valid_id(2)[-1] != "0" else "1"),
                    "1990-03-07", "M", 50, "东城区")
    bad_at_center = (3, "王五", valid_id(3), "1990-03-07", "M", 5000, "西城区")
    for r in (good, bad_at_owner, bad_at_center):
        write(star, "INSERT INTO people VALUES (?,?,?,?,?,?,?)", r)
    assert star.cli("b1", "sync", "now", "people").returncode == 0

    # the good row arrives cleaned (trimmed) at the center and at b2
    wait_until(lambda: 1 in rows(star, "b2"), 30, 0.2, "the good row at b2")
    assert rows(star, "center")[1][1] == "张三"
    # row 2 never left the owner: it is in b1's quarantine with the rule and reason
    q = json.loads(star.cli("b1", "quarantine", "list", "--json").stdout)
    assert [(x["key"], x["stage"]) for x in q] == [("[2]", "owner")]
    assert q[0]["violations"][0]["rule"] == "citizen_id"
    assert valid_id(2)[6:14] not in json.dumps(q), "a full ID number leaked into a reason"
    # row 3 passed the owner but not the center's stricter rule: quarantined there, and
    # the owner got a signed rejection notice
    wait_until(lambda: db_rows(star, "center", "SELECT count(*) FROM quarantine")[0][0] == 1,
               30, 0.2, "row 3 quarantined at the center")
    cq = json.loads(star.cli("center", "quarantine", "list", "--json").stdout)
    assert [(x["key"], x["stage"], x["src"]) for x in cq] == [("[3]", "center", "b1")]
    assert cq[0]["violations"][0]["rule"] == "range"
    assert 3 not in rows(star, "center") and 3 not in rows(star, "b2")
    wait_until(lambda: db_rows(star, "b1", "SELECT count(*) FROM notices")[0][0] == 1, 30, 0.2,
               "the notice at b1")
    rep = json.loads(star.cli("b1", "quality", "report", "people", "--json").stdout)
    assert rep["per_rule"] == {"citizen_id": 1} and rep["rejections_received"] == 1
    # the notice can be listed (issue 9, finding 7): which package, which key, why
    rj = star.cli("b1", "sync", "rejections", "people", "--json")
    assert rj.returncode == 0, rj.stderr
    notes = json.loads(rj.stdout)
    assert [(n["resource"], n["from"], n["refused"]) for n in notes] == [("people", "center",
                                                                          1)]
    assert notes[0]["items"][0]["key"] == ["3"] and notes[0]["items"][0]["reason"]
    assert "refused by center" in star.cli("b1", "sync", "rejections").stdout
    crep = json.loads(star.cli("center", "quality", "report", "people", "--json").stdout)
    assert crep["per_rule"] == {"range": 1} and crep["quarantine_open"] == 1

    # 'quarantine show' masks the ID number in the row as in the reason (--reveal shows it)
    bad_id = bad_at_owner[2]
    for args in (("--json",), ()):
        shown = star.cli("b1", "quarantine", "show", str(q[0]["id"]), *args)
        assert shown.returncode == 0 and bad_id not in shown.stdout, shown.stdout
        assert bad_id[:6] in shown.stdout and "citizen_id" in shown.stdout
    revealed = star.cli("b1", "quarantine", "show", str(q[0]["id"]), "--reveal", "--json")
    assert json.loads(revealed.stdout)["row"]["citizen_id"] == bad_id
    # retrying before the fix fails and says why
    r = star.cli("b1", "quarantine", "retry", str(q[0]["id"]))
    assert r.returncode == 1 and "citizen_id" in r.stdout
    # the operator fixes the source row; retry sends it through
    write(star, "UPDATE people SET citizen_id=? WHERE id=2", (valid_id(2),))
    r = star.cli("b1", "quarantine", "retry", str(q[0]["id"]), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["status"] == "retried"
    wait_until(lambda: 2 in rows(star, "b2"), 30, 0.2, "row 2 at b2 after the fix")
    assert rows(star, "center")[2][2] == valid_id(2)
    # dropping the center's quarantined row, from the console's quarantine page: a
    # read-only account sees it without a button or a value; an operator drops it
    from ..console_helpers import Web, add_accounts

    add_accounts(star, "center", ("op", "ro"))
    w = Web(star.console_port)
    assert w.login("ro").status_code == 302
    page = w.get("/work").text
    assert f"<td>{cq[0]['id']}</td>" in page and "/quarantine/" not in page
    assert valid_id(3) not in page and "王五" not in page  # the row's values stay out
    w.close()
    w = Web(star.console_port)
    w.login("op")
    assert w.post(f"/quarantine/{cq[0]['id']}/drop").status_code == 302
    assert json.loads(star.cli("center", "quarantine", "list", "--json").stdout) == []
    assert any(a["action"] == "quarantine.act" and a["actor"] == "op" for a in json.loads(
        star.cli("center", "console", "audit", "--json").stdout))
    w.close()
    r = star.cli("center", "quarantine", "drop", str(cq[0]["id"]))
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_rules_file_and_a_plugin_rule(tmp_path):
    """Rules may live in a file the config names; a plugin adds a rule type through the
    exnode_quality_rules hook and it is used like a built-in."""
    import pluggy

    from exnode.node.base.config import load_config
    from exnode.plugins import hookimpl, hookspecs
    from exnode.policies.quality import RuleSpec, builtin_registry, compile_ruleset

    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - {rule: required, field: name}\n  - {rule: not_test_data, field: name}\n",
        encoding="utf-8")
    (tmp_path / "exnode.yaml").write_text(
        "node: {id: b1, role: bureau}\n"
        "databases: {db: {url: 'sqlite:///x.db'}}\n"
        "resources:\n"
        "  people: {database: db, table: people, key: [id], quality_file: rules.yaml}\n",
        encoding="utf-8")
    cfg = load_config(tmp_path / "exnode.yaml")
    assert cfg.resources["people"].quality["rules"][1]["rule"] == "not_test_data"

    class NotTestData(RuleSpec):
        def compile(self, ctx):  # type: ignore[no-untyped-def]
            return [self.value_check(f, lambda v: "test" not in str(v).lower(),
                                     lambda v: "looks like test data") for f in self.targets()]

    class Plugin:
        @hookimpl
        def exnode_quality_rules(self, register):  # type: ignore[no-untyped-def]
            register("not_test_data", NotTestData)

    pm = pluggy.PluginManager("exnode")
    pm.add_hookspecs(hookspecs)
    pm.register(Plugin())
    reg = builtin_registry()
    pm.hook.exnode_quality_rules(register=reg.register)
    rs = compile_ruleset({"resource": "people", **cfg.resources["people"].quality},
                         registry=reg)
    res = rs.check([{"name": "张三"}, {"name": "Test User"}, {"name": None}])
    assert [r["name"] for r in res.passed] == ["张三"]
    assert [[v.rule for v in vs] for _r, vs in res.failed] == [["not_test_data"], ["required"]]

    # a missing rules file is a FILE:LINE error
    (tmp_path / "rules.yaml").unlink()
    from exnode.node.base.errors import ConfigError

    with pytest.raises(ConfigError, match=r"exnode.yaml:4: resources.people.quality_file"):
        load_config(tmp_path / "exnode.yaml")


def test_center_retry_records_the_row_origin_so_the_owner_can_update_it(make_star,
                                                                          system_broker,
                                                                          tmp_path):
    """Under center-wins, a row the center applied from a quarantine retry was written by
    its sender: the owner may go on updating it. (The retry used to apply the row without
    recording its origin, so the center took the row for its own and refused the owner's
    next change of it.)"""
    import yaml

    dbs = people_dbs(tmp_path)
    res = {"database": "db", "table": "people", "key": ["id"]}
    strict = {"rules": [{"rule": "range", "field": "amount", "min": 0, "max": 1000}]}
    star = make_star(system_broker, node_settings={
        "b1": {"databases": {"db": {"url": f"sqlite:///{dbs['b1']}"}},
               "resources": {"people": {**res, "capture": {
                   "strategy": "snapshot", "schedule": {"every": "1h"}}}}},
        "center": {"databases": {"db": {"url": f"sqlite:///{dbs['center']}"}},
                   "resources": {"people": {**res, "conflict": "center-wins",
                                            "quality": strict, "subscribers": ["b2"]}}},
        "b2": {"databases": {"db": {"url": f"sqlite:///{dbs['b2']}"}},
               "resources": {"people": res}},
    })
    star.up()
    star.dbs = dbs
    write(star, "INSERT INTO people VALUES (?,?,?,?,?,?,?)",
          (7, "赵六", valid_id(7), "1990-03-07", "M", 5000, "东城区"))
    assert star.cli("b1", "sync", "now", "people").returncode == 0
    wait_until(lambda: db_rows(star, "center", "SELECT count(*) FROM quarantine")[0][0] == 1,
               30, 0.2, "the row quarantined at the center")

    # the center's operator relaxes the rule, restarts and retries the row
    star.stop("center")
    path = star.config_path("center")
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg["resources"]["people"]["quality"]["rules"][0]["max"] = 100000
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    star.start("center")
    qid = json.loads(star.cli("center", "quarantine", "list", "--json").stdout)[0]["id"]
    r = star.cli("center", "quarantine", "retry", str(qid), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["passed"], r.stdout + r.stderr
    wait_until(lambda: 7 in rows(star, "b2"), 30, 0.2, "the retried row at b2")
    assert db_rows(star, "center", "SELECT origin FROM row_origin WHERE key='[7]'") \
        == [("b1",)], "the retry did not record who wrote the row"

    # the owner changes the row: under center-wins it is still b1's to change
    write(star, "UPDATE people SET amount=6000 WHERE id=7")
    assert star.cli("b1", "sync", "now", "people").returncode == 0
    wait_until(lambda: rows(star, "b2")[7][5] == 6000, 30, 0.2, "the owner's update at b2")
    # the one notice b1 has is the quarantine's; the update drew none
    assert db_rows(star, "b1", "SELECT count(*) FROM notices")[0][0] == 1
