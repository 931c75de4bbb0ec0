"""The monitor's scan (全程监控) on a real node's state DB (SQLite, migrated by Alembic):
an overdue item raises exactly one alert however often it is scanned and across a
restart; an item done clears it; a new deadline missed is a new alert; acknowledging
keeps who and when. The hook gets each new alert once."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from exnode.node.base.config import load_config
from exnode.node.base.errors import NotFound, UsageError
from exnode.node.kernel.node import Node
from exnode.plugins import hookimpl

from ...helpers import init_bureau

SERVICE = "service:exnode.plugins.builtin.monitor.service"


class Collector:
    """A notification plugin that keeps what the hook hands it."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    @hookimpl
    def exnode_alert(self, alert: dict[str, Any]) -> None:
        self.got.append(alert)


class Running:
    """A composed node (not connected) with a collector registered."""

    def __init__(self, config: Path) -> None:
        self.node = Node(load_config(config))
        self.node.compose()
        self.hook = Collector()
        self.node.pm.register(self.hook, name="collector")
        self.svc: Any = self.node.pm.get_plugin(SERVICE)
        assert self.svc is not None, [n for n, _p in self.node.pm.list_name_plugin()]

    def scan(self) -> list[dict[str, Any]]:
        return asyncio.run(self.svc.scan_once())

    def close(self) -> None:
        self.node.engine.dispose()
        self.node._db.shutdown()


@pytest.fixture
def bureau(tmp_path: Path) -> Any:
    db = tmp_path / "biz.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
    path = init_bureau(tmp_path, databases={"biz": {"url": f"sqlite:///{db}"}},
                       resources={"people": {"database": "biz", "table": "people",
                                             "key": ["id"], "freshness": "1h"}})
    running: list[Running] = []

    def start() -> Running:
        r = Running(path)
        running.append(r)
        return r

    start.state = tmp_path / "state.db"  # type: ignore[attr-defined]
    yield start
    for r in running:
        r.close()


def sql(state: Path, text: str, args: tuple = ()) -> list[tuple]:
    with sqlite3.connect(state) as c:
        rows = c.execute(text, args).fetchall()
    return rows


def correction(state: Path, due: float, owner: str = "b1", status: str = "open") -> str:
    cid = str(uuid.uuid4())
    now = time.time()
    sql(state, "INSERT INTO corrections (id, resource, consumer, owner, status, due, "
        "overdue, created, updated, doc) VALUES (?, 'people', 'b2', ?, ?, ?, 0, ?, ?, ?)",
        (cid, owner, status, due, now, now, json.dumps({"key": ["身份证号"], "says": "张三"})))
    return cid


def alert_log(state: Path) -> list[tuple]:
    return sql(state, "SELECT pkg_id, kind, status, reason FROM exchange_log WHERE "
               "event = 'alert' ORDER BY id")


def test_an_overdue_item_raises_exactly_one_alert(bureau):
    n = bureau()
    state = bureau.state
    assert n.scan() == []
    cid = correction(state, time.time() - 60)
    new = n.scan()
    assert len(new) == 1
    a = new[0]
    assert a["kind"] == "correction" and a["item"] == cid and a["state"] == "open"
    assert a["node"] == "b1" and a["resource"] == "people" and a["origin"] == "b1"
    assert a["item_state"] == "open" and a["deadline"] < time.time()
    assert n.hook.got == [a]
    # repeated scans: nothing more
    for _ in range(3):
        assert n.scan() == []
    assert len(n.hook.got) == 1
    assert [r[:3] for r in alert_log(state)] == [(cid, "correction", "open")]
    # no personal data in what is logged or handed over
    text = json.dumps([alert_log(state), n.hook.got], ensure_ascii=False)
    assert "张三" not in text and "身份证号" not in text
    # a restart: the alert is in the state DB, not raised again
    n.close()
    n2 = bureau()
    assert n2.scan() == []
    assert n2.hook.got == []
    assert sql(state, "SELECT item, state FROM monitor_alerts") == [(cid, "open")]
    assert [x["id"] for x in n2.svc.listing("open")] == [a["id"]]
    # done: cleared, logged, and not raised again
    sql(state, "UPDATE corrections SET status = 'accepted' WHERE id = ?", (cid,))
    assert n2.scan() == []
    assert sql(state, "SELECT state FROM monitor_alerts") == [("cleared",)]
    assert [r[2] for r in alert_log(state)] == ["open", "cleared"]
    assert n2.svc.listing("open") == []
    assert n2.scan() == [] and len(alert_log(state)) == 2


def test_only_the_owner_or_the_center_watches_a_correction(bureau):
    n = bureau()
    correction(bureau.state, time.time() - 60, owner="b3")  # b1 is the consumer here
    assert n.scan() == []
    assert [i for i in n.svc.items() if i["kind"] == "correction"] == []


