"""The monthly ledger's figures (台账, 按月统计), computed from the exchange log and the
service tables of the state DB, so that they reconcile with ``exnode log``.

Which log rows belong to a month: those with ``start <= ts < end``, the month's bounds
in the node's time zone (``access.timezone``). The exchange log has no index on ``ts``,
but its ids are given in append order and ``ts`` is taken after the log's head is
locked, so ``ts`` never decreases along the ids unless the wall clock is stepped back.
The month's id range is therefore found by bisection over the primary key (some 25
point reads for 10M rows), and every query reads only that range, still filtered by
``ts``. A clock stepped back inside the month is detected and reported
(``log.clock_went_back``); rows it put on the wrong side of a month boundary are the one
thing this does not see (a full scan would).

Counting rules (each figure is a COUNT or a SUM(size) of the month's log rows, grouped by
resource, by peer and by kind):

- packages out, bytes out: rows with event ``created`` (a package this node issued, one
  row per package; ``size`` is its bytes on the wire);
- packages in, bytes in: event ``applied`` (a package received and applied here;
  duplicates and refusals are not counted);
- relayed, bytes relayed (the center): event ``relayed`` (peer ``SRC>DST``; by peer the
  row counts for SRC), refused: event ``refused``, expired: event ``expired``;
- queries: event ``query``; kind ``query-req`` is a page this node answered (``size`` =
  rows; a status other than "N rows" is a refusal), kind ``query-page`` a page it
  received (``size`` = rows);
- verifications: event ``verify`` (at the holder; ``size`` = records; a status other than
  "N records, M found" is a refusal);
- zero-update reports (零更新上报): packages of kind ``zero``, ``created`` (sent) and
  ``applied`` (received);
- rows in, rows out: event ``sync`` (kind ``rows``; the sync service logs one per
  ``rows`` package, ``size`` = its rows, inserts, updates and deletes together): rows
  out = SUM(size) of those whose status ends in "rows sent" (a package this node
  queued: captured, an initial load or a repair, and at the center each package
  forwarded to a subscriber, by peer the subscriber), rows in = SUM(size) of those whose
  status ends in "applied" (a package received and applied here, by peer its source;
  all its rows, also those refused or set aside, which its status and reason count).

From the service tables: access requests (``access_requests``) and corrections
(``corrections``) filed in the month, with their state as of the month's end (or now, for
the current month); the quarantine's rows set aside in the month; and freshness
compliance from the times of the ``rows`` and ``zero`` packages of each resource against
its expected interval (``resources.X.freshness``, else the catalog's
``update_frequency``).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, column, func, select, table

from . import months

V = 1

LOG = table("exchange_log", column("id"), column("ts"), column("pkg_id"), column("event"),
            column("peer"), column("resource"), column("kind"), column("size"),
            column("status"))
ACCESS = table("access_requests", column("id"), column("resource"), column("consumer"),
               column("provider"), column("status"), column("due"), column("created"),
               column("doc"))
CORRECTIONS = table("corrections", column("id"), column("resource"), column("consumer"),
                    column("owner"), column("status"), column("due"), column("created"),
                    column("doc"))
QUARANTINE = table("quarantine", column("id"), column("resource"), column("src"),
                   column("stage"), column("status"), column("created"))

COUNTED_EVENTS = ("created", "applied", "relayed", "refused", "expired", "query", "verify",
                  "sync")
UPDATE_KINDS = ("rows", "zero")
QUERY_REQ, QUERY_PAGE = "query-req", "query-page"
ACCESS_KIND, CORRECTION_KIND = "access-req", "correction"
OPEN_ACCESS = ("review", "provider", "sent")

# catalog update_frequency (更新周期) words -> seconds
FREQUENCIES: dict[str, float] = {
    "hourly": 3600, "每小时": 3600, "daily": 86400, "每日": 86400, "每天": 86400, "日": 86400,
    "weekly": 7 * 86400, "每周": 7 * 86400, "周": 7 * 86400,
    "monthly": 31 * 86400, "每月": 31 * 86400, "月": 31 * 86400,
    "quarterly": 92 * 86400, "每季度": 92 * 86400, "季度": 92 * 86400,
    "yearly": 366 * 86400, "annually": 366 * 86400, "每年": 366 * 86400, "年": 366 * 86400,
}


def _col(name: str, title: str, zh: str, note: str = "", unit: str = "") -> dict[str, str]:
    d = {"name": name, "title": title, "title_zh": zh}
    if note:
        d["note"] = note
    if unit:
        d["unit"] = unit
    return d


# the sync service's log entries of its rows packages (plugins/builtin/sync/rowlog.py;
# a service does not import another, so its markers are repeated here)
SYNC_EVENT, SYNC_KIND = "sync", "rows"
ROWS_SENT, ROWS_APPLIED = "% rows sent", "% applied"  # LIKE patterns of their status
ROWS_IN_NOTE = "SUM(size) of event 'sync' whose status ends in 'applied'"
ROWS_OUT_NOTE = "SUM(size) of event 'sync' whose status ends in 'rows sent'"

SECTIONS: list[dict[str, Any]] = [
    {"id": "exchange", "title": "Packages and bytes", "title_zh": "交换数据包与字节",
     "chart": ["packages_in", "packages_out"],
     "columns": [
         _col("packages_in", "packages in", "接收包数", "log event 'applied'"),
         _col("bytes_in", "bytes in", "接收字节", "SUM(size) of 'applied'", "bytes"),
         _col("packages_out", "packages out", "发出包数", "log event 'created'"),
         _col("bytes_out", "bytes out", "发出字节", "SUM(size) of 'created'", "bytes"),
         _col("rows_in", "rows in", "接收行数", ROWS_IN_NOTE),
         _col("rows_out", "rows out", "发出行数", ROWS_OUT_NOTE),
         _col("relayed", "relayed", "中转包数", "log event 'relayed' (by peer: the sender)"),
         _col("bytes_relayed", "bytes relayed", "中转字节", "SUM(size) of 'relayed'", "bytes"),
         _col("refused", "refused", "拒收", "log event 'refused'"),
         _col("expired", "expired", "过期未送达", "log event 'expired'"),
     ]},
    {"id": "queries", "title": "Queries", "title_zh": "数据查询",
     "chart": ["rows_answered", "rows_received"],
     "columns": [
         _col("pages_answered", "pages answered", "应答页数", "event 'query', kind query-req"),
         _col("rows_answered", "rows answered", "应答行数", "SUM(size) of those"),
         _col("refused", "refused", "拒绝", "query-req rows whose status is a refusal"),
         _col("pages_received", "pages received", "接收页数", "event 'query', kind query-page"),
         _col("rows_received", "rows received", "接收行数", "SUM(size) of those"),
     ]},
    {"id": "verifications", "title": "Verifications", "title_zh": "数据核验",
     "chart": ["requests", "records"],
     "columns": [
         _col("requests", "requests answered", "核验请求", "event 'verify' (at the holder)"),
         _col("records", "records checked", "核验记录", "SUM(size) of those"),
         _col("refused", "refused", "拒绝", "'verify' rows whose status is a refusal"),
     ]},
    {"id": "requests", "title": "Access requests", "title_zh": "共享申请",
     "chart": ["received", "in_time", "overdue"],
     "columns": [
         _col("received", "received", "收到申请", "filed in the month by another node"),
         _col("in_time", "answered in time", "按时答复", "decided, no step after its "
              "deadline"),
         _col("overdue", "overdue", "超期", "flagged 'overdue' here, or open past due"),
         _col("pending", "pending", "办理中", "open, not yet due"),
         _col("granted", "granted", "同意"),
         _col("refused", "refused", "不同意"),
         _col("filed", "filed by this node", "本节点申请"),
     ]},
    {"id": "corrections", "title": "Corrections", "title_zh": "校核纠错",
     "chart": ["received", "in_time", "overdue"],
     "columns": [
         _col("received", "received", "收到纠错", "filed in the month by another node"),
         _col("in_time", "answered in time", "按时答复", "accepted or rejected, never overdue"),
         _col("overdue", "overdue", "超期", "flagged 'overdue' here, or open past due"),
         _col("pending", "open", "办理中", "open, not yet due"),
         _col("accepted", "accepted", "采纳"),
         _col("rejected", "rejected", "驳回"),
         _col("filed", "filed by this node", "本节点提交"),
     ]},
    {"id": "zero_updates", "title": "Zero-update reports", "title_zh": "零更新上报",
     "chart": ["sent", "received"],
     "columns": [
         _col("sent", "sent", "上报", "kind 'zero', event 'created'"),
         _col("received", "received", "收到", "kind 'zero', event 'applied'"),
     ]},
    {"id": "quarantine", "title": "Quarantined rows", "title_zh": "隔离记录",
     "chart": ["quarantined", "open"],
     "columns": [
         _col("quarantined", "rows quarantined", "隔离行数", "set aside in the month"),
         _col("open", "still open", "未处理"),
         _col("retried", "retried", "已重试"),
         _col("dropped", "dropped", "已丢弃"),
         _col("superseded", "superseded", "已被后续更新取代"),
     ]},
    {"id": "freshness", "title": "Freshness compliance", "title_zh": "更新及时率",
     "chart": ["compliance_pct"],
     "columns": [
         _col("interval_s", "expected interval", "更新周期", "resources.X.freshness, else "
              "the catalog's update_frequency", "s"),
         _col("updates", "updates", "更新包数", "kind 'rows', events created/applied"),
         _col("zero_reports", "zero reports", "零更新上报", "kind 'zero', created/applied"),
         _col("late", "late periods", "超期次数", "gaps longer than the interval"),
         _col("longest_gap_s", "longest gap", "最长间隔", "", "s"),
         _col("compliance_pct", "compliance", "及时率",
              "share of the month's time within one interval of an update or zero report",
              "%"),
     ]},
]

RULES = [
    "month: log rows with from <= ts < to (the month's bounds in the node's time zone); "
    "exnode log --json --since FROM_LOCAL --limit 10000000, less the rows with ts >= to, "
    "lists the same rows",
    "packages/bytes out: event 'created'; in: event 'applied'; relayed: 'relayed' "
    "(peer SRC>DST, counted for SRC by peer); refused: 'refused'; expired: 'expired'",
    "queries: event 'query' (query-req: pages answered here, query-page: pages received; "
    "size = rows); verifications: event 'verify' (size = records)",
    "zero-update reports: kind 'zero', event 'created' (sent) / 'applied' (received)",
    "access requests and corrections: filed in the month (their 'created'), state as of "
    "the month's end; overdue = flagged 'overdue' in this node's log, or open past due",
    "quarantine: rows set aside in the month (created), their status now",
    "freshness: share of the month (up to now) within one expected interval after a "
    "'rows' or 'zero' package of the resource (created or applied here); from the "
    "month's start, or from the node's first log entry if it began later (the first "
    "update due one interval after it)",
    "rows out / in: event 'sync' (kind 'rows', one per sync package, size = its rows), "
    "SUM(size) of those whose status ends in 'rows sent' (queued here, by peer the "
    "destination) / 'applied' (received and applied here, by peer the source)",
]


def interval_of(freshness: str | None, update_frequency: str | None) -> float | None:
    """A resource's expected update interval: its freshness (a duration), else the
    catalog's update frequency (a word such as daily/每日, or a duration)."""
    from exnode.node.base.config import parse_duration

    for text in (freshness, update_frequency):
        if not text:
            continue
        t = str(text).strip().lower()
        if t in FREQUENCIES:
            return FREQUENCIES[t]
        try:
            return parse_duration(t)
        except Exception:
            continue
    return None


