"""Conflict policies, crash safety and freshness of database sync, end to end.

Each test runs the star of tests/test_sync.py (MariaDB bureau b1 -> PostgreSQL center
-> SQLite bureau b2, every node a real `exnode run` process on its own Mosquitto) with
the resource configured per node for the policy under test.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import time

import cbor2
import pytest
import sqlalchemy as sa

from exnode.adapters.sql import SqlAdapter
from exnode.node.base.config import ResourceSpec
from exnode.node.tools.cluster import wait_until

from ..helpers import db_rows
from . import test_sync
from .test_sync import person

# the star of tests/test_sync.py, as fixtures of this module too
sync_env = test_sync.sync_env

UTC = dt.UTC
T0 = dt.datetime(2026, 11, 1, 8, 0, 0, tzinfo=UTC)

# Both bureaus send and receive; the center forwards accepted changes to both.
TWO_WAY = {"subscribers": ["b1", "b2"], "direction": "both", "owner": None}
B1_TWO_WAY = {"direction": "both", "owner": None}


# --- helpers -------------------------------------------------------------------------------

def notice_items(env, node):
    """(resource, sender, key, reason) of every rejection item ``node`` received."""
    out = []
    for res, src, items in db_rows(env.star, node,
                                   "SELECT resource, src, items FROM notices ORDER BY id"):
        for key, reason in cbor2.loads(items):
            out.append((res, src, tuple(key), reason))
    return out


def refused_keys(env, node):
    return {it[2] for it in notice_items(env, node)}


def name_of(env, node, i):
    return env.rows(node).get(i, {}).get("name")


def cli_json(env, node, *args):
    r = env.star.cli(node, *args, "--json")
    assert r.returncode == 0, f"exnode {' '.join(args)} at {node}: {r.stderr}"
    return json.loads(r.stdout)


def people_status(st):
    return next(r for r in st["resources"] if r["resource"] == "people")


def upd(env, node, i, **values):
    t = env.tables[node]
    env.write(node, t.update().where(t.c.id == i).values(**values))


def settle(seconds=3.0):
    """Several 1 s capture cycles and deliveries: time for a wrong change to show up."""
    time.sleep(seconds)


# --- 1. newer-wins -------------------------------------------------------------------------

def test_newer_wins_refuses_older_and_forwards_newer(sync_env):
    env = sync_env("snapshot", b2_capture=True,
                   center_extra={**TWO_WAY, "conflict": "newer-wins",
                                 "version_column": "updated_at"},
                   b1_extra=B1_TWO_WAY, b2_extra={"owner": None})
    env.up()
    env.write("b1", env.tables["b1"].insert().values(
        [person(i, updated_at=T0) for i in range(1, 4)]))
    wait_until(lambda: env.same_everywhere(range(1, 4)), 60, 0.5, "b1's rows everywhere")

    # b2: row 1 with an OLDER version, row 3 with the SAME version -> both refused
    with env.engines["b2"].begin() as c:
        t = env.tables["b2"]
        c.execute(t.update().where(t.c.id == 1).values(
            name="旧版本", updated_at=T0 - dt.timedelta(days=30)))
        c.execute(t.update().where(t.c.id == 3).values(name="同版本"))
    wait_until(lambda: {(1,), (3,)} <= refused_keys(env, "b2"), 60, 0.5,
               "rejection notice for rows 1 and 3 at b2")
    items = [it for it in notice_items(env, "b2") if it[2] in ((1,), (3,))]
    assert all(res == "people" and src == "center" and "updated_at" in reason
               for res, src, _, reason in items), items
    for node in ("center", "b1"):
        assert name_of(env, node, 1) == "张三1", node
        assert name_of(env, node, 3) == "张三3", node
    assert env.rows("center")[1]["updated_at"] == T0

    # b2: row 2 with a NEWER version -> applied at the center and forwarded to b1
    newer = T0 + dt.timedelta(days=30)
    upd(env, "b2", 2, name="新版本", updated_at=newer)
    wait_until(lambda: name_of(env, "center", 2) == name_of(env, "b1", 2) == "新版本",
               60, 0.5, "b2's newer change at the center and at b1")
    assert env.rows("center")[2]["updated_at"] == newer
    assert (2,) not in refused_keys(env, "b2")

    # and the other way round: b1 now holds an older version than the shared copy
    upd(env, "b1", 2, name="b1旧", updated_at=T0 + dt.timedelta(days=1))
    wait_until(lambda: (2,) in refused_keys(env, "b1"), 60, 0.5, "rejection notice at b1")
    assert name_of(env, "center", 2) == "新版本"
    assert name_of(env, "b2", 2) == "新版本"
    assert not notice_items(env, "center")


# --- 2. center-wins ------------------------------------------------------------------------

def test_center_wins_refuses_rows_written_by_others(sync_env):
    env = sync_env("snapshot", b2_capture=True,
                   center_extra={"conflict": "center-wins", "owner": None},
                   b2_extra={"owner": None})
    # a row loaded into the shared library directly, not through exnode
    env.write("center", env.tables["center"].insert().values(
        person(100, name="中心库", owner="center")))
    env.up()
    env.write("b1", env.tables["b1"].insert().values([person(1), person(2)]))
    wait_until(lambda: name_of(env, "b2", 1) == "张三1" and name_of(env, "b2", 2) == "张三2",
               60, 0.5, "b1's rows at b2")

    # b2 writes the center's row: refused, the center's copy stays
    env.write("b2", env.tables["b2"].insert().values(person(100, name="局改100", owner="b2")))
    wait_until(lambda: (100,) in refused_keys(env, "b2"), 60, 0.5, "notice for row 100 at b2")
    reason = next(it[3] for it in notice_items(env, "b2") if it[2] == (100,))
    assert "(center)" in reason, reason
    assert name_of(env, "center", 100) == "中心库"

    # b2 changes a row b1 wrote: refused
    upd(env, "b2", 2, name="乙改2")
    wait_until(lambda: (2,) in refused_keys(env, "b2"), 60, 0.5, "notice for row 2 at b2")
    reason = next(it[3] for it in notice_items(env, "b2") if it[2] == (2,))
    assert "b1" in reason, reason
    assert name_of(env, "center", 2) == "张三2"
    assert name_of(env, "b1", 2) == "张三2"

    # b1 changes its own row again: accepted and forwarded
    upd(env, "b1", 1, name="甲再改1")
    wait_until(lambda: name_of(env, "center", 1) == name_of(env, "b2", 1) == "甲再改1",
               60, 0.5, "b1's second change at the center and b2")
    # b2 creates a row and changes it again: both accepted
    env.write("b2", env.tables["b2"].insert().values(person(50, name="乙建50", owner="b2")))
    wait_until(lambda: name_of(env, "center", 50) == "乙建50", 60, 0.5,
               "b2's new row at the center")
    upd(env, "b2", 50, name="乙再改50")
    wait_until(lambda: name_of(env, "center", 50) == "乙再改50", 60, 0.5,
               "b2's second change at the center")
    settle(2)
    assert not {(1,), (50,)} & (refused_keys(env, "b1") | refused_keys(env, "b2"))
    assert not notice_items(env, "b1")
    assert name_of(env, "center", 100) == "中心库"


# --- 3. manual -----------------------------------------------------------------------------

def test_manual_conflicts_wait_for_the_operator(sync_env):
    env = sync_env("snapshot", b2_capture=True,
                   center_extra={**TWO_WAY, "conflict": "manual"},
                   b1_extra=B1_TWO_WAY, b2_extra={"owner": None})
    env.up()
    env.write("b1", env.tables["b1"].insert().values([person(i) for i in range(1, 4)]))
    wait_until(lambda: env.same_everywhere(range(1, 4)), 60, 0.5, "b1's rows everywhere")
    assert cli_json(env, "center", "conflicts", "list") == []

    # collision 1: b1 wrote row 1 last, now b2 changes it
    upd(env, "b2", 1, name="乙改1")
    listed = wait_until(lambda: cli_json(env, "center", "conflicts", "list"), 60, 0.5,
                        "the first conflict in the queue")
    assert len(listed) == 1, listed
    c1 = listed[0]
    assert (c1["resource"], c1["src"], c1["status"]) == ("people", "b2", "open"), c1
    assert json.loads(c1["key"]) == [1], c1
    assert "b1" in c1["reason"], c1
    shown = cli_json(env, "center", "conflicts", "show", str(c1["id"]))
    assert shown["id"] == c1["id"]
    assert shown["incoming"]["op"] == "upsert"
    assert shown["incoming"]["row"]["name"] == "乙改1"
    assert shown["incoming"]["row"]["id"] == 1
    assert shown["current"]["name"] == "张三1"
    st = cli_json(env, "center", "sync", "status")
    assert people_status(st)["open_conflicts"] == 1
    settle(2)
    assert name_of(env, "center", 1) == "张三1"  # the shared copy waits for the operator
    assert name_of(env, "b1", 1) == "张三1"
    assert not notice_items(env, "b2")

    r = env.star.cli("center", "conflicts", "resolve", str(c1["id"]), "--keep", "incoming")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: name_of(env, "center", 1) == "乙改1" and name_of(env, "b1", 1) == "乙改1",
               60, 0.5, "the kept incoming change at the center and at b1")
    assert env.same_everywhere(range(1, 4))
    assert cli_json(env, "center", "conflicts", "list") == []
    done = cli_json(env, "center", "conflicts", "list", "--all")
    assert [(d["id"], d["status"], d["resolution"]) for d in done] == \
        [(c1["id"], "resolved", "incoming")]

    # collision 2, resolved for the shared copy
    upd(env, "b2", 2, name="乙改2")
    listed = wait_until(lambda: cli_json(env, "center", "conflicts", "list"), 60, 0.5,
                        "the second conflict in the queue")
    assert len(listed) == 1 and json.loads(listed[0]["key"]) == [2], listed
    c2 = listed[0]["id"]
    assert c2 != c1["id"]
    r = env.star.cli("center", "conflicts", "resolve", str(c2), "--keep", "current")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: (2,) in refused_keys(env, "b2"), 60, 0.5, "rejection notice at b2")
    assert name_of(env, "center", 2) == "张三2"
    assert name_of(env, "b1", 2) == "张三2"
    assert (1,) not in refused_keys(env, "b2")

    # resolving again: one line, a non-zero exit, no traceback, nothing changes
    r = env.star.cli("center", "conflicts", "resolve", str(c2), "--keep", "incoming")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "resolved" in lines[0], r.stderr
    r = env.star.cli("center", "conflicts", "resolve", "9999", "--keep", "current")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
    settle(2)
    assert name_of(env, "center", 2) == "张三2"
    assert name_of(env, "b1", 2) == "张三2"
    assert people_status(env.star.status("center"))["open_conflicts"] == 0


# --- 4. owner_column -----------------------------------------------------------------------

def test_owner_column_lets_each_bureau_change_only_its_rows(sync_env):
    env = sync_env("snapshot", b2_capture=True,
                   center_extra={**TWO_WAY, "owner_column": "owner"},
                   b1_extra=B1_TWO_WAY, b2_extra={"owner": None})
    env.up()
    env.write("b1", env.tables["b1"].insert().values([person(1), person(2)]))
    env.write("b2", env.tables["b2"].insert().values(
        [person(3, owner="b2"), person(4, owner="b2")]))
    wait_until(lambda: env.same_everywhere(range(1, 5)), 60, 0.5, "everyone's rows everywhere")
    assert env.rows("center")[3]["owner"] == "b2"

    # one package from b2: its own row (accepted), b1's row, and a take-over (refused)
    with env.engines["b2"].begin() as c:
        t = env.tables["b2"]
        c.execute(t.update().where(t.c.id == 3).values(name="乙自改3"))
        c.execute(t.update().where(t.c.id == 1).values(name="乙篡改1"))
        c.execute(t.update().where(t.c.id == 2).values(name="乙夺取2", owner="b2"))
    wait_until(lambda: {(1,), (2,)} <= refused_keys(env, "b2"), 60, 0.5, "notices at b2")
    wait_until(lambda: name_of(env, "center", 3) == name_of(env, "b1", 3) == "乙自改3",
               60, 0.5, "b2's change of its own row at the center and b1")
    assert (3,) not in refused_keys(env, "b2")
    assert all("b1" in it[3] for it in notice_items(env, "b2")), notice_items(env, "b2")
    for node in ("center", "b1"):
        rows = env.rows(node)
        assert rows[1]["name"] == "张三1" and rows[1]["owner"] == "b1", node
        assert rows[2]["name"] == "张三2" and rows[2]["owner"] == "b1", node

    # b1 may not change b2's row either
    upd(env, "b1", 4, name="甲篡改4")
    wait_until(lambda: (4,) in refused_keys(env, "b1"), 60, 0.5, "notice at b1")
    assert name_of(env, "center", 4) == "张三4"
    assert name_of(env, "b2", 4) == "张三4"
    # but its own rows still flow
    upd(env, "b1", 1, name="甲改1")
    wait_until(lambda: name_of(env, "b2", 1) == "甲改1", 60, 0.5, "b1's own change at b2")
    assert (1,) not in refused_keys(env, "b1")


# --- 5. SIGKILL of the center while it applies large packages ------------------------------

SPEC = ResourceSpec(database="db", table="people", key=["id"])


def _checksum(engine):
    return SqlAdapter(engine, "people", SPEC).open().checksum()


def _pairs(env, node):
    t = env.tables[node]
    with env.engines[node].connect() as c:
        return {tuple(r) for r in c.execute(sa.select(t.c.id, t.c.name, t.c.citizen_id))}


# A package's apply transaction at the center, after its first write (marker insert,
# staging table, COPY, upsert) - not the one-off CREATE TABLE of the marker tables.
_WRITING = sa.text(
    "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
    "AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL AND "
    "(query ILIKE '%exnode_stage%' OR query ILIKE 'INSERT INTO exnode_appl%' "
    "OR query ILIKE 'INSERT INTO people%' OR query ILIKE 'DELETE FROM exnode_applying%')")


def _kill_center_mid_stream(env, total, after=0, in_transaction=True):
    """SIGKILL the center while it applies b1's rows: as soon as more than ``after`` but
    fewer than ``total`` rows are committed (between packages), or (``in_transaction``)
    while a package's PostgreSQL transaction is open. Fails unless the kill came before
    every row was in. Returns (why, rows committed, ids of packages committed in
    PostgreSQL but not in the center's state DB: the center will get them again)."""
    watch = sa.create_engine(env.urls["center"], isolation_level="AUTOCOMMIT")
    why = None
    deadline = time.monotonic() + 120
    try:
        with watch.connect() as c:
            while time.monotonic() < deadline:
                n = c.exec_driver_sql("SELECT count(*) FROM people").scalar()
                if n >= total:
                    break
                if after < n < total:
                    why = f"between packages: {n} rows committed"
                    break
                if in_transaction:
                    q = c.execute(_WRITING).scalar()
                    if q:
                        why = f"in a package's transaction ({q[:40]}...), {n} rows committed"
                        break
                time.sleep(0.002)
        assert why, "the center applied all rows before the test could kill it"
        env.star.kill("center")
        with watch.connect() as c:
            at_kill = c.exec_driver_sql("SELECT count(*) FROM people").scalar()
            marks = set(c.exec_driver_sql(
                "SELECT pkg_id FROM exnode_applied WHERE origin = 'b1'").scalars()) \
                if sa.inspect(c).has_table("exnode_applied") else set()
    finally:
        watch.dispose()
    inbox = {r[0] for r in db_rows(env.star, "center", "SELECT pkg_id FROM inbox")}
    assert at_kill < total, f"killed too late ({why}; {at_kill} rows after the kill)"
    return why, at_kill, sorted(marks - inbox)


POLICIES = {
    "owner-wins": {},
    "newer-wins": {"conflict": "newer-wins", "version_column": "updated_at", "owner": None},
    "center-wins": {"conflict": "center-wins", "owner": None},
    "manual": {"conflict": "manual", "owner": None},
}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_center_killed_while_applying_large_packages_loses_and_repeats_nothing(sync_env,
                                                                               policy):
    total, chunk = 20_000, 10_000
    env = sync_env("snapshot", center_extra=POLICIES[policy], b1_extra={"capture": {
        "strategy": "snapshot", "schedule": {"every": "1s"}, "chunk_rows": chunk}})
    env.up()
    pg = env.engines["center"]
    with env.engines["b1"].begin() as c:
        t = env.tables["b1"]
        for i in range(1, total + 1, 2000):
            c.execute(t.insert(), [person(n, notes="长文本" * 20)
                                   for n in range(i, min(i + 2000, total + 1))])

    # 1st kill: as soon as the center applies (typically inside the first package's
    # PostgreSQL transaction); 2nd kill, after the restart: once more rows are in, but
    # not all (between packages), so both kinds of interruption are covered.
    kills = [_kill_center_mid_stream(env, total)]
    # watch at once: the broker hands the center its queued packages as it connects
    env.star.start("center", wait=False)
    first = kills[0][1]
    kills.append(_kill_center_mid_stream(env, total, after=first, in_transaction=first > 0))
    print("center killed:", kills)
    again = [k for kill in kills for k in kill[2]]  # applied but not recorded at a kill

    env.star.start("center")
    wait_until(lambda: len(env.rows("center")) == total, 120, 1.0,
               "every row at the center after the restart")
    # a package that was applied before the kill but not acknowledged comes again: it
    # must be recognised as the same package, not judged as a new conflicting change
    try:
        wait_until(lambda: len(env.rows("b2")) == total, 20, 1.0, "every row at b2")
    except TimeoutError:
        pass
    settle(2)
    refused = notice_items(env, "b1")
    queued = people_status(env.star.status("center"))["open_conflicts"]
    assert len(env.rows("b2")) == total and not refused and not queued, (
        f"{policy}: after the restart b2 has {len(env.rows('b2'))} of {total} rows, "
        f"b1 got {len(refused)} rejections of its own rows, e.g. {refused[:1]}, and the "
        f"center queued {queued} conflicts; "
        f"packages applied before a kill but not recorded (so delivered again): {again}")
    expect = _pairs(env, "b1")
    assert len(expect) == total
    assert _pairs(env, "center") == expect
    assert _pairs(env, "b2") == expect
    sums = {n: _checksum(env.engines[n]) for n in ("b1", "center", "b2")}
    assert sums["b1"][0] == total
    assert sums["center"] == sums["b1"] and sums["b2"] == sums["b1"], sums

    # exactly once: the packages b1 sent hold every row once, and so do the center's
    with pg.connect() as c:
        marks = c.exec_driver_sql(
            "SELECT pkg_id, row_count FROM exnode_applied WHERE origin = 'b1'").all()
    assert len({m[0] for m in marks}) == len(marks) >= 2
    assert sum(m[1] for m in marks) == total, marks
    with env.engines["b2"].connect() as c:
        marks2 = c.exec_driver_sql(
            "SELECT pkg_id, row_count FROM exnode_applied WHERE origin = 'center'").all()
    assert sum(m[1] for m in marks2) == total, marks2
    sent = db_rows(env.star, "b1", "SELECT pkg_id FROM outbox WHERE kind='rows'")
    assert {m[0] for m in marks} == {s[0] for s in sent}
    for node in env.star.nodes:
        r = env.star.cli(node, "log", "verify", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["ok"], (node, r.stdout, r.stderr)


# --- 6. zero-update reports and freshness --------------------------------------------------

def test_zero_reports_keep_a_resource_fresh_and_silence_makes_it_stale(sync_env):
    # b1 knows the freshness too: its zero-update reports come every second (2s / 2)
    env = sync_env("snapshot", center_extra={"freshness": "2s"}, b1_extra={"freshness": "2s"})
    env.up()
    env.write("b1", env.tables["b1"].insert().values([person(1)]))
    wait_until(lambda: len(env.rows("b2")) == 1, 60, 0.5, "the row at b2")

    def b1_entry():
        res = people_status(cli_json(env, "center", "status"))
        return next((n for n in res["nodes"] if n["node"] == "b1"), None), res

    # b1 sends a zero-update report every second: never stale while it runs
    zeros0 = db_rows(env.star, "center", "SELECT count(*) FROM exchange_log WHERE "
                     "kind='zero' AND event='applied'")[0][0]
    for _ in range(5):
        node, res = b1_entry()
        assert node is not None and not node["stale"], res
        assert not res["stale"] and res["freshness_s"] == 2, res
        time.sleep(0.8)
    zeros1 = db_rows(env.star, "center", "SELECT count(*) FROM exchange_log WHERE "
                     "kind='zero' AND event='applied'")[0][0]
    assert zeros1 >= zeros0 + 2, (zeros0, zeros1)

    stopped = time.monotonic()
    assert env.star.stop("b1", signal.SIGTERM) == 0
    wait_until(lambda: b1_entry()[1]["stale"], 10, 0.2, "the resource stale at the center")
    took = time.monotonic() - stopped
    assert took < 8, took
    node, res = b1_entry()
    assert node["stale"] and node["age_s"] > 2, res

    st = cli_json(env, "center", "sync", "status")
    assert set(st) >= {"resources", "jobs"}
    sres = people_status(st)
    assert sres["stale"] and sres["error"] is None, sres
    r = env.star.cli("center", "sync", "status")
    assert r.returncode == 0 and "STALE" in r.stdout, r.stdout + r.stderr
    r = env.star.cli("center", "status")  # the daemon's status flags it too
    assert r.returncode == 0 and "resource  people: STALE" in r.stdout, r.stdout
    # the bureau that only receives has nothing to report
    assert not [n for n in sres["nodes"] if n["node"] == "b2"]

