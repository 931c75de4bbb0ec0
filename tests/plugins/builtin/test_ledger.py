"""The monthly ledger's figures on a real SQLite state DB: log rows appended through the
exchange-log API (at chosen times) across a month boundary and a time-zone edge, and
rows of the service tables, checked figure by figure."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import insert, select, text

from exnode.node.base.errors import UsageError
from exnode.node.kernel import exlog
from exnode.node.kernel.state import exchange_log, open_state
from exnode.plugins.builtin.access.tables import access_requests
from exnode.plugins.builtin.corrections.tables import corrections
from exnode.plugins.builtin.ledger import compute, months
from exnode.plugins.builtin.sync.tables import quarantine

SH = ZoneInfo("Asia/Shanghai")
KEY = ed25519.Ed25519PrivateKey.generate()
DAY = 86400.0


def sh(*a: int) -> float:
    """A Shanghai wall-clock time as a Unix time."""
    return dt.datetime(*a, tzinfo=SH).timestamp()


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def time(self) -> float:
        return self.t

    def __getattr__(self, name):  # everything else exlog might use from `time`
        import time

        return getattr(time, name)


def append_at(eng, monkeypatch, t: float, entries: list[dict]) -> None:
    """Append ``entries`` through exlog.append as if the clock said ``t``."""
    monkeypatch.setattr(exlog, "time", _Clock(t))
    with eng.begin() as conn:
        exlog.append(conn, entries, KEY.sign)
    monkeypatch.undo()


def e(event: str, kind: str = "rows", peer: str = "center", resource: str = "people",
      size: int = 0, status: str = "ok", pkg_id: str | None = None) -> dict:
    return {"pkg_id": pkg_id or str(uuid.uuid4()), "event": event, "peer": peer,
            "resource": resource, "kind": kind, "size": size, "status": status}


R2, R4 = str(uuid.uuid4()), str(uuid.uuid4())
C2 = str(uuid.uuid4())

OCT_LAST = sh(2026, 10, 31, 23, 59)
NOV_FIRST = sh(2026, 11, 1)
NOV_MID = sh(2026, 11, 15, 12)
NOV_LAST = sh(2026, 11, 30, 23, 30)          # 15:30 UTC: November in Shanghai
DEC_FIRST = sh(2026, 12, 1)
DEC_UTC_NOV = sh(2026, 12, 1, 7)             # 2026-11-30 23:00 UTC: December in Shanghai


@pytest.fixture
def eng(tmp_path, monkeypatch):
    e_ = open_state(f"sqlite:///{tmp_path}/state.db")
    append_at(e_, monkeypatch, OCT_LAST, [e("created", size=100)])
    append_at(e_, monkeypatch, NOV_FIRST, [e("created", size=200)])
    append_at(e_, monkeypatch, NOV_MID, [
        e("applied", peer="b1", size=300),
        e("applied", kind="zero", peer="b1", size=50),
        e("created", kind="zero", peer="b2", size=60),
        e("relayed", kind="query-req", peer="b2>b1", resource="licences", size=40),
        e("refused", kind="rows", peer="b3", size=70),
        e("expired", kind="health", peer="b2", resource="", size=80),
        e("sent", size=200),                     # not counted: a send of a created package
        e("receipt", size=200, status="delivered"),
        e("duplicate", peer="b1", size=300),
        e("query", kind="query-req", peer="b2", size=7, status="7 rows"),
        e("query", kind="query-req", peer="b2", size=0, status="not-granted"),
        e("query", kind="query-page", peer="b1", resource="licences", size=12,
          status="12 rows received"),
        e("verify", kind="check-req", peer="b2", size=4, status="4 records, 2 found"),
        e("verify", kind="check-req", peer="b2", size=9, status="over-quota"),
        e("overdue", kind="access-req", peer="b2", pkg_id=R2, status="review step overdue"),
        e("overdue", kind="correction", peer="b2", pkg_id=C2, status="overdue"),
        # the sync service's rows of its packages (size = rows)
        e("sync", peer="b1", size=12, status="12 rows applied"),
        e("sync", peer="b1", size=5, status="5 rows received, 3 applied"),
        e("sync", peer="b2", size=12, status="12 rows sent"),
        e("sync", peer="b2", resource="licences", size=4, status="4 rows sent"),
    ])
    append_at(e_, monkeypatch, NOV_LAST, [e("created", size=1000),
                                          e("sync", peer="center", size=30,
                                            status="30 rows sent")])
    append_at(e_, monkeypatch, DEC_FIRST, [e("created", size=5000),
                                           e("sync", peer="center", size=900,
                                             status="900 rows sent")])
    append_at(e_, monkeypatch, DEC_UTC_NOV, [e("created", size=7000)])
    with e_.begin() as conn:
        def req(rid, created, status, consumer="b2", due=None):
            return {"id": rid, "resource": "people", "consumer": consumer, "provider": "b1",
                    "service": "query", "status": status, "due": due, "overdue": False,
                    "created": created, "updated": created, "doc": "{}"}
        conn.execute(insert(access_requests), [
            req(str(uuid.uuid4()), sh(2026, 11, 3), "granted"),            # in time
            req(R2, sh(2026, 11, 5), "refused"),                           # flagged: overdue
            req(str(uuid.uuid4()), sh(2026, 11, 28), "provider", due=sh(2026, 12, 5)),
            req(R4, sh(2026, 11, 10), "review", due=sh(2026, 11, 12)),     # open past due
            req(str(uuid.uuid4()), sh(2026, 11, 2), "sent", consumer="center"),  # filed
            req(str(uuid.uuid4()), sh(2026, 10, 30), "granted"),           # October
        ])

        def cor(cid, created, status, due=None, consumer="b2"):
            return {"id": cid, "resource": "people", "consumer": consumer, "owner": "b1",
                    "status": status, "due": due, "overdue": False, "created": created,
                    "updated": created, "doc": "{}"}
        conn.execute(insert(corrections), [
            cor(str(uuid.uuid4()), sh(2026, 11, 4), "accepted"),
            cor(C2, sh(2026, 11, 6), "rejected"),
            cor(str(uuid.uuid4()), sh(2026, 11, 29), "open", due=sh(2026, 12, 4)),
            cor(str(uuid.uuid4()), sh(2026, 12, 2), "open"),               # December
        ])

        def q(created, status, src="b1"):
            return {"resource": "people", "key": "k", "stage": "center", "src": src,
                    "pkg_id": None, "created": created, "status": status, "updated": created,
                    "violations": b"", "row": b""}
        conn.execute(insert(quarantine), [q(sh(2026, 11, 7), "open"), q(sh(2026, 11, 8), "open"),
                                          q(sh(2026, 11, 9), "dropped"),
                                          q(NOV_LAST, "superseded", "center"),
                                          q(DEC_UTC_NOV, "open")])
    yield e_
    e_.dispose()


def ledger(eng, **kw):
    kw.setdefault("intervals", {"people": DAY, "licences": None})
    return compute.compute(eng, node_id="center", role="center", month="2026-11",
                           now=sh(2027, 1, 10), **kw)


def section(data, sid):
    return next(s for s in data["sections"] if s["id"] == sid)


def by(sec, group, key):
    return next(r for r in sec[f"by_{group}"] if r[group] == key)


def test_month_bounds_are_in_the_node_time_zone():
    start, end = months.bounds("2026-11", "Asia/Shanghai")
    assert start == dt.datetime(2026, 10, 31, 16, tzinfo=dt.UTC).timestamp()
    assert end == dt.datetime(2026, 11, 30, 16, tzinfo=dt.UTC).timestamp()
    assert months.bounds("2026-12")[1] == sh(2027, 1, 1)
    assert months.previous_month("Asia/Shanghai", sh(2027, 1, 1)) == "2026-12"
    assert months.previous_month("Asia/Shanghai", sh(2026, 12, 31, 23, 59)) == "2026-11"
    for bad in ("2026-13", "2026-00", "26-11", "2026-1", "2026/11", "", "abcd-ef"):
        with pytest.raises(UsageError):
            months.parse_month(bad)


def test_the_log_rows_of_the_month(eng):
    d = ledger(eng)
    with eng.connect() as conn:
        rows = conn.execute(select(exchange_log.c.id, exchange_log.c.ts)
                            .order_by(exchange_log.c.id)).all()
    inside = [i for i, t in rows if NOV_FIRST <= t < DEC_FIRST]
    assert d["log"] == {"first_id": inside[0], "last_id": inside[-1], "rows": len(inside),
                        "clock_went_back": 0}
    assert len(inside) == 1 + 20 + 2  # Nov 1 00:00, the 20 of Nov 15, the 2 of Nov 30
    assert d["from_local"] == "2026-11-01T00:00:00+08:00" and d["complete"] is True


def test_packages_and_bytes(eng):
    ex = section(ledger(eng), "exchange")
    t = ex["total"]
    # created: Nov 1 (200) + zero to b2 (60) + Nov 30 23:30 (1000); not Oct 31, not Dec
    assert (t["packages_out"], t["bytes_out"]) == (3, 1260)
    assert (t["packages_in"], t["bytes_in"]) == (2, 350)  # duplicate not counted
    assert (t["relayed"], t["bytes_relayed"]) == (1, 40)
    assert (t["refused"], t["expired"]) == (1, 1)
    # rows: the 'sync' entries of the month (not December's 900)
    assert (t["rows_in"], t["rows_out"]) == (17, 46)
    people = by(ex, "resource", "people")
    assert (people["packages_out"], people["bytes_out"], people["packages_in"]) == (3, 1260, 2)
    assert by(ex, "peer", "center")["bytes_out"] == 1200
    assert by(ex, "peer", "b2")["packages_out"] == 1 and by(ex, "peer", "b2")["relayed"] == 1
    assert by(ex, "peer", "b1")["bytes_in"] == 350
    assert by(ex, "kind", "zero")["packages_in"] == 1
    assert by(ex, "kind", "health")["expired"] == 1
    # the totals are the sums of every grouping
    for group in ("resource", "peer", "kind"):
        assert sum(r["bytes_out"] for r in ex[f"by_{group}"]) == 1260, group
        assert sum(r["packages_in"] for r in ex[f"by_{group}"]) == 2, group


def test_rows_in_and_out(eng):
    ex = section(ledger(eng), "exchange")
    # out: 12 to b2 + 4 licences to b2 + 30 to center (Nov 30); in: 12 + 5 from b1 (a
    # package counts all its rows, also those it did not apply)
    people, lic = by(ex, "resource", "people"), by(ex, "resource", "licences")
    assert (people["rows_in"], people["rows_out"]) == (17, 42)
    assert (lic["rows_in"], lic["rows_out"]) == (0, 4)
    assert (by(ex, "peer", "b1")["rows_in"], by(ex, "peer", "b1")["rows_out"]) == (17, 0)
    assert by(ex, "peer", "b2")["rows_out"] == 16
    assert by(ex, "peer", "center")["rows_out"] == 30
    assert by(ex, "kind", "rows")["rows_in"] == 17
    for group in ("resource", "peer", "kind"):
        assert sum(r["rows_out"] for r in ex[f"by_{group}"]) == 46, group
        assert sum(r["rows_in"] for r in ex[f"by_{group}"]) == 17, group
    # the 'sync' entries are not packages: the package counts do not change
    assert ex["total"]["packages_out"] == 3 and ex["total"]["packages_in"] == 2
    cols = {c["name"]: c for c in ex["columns"]}
    assert "sync" in cols["rows_in"]["note"] and "applied" in cols["rows_in"]["note"]
    assert "rows sent" in cols["rows_out"]["note"]
    assert not any("not recorded" in r for r in ledger(eng)["rules"])


def test_queries_verifications_and_zero_reports(eng):
    d = ledger(eng)
    q = section(d, "queries")["total"]
    assert q == {"pages_answered": 2, "rows_answered": 7, "refused": 1, "pages_received": 1,
                 "rows_received": 12}
    assert by(section(d, "queries"), "peer", "b1")["rows_received"] == 12
    v = section(d, "verifications")["total"]
    assert v == {"requests": 2, "records": 13, "refused": 1}
    z = section(d, "zero_updates")
    assert z["total"] == {"sent": 1, "received": 1}
    assert by(z, "peer", "b1")["received"] == 1 and by(z, "peer", "b2")["sent"] == 1


def test_requests_and_corrections(eng):
    d = ledger(eng)
    r = section(d, "requests")["total"]
    assert r == {"received": 4, "in_time": 1, "overdue": 2, "pending": 1, "granted": 1,
                 "refused": 1, "filed": 1}
    assert by(section(d, "requests"), "peer", "b2")["received"] == 4
    assert by(section(d, "requests"), "peer", "b1")["filed"] == 1  # center asked b1's data
    c = section(d, "corrections")["total"]
    assert c == {"received": 3, "in_time": 1, "overdue": 1, "pending": 1, "accepted": 1,
                 "rejected": 1, "filed": 0}


def test_requests_as_of_the_month_end(eng):
    # computed on Nov 20: the request due Nov 12 is overdue, the flag of R2 (Nov 15)
    # counts; computed "now" = Nov 11: R4 still pending, R2 not yet flagged
    d = compute.compute(eng, node_id="center", role="center", month="2026-11",
                        now=sh(2026, 11, 11))
    r = section(d, "requests")["total"]
    assert d["complete"] is False
    assert (r["overdue"], r["pending"], r["in_time"]) == (0, 1, 2)  # the Nov 28 one: future


def test_quarantine(eng):
    qs = section(ledger(eng), "quarantine")
    assert qs["total"] == {"quarantined": 4, "open": 2, "retried": 0, "dropped": 1,
                           "superseded": 1}
    assert by(qs, "peer", "center")["quarantined"] == 1


def test_freshness_compliance(eng):
    fr = section(ledger(eng), "freshness")
    p = by(fr, "resource", "people")
    assert p["interval_s"] == DAY
    assert (p["updates"], p["zero_reports"]) == (3, 2)  # rows: Nov 1, Nov 15, Nov 30
    # covered: Nov 1-2, Nov 15 12:00 - Nov 16 12:00, Nov 30 23:30 - Dec 1
    uncovered = (NOV_MID - (NOV_FIRST + DAY)) + (NOV_LAST - (NOV_MID + DAY))
    assert p["late"] == 2
    assert p["compliance_pct"] == round(100 * (1 - uncovered / (DEC_FIRST - NOV_FIRST)), 2)
    assert p["longest_gap_s"] == round(NOV_LAST - NOV_MID, 1)
    lic = by(fr, "resource", "licences")
    assert lic["compliance_pct"] is None  # no expected interval
    assert fr["total"]["compliance_pct"] == p["compliance_pct"]
    # per peer: the updates exchanged with b1 (Nov 15 only)
    b1 = next(r for r in fr["by_peer"] if r["peer"] == "b1" and r["resource"] == "people")
    assert (b1["updates"], b1["zero_reports"], b1["late"]) == (1, 1, 2)


def test_a_resource_without_any_update_is_not_compliant(eng):
    fr = section(ledger(eng, intervals={"people": DAY, "births": 3600.0}), "freshness")
    b = by(fr, "resource", "births")
    assert b["compliance_pct"] == 0.0 and b["updates"] == 0 and b["late"] == 1


def test_services_not_loaded(eng):
    d = ledger(eng, have=())
    for sid in ("requests", "corrections", "quarantine"):
        s = section(d, sid)
        assert s["available"] is False and s["by_resource"] == []


def test_bisection_finds_the_ts_bounds(eng):
    with eng.connect() as conn:
        ts = [t for (t,) in conn.execute(select(exchange_log.c.ts).order_by(exchange_log.c.id))]
        lo, hi = 1, len(ts)
        for t in [OCT_LAST, NOV_FIRST, NOV_FIRST + 1, NOV_MID, DEC_FIRST, DEC_UTC_NOV + 1, 0]:
            want = next((i + 1 for i, x in enumerate(ts) if x >= t), hi + 1)
            assert compute.first_id_at(conn, t, lo, hi) == want, t


def test_a_clock_stepped_back_is_reported(tmp_path, monkeypatch):
    e_ = open_state(f"sqlite:///{tmp_path}/clock.db")
    try:
        for t in (sh(2026, 11, 10), sh(2026, 11, 20), sh(2026, 11, 20) - 60,
                  sh(2026, 11, 25)):
            append_at(e_, monkeypatch, t, [e("created", size=1)])
        d = compute.compute(e_, node_id="b1", role="bureau", month="2026-11",
                            now=sh(2026, 12, 2))
        assert d["log"]["clock_went_back"] == 1
        assert section(d, "exchange")["total"]["packages_out"] == 4
    finally:
        e_.dispose()


def test_empty_log(tmp_path):
    e_ = open_state(f"sqlite:///{tmp_path}/empty.db")
    try:
        d = compute.compute(e_, node_id="b1", role="bureau", month="2026-11",
                            intervals={"people": DAY}, now=sh(2026, 12, 2))
        assert d["log"] == {"first_id": None, "last_id": None, "rows": 0,
                            "clock_went_back": 0}
        assert section(d, "exchange")["total"]["packages_out"] == 0
        # a node whose log is empty had not begun: nothing was due from it yet
        assert by(section(d, "freshness"), "resource", "people")["compliance_pct"] is None
        json.dumps(d)  # JSON-able
    finally:
        e_.dispose()


def test_the_log_still_verifies(eng):
    with eng.connect() as conn:
        assert exlog.verify(conn).ok
        assert conn.execute(text("SELECT count(*) FROM exchange_log")).scalar() == 27


def test_interval_of():
    assert compute.interval_of("2h", "daily") == 7200
    assert compute.interval_of(None, "每日") == DAY
    assert compute.interval_of(None, "weekly") == 7 * DAY
    assert compute.interval_of(None, "实时") is None
    assert compute.interval_of(None, None) is None


def test_a_node_begun_mid_month_is_measured_from_its_start(tmp_path, monkeypatch):
    """A node whose exchange log begins on Nov 20 was not late before it existed: it is
    measured from then, its first update due one interval later."""
    e_ = open_state(f"sqlite:///{tmp_path}/new.db")
    try:
        begun = sh(2026, 11, 20, 9)
        append_at(e_, monkeypatch, begun, [e("created", kind="gconf", resource="")])
        append_at(e_, monkeypatch, begun + 3600, [e("created")])  # first update after 1 h
        append_at(e_, monkeypatch, begun + 3600 + 5 * DAY, [e("created")])  # then late
        d = compute.compute(e_, node_id="b1", role="bureau", month="2026-11",
                            intervals={"people": DAY, "births": DAY}, now=sh(2026, 12, 2))
        fr = section(d, "freshness")
        p = by(fr, "resource", "people")
        span = DEC_FIRST - begun
        uncovered = 4 * DAY + (DEC_FIRST - (begun + 3600 + 6 * DAY))
        assert p["late"] == 2
        assert p["compliance_pct"] == round(100 * (1 - uncovered / span), 2)
        # a resource never updated: due one day after the start, late from then on
        b = by(fr, "resource", "births")
        assert b["compliance_pct"] == round(100 * DAY / span, 2) and b["late"] == 1
    finally:
        e_.dispose()


def test_a_step_taken_after_its_deadline_is_overdue_after_the_decision(tmp_path):
    """The provider answered two days after its deadline; the request was granted and
    its deadline cleared since: the ledger still counts it overdue, from the step's own
    deadline kept in the history. A correction answered after its due, too."""
    import json as _json

    e_ = open_state(f"sqlite:///{tmp_path}/s.db")
    try:
        late = {"history": [
            {"at": sh(2026, 11, 3), "step": "review", "decision": "approved",
             "due": sh(2026, 11, 4)},
            {"at": sh(2026, 11, 12), "step": "provider", "decision": "approved",
             "due": sh(2026, 11, 10)}]}
        ok_ = {"history": [{"at": sh(2026, 11, 3), "step": "review", "decision": "approved",
                            "due": sh(2026, 11, 4)}]}
        with e_.begin() as conn:
            conn.execute(insert(access_requests), [
                {"id": rid, "resource": "people", "consumer": "b2", "provider": "b1",
                 "service": "query", "status": "granted", "due": None, "overdue": False,
                 "created": sh(2026, 11, 2), "updated": sh(2026, 11, 12),
                 "doc": _json.dumps(doc)} for rid, doc in (("late", late), ("ok", ok_))])
            conn.execute(insert(corrections), [
                {"id": "c-late", "resource": "people", "consumer": "b2", "owner": "b1",
                 "status": "accepted", "due": sh(2026, 11, 9), "overdue": False,
                 "created": sh(2026, 11, 2), "updated": sh(2026, 11, 12),
                 "doc": _json.dumps({"history": [{"at": sh(2026, 11, 12),
                                                  "decision": "accepted"}]})}])
        d = compute.compute(e_, node_id="center", role="center", month="2026-11",
                            now=sh(2026, 12, 2))
        r = section(d, "requests")["total"]
        assert (r["received"], r["in_time"], r["overdue"]) == (2, 1, 1)
        c = section(d, "corrections")["total"]
        assert (c["received"], c["in_time"], c["overdue"]) == (1, 0, 1)
    finally:
        e_.dispose()
