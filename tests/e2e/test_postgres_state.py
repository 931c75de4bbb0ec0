"""The state DB on PostgreSQL: a center (and a bureau) keep outbox, inbox and the
exchange log there."""

from __future__ import annotations

import base64
import json

import sqlalchemy as sa

from exnode.node.tools.cluster import wait_until


def test_star_with_postgresql_state(make_star, system_broker, pg_url):
    # Two nodes in one database would share tables: give the bureau its own schema-less
    # database by suffixing the name.
    admin = sa.create_engine(pg_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    b1_db = pg_url.rsplit("/", 1)[1] + "_b1"
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {b1_db}")
    b1_url = pg_url.rsplit("/", 1)[0] + "/" + b1_db
    try:
        star = make_star(system_broker, node_settings={
            "center": {"state": {"url": pg_url}}, "b1": {"state": {"url": b1_url}}})
        star.up()
        assert star.call("b1", "POST", "/ping", {"node": "b2", "timeout": 20})["rtt_ms"] > 0
        star.call("b2", "POST", "/send", {"to": "b1", "resource": "pg", "payloads": [
            base64.b64encode(f"row {i} 中文".encode()).decode() for i in range(50)]})
        star.call("b1", "POST", "/send", {"to": "center", "resource": "pg", "payloads": [
            base64.b64encode(b"to the center").decode()]})
        wait_until(lambda: star.status("b2")["outbox_pending"] == 0
                   and star.status("b1")["outbox_pending"] == 0, 30, what="delivery")

        eng = sa.create_engine(b1_url)
        with eng.connect() as c:
            got = c.exec_driver_sql("SELECT seq, payload FROM received WHERE resource='pg' "
                                    "ORDER BY id").all()
            assert [s for s, _ in got] == list(range(1, 51))
            assert bytes(got[3][1]).decode() == "row 3 中文"
            assert c.exec_driver_sql("SELECT count(*) FROM exchange_log").scalar() > 50
        ceng = sa.create_engine(pg_url)
        with ceng.connect() as c:
            relayed = c.exec_driver_sql("SELECT count(*) FROM exchange_log WHERE "
                                        "event='relayed'").scalar()
            assert relayed >= 50
        for n in ("center", "b1"):
            v = star.cli(n, "log", "verify", "--json")
            assert v.returncode == 0 and json.loads(v.stdout)["ok"], v.stdout + v.stderr

        # tampering with one row in PostgreSQL is detected and named
        with ceng.begin() as c:
            rid = c.exec_driver_sql("SELECT min(id) FROM exchange_log WHERE "
                                    "event='relayed'").scalar()
            c.exec_driver_sql(f"UPDATE exchange_log SET peer='b9>b1' WHERE id={rid}")
        v = star.cli("center", "log", "verify", "--json")
        assert v.returncode == 1
        assert json.loads(v.stdout)["bad_row"] == rid
        eng.dispose()
        ceng.dispose()
    finally:
        star.close()
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {b1_db} WITH (FORCE)")
        admin.dispose()
