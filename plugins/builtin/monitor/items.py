"""The tracked items (全程监控): every thing with a state and a deadline that this node
watches, read from the tables where they already are. Nothing here writes.

Other services' tables are reached through the state-table sets their plugins
registered (``api.plugins.tables``), never by importing those services: a service that
is disabled simply has no items here.

An item is a JSON-able dict: ``kind``, ``id`` (unique within its kind), ``resource``,
``node`` (the node that has to act, '' when none), ``state``, ``deadline`` (a Unix
time, or None when the item has none now), ``overdue`` and ``text`` (one line: ids,
states and times, never personal data).

Kinds:

- ``access``: an access request at its review (the center) or provider (the owner) step,
  with the step's deadline in working days.
- ``correction``: an open correction, the owner's answer due in working days.
- ``package``: packages to one destination for one resource still without their
  receipt, the oldest queued more than ``monitor.receipt_within_s`` ago.
- ``download``: the same for the query service's page requests and pages
  (``query-req``, ``query-page``): a download waiting for its holder. A running
  download itself leaves no record in the state DB (its place is kept in the file being
  written, by the command that writes it), so this is what can be watched of it.
- ``freshness``: a resource last known current at a node longer ago than its update
  frequency (``resources.<id>.freshness``, else the catalog's ``update_frequency`` when
  that is a duration).
- ``silent`` (center): a member not heard from for ``monitor.silent_after_s``.

There is no file-transfer service yet, hence no file-transfer items.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, select

from exnode.node.base.config import parse_duration
from exnode.node.kernel.api import ServiceAPI

if TYPE_CHECKING:
    from sqlalchemy import Connection

KINDS = ("access", "correction", "package", "download", "freshness", "silent")
DOWNLOAD_KINDS = ("query-req", "query-page")


def day(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else "-"


def _table(api: ServiceAPI, service: str, name: str) -> Table | None:
    """Another service's table, when that service is loaded."""
    st = api.plugins.tables.get(service)
    return st.metadata.tables.get(name) if st is not None else None


def _item(kind: str, iid: str, resource: str, node: str, state: str,
          deadline: float | None, now: float, text: str) -> dict[str, Any]:
    deadline = round(float(deadline), 3) if deadline is not None else None
    return {"kind": kind, "id": iid[:200], "resource": resource, "node": node,
            "state": state[:64], "deadline": deadline,
            "overdue": deadline is not None and now >= deadline, "text": text[:400]}


def access_items(api: ServiceAPI, conn: Connection, now: float) -> list[dict[str, Any]]:
    """Access requests at a step this node watches: the center watches every step, a
    provider the answers it owes."""
    t = _table(api, "access", "access_requests")
    if t is None:
        return []
    out = []
    for r in conn.execute(select(t.c.id, t.c.resource, t.c.consumer, t.c.provider,
                                 t.c.service, t.c.status, t.c.due)
                          .where(t.c.status.in_(("review", "provider")))):
        actor = api.center_id if r.status == "review" else r.provider
        if not (api.is_center or actor == api.node_id):
            continue
        out.append(_item("access", r.id, r.resource, actor, r.status, r.due, now,
                         f"access request {r.id} ({r.consumer} asks for {r.resource}, "
                         f"{r.service}): the {r.status} step at {actor}, due {day(r.due)}"))
    return out


def correction_items(api: ServiceAPI, conn: Connection, now: float) -> list[dict[str, Any]]:
    """Open corrections: at the center, and at the owner that has to answer."""
    t = _table(api, "corrections", "corrections")
    if t is None:
        return []
    out = []
    for r in conn.execute(select(t.c.id, t.c.resource, t.c.consumer, t.c.owner, t.c.due)
                          .where(t.c.status == "open")):
        if not (api.is_center or r.owner == api.node_id):
            continue
        out.append(_item("correction", r.id, r.resource, r.owner, "open", r.due, now,
                         f"correction {r.id} ({r.consumer} on {r.resource}): {r.owner}'s "
                         f"answer due {day(r.due)}"))
    return out


