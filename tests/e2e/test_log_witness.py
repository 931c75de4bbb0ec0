"""The exchange log's head has witnesses: the head file beside the keys and the center.
A log cut short and given back an older (genuinely signed) head, or deleted whole,
verifies on the chain and signature alone; against the witnesses it fails, and says why.
"""

from __future__ import annotations

import json
import sqlite3

from exnode.node.kernel.witness import HEAD_FILE
from exnode.node.tools.cluster import wait_until


def verify(star, node: str, *extra: str) -> tuple[int, dict]:
    p = star.cli(node, "log", "verify", "--json", *extra)
    out = p.stdout.strip() or "{}"
    return p.returncode, json.loads(out)


def db(star, node: str) -> sqlite3.Connection:
    return sqlite3.connect(star.dir(node) / "state.db")


def head_row(star, node: str) -> bytes:
    with db(star, node) as c:
        return c.execute("SELECT value FROM meta WHERE key = 'log_head'").fetchone()[0]


def max_row(star, node: str) -> int:
    with db(star, node) as c:
        return c.execute("SELECT max(id) FROM exchange_log").fetchone()[0]


def pings(star, n: int) -> None:
    for _ in range(n):
        assert star.cli("b1", "ping", "center").returncode == 0


def test_cut_tail_with_old_head_and_deleted_log_fail_against_the_witnesses(make_star,
                                                                          own_mosquitto):
    star = make_star(own_mosquitto, bureaus=("b1",))
    star.up()
    pings(star, 2)
    rc, res = verify(star, "b1")
    assert rc == 0 and res["witness"]["checked"], res
    assert res["witness"]["row"] > 0

    # The attacker's starting point: a genuine head, kept aside
    old_head, old_last = head_row(star, "b1"), max_row(star, "b1")
    pings(star, 3)
    rc, res = verify(star, "b1")  # the center now witnesses a later row
    assert rc == 0 and res["witness"]["row"] > old_last, res
    star.stop("b1")
    head_file = star.dir("b1") / "keys" / HEAD_FILE
    assert head_file.exists() and head_file.stat().st_mode & 0o777 == 0o600

    # Cut the tail and restore the old head: the chain and the signature are intact
    with db(star, "b1") as c:
        c.execute("DELETE FROM exchange_log WHERE id > ?", (old_last,))
        c.execute("UPDATE meta SET value = ? WHERE key = 'log_head'", (old_head,))
    rc, res = verify(star, "b1", "--offline")
    assert rc == 1 and "head file" in res["problem"], res
    assert f"ends at row {old_last}" in res["problem"]

    # The head file goes too: the center's witness still knows
    head_file.unlink()
    assert verify(star, "b1", "--offline")[0] == 0  # nothing left on the node to tell
    star.start("b1")
    rc, res = verify(star, "b1")
    assert rc == 1 and "center's witness" in res["problem"], res
    # and the center recorded that b1's head went back
    w = {x["node"]: x for x in star.call("center", "GET", "/log/witnesses")["witnesses"]}
    assert w["b1"]["alerts"] >= 1 and "went back" in w["b1"]["last_alert"], w
    star.stop("b1")

    # The whole log and its head deleted
    wait_until(head_file.exists, 5, 0.1, "the head file to be rewritten")
    with db(star, "b1") as c:
        c.execute("DELETE FROM exchange_log")
        c.execute("DELETE FROM meta WHERE key = 'log_head'")
    rc, res = verify(star, "b1", "--offline")
    assert rc == 1 and "ends at row 0" in res["problem"], res
    p = star.cli("b1", "log", "verify", "--offline")
    assert p.returncode == 1 and "FAILED" in p.stderr and "Traceback" not in p.stderr


def test_a_damaged_head_file_is_a_one_line_failure(make_star, own_mosquitto):
    star = make_star(own_mosquitto, bureaus=("b1",))
    star.up()
    pings(star, 1)
    star.stop("b1")
    (star.dir("b1") / "keys" / HEAD_FILE).write_bytes(b"\xff garbage")
    p = star.cli("b1", "log", "verify", "--offline")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "log head file is not readable" in p.stderr
