"""Correction feedback (校核纠错) end to end: b2 (a consumer) files corrections on b1's
`people`; they reach b1 through the center with a deadline in working days; b1 rejects
one with a reason and accepts another, and b2 sees both; an open correction past its
deadline is flagged once, at the owner. Real daemons, real databases."""

from __future__ import annotations

import json
import sqlite3
import time

from exnode.node.tools.cluster import wait_until

from ..helpers import db_rows
from .test_sharing import Sharing, _catalog_everywhere, _insert, _rows

CID = "110101199001011234"
SAYS = ("张叁丰", "张三峰", "张山疯")


def _file(s, says, key=CID, field="name", resource="people"):
    return s.cli("b2", "corrections", "file", resource, key, "--field", field, "--says", says,
                 "--evidence", "户口簿第2页", "--json")


def test_corrections_round_trip_refusals_and_overdue(make_star, system_broker):
    s = Sharing(make_star, system_broker)
    try:
        _run(s)
    finally:
        for e in s.engines.values():
            e.dispose()


def _run(s):
    s.up()
    _catalog_everywhere(s)
    _insert(s, [{"citizen_id": CID, "name": "张三", "phone": "13800001111",
                 "district": "东城"}])
    wait_until(lambda: CID in _rows(s.engines["center"]), 30, what="the shared library")

    # b2 files two corrections; the center gives each its deadline and forwards it
    filed = []
    for says in SAYS[:2]:
        r = _file(s, says)
        assert r.returncode == 0, r.stdout + r.stderr
        c = json.loads(r.stdout)
        assert c["status"] == "open" and c["owner"] == "b1" and c["consumer"] == "b2"
        filed.append(c["id"])
    now = time.time()
    for cid in filed:
        wait_until(lambda i=cid: s.cli("b1", "corrections", "show", i).returncode == 0, 30,
                   what="the correction at the owner")
        c = s.json("b1", "corrections", "show", cid)
        assert c["status"] == "open" and c["due"] > now, c
        assert c["key"] == [CID] and c["field"] == "name" and c["says"] in SAYS
        assert c["evidence"] == "户口簿第2页"
    listed = s.json("b1", "corrections", "list", "--status", "open")
    assert {c["id"] for c in listed} == set(filed)
    assert s.cli("b1", "corrections", "list", "--overdue").returncode == 0

    # only the owner answers, and a rejection needs a reason
    r = s.cli("b2", "corrections", "accept", filed[0])
    assert r.returncode != 0 and "b1" in r.stderr, r.stdout + r.stderr
    r = s.cli("b1", "corrections", "reject", filed[0], "--reason", "  ")
    assert r.returncode != 0 and "--reason" in r.stderr, r.stdout + r.stderr

    r = s.cli("b1", "corrections", "reject", filed[0], "--reason", "与户籍底册一致")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: s.json("b2", "corrections", "show", filed[0])["status"] == "rejected",
               30, what="the rejection at b2")
    c = s.json("b2", "corrections", "show", filed[0])
    assert c["history"][-1]["reason"] == "与户籍底册一致" and c["history"][-1]["by"] == "b1"
    # the owner fixes its source, then accepts
    with s.engines["b1"].begin() as conn:
        conn.exec_driver_sql("UPDATE people SET name = ? WHERE citizen_id = ?",
                             (SAYS[1], CID))
    r = s.cli("b1", "corrections", "accept", filed[1])
    assert r.returncode == 0, r.stderr
    wait_until(lambda: s.json("b2", "corrections", "show", filed[1])["status"] == "accepted",
               30, what="the acceptance at b2")
    assert s.json("center", "corrections", "show", filed[1])["status"] == "accepted"
    wait_until(lambda: _rows(s.engines["center"])[CID]["name"] == SAYS[1], 30,
               what="the fix in the shared library")
    r = s.cli("b1", "corrections", "accept", filed[1])
    assert r.returncode != 0 and "not open" in r.stderr

    # an unknown field: refused at the consumer, exit 4, one line
    r = _file(s, "x", field="nope")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "unknown-field" in r.stderr and "nope" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    # a resource the catalog does not list
    r = _file(s, "x", resource="nothing-here")
    assert r.returncode in (3, 4), r.stdout + r.stderr
    assert "nothing-here" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr

    # an open correction past its deadline: in status at the owner and the center,
    # listed by --overdue, logged once
    r = _file(s, SAYS[2])
    assert r.returncode == 0, r.stderr
    late = json.loads(r.stdout)["id"]
    wait_until(lambda: s.cli("b1", "corrections", "show", late).returncode == 0, 30,
               what="the third correction at the owner")
    for node in ("b1", "center"):
        with sqlite3.connect(s.star.dir(node) / "state.db") as db:
            db.execute("UPDATE corrections SET due = ? WHERE id = ?", (1.0, late))
    wait_until(lambda: s.cli("b1", "corrections", "list", "--overdue").returncode == 1, 30,
               what="the overdue correction at b1")
    assert [c["id"] for c in json.loads(s.cli("b1", "corrections", "list", "--overdue",
                                              "--json").stdout)] == [late]
    for node in ("b1", "center"):
        r = s.cli(node, "status", "--check")
        assert r.returncode == 1 and f"correction {late}" in r.stdout, r.stdout
    assert "exnode corrections accept|reject" in s.cli("b1", "status").stdout
    st = json.loads(s.cli("b1", "status", "--json").stdout)["corrections"]
    assert st["open"] == 1 and st["accepted"] == 1 and st["rejected"] == 1
    assert st["overdue"] == 1

    def flagged(node="b1"):
        return db_rows(s.star, node, "SELECT event, resource FROM exchange_log WHERE "
                       "event = 'overdue' AND pkg_id = ?", (late,))

    wait_until(flagged, 30, what="the overdue entry in b1's exchange log")
    wait_until(lambda: flagged("center"), 30, what="the overdue entry at the center")
    time.sleep(11)  # the next look at the deadlines logs it no second time
    assert flagged() == [("overdue", "people")]
    assert flagged("center") == [("overdue", "people")]

    # neither the values said nor the key are in the exchange logs
    for node in ("b1", "center", "b2"):
        logged = json.dumps(db_rows(s.star, node, "SELECT * FROM exchange_log"),
                            ensure_ascii=False, default=str)
        assert "correction" in logged
        for secret in (*SAYS, CID):
            assert secret not in logged, (node, secret)
    # nor in the daemons' own (structlog) logs, where the service logs ids only
    for node in ("b1", "center", "b2"):
        text = (s.star.dir(node) / "daemon.log").read_text(encoding="utf-8", errors="replace")
        assert node == "b2" or "correction_" in text
        for secret in SAYS:
            assert secret not in text, (node, secret)
