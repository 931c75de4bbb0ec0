"""A subscriber's problem never stalls a resource (issue 9): with one subscriber revoked
and another not enrolled yet, the owner's changes still reach the shared library and
the other subscribers; what the missing ones should get waits at the center, in order,
is shown in the status, and goes out once the subscriber is a member.

(On the old code the center refused the owner's package, 'unknown-recipient', after its
own copy had committed, and every later package waited behind it for good.)
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from exnode.node.tools.cluster import wait_until

SUBSCRIBERS = ("b2", "b3", "b4")


def _people(url: str) -> sa.Engine:
    eng = sa.create_engine(url)
    md = sa.MetaData()
    sa.Table("people", md, sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("name", sa.String(64)))
    md.create_all(eng)
    return eng


def _count(eng: sa.Engine) -> int:
    with eng.connect() as c:
        return c.execute(sa.text("SELECT count(*) FROM people")).scalar_one()


def _insert(eng: sa.Engine, ids: range) -> None:
    with eng.begin() as c:
        c.execute(sa.text("INSERT INTO people (id, name) VALUES (:i, :n)"),
                  [{"i": i, "n": f"张三{i}"} for i in ids])

def _people_settings(urls: dict[str, str], subscribers: list[str], chunk_rows: int,
                     **center: Any) -> dict[str, dict[str, Any]]:
    """node_settings for a star where b1 owns `people` (snapshot capture every second)
    and the center forwards it to ``subscribers``."""
    res = {"database": "db", "table": "people", "key": ["id"]}
    cap = {"strategy": "snapshot", "schedule": {"every": "1s"}, "chunk_rows": chunk_rows}
    settings: dict[str, dict[str, Any]] = {
        n: {"databases": {"db": {"url": u}}, "resources": {"people": dict(res)}}
        for n, u in urls.items()}
    settings["b1"]["resources"]["people"].update(owner="b1", capture=cap)
    settings["center"]["resources"]["people"].update(owner="b1", subscribers=subscribers,
                                                     **center)
    return settings



def test_a_revoked_and_an_unenrolled_subscriber_stall_nothing(make_star, own_mosquitto,
                                                               tmp_path):
    nodes = ("center", "b1", *SUBSCRIBERS)
    urls = {n: f"sqlite:///{tmp_path / n}.db" for n in nodes}
    engines = {n: _people(u) for n, u in urls.items()}
    settings = _people_settings(urls, list(SUBSCRIBERS), 200)
    star = make_star(own_mosquitto, bureaus=("b1", "b2", "b3", "b4"), node_settings=settings)
    try:
        star.init()
        star.start("center")
        for b in ("b1", "b2", "b3"):  # b4 is a subscriber, not enrolled yet
            star.enrol(b)
            star.start(b, wait=False)
        for b in ("b1", "b2", "b3"):
            star.wait_connected(b)

        _insert(engines["b1"], range(1, 11))
        wait_until(lambda: all(_count(engines[n]) == 10 for n in ("center", "b2", "b3")),
                   60, 0.3, "the first 10 rows everywhere")

        # b3 is revoked mid-stream; the owner goes on writing
        assert star.cli("center", "nodes", "revoke", "b3").returncode == 0
        _insert(engines["b1"], range(11, 1011))
        wait_until(lambda: _count(engines["center"]) == 1010 and _count(engines["b2"]) == 1010,
                   120, 0.5, "the owner's next 1,000 rows at the center and b2")
        assert _count(engines["b3"]) == 10
        # nothing of the owner's waits or was refused at the center
        log = star.cli("center", "log", "--json", "--resource", "people").stdout
        assert "unknown-recipient" not in log
        assert star.status("b1")["outbox_pending"] == 0
        # what b4 and revoked b3 should get waits at the center, in order, with the reason
        people = next(r for r in star.status("center")["resources"]
                      if r["resource"] == "people")
        held = {h["node"]: h for h in people["held"]}
        assert set(held) == {"b3", "b4"}, held
        assert "not an approved member" in held["b4"]["reason"]
        assert "revoked" in held["b3"]["reason"]
        text = star.cli("center", "status").stdout
        assert "held for b4" in text and "held for b3" in text
        # nothing brings a revoked member back by accident
        r = star.cli("center", "nodes", "invite", "b3")
        assert r.returncode == 2 and "--readmit" in r.stderr, r.stderr

        # the operator readmits b3: it enrols afresh and gets every change it missed
        star.stop("b3")
        tok = star.cli("center", "nodes", "invite", "b3", "--readmit", "--json")
        assert tok.returncode == 0, tok.stderr
        token = json.loads(tok.stdout)["token"]
        reg = star.cli("b3", "register", token)
        assert reg.returncode == 0, (reg.stdout, reg.stderr)
        assert star.cli("center", "nodes", "approve", "b3").returncode == 0
        star.start("b3")
        wait_until(lambda: _count(engines["b3"]) == 1010, 120, 0.5, "readmitted b3 to catch up")

        # b4 is enrolled and approved: it gets everything, in order, and nothing is held
        star.enrol("b4")
        star.start("b4")
        wait_until(lambda: _count(engines["b4"]) == 1010, 120, 0.5, "b4 to catch up")
        with engines["b4"].connect() as c:
            assert c.execute(sa.text("SELECT name FROM people WHERE id = 1010")).scalar_one() \
                == "张三1010"
        wait_until(lambda: not [h for r in star.status("center")["resources"]
                                for h in r["held"] if h["node"] in ("b3", "b4")], 30, 0.5,
                   "nothing held for b3 and b4")
        # each forward is logged with its rows where it went out (a held one once it
        # went out): every row b1 sent, to each subscriber
        for n in ("b2", "b3", "b4"):
            sent = json.loads(star.cli("center", "log", "--json", "--event", "sync", "--peer",
                                       n, "--limit", "100000").stdout)
            assert sum(r["size"] for r in sent) == 1010, (n, len(sent))
            assert all(r["status"] == f"{r['size']} rows sent" for r in sent)
        # and later changes keep flowing to everyone who is a member
        _insert(engines["b1"], range(1011, 1021))
        wait_until(lambda: all(_count(engines[n]) == 1020
                               for n in ("center", "b2", "b3", "b4")),
                   60, 0.3, "the last rows at the members")
        # b1 captured every second all along, but an idle resource reports "no change"
        # at most once a minute (no freshness set): the exchange log does not fill up
        zeros = star.cli("center", "log", "--json", "--peer", "b1").stdout.count('"zero"')
        assert zeros <= 4, zeros
    finally:
        for e in engines.values():
            e.dispose()


def test_a_row_the_shared_library_cannot_store_is_quarantined_not_blocking(make_star,
                                                                            own_mosquitto,
                                                                            tmp_path, pg_url):
    """The center's PostgreSQL keeps names of at most 8 characters; one row's name is
    longer. That row goes to the quarantine with the database's reason; the rows of its
    package and of every later package are applied and forwarded."""
    urls = {"b1": f"sqlite:///{tmp_path / 'b1'}.db", "center": pg_url,
            "b2": f"sqlite:///{tmp_path / 'b2'}.db"}
    engines = {n: _people(u) for n, u in urls.items() if n != "center"}
    pg = sa.create_engine(pg_url)
    with pg.begin() as c:
        c.execute(sa.text("CREATE TABLE people (id integer PRIMARY KEY, name varchar(8))"))
    engines["center"] = pg
    settings = _people_settings(urls, ["b2"], 50)
    star = make_star(own_mosquitto, bureaus=("b1", "b2"), node_settings=settings)
    try:
        star.up()
        with engines["b1"].begin() as c:
            c.execute(sa.text("INSERT INTO people (id, name) VALUES (:i, :n)"),
                      [{"i": i, "n": "x" * 20 if i == 7 else f"n{i}"} for i in range(1, 101)])
        wait_until(lambda: _count(engines["center"]) == 99 and _count(engines["b2"]) == 99,
                   60, 0.3, "every storable row at the center and b2")
        q = star.cli("center", "quarantine", "list", "--json")
        assert q.returncode == 0, q.stderr
        assert '"apply"' in q.stdout and "too long" in q.stdout, q.stdout
        # later packages are not held behind it
        _insert(engines["b1"], range(101, 111))
        wait_until(lambda: _count(engines["b2"]) == 109, 60, 0.3, "the later rows at b2")
        assert star.status("b1")["outbox_pending"] == 0
        log = (star.dir("center") / "daemon.log").read_text()
        assert '"event": "rows_not_storable"' in log and "xxxxxxxx" not in log
    finally:
        for e in engines.values():
            e.dispose()


def _problems(star, node: str) -> list[str]:  # type: ignore[no-untyped-def]
    return star.status(node).get("problems", [])


def test_a_stopped_subscriber_shows_at_the_center_and_the_owner(make_star, own_mosquitto,
                                                                tmp_path):
    """b2's copy has no 'name' column: b2 stops on it. Its state travels: the center's and
    the owner's status say b2 is STOPPED with the reason, and `status --check` exits 1 on
    both with one line for it. Once the column is added, b2 catches up, the problems
    clear and `sync verify` is clean (on the old code every status said ok)."""
    nodes = ("center", "b1", "b2")
    urls = {n: f"sqlite:///{tmp_path / n}.db" for n in nodes}
    engines = {n: _people(u) for n, u in urls.items() if n != "b2"}
    engines["b2"] = sa.create_engine(urls["b2"])
    with engines["b2"].begin() as c:
        c.execute(sa.text("CREATE TABLE people (id integer PRIMARY KEY)"))
    settings = _people_settings(urls, ["b2"], 200)
    for n in nodes:
        settings[n]["monitor"] = {"health_every_s": 2}
    star = make_star(own_mosquitto, bureaus=("b1", "b2"), node_settings=settings)
    try:
        star.up()
        _insert(engines["b1"], range(1, 11))
        wait_until(lambda: _count(engines["center"]) == 10, 60, 0.3, "the rows at the center")

        def stopped_everywhere() -> bool:
            return (any("b2 stopped" in p and "name" in p for p in _problems(star, "center"))
                    and any("b2 stopped" in p for p in _problems(star, "b1")))

        wait_until(stopped_everywhere, 60, 0.5, "b2 STOPPED at the center and at b1")
        for n in ("center", "b1"):
            r = star.cli(n, "status", "--check")
            assert r.returncode == 1, (n, r.stdout, r.stderr)
            assert any(line.startswith("PROBLEM") and "b2 stopped" in line
                       for line in r.stdout.splitlines()), r.stdout
            assert "b2" in star.cli(n, "status").stdout
        assert "STOPPED" in star.cli("b2", "status").stdout
        assert star.cli("b2", "status", "--check").returncode == 1

        with engines["b2"].begin() as c:
            c.execute(sa.text("ALTER TABLE people ADD COLUMN name VARCHAR(64)"))
        wait_until(lambda: _count(engines["b2"]) == 10, 120, 0.5, "b2 to catch up")
        wait_until(lambda: not _problems(star, "center") and not _problems(star, "b1"),
                   60, 0.5, "the problems to clear")
        for n in ("center", "b1", "b2"):
            r = star.cli(n, "status", "--check")
            assert r.returncode == 0 and r.stdout.strip() == "ok", (n, r.stdout)
        v = star.cli("center", "sync", "verify", "people", "--json")
        assert v.returncode == 0, (v.stdout, v.stderr)
    finally:
        for e in engines.values():
            e.dispose()


def test_sync_repair_resends_a_resource_to_one_node(make_star, own_mosquitto, tmp_path):
    """b2's copy lost rows (restored from an old backup, say): `sync repair people --node
    b2` at the center re-sends the shared library's rows to b2 only, resumable and in
    chunks; at a bureau it re-sends to the center. Without --node the center asks which
    subscriber."""
    nodes = ("center", "b1", "b2")
    urls = {n: f"sqlite:///{tmp_path / n}.db" for n in nodes}
    engines = {n: _people(u) for n, u in urls.items()}
    settings = _people_settings(urls, ["b2"], 100)
    star = make_star(own_mosquitto, bureaus=("b1", "b2"), node_settings=settings)
    try:
        star.up()
        _insert(engines["b1"], range(1, 501))
        wait_until(lambda: _count(engines["b2"]) == 500, 60, 0.3, "500 rows at b2")
        with engines["b2"].begin() as c:
            c.execute(sa.text("DELETE FROM people WHERE id > 120"))
        r = star.cli("center", "sync", "repair", "people")
        assert r.returncode == 2 and "--node" in r.stderr, r.stderr
        r = star.cli("center", "sync", "repair", "people", "--node", "b9")
        assert r.returncode != 0 and "does not get resource" in r.stderr, r.stderr
        r = star.cli("center", "sync", "repair", "people", "--node", "b2", "--json")
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert '"rows": 500' in r.stdout, r.stdout
        wait_until(lambda: _count(engines["b2"]) == 500, 60, 0.3, "b2 repaired")
        # the owner (a bureau) repairs the center's copy: --node defaults to the center
        with engines["center"].begin() as c:
            c.execute(sa.text("DELETE FROM people WHERE id <= 10"))
        r = star.cli("b1", "sync", "repair", "people")
        assert r.returncode == 0, (r.stdout, r.stderr)
        wait_until(lambda: _count(engines["center"]) == 500, 60, 0.3, "the center repaired")
        jobs = star.call("center", "GET", "/sync/jobs")
        assert any(j["kind"] == "repair:b2" and j["status"] == "done" for j in jobs), jobs
    finally:
        for e in engines.values():
            e.dispose()


def test_held_changes_are_bounded_and_repair_brings_the_rest(make_star, own_mosquitto,
                                                             tmp_path):
    """b2 subscribes but is not enrolled: at most `hold_max` (2) change packages are held
    for it, later ones are dropped and shown with the command that repairs them; once
    b2 is a member it gets the held ones, and `sync repair --node b2` the rest."""
    nodes = ("center", "b1", "b2")
    urls = {n: f"sqlite:///{tmp_path / n}.db" for n in nodes}
    engines = {n: _people(u) for n, u in urls.items()}
    settings = _people_settings(urls, ["b2"], 100, hold_max=2)
    star = make_star(own_mosquitto, bureaus=("b1", "b2"), node_settings=settings)
    try:
        star.init()
        star.start("center")
        star.enrol("b1")
        star.start("b1")
        for i in range(5):  # five capture cycles, one package each
            _insert(engines["b1"], range(i * 10 + 1, i * 10 + 11))
            wait_until(lambda i=i: _count(engines["center"]) == (i + 1) * 10, 30, 0.2,
                       f"batch {i + 1} at the center")
        people = next(r for r in star.status("center")["resources"]
                      if r["resource"] == "people")
        assert [(h["node"], h["packages"]) for h in people["held"]] == [("b2", 2)], people
        dropped = {x["node"]: x for x in people["dropped"]}
        assert dropped["b2"]["packages"] == 3, dropped
        assert "exnode sync repair people --node b2" in dropped["b2"]["reason"]
        star.enrol("b2")
        star.start("b2")
        wait_until(lambda: _count(engines["b2"]) == 20, 60, 0.3, "the held changes at b2")
        r = star.cli("center", "sync", "repair", "people", "--node", "b2")
        assert r.returncode == 0, (r.stdout, r.stderr)
        wait_until(lambda: _count(engines["b2"]) == 50, 60, 0.3, "b2 repaired")
    finally:
        for e in engines.values():
            e.dispose()
