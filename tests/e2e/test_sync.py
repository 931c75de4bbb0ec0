"""Database sync end to end: a MariaDB bureau -> a PostgreSQL center -> a SQLite bureau,
each a real `exnode run` process, with each capture strategy."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from exnode.node.tools.cluster import wait_until

from ..helpers import db_rows

UTC = dt.UTC


def people_table(md: sa.MetaData, name: str = "people", dialect: str = "") -> sa.Table:
    ts = sa.DateTime(timezone=True) if dialect == "postgresql" else (
        sa.dialects.mysql.DATETIME(fsp=6) if dialect == "mysql" else sa.DateTime())
    return sa.Table(
        name, md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(100)),
        sa.Column("citizen_id", sa.String(18)),
        sa.Column("birth", sa.Date),
        sa.Column("amount", sa.Numeric(18, 4)),
        sa.Column("active", sa.Boolean),
        sa.Column("photo", sa.LargeBinary),
        sa.Column("notes", sa.Text),
        sa.Column("owner", sa.String(32)),
        sa.Column("updated_at", ts),
    )





class Sync:
    """A star whose b1 owns `people` in MariaDB, the center keeps the shared library in
    PostgreSQL, and b2 receives into SQLite."""

    def __init__(self, make_star, broker, mariadb_url, pg_url, strategy, center_extra=None,
                 b1_extra=None, b2_extra=None, b2_capture=False):
        self.root = Path(f"/tmp/exn-sync-{uuid.uuid4().hex[:6]}")
        self.root.mkdir()
        self.sqlite_url = f"sqlite:///{self.root}/b2-local.db"
        self.urls = {"b1": mariadb_url, "center": pg_url, "b2": self.sqlite_url}
        self.engines = {n: sa.create_engine(u) for n, u in self.urls.items()}
        dialects = {"b1": "mysql", "center": "postgresql", "b2": "sqlite"}
        self.tables = {}
        for n, eng in self.engines.items():
            md = sa.MetaData()
            self.tables[n] = people_table(md, dialect=dialects[n])
            md.create_all(eng)
        cap = {"strategy": strategy, "schedule": {"every": "1s"}, "chunk_rows": 500}
        if strategy == "incremental":
            cap["column"] = "updated_at"
        res = {"database": "db", "table": "people", "key": ["id"]}
        nodes = {
            "b1": {"databases": {"db": {"url": mariadb_url}},
                   "resources": {"people": {**res, "owner": "b1", "capture": cap,
                                            **(b1_extra or {})}}},
            "center": {"databases": {"db": {"url": pg_url}},
                       "resources": {"people": {**res, "owner": "b1", "subscribers": ["b2"],
                                                **(center_extra or {})}}},
            "b2": {"databases": {"db": {"url": self.sqlite_url}},
                   "resources": {"people": {**res, **({"capture": cap, "direction": "both"}
                                                      if b2_capture else {}),
                                            **(b2_extra or {})}}},
        }
        self.star = make_star(broker, node_settings=nodes)
        self.star.init()
        if strategy == "trigger":
            for n in ("b1", "b2") if b2_capture else ("b1",):
                r = self.star.cli(n, "capture", "install", "people")
                assert r.returncode == 0, r.stderr

    def up(self):
        self.star.up(init=False)

    def rows(self, node):
        t = self.tables[node]
        with self.engines[node].connect() as c:
            return {r.id: r._asdict() for r in c.execute(sa.select(t).order_by(t.c.id))}

    def write(self, node, stmt):
        with self.engines[node].begin() as c:
            c.execute(stmt)

    def same_everywhere(self, ids, nodes=("b1", "center", "b2")):
        got = {n: self.rows(n) for n in nodes}
        if any(set(g) != set(ids) for g in got.values()):
            return False
        for i in ids:
            vals = [_norm(got[n][i]) for n in nodes]
            if any(v != vals[0] for v in vals):
                return False
        return True

    def close(self):
        import shutil

        for e in self.engines.values():
            e.dispose()
        shutil.rmtree(self.root, ignore_errors=True)


def _norm(row):
    out = dict(row)
    ts = out.get("updated_at")
    if isinstance(ts, dt.datetime) and ts.tzinfo is None:
        out["updated_at"] = ts.replace(tzinfo=UTC)
    if out.get("amount") is not None:
        out["amount"] = Decimal(out["amount"]).normalize()
    if out.get("active") is not None:
        out["active"] = bool(out["active"])
    return out


def person(i, **kw):
    base = {"id": i, "name": f"张三{i}", "citizen_id": f"11010119900307{i:04d}"[:18],
            "birth": dt.date(1990, 3, 7), "amount": Decimal("1234.5600"), "active": True,
            "photo": bytes([i % 256]) * 10, "notes": "长文本" * 100, "owner": "b1",
            "updated_at": dt.datetime(2026, 11, 1, 8, 0, i % 60, tzinfo=UTC)}
    base.update(kw)
    return base


@pytest.fixture
def sync_env(make_star, own_mosquitto, mariadb_url, pg_url):
    envs = []

    def factory(strategy, **kw):
        env = Sync(make_star, own_mosquitto, mariadb_url, pg_url, strategy, **kw)
        envs.append(env)
        return env

    yield factory
    for e in envs:
        e.star.close()
        e.close()


@pytest.mark.parametrize("strategy", ["snapshot", "incremental", "trigger"])
def test_inserts_updates_deletes_flow_bureau_center_bureau(sync_env, strategy):
    env = sync_env(strategy)
    env.up()
    t = env.tables["b1"]
    env.write("b1", t.insert().values([person(i) for i in range(1, 21)]))
    wait_until(lambda: env.same_everywhere(range(1, 21)), 60, 0.5, "inserts everywhere")

    later = dt.datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    env.write("b1", t.update().where(t.c.id.in_([3, 4])).values(
        name="李四", amount=Decimal("-0.0100"), active=False, photo=None, updated_at=later))
    wait_until(lambda: env.same_everywhere(range(1, 21)), 60, 0.5, "updates everywhere")
    assert env.rows("b2")[3]["name"] == "李四"
    assert env.rows("center")[4]["amount"] == Decimal("-0.0100")

    if strategy != "incremental":  # a watermark cannot see deletes; documented
        env.write("b1", t.delete().where(t.c.id.in_([5, 6, 7])))
        left = [i for i in range(1, 21) if i not in (5, 6, 7)]
        wait_until(lambda: env.same_everywhere(left), 60, 0.5, "deletes everywhere")

    # every cycle reported, changes or not: the center knows b1 is current
    st = env.star.status("center")
    res = next(r for r in st["resources"] if r["resource"] == "people")
    assert any(n["node"] == "b1" for n in res["nodes"])
    wait_until(lambda: db_rows(env.star, "center", "SELECT count(*) FROM exchange_log WHERE "
                               "kind='zero' AND event='applied'")[0][0] > 0, 30, 0.5,
               "a zero-update report at the center")
    for n in env.star.nodes:
        assert env.star.cli(n, "log", "verify").returncode == 0


def test_owner_wins_refuses_other_bureaus_and_notifies_them(sync_env):
    env = sync_env("snapshot", b2_capture=True,
                   b2_extra={"owner": "b1"})
    env.up()
    env.write("b1", env.tables["b1"].insert().values([person(i) for i in range(1, 4)]))
    wait_until(lambda: env.same_everywhere(range(1, 4)), 60, 0.5, "initial rows")
    # b2 edits a row it does not own: the center refuses it and tells b2
    env.write("b2", env.tables["b2"].update().where(env.tables["b2"].c.id == 2)
              .values(name="篡改"))
    wait_until(lambda: db_rows(env.star, "b2", "SELECT count(*) FROM notices")[0][0] > 0, 60,
               0.5, "rejection notice at b2")
    assert env.rows("center")[2]["name"] == "张三2"
    assert env.rows("b1")[2]["name"] == "张三2"


def test_two_way_sync_does_not_echo(sync_env):
    env = sync_env("trigger", b2_capture=True,
                   center_extra={"conflict": "newer-wins", "version_column": "updated_at",
                                 "owner": None, "subscribers": ["b1", "b2"],
                                 "direction": "both"},
                   b1_extra={"direction": "both", "owner": None},
                   b2_extra={"owner": None})
    env.up()
    env.write("b1", env.tables["b1"].insert().values([person(1), person(2)]))
    wait_until(lambda: env.same_everywhere([1, 2]), 60, 0.5, "b1's rows everywhere")
    later = dt.datetime(2026, 11, 5, tzinfo=UTC)
    env.write("b2", env.tables["b2"].update().where(env.tables["b2"].c.id == 1)
              .values(name="王五", updated_at=later))
    wait_until(lambda: env.rows("b1").get(1, {}).get("name") == "王五", 60, 0.5,
               "b2's change at b1")

    def rows_sent(node):
        return db_rows(env.star, node, "SELECT count(*) FROM outbox WHERE kind='rows'")[0][0]

    before = {n: rows_sent(n) for n in ("b1", "b2")}
    import time

    time.sleep(4)  # several capture cycles
    after = {n: rows_sent(n) for n in ("b1", "b2")}
    assert after == before, "an applied change was captured again and echoed"
    assert env.same_everywhere([1, 2])


def test_schema_mismatch_stops_the_resource_and_loses_nothing(sync_env):
    env = sync_env("snapshot")
    # b2's table lacks a column that the exchange carries
    with env.engines["b2"].begin() as c:
        c.exec_driver_sql("DROP TABLE people")
        c.exec_driver_sql("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
    env.up()
    env.write("b1", env.tables["b1"].insert().values([person(i) for i in range(1, 6)]))
    wait_until(lambda: len(env.rows("center")) == 5, 60, 0.5, "center has the rows")

    def b2_error():
        st = env.star.status("b2")
        r = next(r for r in st["resources"] if r["resource"] == "people")
        return r["error"]

    err = wait_until(b2_error, 60, 0.5, "b2 to stop the resource")
    assert "people" in err
    with env.engines["b2"].connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM people").scalar() == 0
    # the operator fixes the table: the held package is applied, nothing lost
    with env.engines["b2"].begin() as c:
        c.exec_driver_sql("DROP TABLE people")
    md = sa.MetaData()
    people_table(md, dialect="sqlite").create(env.engines["b2"])
    wait_until(lambda: len(env.rows("b2")) == 5, 120, 0.5, "b2 after the fix")
    assert env.same_everywhere(range(1, 6))


def test_initial_load_and_status(sync_env):
    env = sync_env("snapshot", b1_extra={"capture": {"strategy": "snapshot",
                                                      "schedule": {"every": "1h"},
                                                      "chunk_rows": 200}})
    env.write("b1", env.tables["b1"].insert().values([person(i) for i in range(1, 1501)]))
    env.up()
    r = env.star.cli("b1", "sync", "people", "--initial", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["status"] == "done" and job["rows"] == 1500
    wait_until(lambda: len(env.rows("b2")) == 1500, 120, 0.5, "b2 has the initial load")
    assert env.same_everywhere(range(1, 1501))


def test_sync_verify_lists_differing_keys(sync_env):
    env = sync_env("snapshot")
    env.up()
    env.write("b1", env.tables["b1"].insert().values([person(i) for i in range(1, 31)]))
    wait_until(lambda: env.same_everywhere(range(1, 31)), 60, 0.5, "rows everywhere")
    r = env.star.cli("center", "sync", "verify", "people", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["ok"] and {n["node"] for n in rep["nodes"]} == {"center", "b1", "b2"}
    assert all(n["count"] == 30 for n in rep["nodes"])

    # damage b2's copy behind exnode's back: one changed row, one missing row
    t = env.tables["b2"]
    env.write("b2", t.update().where(t.c.id == 7).values(name="被改"))
    env.write("b2", t.delete().where(t.c.id == 9))
    r = env.star.cli("center", "sync", "verify", "people", "--json")
    assert r.returncode == 1
    rep = json.loads(r.stdout)
    b2 = next(n for n in rep["nodes"] if n["node"] == "b2")
    assert not b2["same"] and b2["count"] == 29
    assert b2["differences"]["different"] == ["[7]"]
    assert b2["differences"]["missing_there"] == ["[9]"]
    assert next(n for n in rep["nodes"] if n["node"] == "b1")["same"]
    text = env.star.cli("center", "sync", "verify", "people")
    assert "DIFFER" in text.stdout and "[7]" in text.stdout


def test_initial_load_resumes_after_a_kill(sync_env):
    # no capture at b1, and the initial load sends 100 rows a package (the default
    # chunk of a resource without capture is 5000: set one through a capture spec)
    env = sync_env("snapshot", b1_extra={"capture": {"strategy": "snapshot", "chunk_rows": 100,
                                                      "schedule": {"every": "24h"}}})
    env.write("b1", env.tables["b1"].insert().values([person(i) for i in range(1, 4001)]))
    env.up()
    job = env.star.call("b1", "POST", "/sync/initial", {"resource": "people"})
    assert job["status"] == "running"

    def progress():
        jobs = env.star.call("b1", "GET", "/sync/jobs")
        return next(j for j in jobs if j["resource"] == "people")

    wait_until(lambda: progress()["rows"] > 0, 60, 0.01, "the load to start")
    env.star.kill("b1")
    import sqlite3

    db = sqlite3.connect(env.star.dir("b1") / "state.db")
    rows_at_kill, status = db.execute("SELECT rows, status FROM sync_jobs").fetchone()
    db.close()
    assert status == "running" and 0 < rows_at_kill < 4000, (rows_at_kill, status)
    env.star.start("b1")
    wait_until(lambda: progress()["status"] == "done", 120, 0.5, "the load to finish")
    assert progress()["rows"] == 4000, "the load started over instead of resuming"
    wait_until(lambda: len(env.rows("b2")) == 4000, 120, 0.5, "all rows at b2")
    assert env.same_everywhere(range(1, 4001))


def test_snapshot_after_an_initial_load_sends_only_changes(sync_env):
    # a day between scheduled captures: only the one at start-up (empty table) and the
    # one asked for with `sync now` run
    env = sync_env("snapshot", b1_extra={"capture": {"strategy": "snapshot", "chunk_rows": 500,
                                                      "schedule": {"every": "24h"}}})
    env.up()
    wait_until(lambda: db_rows(env.star, "b1", "SELECT count(*) FROM outbox WHERE "
                               "kind='zero'")[0][0] > 0, 30, 0.2, "the start-up capture")
    env.write("b1", env.tables["b1"].insert().values([person(i) for i in range(1, 1001)]))
    r = env.star.cli("b1", "sync", "people", "--initial", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: len(env.rows("b2")) == 1000, 120, 0.5, "the load at b2")
    before = db_rows(env.star, "b1", "SELECT count(*) FROM outbox WHERE kind='rows'")[0][0]
    assert before == 2  # the load: two packages of 500 rows
    t = env.tables["b1"]
    env.write("b1", t.update().where(t.c.id == 5).values(name="改"))
    assert env.star.cli("b1", "sync", "now", "people").returncode == 0
    wait_until(lambda: env.rows("b2")[5]["name"] == "改", 60, 0.5, "the change at b2")
    # the capture after the load sent one package with the one changed row, not the table
    after = db_rows(env.star, "b1", "SELECT pkg_id FROM outbox WHERE kind='rows'")
    assert len(after) == before + 1
    applied = db_rows(env.star, "b1", "SELECT count(*) FROM exchange_log WHERE "
                      "kind='rows' AND event='created'")[0][0]
    assert applied == 3
    center_marker_rows = env.rows("center")
    assert len(center_marker_rows) == 1000
    with env.engines["center"].connect() as c:
        per_pkg = [n for (n,) in c.exec_driver_sql(
            "SELECT row_count FROM exnode_applied ORDER BY applied_at")]
    assert per_pkg[-1] == 1, per_pkg

    # the rows of each package are in the exchange log (event 'sync', size = rows,
    # counts only), where it was sent and where it was applied, and in the ledger
    n = 1001  # the load's 1,000 and the one change
    sent = db_rows(env.star, "b1", "SELECT pkg_id, peer, size, status FROM exchange_log "
                   "WHERE event='sync' AND resource='people'")
    assert sorted(r[0] for r in sent) == sorted(r[0] for r in after)
    assert {r[1] for r in sent} == {"center"} and sum(r[2] for r in sent) == n
    assert all(r[3] == f"{r[2]} rows sent" for r in sent), sent
    applied = db_rows(env.star, "center", "SELECT size, status FROM exchange_log WHERE "
                      "event='sync' AND peer='b1' AND resource='people'")
    assert sum(r[0] for r in applied) == n and len(applied) == 3
    assert all(r[1] == f"{r[0]} rows applied" for r in applied), applied
    # the center forwarded them to b2 in packages of its own, logged where they went out
    wait_until(lambda: sum(r[0] for r in db_rows(
        env.star, "b2", "SELECT size FROM exchange_log WHERE event='sync' AND "
        "status LIKE '% applied'")) == n, 30, 0.5, "the rows applied at b2")
    fwd = db_rows(env.star, "center", "SELECT sum(size) FROM exchange_log WHERE "
                  "event='sync' AND peer='b2' AND status LIKE '% rows sent'")
    assert fwd == [(n,)]
    month = dt.datetime.now(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
    for node, col, peer in (("b1", "rows_out", "center"), ("center", "rows_in", "b1")):
        r = env.star.cli(node, "ledger", "--month", month, "--json")
        assert r.returncode == 0, r.stderr
        ex = next(s for s in json.loads(r.stdout)["sections"] if s["id"] == "exchange")
        assert next(x for x in ex["by_resource"] if x["resource"] == "people")[col] == n
        assert next(x for x in ex["by_peer"] if x["peer"] == peer)[col] == n
    assert env.star.cli("b1", "log", "verify").returncode == 0