def test_a_new_deadline_missed_is_a_new_alert_and_ack_keeps_who(bureau):
    n = bureau()
    state = bureau.state
    rid = str(uuid.uuid4())
    now = time.time()
    sql(state, "INSERT INTO access_requests (id, resource, consumer, provider, service, "
        "status, due, overdue, created, updated, doc) VALUES (?, 'people', 'b2', 'b1', "
        "'query', 'provider', ?, 0, ?, ?, '{}')", (rid, now - 5, now, now))
    first = n.scan()
    assert [(a["kind"], a["item"], a["item_state"]) for a in first] == [
        ("access", rid, "provider")]
    # acknowledged: who and when; no longer open; not raised again while overdue
    a = n.svc.ack(first[0]["id"], "alice")
    assert a["state"] == "acknowledged" and a["acked_by"] == "alice" and a["acked_at"]
    with pytest.raises(UsageError, match="acknowledged"):
        n.svc.ack(first[0]["id"], "bob")
    with pytest.raises(NotFound):
        n.svc.ack(999, "bob")
    assert n.scan() == [] and n.svc.listing("open") == []
    assert n.svc.get(first[0]["id"])["acked_by"] == "alice"
    with pytest.raises(NotFound):
        n.svc.get(999)
    # the deadline moves into the future: cleared; missed again: a second alert
    sql(state, "UPDATE access_requests SET due = ? WHERE id = ?", (now + 3600, rid))
    assert n.scan() == []
    assert [x["state"] for x in n.svc.listing("all")] == ["cleared"]
    sql(state, "UPDATE access_requests SET due = ? WHERE id = ?", (now - 1, rid))
    second = n.scan()
    assert len(second) == 1 and second[0]["id"] != first[0]["id"]
    assert n.scan() == []
    # still overdue, with another missed deadline: the same alert goes on
    sql(state, "UPDATE access_requests SET due = ? WHERE id = ?", (now - 2, rid))
    assert n.scan() == []
    # done, then back with the deadline already alerted on: not raised again
    sql(state, "UPDATE access_requests SET status = 'granted' WHERE id = ?", (rid,))
    assert n.scan() == []
    sql(state, "UPDATE access_requests SET status = 'provider', due = ? WHERE id = ?",
        (now - 1, rid))
    assert n.scan() == []
    assert [x["state"] for x in n.svc.listing("all")] == ["cleared", "cleared"]
    assert len(n.hook.got) == 2
    assert [r[2] for r in alert_log(state)] == ["open", "acknowledged", "cleared", "open",
                                                "cleared"]
    assert "by alice" in alert_log(state)[1][3]


def test_packages_downloads_and_freshness_are_tracked(bureau):
    n = bureau()
    state = bureau.state
    now = time.time()
    old = now - 2 * 3600  # monitor.receipt_within_s: 3600 by default
    for kind, created in (("rows", old), ("rows", now), ("query-req", old),
                          ("ping", now)):
        sql(state, "INSERT INTO outbox (pkg_id, dest, kind, resource, seq, size, created, "
            "expires, next_attempt, attempts, status) VALUES (?, 'center', ?, ?, 0, 10, ?, "
            "?, ?, 0, 'pending')", (str(uuid.uuid4()), kind,
                                    "" if kind == "ping" else "people", created,
                                    now + 86400, now))
    # freshness 1h for people: b9 last current 2 h ago (stale), center 1 min ago
    for node, t in (("b9", now - 7200), ("center", now - 60)):
        sql(state, "INSERT INTO freshness (resource, node, last_current, last_rows) "
            "VALUES ('people', ?, ?, 0)", (node, t))
    items = {(i["kind"], i["id"]): i for i in n.svc.items()}
    assert items[("package", "center/people")]["overdue"]
    assert items[("package", "center/people")]["state"] == "2 without receipt"
    assert not items[("package", "center/")]["overdue"]  # the ping, just queued
    assert items[("download", "center/people")]["overdue"]
    assert items[("freshness", "people@b9")]["overdue"]
    assert items[("freshness", "people@b9")]["state"] == "stale"
    assert not items[("freshness", "people@center")]["overdue"]
    assert not any(i["kind"] == "silent" for i in items.values())  # a bureau
    new = n.scan()
    assert sorted((a["kind"], a["item"]) for a in new) == [
        ("download", "center/people"), ("freshness", "people@b9"),
        ("package", "center/people")]
    assert n.scan() == []
    # the receipts come: the package and download alerts clear, the stale one stays
    sql(state, "UPDATE outbox SET status = 'delivered'")
    assert n.scan() == []
    assert sorted((a["kind"], a["state"]) for a in n.svc.listing("all")) == [
        ("download", "cleared"), ("freshness", "open"), ("package", "cleared")]
    # the status section counts it and fails --check
    st = n.node.status()
    assert st["monitor"]["open"] == 1 and st["monitor"]["cleared"] == 2
    stale = next(a["id"] for a in new if a["kind"] == "freshness")
    assert [p for p in st["problems"] if p.startswith("alert ")] == [
        next(p for p in st["problems"] if p.startswith(f"alert {stale}: resource people at b9"))]


def test_exactly_one_alert_on_a_postgresql_state_db(tmp_path, pg_url):
    import sqlalchemy as sa

    path = init_bureau(tmp_path, state={"url": pg_url})
    n = Running(path)
    try:
        cid = str(uuid.uuid4())
        with n.node.engine.begin() as c:
            c.execute(sa.text(
                "INSERT INTO corrections (id, resource, consumer, owner, status, due, "
                "overdue, created, updated, doc) VALUES (:id, 'people', 'b2', 'b1', 'open', "
                ":due, false, 0, 0, '{}')"), {"id": cid, "due": time.time() - 1})
        assert [a["item"] for a in n.scan()] == [cid]
        assert n.scan() == []
    finally:
        n.close()
    n = Running(path)
    try:
        assert n.scan() == []
        with n.node.engine.connect() as c:
            assert c.execute(sa.text("SELECT count(*) FROM monitor_alerts")).scalar() == 1
            assert c.execute(sa.text("SELECT count(*) FROM exchange_log WHERE event = "
                                     "'alert'")).scalar() == 1
    finally:
        n.close()
