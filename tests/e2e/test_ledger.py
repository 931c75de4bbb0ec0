"""The monthly ledger end to end, real daemons: after sync and query traffic, the
ledger's totals at the center and at a bureau equal what ``exnode log --json`` lists for
the month; its files are written 0600 with a signature that verifies offline at the
signer and at another member, and fails after a one-byte change."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from zoneinfo import ZoneInfo

from exnode.node.tools.cluster import wait_until

from .test_sharing import Sharing, _catalog_everywhere, _grant_people_query, _insert, _rows


def test_ledger_reconciles_with_the_log_and_is_signed(make_star, system_broker):
    s = Sharing(make_star, system_broker)
    try:
        _run(s)
    finally:
        for e in s.engines.values():
            e.dispose()


def _log_rows(s, node, d):
    rows = s.json(node, "log", "--since", d["from_local"], "--limit", "10000000")
    return [r for r in rows if d["from"] <= r["ts"] < d["to"]
            and r["id"] <= (d["log"]["last_id"] or 0)]


def _count(rows, event, kind=None):
    rs = [r for r in rows if r["event"] == event and (kind is None or r["kind"] == kind)]
    return len(rs), sum(r["size"] for r in rs)


def _check(s, node, month):
    d = s.json(node, "ledger", "--month", month)
    assert d["node"] == node and d["month"] == month
    rows = _log_rows(s, node, d)
    assert d["log"]["rows"] == len(rows)
    assert d["log"]["first_id"] == min(r["id"] for r in rows)
    sec = {x["id"]: x for x in d["sections"]}
    ex = sec["exchange"]["total"]
    assert (ex["packages_out"], ex["bytes_out"]) == _count(rows, "created")
    assert (ex["packages_in"], ex["bytes_in"]) == _count(rows, "applied")
    assert (ex["relayed"], ex["bytes_relayed"]) == _count(rows, "relayed")
    assert ex["refused"] == _count(rows, "refused")[0]
    assert ex["expired"] == _count(rows, "expired")[0]
    for group in ("by_resource", "by_peer", "by_kind"):
        assert sum(r["bytes_out"] for r in sec["exchange"][group]) == ex["bytes_out"]
        assert sum(r["rows_out"] for r in sec["exchange"][group]) == ex["rows_out"]
    sync = [r for r in rows if r["event"] == "sync"]
    assert ex["rows_out"] == sum(r["size"] for r in sync if r["status"].endswith(" rows sent"))
    assert ex["rows_in"] == sum(r["size"] for r in sync if r["status"].endswith(" applied"))
    q = sec["queries"]["total"]
    assert (q["pages_answered"], q["rows_answered"]) == _count(rows, "query", "query-req")
    assert (q["pages_received"], q["rows_received"]) == _count(rows, "query", "query-page")
    z = sec["zero_updates"]["total"]
    assert z["sent"] == _count(rows, "created", "zero")[0]
    assert z["received"] == _count(rows, "applied", "zero")[0]
    assert (sec["verifications"]["total"]["requests"], sec["verifications"]["total"]
            ["records"]) == _count(rows, "verify")
    return d


def _run(s):
    _insert(s, [{"citizen_id": f"1101011990{i:08d}", "name": f"人{i}", "phone":
                 f"138{i:08d}", "district": "东城"} for i in range(50)])
    s.up()
    _catalog_everywhere(s)
    wait_until(lambda: len(_rows(s.engines["center"])) == 50, 60, what="the shared library")
    _grant_people_query(s, "citizen_id,name,district")
    out = s.root / "q.csv"
    r = s.cli("b2", "query", "people", "-o", str(out), "--page", "20")
    assert r.returncode == 0, r.stderr
    month = dt.datetime.now(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")

    center = _check(s, "center", month)
    sec = {x["id"]: x for x in center["sections"]}
    assert sec["queries"]["total"]["rows_answered"] == 50
    assert sec["exchange"]["total"]["packages_in"] > 0
    assert next(r for r in sec["exchange"]["by_peer"] if r["peer"] == "b1")["rows_in"] >= 50
    assert any(r["resource"] == "people" for r in sec["exchange"]["by_resource"])
    assert sec["requests"]["total"]["received"] == 1
    assert sec["requests"]["total"]["in_time"] == 1
    people = next(r for r in sec["freshness"]["by_resource"] if r["resource"] == "people")
    assert people["updates"] >= 1
    b2 = _check(s, "b2", month)
    b2q = {x["id"]: x for x in b2["sections"]}["queries"]["total"]
    assert b2q["rows_received"] == 50 and b2q["pages_received"] >= 3
    _check(s, "b1", month)

    # files: 0600, signed, verified offline at the signer and at another member
    pdf = s.root / "ledger.pdf"
    r = s.cli("center", "ledger", "--month", month, "-o", str(pdf), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    raw = pdf.read_bytes()
    assert raw.startswith(b"%PDF") and info["size"] == len(raw)
    assert os.stat(pdf).st_mode & 0o777 == 0o600
    sig = s.root / "ledger.pdf.sig"
    assert os.stat(sig).st_mode & 0o777 == 0o600
    doc = json.loads(sig.read_text())
    assert doc["node"] == "center" and doc["month"] == month and doc["cert"]
    r = s.cli("center", "ledger", "verify", str(pdf))
    assert r.returncode == 0 and "this node's key" in r.stdout, r.stdout + r.stderr
    r = s.cli("b2", "ledger", "verify", str(pdf), "--member", "center")
    assert r.returncode == 0 and "certificate" in r.stdout, r.stdout + r.stderr
    bad = bytearray(raw)
    bad[len(bad) // 2] ^= 0x20
    pdf.write_bytes(bytes(bad))
    for node in ("center", "b2"):
        r = s.cli(node, "ledger", "verify", str(pdf))
        assert r.returncode == 1, r.stdout + r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "SHA-256" in r.stderr

    # CSV with a BOM: its totals are the JSON's
    out = s.root / "ledger.csv"
    r = s.cli("b2", "ledger", "--month", month, "-o", str(out), "--bom")
    assert r.returncode == 0, r.stderr
    text = out.read_bytes()
    assert text.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(text.decode("utf-8-sig"))))
    i = next(k for k, row in enumerate(rows) if row and row[0] == "## queries total")
    tot = dict(zip(rows[i + 1], rows[i + 2], strict=True))
    assert tot["rows_received"] == "50"
    assert s.cli("b2", "ledger", "verify", str(out)).returncode == 0

    # a month not yet begun, a bad month: one line, exit 2
    r = s.cli("center", "ledger", "--month", "2999-01")
    assert r.returncode == 2 and "not begun" in r.stderr, r.stderr
    r = s.cli("center", "ledger", "--month", "2026-13")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
