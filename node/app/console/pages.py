"""The console's pages and actions. Each one names the permission it needs
(``policies/accounts.py``; deny unless granted), reads and acts through the control
API's own handlers, and writes every action (and every refused one) to the audit trail.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, tzinfo
from typing import Any

from aiohttp import web

from exnode.node.base.errors import ExnodeError, NotFound, UsageError
from exnode.plugins.builtin.ledger import months
from exnode.policies import accounts as acc

from .server import CONSOLE, Console, Denied, begin_session, blob_of, render

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def fmt_ts(t: Any, tz: tzinfo) -> str:
    if not t:
        return "-"
    try:
        return datetime.fromtimestamp(float(t), tz).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError):
        return "-"


def fmt_left(t: Any, lang: str = "zh") -> str:
    """The clock of a deadline: how long is left, or how long it is overdue."""
    if not t:
        return ""
    try:
        d = float(t) - time.time()
    except (TypeError, ValueError):
        return ""
    s = abs(d)
    days, hours, mins = int(s // 86400), int(s % 86400 // 3600), int(s % 3600 // 60)
    if lang == "zh":
        span = (f"{days}天" if days else "") + (f"{hours}小时" if hours or days else "") \
            + ("" if days else f"{mins}分")
        return ("剩余 " if d >= 0 else "超期 ") + span
    span = (f"{days}d " if days else "") + (f"{hours}h " if hours or days else "") \
        + ("" if days else f"{mins}m")
    return span.strip() + (" left" if d >= 0 else " overdue")


def fmt_bytes(n: Any) -> str:
    try:
        v = float(n)
    except (TypeError, ValueError):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return str(n)


def _console(request: web.Request) -> Console:
    return request.app[CONSOLE]  # type: ignore[return-value]


def _perm(request: web.Request, perm: str, seeing: bool = False) -> None:
    u = request.get("user")
    if not u or not acc.may(u["role"], perm):
        raise Denied("You are not allowed to see this page" if seeing
                     else "You are not allowed to do this")


def page(perm: str) -> Callable[[Handler], Handler]:
    """A page (GET) that needs ``perm``."""
    def wrap(fn: Handler) -> Handler:
        async def serve(request: web.Request) -> web.StreamResponse:
            _perm(request, perm, seeing=True)
            return await fn(request)
        serve.__name__ = fn.__name__
        return serve
    return wrap


def action(perm: str, what: str) -> Callable[[Handler], Handler]:
    """A form action (POST) that needs ``perm``: refused ones are audited too; done ones
    are audited by the route they call or here."""
    def wrap(fn: Handler) -> Handler:
        async def serve(request: web.Request) -> web.StreamResponse:
            c = _console(request)
            target = "/".join(request.match_info.values())[:200]
            try:
                _perm(request, perm)
            except Denied:
                await c.audit(request, what, target, "refused", f"needs {perm}")
                raise
            try:
                resp = await fn(request)
            except web.HTTPRedirection:  # done, and the answer is a redirect
                await c.audit(request, what, target)
                raise
            except ExnodeError as e:
                await c.audit(request, what, target, "failed", str(e)[:500])
                raise
            await c.audit(request, what, target)
            return resp
        serve.__name__ = fn.__name__
        return serve
    return wrap


async def _form(request: web.Request) -> dict[str, str]:
    data = await request.post()
    return {k: v for k, v in data.items() if isinstance(v, str)}


def _back(default: str, note: str = "") -> web.HTTPFound:
    to = default + (("&" if "?" in default else "?") + "note=" + note if note else "")
    return web.HTTPFound(to)


async def _maybe(c: Console, method: str, path: str, **kw: Any) -> Any:
    """A route's answer, or None when its plugin is not loaded here."""
    if not c.has(method, path):
        return None
    return await c.call(method, path, **kw)


# --- login ----------------------------------------------------------------------------------

async def login_form(request: web.Request) -> web.StreamResponse:
    if request.get("user"):
        raise web.HTTPFound("/")
    return render(request, "login.html", {"error": None})