def package_items(api: ServiceAPI, conn: Connection, now: float) -> list[dict[str, Any]]:
    """Packages without their receipt, per destination and resource (downloads apart)."""
    within = api.config.monitor.receipt_within_s
    kinds = sorted(api.plugins.kinds)
    out = []
    for kind, names in (("download", [k for k in kinds if k in DOWNLOAD_KINDS]),
                        ("package", [k for k in kinds if k not in DOWNLOAD_KINDS])):
        if not names:
            continue
        for (dest, rid), (n, oldest) in sorted(api.backlog(conn, names).items()):
            what = "download page request(s) or page(s)" if kind == "download" \
                else "package(s)"
            out.append(_item(kind, f"{dest}/{rid}", rid, dest, f"{n} without receipt",
                             oldest + within, now,
                             f"{n} {what} to {dest} for {rid or '-'} without a receipt, "
                             f"the oldest queued {day(oldest)}"))
    return out


def _limit(api: ServiceAPI, rid: str) -> float | None:
    spec = api.config.resources.get(rid)
    text = spec.freshness if spec is not None and spec.freshness else None
    if text is None:
        entry = api.catalog.entry(rid)
        text = entry.get("update_frequency") if entry else None
    if not isinstance(text, str) or not text:
        return None
    try:
        return parse_duration(text)
    except ValueError:  # a catalog's free text ("每日"): not a deadline we can keep
        return None


def freshness_items(api: ServiceAPI, conn: Connection, now: float) -> list[dict[str, Any]]:
    """Resources last known current at a node longer ago than their update frequency."""
    t = _table(api, "sync", "freshness")
    if t is None:
        return []
    out = []
    limits: dict[str, float | None] = {}
    for r in conn.execute(select(t.c.resource, t.c.node, t.c.last_current)
                          .order_by(t.c.resource, t.c.node)):
        if r.resource not in limits:
            limits[r.resource] = _limit(api, r.resource)
        limit = limits[r.resource]
        if limit is None:
            continue
        out.append(_item("freshness", f"{r.resource}@{r.node}", r.resource, r.node,
                         "current" if now < r.last_current + limit else "stale",
                         r.last_current + limit, now,
                         f"resource {r.resource} at {r.node}: last known current "
                         f"{day(r.last_current)}, expected every {limit:g} s"))
    return out


def silent_items(api: ServiceAPI, conn: Connection, now: float) -> list[dict[str, Any]]:
    """(center) Members and when they were last heard from."""
    if not api.is_center:
        return []
    after = api.config.monitor.silent_after_s
    d = api.directory
    seen = api.contacts(conn)
    approved = api.members_since(conn)
    out = []
    for node in sorted(d.ids()):
        if node == api.node_id or node in d.revoked:
            continue
        last = seen.get(node)
        if last is None:
            # never heard from: due to report within silent_after_s of its approval (a
            # time the registry keeps, so a restart of the center does not move it)
            since = approved.get(node)
            out.append(_item("silent", node, "", node, "never heard from",
                             since + after if since else None, now,
                             f"{node} has not been heard from since it was approved"
                             + (f" on {day(since)}" if since else "")))
            continue
        out.append(_item("silent", node, "", node,
                         "reporting" if now < last + after else "silent", last + after,
                         now, f"{node} last heard from {day(last)} (silent after "
                         f"{after:g} s)"))
    return out


COLLECTORS = (access_items, correction_items, package_items, freshness_items, silent_items)


def tracked(api: ServiceAPI, conn: Connection, now: float | None = None
            ) -> list[dict[str, Any]]:
    """(state-DB thread) Every item this node tracks, with its state and deadline."""
    now = time.time() if now is None else now
    out: list[dict[str, Any]] = []
    for collect in COLLECTORS:
        out += collect(api, conn, now)
    return out
