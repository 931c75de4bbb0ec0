"""Exactly once, in order: 1,000 packages in flight while a daemon or the broker is
killed and restarted."""

from __future__ import annotations

import base64
import signal
import time

import pytest

from exnode.node.tools.cluster import wait_until

from ..helpers import db_rows

N = 1000
RESOURCES = 4


def _send(star, src, dst, tag):
    """N packages from src to dst, spread over RESOURCES resources."""
    per = N // RESOURCES
    for r in range(RESOURCES):
        payloads = [base64.b64encode(f"{tag}:{r}:{i}".encode()).decode() for i in range(per)]
        for k in range(0, per, 125):
            star.call(src, "POST", "/send", {"to": dst, "resource": f"{tag}.{r}",
                                             "payloads": payloads[k:k + 125]})


def _applied(star, node, tag):
    return db_rows(star, node, "SELECT count(*) FROM received WHERE resource LIKE ?",
                   (f"{tag}.%",))[0][0]


def _check_exactly_once_in_order(star, node, tag):
    per = N // RESOURCES
    for r in range(RESOURCES):
        rows = db_rows(star, node, "SELECT seq, payload FROM received WHERE resource=? "
                       "ORDER BY id", (f"{tag}.{r}",))
        assert [s for s, _p in rows] == list(range(1, per + 1)), f"{tag}.{r} out of order"
        assert [p.decode() for _s, p in rows] == [f"{tag}:{r}:{i}" for i in range(per)]
    # every package is applied once in the inbox, nothing is left waiting
    assert db_rows(star, node, "SELECT count(*) FROM inbox WHERE resource LIKE ? AND "
                   "status='applied'", (f"{tag}.%",)) == [(N,)]
    assert db_rows(star, node, "SELECT count(*) FROM inbox WHERE status='waiting'") == [(0,)]


def _drained(star, node):
    return star.status(node)["outbox_pending"] == 0


@pytest.fixture
def star(make_star, own_mosquitto):
    s = make_star(own_mosquitto, settings={"delivery": {"retry_initial_s": 1.0,
                                                        "retry_max_s": 4.0}})
    s.up()
    s.broker = own_mosquitto
    return s


def test_receiver_killed_and_restarted(star):
    _send(star, "b1", "b2", "kill-rx")
    wait_until(lambda: _applied(star, "b2", "kill-rx") >= 50, 60, 0.02, "first arrivals")
    star.kill("b2")  # SIGKILL mid-stream
    assert _applied(star, "b2", "kill-rx") < N, "everything arrived before the kill"
    time.sleep(1.0)
    star.start("b2")
    wait_until(lambda: _drained(star, "b1"), 180, 0.5, "b1's outbox to drain")
    _check_exactly_once_in_order(star, "b2", "kill-rx")


def test_sender_killed_and_restarted(star):
    _send(star, "b1", "b2", "kill-tx")
    star.kill("b1")  # the outbox is in b1's state DB, committed before publishing
    pending = db_rows(star, "b1", "SELECT count(*) FROM outbox WHERE status='pending'")[0][0]
    assert pending > 0, "nothing was left to deliver after the kill"
    star.start("b1")
    wait_until(lambda: _drained(star, "b1"), 180, 0.5, "b1's outbox to drain")
    wait_until(lambda: _applied(star, "b2", "kill-tx") == N, 60, 0.2, "all applied")
    _check_exactly_once_in_order(star, "b2", "kill-tx")


def test_broker_killed_and_restarted(star):
    _send(star, "b1", "b2", "kill-mq")
    wait_until(lambda: _applied(star, "b2", "kill-mq") >= 50, 60, 0.02, "first arrivals")
    star.broker.stop(signal.SIGKILL)
    assert _applied(star, "b2", "kill-mq") < N, "everything arrived before the kill"
    time.sleep(1.5)
    star.broker.start()
    wait_until(lambda: all(star.status(n)["broker"]["connected"] for n in star.nodes), 60,
               0.2, "reconnection")
    wait_until(lambda: _drained(star, "b1"), 180, 0.5, "b1's outbox to drain")
    _check_exactly_once_in_order(star, "b2", "kill-mq")
    # the logs still verify on every node
    for n in star.nodes:
        assert star.cli(n, "log", "verify").returncode == 0