# --- the log's month range -------------------------------------------------------------------

def _first_row_from(conn: Connection, i: int) -> tuple[int, float] | None:
    r = conn.execute(select(LOG.c.id, LOG.c.ts).where(LOG.c.id >= i)
                     .order_by(LOG.c.id).limit(1)).first()
    return (int(r[0]), float(r[1])) if r is not None else None


def first_id_at(conn: Connection, t: float, lo: int, hi: int) -> int:
    """The smallest id in ``[lo, hi]`` whose row has ``ts >= t`` (``hi + 1`` when none),
    by bisection over the primary key (``ts`` grows with the id)."""
    a, b = lo, hi + 1
    while a < b:
        mid = (a + b) // 2
        r = _first_row_from(conn, mid)
        if r is None or r[0] > hi:
            b = mid
        elif r[1] >= t:
            b = mid
        else:
            a = r[0] + 1
    return a


class LogRange:
    """The ids ``[first, stop)`` of the log rows of ``[start, end)``."""

    def __init__(self, conn: Connection, start: float, end: float) -> None:
        lo, hi = conn.execute(select(func.min(LOG.c.id), func.max(LOG.c.id))).one()
        self.lo, self.hi = (int(lo), int(hi)) if lo is not None else (1, 0)
        self.first = first_id_at(conn, start, self.lo, self.hi)
        self.stop = first_id_at(conn, end, self.first, self.hi)
        self.start, self.end = start, end

    def at(self, conn: Connection, t: float) -> int:
        return first_id_at(conn, t, self.lo, self.hi)

    def where(self, first: int | None = None, stop: int | None = None,
              start: float | None = None, end: float | None = None) -> Any:
        return and_(LOG.c.id >= (self.first if first is None else first),
                    LOG.c.id < (self.stop if stop is None else stop),
                    LOG.c.ts >= (self.start if start is None else start),
                    LOG.c.ts < (self.end if end is None else end))