async def login(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    f = await _form(request)
    try:
        user = await c.call("POST", "/console/login", {
            "name": f.get("name", "")[:64], "password": f.get("password", "")[:1024],
            "client": request.remote or ""})
    except ExnodeError as e:
        return render(request, "login.html", {"error": str(e)}, status=401)
    await begin_session(request, user)
    raise web.HTTPFound("/")


async def logout(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    if request.get("sid"):
        await c.call("POST", "/console/logout", {"sid": request["sid"]})
    from aiohttp_session import get_session

    (await get_session(request)).invalidate()
    raise web.HTTPFound("/login")


async def set_lang(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    f = await _form(request)
    u = request["user"]
    await c.call("POST", "/console/accounts/{name}/{action}",
                 {"lang": f.get("lang", ""), "actor": u["name"], "actor_role": u["role"],
                  "client": request.remote or ""},
                 params={"name": u["name"], "action": "lang"})
    to = f.get("back", "/")
    raise web.HTTPFound(to if to.startswith("/") and not to.startswith("//") else "/")


# --- overview ---------------------------------------------------------------------------------

def overview_data(st: dict[str, Any], cfg_every: float) -> dict[str, Any]:
    now = time.time()
    peers = {p["node_id"]: p for p in st.get("peers") or []}
    online_s = max(3 * cfg_every, 10.0)  # three missed health reports: offline
    members = []
    for m in st.get("members") or []:
        if m == st.get("node"):
            continue
        p = peers.get(m)
        last = p["last_contact"] if p else None
        members.append({"id": m, "last_contact": last,
                        "online": bool(last and now - last < online_s),
                        "rtt_ms": p.get("last_rtt_ms") if p else None})
    resources = []
    for r in st.get("resources") or []:
        seen = [n.get("last_current") for n in r.get("nodes") or [] if n.get("last_current")]
        resources.append({"resource": r["resource"], "stale": bool(r.get("stale")),
                          "error": r.get("error"), "last_current": max(seen) if seen else None})
    return {"members": members, "resources": resources,
            "online": sum(m["online"] for m in members),
            "outbox": st.get("outbox_pending", 0), "inbox": st.get("inbox_waiting", 0),
            "problems": st.get("problems") or [], "broker": st.get("broker") or {},
            "console": st.get("console") or {}}


@page("view:overview")
async def overview(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    st = await c.call("GET", "/status")
    data = overview_data(st, c.cfg.monitor.health_every_s)
    queued = await c.call("GET", "/outbox/backlog")
    for m in data["members"]:
        q = queued.get(m["id"]) or {}
        m["queued"], m["oldest"] = q.get("packages", 0), q.get("oldest")
    alerts = await _maybe(c, "GET", "/alerts") or []
    # only the overdue items: with a thousand members every one is a tracked item
    items = await _maybe(c, "GET", "/monitor/items", query={"overdue": "1"}) or []
    items.sort(key=lambda i: i.get("deadline") or float("inf"))
    members = sorted(data["members"], key=lambda m: (m["online"], -m["queued"], m["id"]))
    everyone = request.query.get("members") == "all"
    return render(request, "overview.html", {
        **data, "alerts": alerts, "items": items[:50], "status": st,
        "tracked": (st.get("monitor") or {}).get("tracked"),
        "shown_members": members if everyone else members[:MEMBERS_SHOWN],
        "more_members": 0 if everyone else max(0, len(members) - MEMBERS_SHOWN)})


MEMBERS_SHOWN = 100  # offline ones first; ?members=all shows every one


# --- catalog ----------------------------------------------------------------------------------

@page("view:catalog")
async def catalog(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    q = request.query.get("q", "").strip()[:200]
    if q:
        entries = await c.call("GET", "/catalog/search", query={"q": q})
    else:
        entries = await c.call("GET", "/catalog")
    return render(request, "catalog.html", {"q": q, "entries": entries[:500],
                                            "total": len(entries)})


@page("view:catalog")
async def resource(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    rid = request.match_info["rid"]
    query = {"version": request.query["version"]} if request.query.get("version") else {}
    entry = await c.call("GET", "/catalog/{resource}", params={"resource": rid}, query=query)
    sample, why = await _sample(c, rid)
    return render(request, "resource.html", {"e": entry, "sample": sample, "why": why})


SAMPLE_TTL_S = 300.0


async def _sample(c: Console, rid: str) -> tuple[Any, str | None]:
    """Five rows of ``rid`` through the query service (so with this node's grant: its
    fields, rows and masks, applied at the holder), kept five minutes: a sample is a
    query, logged and counted against the grant's rate and quota, and a page view should
    not spend them."""
    if not c.has("POST", "/query/page"):
        return None, None
    # the cache is keyed by this node's query grants in force now: a revoked, expired or
    # changed grant is a new key, so a kept sample never outlives the grant it came under
    grants = await _maybe(c, "GET", "/access/grants", query={"resource": rid}) or []
    key = rid + "|" + ",".join(sorted(
        f"{g['id']}:{g.get('granted_at')}" for g in grants
        if g.get("service") == "query" and g.get("grantee") == c.cfg.node.id))
    now = time.monotonic()
    hit = c.samples.get(key)
    if hit is not None and now - hit[0] < SAMPLE_TTL_S and "|" != key[-1]:
        return hit[1], hit[2]
    sample, why = None, None
    try:
        sample = await c.call("POST", "/query/page", {"resource": rid, "limit": 5,
                                                      "timeout": 10.0})
    except ExnodeError as e:
        why = str(e)
    except TimeoutError:
        why = "the holder did not answer within 10 s"
    if len(c.samples) >= 500:
        c.samples.clear()
    if sample is not None:  # a refusal is asked again next time (a grant may come)
        c.samples[key] = (now, sample, why)
    return sample, why


# --- access requests and grants -----------------------------------------------------------------

@page("view:access")
async def requests_page(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    st = request.query.get("status") or None
    rows = await c.call("GET", "/access/requests", query={"status": st} if st else {})
    return render(request, "requests.html", {"rows": rows, "now": time.time(),
                                             "status": st or ""})


@action("access:review", "access.review")
async def review(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    f = await _form(request)
    rid = request.match_info["id"]
    approve = f.get("decision") == "approve"
    if f.get("decision") not in ("approve", "reject"):
        raise UsageError("decision: approve or reject")
    step = f.get("step", "review")
    path = ("/access/requests/{id}/answer" if step == "answer"
            else "/access/requests/{id}/review")
    await c.call("POST", path, {"approve": approve, "reason": f.get("reason", "")[:500]},
                 params={"id": rid})
    raise _back("/requests", "Done")


@page("view:grants")
async def grants(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    rows = await c.call("GET", "/access/grants", query={"all": "1"} if request.query.get(
        "all") else {})
    return render(request, "grants.html", {"rows": rows, "now": time.time()})


@action("grants:manage", "grant.revoke")
async def revoke(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    f = await _form(request)
    await c.call("POST", "/access/grants/{id}/revoke", {"reason": f.get("reason", "")[:500]},
                 params={"id": request.match_info["id"]})
    raise _back("/grants", "Done")


# --- query and verification -----------------------------------------------------------------------

@page("query:run")
async def query_page(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    entries = await c.call("GET", "/catalog")
    return render(request, "query.html", {"entries": entries, "results": None,
                                          "q": request.query})


def _query_body(q: Any) -> tuple[dict[str, Any], int]:
    """The form as the query route's body (resource, fields, filters), and its limit."""
    rid = (q.get("resource") or "").strip()
    if not rid:
        raise UsageError("choose a resource")
    fields = [f.strip() for f in (q.get("fields") or "").split(",") if f.strip()] or None
    where = [w.strip() for w in (q.get("where") or "").splitlines() if w.strip()]
    try:
        limit = int(q.get("limit") or 0)
    except ValueError:
        raise UsageError("limit: a number") from None
    return {"resource": rid, "fields": fields, "where": where}, limit


@action("query:run", "query.download")
async def query_download(request: web.Request) -> web.StreamResponse:
    """The query as CSV (UTF-8 with BOM, for spreadsheet programs), page by page through
    the query service, streamed to the browser. The first page is asked for before the
    answer starts, so a refusal is still a page with one line."""
    c = _console(request)
    body, limit = _query_body(await _form(request))
    left = limit or None

    async def page_after(after: Any) -> Any:
        size = min(20_000, left) if left else 20_000
        return await c.call("POST", "/query/page", {**body, "after": after, "limit": size,
                                                    "timeout": 120.0})

    pg = await page_after(None)
    resp = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="{body["resource"]}.csv"'})
    await resp.prepare(request)
    await resp.write(b"\xef\xbb\xbf")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(pg["fields"])
    while True:
        for row in pg["rows"]:
            w.writerow(["" if v is None else v for v in row])
        await resp.write(buf.getvalue().encode())
        buf.seek(0)
        buf.truncate()
        if left:
            left -= pg["n"]
        after = pg.get("last")
        if pg.get("done") or after is None or not pg["rows"] or (left is not None
                                                                  and left <= 0):
            break
        pg = await page_after(after)
    await resp.write_eof()
    return resp


@action("query:run", "query.run")
async def query_run(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    f = await _form(request)
    body, limit = _query_body(f)
    out = await c.call("POST", "/query/page", {**body, "limit": min(limit or 50, 200),
                                               "timeout": 30.0})
    entries = await c.call("GET", "/catalog")
    return render(request, "query.html", {"entries": entries, "results": out, "q": f})


@action("verify:run", "verify.run")
async def verify(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    data = await request.post()
    rid = str(data.get("resource") or "")
    key = [k.strip() for k in str(data.get("key") or "").split(",") if k.strip()]
    check = [k.strip() for k in str(data.get("check") or "").split(",") if k.strip()]
    up = data.get("records")
    if not hasattr(up, "file"):
        raise UsageError("choose a records file (a CSV with a header line)")
    raw = up.file.read(MAX_UPLOAD + 1)
    if len(raw) > MAX_UPLOAD:
        raise UsageError(f"the records file is larger than {MAX_UPLOAD // 2**20} MiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError("the records file is not UTF-8 text") from None
    if not key or not check:
        raise UsageError("name the key field(s) and at least one field to check")
    rd = csv.DictReader(io.StringIO(text))
    missing = [f for f in key + check if f not in (rd.fieldnames or [])]
    if missing:
        raise UsageError(f"the records file has no column {', '.join(missing)[:200]}")
    try:
        records = [[row.get(f) or None for f in key + check] for row in rd]
    except csv.Error as e:
        raise UsageError(f"the records file: line {rd.line_num}: {e}") from None
    if not records:
        raise UsageError("the records file holds no records (a CSV with a header line)")
    out = await c.call("POST", "/verify", {"resource": rid, "key": key, "check": check,
                                           "records": records})
    out["check"] = check
    entries = await c.call("GET", "/catalog")
    return render(request, "query.html", {"entries": entries, "results": None, "q": {},
                                          "verified": out})


MAX_UPLOAD = 32 * 2**20


# --- exchange log ---------------------------------------------------------------------------------

@page("view:log")
async def log_page(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    q = {k: request.query[k] for k in ("peer", "resource", "kind", "event", "before")
         if request.query.get(k)}
    rows = await c.call("GET", "/log", query={**q, "limit": "200"})
    return render(request, "log.html", {"rows": rows[::-1], "q": q})


@page("view:log")
async def trace(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    t = await c.call("GET", "/log/trace/{pkg}", params={"pkg": request.match_info["pkg"]},
                     query={"hops": "1"})
    return render(request, "trace.html", {"t": t})


# --- quarantine, conflicts, corrections -----------------------------------------------------

@page("view:quarantine")
async def work(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    u = request["user"]
    quarantine = await _maybe(c, "GET", "/quarantine") or []
    conflicts = await _maybe(c, "GET", "/conflicts") or []
    corrections = (await _maybe(c, "GET", "/corrections")
                   if acc.may(u["role"], "view:corrections") else None) or []
    return render(request, "work.html", {"quarantine": quarantine, "conflicts": conflicts,
                                         "corrections": corrections})


@action("quarantine:manage", "quarantine.act")
async def quarantine_act(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    await c.call("POST", "/quarantine/{id}/{action}", params=dict(request.match_info))
    raise _back("/work", "Done")


@action("quarantine:manage", "conflict.resolve")
async def conflict_resolve(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    f = await _form(request)
    await c.call("POST", "/conflicts/{id}/resolve", {"keep": f.get("keep", "")},
                 params={"id": request.match_info["id"]})
    raise _back("/work", "Done")


@action("corrections:manage", "correction.answer")
async def correction_act(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    f = await _form(request)
    act = request.match_info["action"]
    if act not in ("accept", "reject"):
        raise UsageError("accept or reject")
    await c.call("POST", f"/corrections/{{id}}/{act}", {"reason": f.get("reason", "")[:500]},
                 params={"id": request.match_info["id"]})
    raise _back("/work", "Done")


# --- statistics and ledger ----------------------------------------------------------------------

def bars(rows: list[dict[str, Any]], value: str, label: str = "key") -> list[dict[str, Any]]:
    """Rows with a ``pct`` of the largest value, for the SVG bar charts."""
    top = max((float(r.get(value) or 0) for r in rows), default=0.0) or 1.0
    return [{"label": str(r.get(label)), "value": r.get(value) or 0,
             "pct": round(100.0 * float(r.get(value) or 0) / top, 1)} for r in rows]


@page("view:stats")
async def stats(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    s = await c.call("GET", "/log/stats", query={"days": request.query.get("days", "30")})
    for d in s["by_day"]:
        d["key"] = datetime.fromtimestamp(d["key"] * 86400, UTC).strftime("%m-%d")
    reqs = await _maybe(c, "GET", "/access/requests") or []
    answered = [{"key": r["id"][:8], "hours": round(
        ((r.get("updated") or r["created"]) - r["created"]) / 3600, 2)}
        for r in reqs if r["status"] in ("granted", "rejected", "refused") and r.get("created")]
    resources = overview_data(await c.call("GET", "/status"),
                              c.cfg.monitor.health_every_s)["resources"]
    fresh = sum(1 for r in resources if not r["stale"] and not r["error"])
    return render(request, "stats.html", {
        "by_resource": bars(s["by_resource"], "packages"),
        "bytes_resource": bars(s["by_resource"], "bytes"),
        "rows_resource": bars(s["by_resource"], "rows"),
        "by_peer": bars(s["by_peer"], "packages"), "by_day": bars(s["by_day"], "packages"),
        "answers": bars(answered[-30:], "hours"), "fresh": fresh,
        "resources": len(resources), "days": request.query.get("days", "30")})


def _month(c: Console, text: str | None) -> str:
    """The month asked for (``YYYY-MM``), by default the previous one in the node's time
    zone: the ledger's own rules (``exnode ledger --month``)."""
    if not text:
        return months.previous_month(c.cfg.access.timezone)
    months.parse_month(text)
    return text


@page("view:ledger")
async def ledger(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    month = _month(c, request.query.get("month"))
    data = await _maybe(c, "GET", "/ledger", query={"month": month, "format": "json"})
    return render(request, "ledger.html", {"month": month, "data": data,
                                           "json": json.dumps(data, ensure_ascii=False,
                                                              default=str)[:200_000]
                                           if data else ""})


@page("view:ledger")
async def ledger_download(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    month = _month(c, request.query.get("month"))
    fmt = request.query.get("format", "csv")
    if fmt not in ("csv", "xlsx", "pdf"):
        raise UsageError("format: csv, xlsx or pdf")
    meta, data = blob_of(await c.call("GET", "/ledger", query={"month": month,
                                                              "format": fmt}))
    bundle = request.query.get("bundle") in ("1", "true")
    await c.audit(request, "ledger.download", f"{month}.{fmt}" + (".zip" if bundle else ""))
    name = meta.get("filename") or f"ledger-{month}.{fmt}"
    if bundle:  # the file and the node's signature of it (exnode ledger verify FILE)
        import zipfile

        text = meta.get("sig")
        sig = text.encode() if isinstance(text, str) else json.dumps(text).encode()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(name, data)
            z.writestr(name + ".sig", sig)
        return web.Response(body=buf.getvalue(), headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{name}.zip"'})
    ctype = {"csv": "text/csv; charset=utf-8", "pdf": "application/pdf",
             "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}[fmt]
    headers = {"Content-Disposition": f'attachment; filename="{name}"',
               "X-Exnode-Sha256": str(meta.get("sha256") or "")}
    return web.Response(body=data, headers={**headers, "Content-Type": ctype})


# --- alerts, audit, accounts ---------------------------------------------------------------

@page("view:overview")
async def alerts(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    rows = await _maybe(c, "GET", "/alerts", query={"all": "1"} if request.query.get("all")
                        else {})
    return render(request, "alerts.html", {"rows": rows or [], "loaded": rows is not None})


@action("alerts:ack", "alert.ack")
async def alert_ack(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    u = request["user"]
    await c.call("POST", "/alerts/{id}/ack", {"by": u["name"]},
                 params={"id": request.match_info["id"]})
    raise _back("/alerts", "Done")


@page("view:audit")
async def audit(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    rows = await c.call("GET", "/console/audit", query={"limit": "300"})
    check = await c.call("GET", "/console/audit/verify") if request.query.get("verify") \
        else None
    return render(request, "audit.html", {"rows": rows, "check": check})


@page("accounts:manage")
async def accounts(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    rows = await c.call("GET", "/console/accounts")
    try:
        acc.check_separation((r["name"], r["role"]) for r in rows if not r["disabled"])
        separation = None
    except acc.AccountError as e:
        separation = str(e)
    return render(request, "accounts.html", {"rows": rows, "roles": acc.ROLES,
                                             "admins": acc.ADMINS,
                                             "separation": separation,
                                             "error": request.query.get("error")})


# 三员分立: the three administrators' accounts are kept on the node itself (``exnode
#: console ...``, audited as the shell user), so a system administrator in the console
#: cannot make, change or remove an auditor, a security administrator or another
#: system administrator, and so cannot get around the one who audits them.
def _admin_guard(role: str | None) -> None:
    if role in acc.ADMINS:
        raise Denied("the three administrators' accounts (三员) are managed on the node with "
                     "exnode console, not in the console")


@action("accounts:manage", "account.manage")
async def account_add(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    f = await _form(request)
    u = request["user"]
    _admin_guard(f.get("role"))
    await c.call("POST", "/console/accounts", {
        "name": f.get("name", ""), "role": f.get("role", ""), "password": f.get("password", ""),
        "lang": f.get("lang", "zh"), "actor": u["name"], "actor_role": u["role"],
        "client": request.remote or ""})
    raise _back("/accounts", "Saved")


@action("accounts:manage", "account.manage")
async def account_act(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    f = await _form(request)
    u = request["user"]
    act = request.match_info["action"]
    if act not in ("role", "unlock", "disable", "enable", "password"):
        raise UsageError("unknown account action")
    if request.match_info["name"] == u["name"] and act in ("role", "disable"):
        raise UsageError("you cannot change your own role or disable yourself")
    accounts_now = {a["name"]: a for a in await c.call("GET", "/console/accounts")}
    target = accounts_now.get(request.match_info["name"])
    if target is None:
        raise NotFound("no such console account")
    _admin_guard(target["role"])
    if act == "role":
        _admin_guard(f.get("role"))
    await c.call("POST", "/console/accounts/{name}/{action}", {
        "role": f.get("role"), "password": f.get("password"), "actor": u["name"],
        "actor_role": u["role"], "client": request.remote or ""},
        params={"name": request.match_info["name"], "action": act})
    raise _back("/accounts", "Saved")


async def me(request: web.Request) -> web.StreamResponse:
    """Every account's own page: its role, and a form to change its password."""
    return render(request, "me.html", {"error": request.query.get("error")})


async def my_password(request: web.Request) -> web.StreamResponse:
    c = _console(request)
    f = await _form(request)
    if f.get("new", "") != f.get("again", ""):
        raise UsageError("the two new passwords differ")
    await c.call("POST", "/console/self/password", {
        "name": request["user"]["name"], "current": f.get("current", "")[:1024],
        "new": f.get("new", "")[:1024], "client": request.remote or ""})
    from aiohttp_session import get_session

    (await get_session(request)).invalidate()  # every session ended: log in again
    raise web.HTTPFound("/login")


async def healthz(_request: web.Request) -> web.StreamResponse:
    return web.json_response({"ok": True})


def add_routes(app: web.Application, console: Console) -> None:
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/login", login_form)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_post("/lang", set_lang)
    r.add_get("/me", me)
    r.add_post("/me/password", my_password)
    r.add_get("/", overview)
    r.add_get("/catalog", catalog)
    r.add_get("/catalog/{rid}", resource)
    r.add_get("/requests", requests_page)
    r.add_post("/requests/{id}/decide", review)
    r.add_get("/grants", grants)
    r.add_post("/grants/{id}/revoke", revoke)
    r.add_get("/query", query_page)
    r.add_post("/query/run", query_run)
    r.add_post("/query/download", query_download)
    r.add_post("/verify", verify)
    r.add_get("/log", log_page)
    r.add_get("/log/{pkg}", trace)
    r.add_get("/work", work)
    r.add_post("/quarantine/{id}/{action}", quarantine_act)
    r.add_post("/conflicts/{id}/resolve", conflict_resolve)
    r.add_post("/corrections/{id}/{action}", correction_act)
    r.add_get("/stats", stats)
    r.add_get("/ledger", ledger)
    r.add_get("/ledger/download", ledger_download)
    r.add_get("/alerts", alerts)
    r.add_post("/alerts/{id}/ack", alert_ack)
    r.add_get("/audit", audit)
    r.add_get("/accounts", accounts)
    r.add_post("/accounts", account_add)
    r.add_post("/accounts/{name}/{action}", account_act)
