"""Full-process monitoring (全程监控, 限时办结) end to end, real daemons: b2 asks for b1's
`people`; the request's review step at the center goes past its deadline; the center
raises exactly one alert, however many scans pass: one exchange-log entry, one signed
POST to the webhook, a problem in `status --check`, `exnode alerts --json`. It is
acknowledged (who, when), then cleared once the center has reviewed the request."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from exnode.node.tools.broker import free_port
from exnode.node.tools.cluster import wait_until

from ..helpers import db_rows
from .test_sharing import Sharing, _catalog_everywhere

KEY_ENV = "MONITOR_E2E_WEBHOOK_KEY"
KEY = "e2e-hmac-key-do-not-log"


class _Hook(BaseHTTPRequestHandler):
    got: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # http.server calls it so
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).got.append((dict(self.headers), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_a: object) -> None:
        pass


def _signed(headers: dict[str, str], body: bytes) -> bool:
    ts = headers["X-Exnode-Timestamp"]
    want = "sha256=" + hmac.new(KEY.encode(), ts.encode() + b"." + body,
                                hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Exnode-Signature"], want)


def test_an_overdue_access_request_raises_exactly_one_alert(make_star, system_broker,
                                                            monkeypatch):
    port = free_port()
    _Hook.got = []
    server = ThreadingHTTPServer(("127.0.0.1", port), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(KEY_ENV, KEY)  # the daemons inherit it
    s = Sharing(make_star, system_broker, settings={"monitor": {
        "scan_every_s": 1,
        "webhooks": [{"url": f"http://127.0.0.1:{port}/alerts?t=1", "secret_env": KEY_ENV,
                      "backoff_s": 0.2}]}})
    s.console_port = free_port()
    s.star.node_settings.setdefault("center", {})["console"] = {
        "listen": f"127.0.0.1:{s.console_port}"}
    try:
        _run(s)
    finally:
        server.shutdown()
        for e in s.engines.values():
            e.dispose()


def _alerts(s, node, *args):
    r = s.cli(node, "alerts", *args, "--json")
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return r.returncode, json.loads(r.stdout)


def _run(s):
    s.up()
    _catalog_everywhere(s)
    assert _alerts(s, "center") == (0, [])
    r = s.cli("b2", "access", "request", "people", "--service", "sync", "--fields",
              "citizen_id,name", "--purpose", "社保资格核查", "--basis", "《社会保险法》",
              "--json")
    assert r.returncode == 0, r.stderr
    req = json.loads(r.stdout)
    rid = req["id"]
    assert req["status"] == "review"
    items = s.json("center", "alerts", "items")
    mine = [i for i in items if i["kind"] == "access" and i["id"] == rid]
    assert len(mine) == 1 and mine[0]["state"] == "review" and not mine[0]["overdue"]
    assert mine[0]["deadline"] > time.time()
    assert {i["kind"] for i in items} >= {"access", "silent"}

    # the review's deadline passes (moved in the center's state DB)
    with sqlite3.connect(s.star.dir("center") / "state.db") as db:
        db.execute("UPDATE access_requests SET due = ? WHERE id = ?", (1.0, rid))
    wait_until(lambda: _alerts(s, "center")[0] == 1, 30, what="the alert at the center")
    time.sleep(4)  # several more scans (every second)
    code, alerts = _alerts(s, "center")
    assert code == 1 and len(alerts) == 1, alerts
    a = alerts[0]
    assert (a["kind"], a["item"], a["node"], a["item_state"], a["state"]) == (
        "access", rid, "center", "review", "open")
    assert a["resource"] == "people" and a["origin"] == "center" and a["deadline"] == 1.0

    def logged():
        return db_rows(s.star, "center", "SELECT pkg_id, kind, status FROM exchange_log "
                       "WHERE event = 'alert'")

    assert logged() == [(rid, "access", "open")]
    # one signed POST, from the center
    wait_until(lambda: _Hook.got, 30, what="the webhook's POST")
    time.sleep(1)
    assert len(_Hook.got) == 1, _Hook.got
    headers, body = _Hook.got[0]
    assert _signed(headers, body) and json.loads(body)["id"] == a["id"]
    assert headers["X-Exnode-Delivery"] == f"center:{a['id']}"
    # status fails --check at the center; b1 and b2 have nothing to say
    r = s.cli("center", "status", "--check")
    assert r.returncode == 1 and f"alert {a['id']}: access request {rid}" in r.stdout
    assert json.loads(s.cli("center", "status", "--json").stdout)["monitor"]["open"] == 1
    assert "monitor   1 open alert(s)" in s.cli("center", "status").stdout
    text = s.cli("center", "alerts")
    assert text.returncode == 1 and f"access request {rid}" in text.stdout
    assert text.stdout.split()[5:7] == [str(a["id"]), "open"], text.stdout
    text = s.cli("center", "alerts", "items", "--overdue").stdout
    assert "access" in text and "review" in text and "OVERDUE" in text
    for node in ("b1", "b2"):
        assert _alerts(s, node, "--all") == (0, [])

    # bad input: one line, no traceback
    for bad, want in ((("ack", "abc"), "ID"), (("ack", "999"), "no alert 999")):
        r = s.cli("center", "alerts", *bad)
        assert r.returncode != 0 and want in r.stderr, r.stdout + r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr

    # shown in the console: the overview's count, the alerts page, an operator's button
    from ..console_helpers import Web, add_accounts

    add_accounts(s.star, "center", ("op", "ro"))
    w = Web(s.console_port)
    assert w.login("ro").status_code == 302
    assert '<b id="alerts">1</b>' in w.get("/").text
    page = w.get("/alerts").text
    assert rid in page and "/alerts/" not in page.split('id="alerts"')[1]  # ro: no button
    w.close()
    w = Web(s.console_port)
    w.login("op")
    assert f'action="/alerts/{a["id"]}/ack"' in w.get("/alerts").text
    w.close()

    # acknowledged: who and when; no longer open, nothing new raised
    acked = s.json("center", "alerts", "ack", str(a["id"]), "--by", "值班员")
    assert acked["state"] == "acknowledged" and acked["acked_by"] == "值班员"
    assert _alerts(s, "center") == (0, [])
    r = s.cli("center", "alerts", "ack", str(a["id"]))
    assert r.returncode != 0 and "acknowledged" in r.stderr
    assert f"alert {a['id']}" not in s.cli("center", "status").stdout

    # the center reviews it: the request moves on, the alert clears
    r = s.cli("center", "access", "review", rid, "--approve", "--reason", "合规")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: _alerts(s, "center", "--all")[1][0]["state"] == "cleared", 30,
               what="the alert cleared")
    code, every = _alerts(s, "center", "--all")
    assert code == 0 and len(every) == 1 and every[0]["acked_by"] == "值班员"
    assert [st for _p, _k, st in logged()] == ["open", "acknowledged", "cleared"]
    assert len(_Hook.got) == 1
    # the key is in no daemon log
    for node in ("center", "b1", "b2"):
        text = (s.star.dir(node) / "daemon.log").read_text(encoding="utf-8", errors="replace")
        assert KEY not in text


def test_a_bureau_that_stops_reporting_raises_one_alert(make_star, system_broker):
    """(center) b1 reports every second; stopped, it is silent after 8 s: one alert,
    cleared when it is back."""
    from ..console_helpers import Web, add_accounts

    port = free_port()
    star = make_star(system_broker, bureaus=("b1",), settings={"monitor": {
        "scan_every_s": 1, "health_every_s": 1, "silent_after_s": 8}},
        node_settings={"center": {"console": {"listen": f"127.0.0.1:{port}"}}})
    star.up()
    add_accounts(star, "center", ("ro",))

    def alerts(*args):
        r = star.cli("center", "alerts", *args, "--json")
        assert r.returncode in (0, 1), r.stdout + r.stderr
        return json.loads(r.stdout)

    wait_until(lambda: any(i["kind"] == "silent" and i["id"] == "b1"
                           and i["state"] == "reporting"
                           for i in json.loads(star.cli("center", "alerts", "items",
                                                        "--json").stdout)), 30,
               what="b1 reporting")
    assert alerts() == []
    star.stop("b1")
    wait_until(alerts, 40, what="the silent alert")
    time.sleep(3)
    got = alerts()
    assert [(a["kind"], a["item"], a["node"], a["item_state"]) for a in got] == [
        ("silent", "b1", "b1", "silent")], got
    # the console's overview: b1 offline, with what waits for it in the outbox
    import base64

    star.call("center", "POST", "/send", {"to": "b1", "resource": "demo.records",
                                          "payloads": [base64.b64encode(b"x").decode()]})
    w = Web(port)
    w.login("ro")
    import re

    row = re.search(r'<tr data-node="b1">(.*?)</tr>', w.get("/").text, re.S)
    assert row and "离线" in row.group(1), row
    queued = int(re.search(r'class="queued">(\d+)', row.group(1)).group(1))
    assert queued >= 1, row.group(1)
    w.close()
    star.start("b1")
    wait_until(lambda: alerts("--all")[0]["state"] == "cleared", 40, what="cleared")
    assert len(alerts("--all")) == 1
    assert db_rows(star, "center", "SELECT kind, status FROM exchange_log WHERE "
                   "event = 'alert'") == [("silent", "open"), ("silent", "cleared")]


def test_a_bureau_approved_but_never_heard_from_raises_one_alert(make_star, system_broker):
    """(center) b1 is enrolled and approved but never starts: it is due to report within
    silent_after_s of its approval; past that, one alert, also across a restart of the
    center (the deadline is the approval's, which the registry keeps)."""
    star = make_star(system_broker, bureaus=("b1",), settings={"monitor": {
        "scan_every_s": 1, "silent_after_s": 5}})
    star.init()
    star.start("center")
    star.enrol("b1")

    def alerts():
        r = star.cli("center", "alerts", "--json")
        assert r.returncode in (0, 1), r.stdout + r.stderr
        return json.loads(r.stdout)

    items = json.loads(star.cli("center", "alerts", "items", "--json").stdout)
    b1 = [i for i in items if i["kind"] == "silent" and i["id"] == "b1"]
    assert len(b1) == 1 and b1[0]["state"] == "never heard from" and b1[0]["deadline"]
    wait_until(alerts, 30, what="the alert for b1")
    star.stop("center")
    star.start("center")
    time.sleep(3)  # scans after the restart
    got = alerts()
    assert [(a["kind"], a["item"], a["item_state"]) for a in got] == [
        ("silent", "b1", "never heard from")], got
    assert len(db_rows(star, "center", "SELECT id FROM exchange_log WHERE event = 'alert'"
                       " AND kind = 'silent'")) == 1