# --- the computation ---------------------------------------------------------------------------

class _Groups:
    """Figures summed by resource, by peer and (for some sections) by kind."""

    def __init__(self, columns: Iterable[str]) -> None:
        self.columns = list(columns)
        self.by: dict[str, dict[str, dict[str, Any]]] = {"resource": {}, "peer": {},
                                                         "kind": {}}

    def add(self, group: str, key: str, col: str, n: float) -> None:
        row = self.by[group].setdefault(key, {c: 0 for c in self.columns})
        row[col] = row.get(col, 0) + n

    def rows(self, group: str, nulls: Collection[str] = ()) -> list[dict[str, Any]]:
        out = []
        for key in sorted(self.by[group]):
            row = {group: key, **self.by[group][key]}
            for c in nulls:
                row[c] = None
            out.append(row)
        return out


def _total(rows: list[dict[str, Any]], columns: list[str],
           nulls: Collection[str] = ()) -> dict[str, Any]:
    return {c: None if c in nulls else sum(r.get(c) or 0 for r in rows) for c in columns}


def _cols(sid: str) -> list[str]:
    return [c["name"] for c in next(s for s in SECTIONS if s["id"] == sid)["columns"]]


def compute(engine: Engine, *, node_id: str, role: str, month: str,
            tz: str = months.DEFAULT_TZ, intervals: Mapping[str, float | None] | None = None,
            have: Collection[str] = ("access", "corrections", "sync"),
            now: float | None = None) -> dict[str, Any]:
    """The ledger of ``month`` at node ``node_id``, read as of one moment (a snapshot that
    does not hold the daemon's writes off). ``intervals``: resource -> expected update
    interval (s) for freshness; ``have``: the service tables present (access,
    corrections, sync)."""
    start, end = months.bounds(month, tz)
    now = time.time() if now is None else now
    as_of = min(end, now)
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn = conn.execution_options(exnode_snapshot=True)  # a deferred BEGIN (WAL)
        else:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            rng = LogRange(conn, start, end)
            stats = _log_stats(conn, rng)
            clock = _clock_steps(conn, rng)
            sections = {"exchange": _exchange(conn, rng), "queries": _queries(conn, rng),
                        "verifications": _verifications(conn, rng),
                        "zero_updates": _zero(conn, rng)}
            flagged = _flagged(conn, rng, as_of) if {"access", "corrections"} & set(have) \
                else set()
            sections["requests"] = _requests(conn, node_id, start, end, as_of, flagged) \
                if "access" in have else None
            sections["corrections"] = _corrections(conn, node_id, start, end, as_of, flagged) \
                if "corrections" in have else None
            sections["quarantine"] = _quarantine(conn, start, end) if "sync" in have else None
            sections["freshness"] = _freshness(conn, rng, dict(intervals or {}), as_of)
    out = []
    for spec in SECTIONS:
        data = sections[spec["id"]]
        sec = {k: spec[k] for k in ("id", "title", "title_zh", "columns", "chart")}
        if data is None:
            sec.update({"available": False, "by_resource": [], "by_peer": [],
                        "total": {c["name"]: None for c in spec["columns"]},
                        "note": "the service is not loaded on this node"})
        else:
            sec.update({"available": True, **data})
        out.append(sec)
    return {
        "v": V, "node": node_id, "role": role, "month": month, "timezone": tz,
        "from": start, "to": end, "from_local": months.local_iso(start, tz),
        "to_local": months.local_iso(end, tz), "as_of": as_of, "complete": now >= end,
        "generated": now,
        "log": {"first_id": stats["first"], "last_id": stats["last"], "rows": stats["rows"],
                "clock_went_back": clock},
        "rules": RULES, "sections": out,
    }


def _log_stats(conn: Connection, rng: LogRange) -> dict[str, Any]:
    n, a, b = conn.execute(select(func.count(), func.min(LOG.c.id), func.max(LOG.c.id))
                           .where(rng.where())).one()
    return {"rows": int(n or 0), "first": a, "last": b}


def _clock_steps(conn: Connection, rng: LogRange) -> int:
    """How many rows of the month (and the one on either side) have an earlier ``ts``
    than the row before them: the wall clock went back."""
    lo, hi = max(rng.lo, rng.first - 1), min(rng.hi, rng.stop)
    prev = func.lag(LOG.c.ts).over(order_by=LOG.c.id).label("prev")
    sub = select(LOG.c.ts, prev).where(LOG.c.id >= lo, LOG.c.id <= hi).subquery()
    return int(conn.execute(select(func.count()).select_from(sub)
                            .where(sub.c.ts < sub.c.prev)).scalar() or 0)


def _refusal_flag() -> Any:
    return case((and_(LOG.c.event == "query", LOG.c.kind == QUERY_REQ,
                      ~LOG.c.status.like("% rows")), 1),
                (and_(LOG.c.event == "verify", ~LOG.c.status.like("% found")), 1), else_=0)


def _grouped(conn: Connection, rng: LogRange, events: Iterable[str],
             kinds: Iterable[str] | None = None) -> list[Any]:
    flag = _refusal_flag().label("refusal")
    q = (select(LOG.c.resource, LOG.c.peer, LOG.c.kind, LOG.c.event, flag,
                func.count().label("n"), func.coalesce(func.sum(LOG.c.size), 0).label("size"))
         .where(rng.where(), LOG.c.event.in_(list(events)))
         .group_by(LOG.c.resource, LOG.c.peer, LOG.c.kind, LOG.c.event, flag))
    if kinds is not None:
        q = q.where(LOG.c.kind.in_(list(kinds)))
    return list(conn.execute(q))


def _sender(peer: str) -> str:
    return peer.split(">", 1)[0] if ">" in peer else peer


def _section(g: _Groups, kinds: bool = False, nulls: Collection[str] = ()) -> dict[str, Any]:
    out = {"by_resource": g.rows("resource", nulls), "by_peer": g.rows("peer", nulls)}
    if kinds:
        out["by_kind"] = g.rows("kind", nulls)
    out["total"] = _total(out["by_resource"], g.columns, nulls)
    return out


def _exchange(conn: Connection, rng: LogRange) -> dict[str, Any]:
    cols = _cols("exchange")
    g = _Groups(cols)
    what = {"applied": ("packages_in", "bytes_in"), "created": ("packages_out", "bytes_out"),
            "relayed": ("relayed", "bytes_relayed"), "refused": ("refused", None),
            "expired": ("expired", None)}
    for r in _grouped(conn, rng, what):
        count_col, bytes_col = what[r.event]
        peer = _sender(r.peer) if r.event == "relayed" else r.peer
        for group, key in (("resource", r.resource), ("peer", peer), ("kind", r.kind)):
            g.add(group, key, count_col, int(r.n))
            if bytes_col:
                g.add(group, key, bytes_col, int(r.size))
    for r in _sync_rows(conn, rng):
        col = {"out": "rows_out", "in": "rows_in"}.get(r.way)
        if col is None:
            continue
        for group, key in (("resource", r.resource), ("peer", r.peer), ("kind", r.kind)):
            g.add(group, key, col, int(r.size))
    return _section(g, kinds=True)


def _sync_rows(conn: Connection, rng: LogRange) -> list[Any]:
    """SUM(size) of the month's ``sync`` rows, by resource, peer and way (out, in)."""
    way = case((LOG.c.status.like(ROWS_SENT), "out"), (LOG.c.status.like(ROWS_APPLIED), "in"),
               else_="").label("way")
    q = (select(LOG.c.resource, LOG.c.peer, LOG.c.kind, way,
                func.coalesce(func.sum(LOG.c.size), 0).label("size"))
         .where(rng.where(), LOG.c.event == SYNC_EVENT, LOG.c.kind == SYNC_KIND)
         .group_by(LOG.c.resource, LOG.c.peer, LOG.c.kind, way))
    return list(conn.execute(q))


def _queries(conn: Connection, rng: LogRange) -> dict[str, Any]:
    g = _Groups(_cols("queries"))
    for r in _grouped(conn, rng, ["query"], [QUERY_REQ, QUERY_PAGE]):
        for group, key in (("resource", r.resource), ("peer", r.peer)):
            if r.kind == QUERY_REQ:
                g.add(group, key, "pages_answered", int(r.n))
                g.add(group, key, "rows_answered", int(r.size))
                if r.refusal:
                    g.add(group, key, "refused", int(r.n))
            else:
                g.add(group, key, "pages_received", int(r.n))
                g.add(group, key, "rows_received", int(r.size))
    return _section(g)


def _verifications(conn: Connection, rng: LogRange) -> dict[str, Any]:
    g = _Groups(_cols("verifications"))
    for r in _grouped(conn, rng, ["verify"]):
        for group, key in (("resource", r.resource), ("peer", r.peer)):
            g.add(group, key, "requests", int(r.n))
            g.add(group, key, "records", int(r.size))
            if r.refusal:
                g.add(group, key, "refused", int(r.n))
    return _section(g)


def _zero(conn: Connection, rng: LogRange) -> dict[str, Any]:
    g = _Groups(_cols("zero_updates"))
    for r in _grouped(conn, rng, ["created", "applied"], ["zero"]):
        col = "sent" if r.event == "created" else "received"
        for group, key in (("resource", r.resource), ("peer", r.peer)):
            g.add(group, key, col, int(r.n))
    return _section(g)


def _flagged(conn: Connection, rng: LogRange, as_of: float) -> set[str]:
    """Ids of requests and corrections flagged 'overdue' in this log from the month's
    start up to ``as_of`` (a request of the month is flagged after it was filed)."""
    stop = rng.at(conn, as_of)
    q = (select(LOG.c.pkg_id).distinct()
         .where(rng.where(stop=stop, end=as_of), LOG.c.event == "overdue",
                LOG.c.kind.in_([ACCESS_KIND, CORRECTION_KIND])))
    return {str(r[0]) for r in conn.execute(q)}


def _answered_late(doc: str | None, due: float | None) -> bool:
    """A decided request or correction whose history shows a step taken after its
    deadline: the step's own ``due`` (access requests keep it with each step), or the
    item's ``due`` for the decision (a correction's one step)."""
    try:
        hist = json.loads(doc or "{}").get("history") or []
    except (ValueError, AttributeError):
        return False
    for h in hist:
        if not isinstance(h, dict) or not isinstance(h.get("at"), (int, float)):
            continue
        step_due = h.get("due", due)
        if isinstance(step_due, (int, float)) and h["at"] > step_due:
            return True
    return False


def _cases(conn: Connection, t: Any, party: str, node_id: str, start: float, end: float,
           as_of: float, flagged: set[str], done: Mapping[str, str], open_: Collection[str],
           cols: list[str]) -> dict[str, Any]:
    """Requests or corrections filed in the month: received (by another node) split into
    in time / overdue / pending, the decisions, and those this node filed."""
    g = _Groups(cols)
    rows = conn.execute(select(t.c.id, t.c.resource, t.c.consumer, t.c[party], t.c.status,
                               t.c.due, t.c.doc).where(t.c.created >= start,
                                                       t.c.created < min(end, as_of)))
    for r in rows:
        keys = (("resource", r.resource), ("peer", r.consumer if r.consumer != node_id
                                           else (r[3] or "?")))
        if r.consumer == node_id:
            for group, key in keys:
                g.add(group, key, "filed", 1)
            continue
        is_open = r.status in open_
        late = r.id in flagged or (is_open and r.due is not None and r.due <= as_of) \
            or (not is_open and _answered_late(r.doc, r.due))
        state = "overdue" if late else "pending" if is_open else "in_time"
        for group, key in keys:
            g.add(group, key, "received", 1)
            g.add(group, key, state, 1)
            if r.status in done:
                g.add(group, key, done[r.status], 1)
    return _section(g)


def _requests(conn: Connection, node_id: str, start: float, end: float, as_of: float,
              flagged: set[str]) -> dict[str, Any]:
    return _cases(conn, ACCESS, "provider", node_id, start, end, as_of, flagged,
                  {"granted": "granted", "refused": "refused"}, OPEN_ACCESS,
                  _cols("requests"))


def _corrections(conn: Connection, node_id: str, start: float, end: float, as_of: float,
                 flagged: set[str]) -> dict[str, Any]:
    return _cases(conn, CORRECTIONS, "owner", node_id, start, end, as_of, flagged,
                  {"accepted": "accepted", "rejected": "rejected"}, ("open",),
                  _cols("corrections"))


def _quarantine(conn: Connection, start: float, end: float) -> dict[str, Any]:
    g = _Groups(_cols("quarantine"))
    q = (select(QUARANTINE.c.resource, QUARANTINE.c.src, QUARANTINE.c.status, func.count())
         .where(QUARANTINE.c.created >= start, QUARANTINE.c.created < end)
         .group_by(QUARANTINE.c.resource, QUARANTINE.c.src, QUARANTINE.c.status))
    for res, src, status, n in conn.execute(q):
        for group, key in (("resource", res), ("peer", src)):
            g.add(group, key, "quarantined", int(n))
            if status in ("open", "retried", "dropped", "superseded"):
                g.add(group, key, status, int(n))
    return _section(g)


# --- freshness ---------------------------------------------------------------------------------

def _freshness(conn: Connection, rng: LogRange, intervals: dict[str, float | None],
               as_of: float) -> dict[str, Any]:
    """For each resource (and resource and peer): the share of ``[start, as_of)`` that is
    within one expected interval after an update (a ``rows`` or ``zero`` package created
    or applied here), the late periods and the longest gap."""
    known = {r: float(i) for r, i in intervals.items() if i and i > 0}
    by_resource: list[dict[str, Any]] = []
    by_peer: list[dict[str, Any]] = []
    # counts of the month
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for r in _grouped(conn, rng, ["created", "applied"], UPDATE_KINDS):
        c = counts.setdefault((r.resource, r.peer), {"updates": 0, "zero_reports": 0})
        c["updates" if r.kind == "rows" else "zero_reports"] += int(r.n)
    resources = sorted(set(intervals) | {res for res, _p in counts})
    if known:
        lookback = max(known.values())
        first = rng.at(conn, rng.start - lookback)
        win = (first, rng.at(conn, as_of), rng.start - lookback, as_of)
        res_gaps = _gaps(conn, win, known, by_peer=False)
        peer_gaps = _gaps(conn, win, known, by_peer=True)
    else:
        res_gaps = peer_gaps = {}
    # a node's expectations begin when its exchange log does (a node set up in the middle
    # of the month was not late before it existed); its first update is due one interval
    # after that
    begun = conn.execute(select(LOG.c.ts).order_by(LOG.c.id).limit(1)).scalar()
    begun = float(begun) if begun is not None else as_of
    measured_from = max(rng.start, begun)
    span = max(0.0, as_of - measured_from)

    def row(key: dict[str, str], interval: float | None, n: dict[str, int],
            gaps: dict[str, Any] | None) -> dict[str, Any]:
        out: dict[str, Any] = {**key, "interval_s": interval, "updates": n.get("updates", 0),
                               "zero_reports": n.get("zero_reports", 0)}
        if interval is None or span <= 0:
            out.update({"late": None, "longest_gap_s": None, "compliance_pct": None})
            return out
        late, longest, uncovered = _coverage(gaps, interval, measured_from, as_of, begun)
        out.update({"late": late, "longest_gap_s": round(longest, 1),
                    "compliance_pct": round(100.0 * (1 - uncovered / span), 2)})
        return out

    for res in resources:
        n = {"updates": 0, "zero_reports": 0}
        for (r, _p), c in counts.items():
            if r == res:
                n["updates"] += c["updates"]
                n["zero_reports"] += c["zero_reports"]
        by_resource.append(row({"resource": res}, known.get(res), n, res_gaps.get(res)))
    peers = sorted({(r, p) for r, p in counts} | {k for k in peer_gaps})
    for res, peer in peers:
        by_peer.append(row({"peer": peer, "resource": res}, known.get(res),
                           counts.get((res, peer), {}), peer_gaps.get((res, peer))))
    rated = [r["compliance_pct"] for r in by_resource if r["compliance_pct"] is not None]
    total = {"interval_s": None, "updates": sum(r["updates"] for r in by_resource),
             "zero_reports": sum(r["zero_reports"] for r in by_resource),
             "late": sum(r["late"] or 0 for r in by_resource),
             "longest_gap_s": max((r["longest_gap_s"] for r in by_resource
                                   if r["longest_gap_s"] is not None), default=None),
             "compliance_pct": round(sum(rated) / len(rated), 2) if rated else None}
    return {"by_resource": by_resource, "by_peer": by_peer, "total": total,
            "note": "total compliance: the mean over the resources that have an interval"}


def _gaps(conn: Connection, win: tuple[int, int, float, float], known: dict[str, float],
          by_peer: bool) -> dict[Any, dict[str, Any]]:
    """Per resource (or (resource, peer)): the first and last update time in the window
    and the gaps between successive updates longer than the smallest interval."""
    first, stop, t0, t1 = win
    part = [LOG.c.resource, LOG.c.peer] if by_peer else [LOG.c.resource]
    base = and_(LOG.c.id >= first, LOG.c.id < stop, LOG.c.ts >= t0, LOG.c.ts < t1,
                LOG.c.event.in_(["created", "applied"]), LOG.c.kind.in_(UPDATE_KINDS),
                LOG.c.resource.in_(list(known)))
    out: dict[Any, dict[str, Any]] = {}

    def key(r: Any) -> Any:
        return (r.resource, r.peer) if by_peer else r.resource

    for r in conn.execute(select(*part, func.min(LOG.c.ts).label("a"),
                                 func.max(LOG.c.ts).label("b")).where(base).group_by(*part)):
        out[key(r)] = {"first": float(r.a), "last": float(r.b), "gaps": []}
    prev = func.lag(LOG.c.ts).over(partition_by=part, order_by=LOG.c.ts).label("prev")
    sub = select(*part, LOG.c.ts, prev).where(base).subquery()
    cols = [sub.c.resource, sub.c.peer] if by_peer else [sub.c.resource]
    smallest = min(known.values())
    for r in conn.execute(select(*cols, sub.c.ts, sub.c.prev)
                          .where(sub.c.prev.is_not(None), sub.c.ts - sub.c.prev > smallest)):
        k = key(r)
        if k in out:
            out[k]["gaps"].append((float(r.prev), float(r.ts)))
    return out


def _coverage(g: dict[str, Any] | None, interval: float, start: float,
              end: float, begun: float | None = None) -> tuple[int, float, float]:
    """(late periods, longest gap, uncovered seconds) of ``[start, end)`` when each
    update covers the ``interval`` after it; the node's start (``begun``, when its
    exchange log begins) covers the interval after it too, as if it were an update."""
    grace = begun + interval if begun is not None and begun >= start else start
    if g is None:
        uncovered = max(0.0, end - max(start, grace))
        return (1 if uncovered > 0 else 0), end - start, uncovered
    late, longest, uncovered = 0, 0.0, 0.0

    def hole(a: float, b: float) -> None:  # nothing covers [a, b)
        nonlocal late, uncovered
        a, b = max(a, start), min(b, end)
        if b > a:
            late += 1
            uncovered += b - a

    if g["first"] > start:
        hole(max(start, min(grace, g["first"])), g["first"])
        longest = max(longest, g["first"] - start)
    for p, t in g["gaps"]:
        longest = max(longest, t - p)
        if t - p > interval:
            hole(p + interval, t)
    longest = max(longest, end - g["last"])
    hole(g["last"] + interval, end)
    return late, longest, uncovered


def month_of(t: float, tz: str) -> str:
    d = dt.datetime.fromtimestamp(t, months.zone(tz))
    return months.month_text(d.year, d.month)


__all__ = ["LOG", "RULES", "SECTIONS", "compute", "first_id_at", "interval_of", "month_of"]
