"""Health that travels (全程监控): every bureau tells the center the state of each resource
it holds, and the center tells each bureau how the resources it feeds are doing: the
center's own state and, for an owner, the state of every subscriber (ok, lagging with
how far, stopped with the reason, revoked, silent).

Reports are small ``health`` packages between a bureau and the center (never relayed),
sent when a state changes (looked at every few seconds) and otherwise every
``monitor.health_every_s``; they live only a few intervals, so a node that is offline
does not pile them up. What is received is kept in memory: after a restart the view
is rebuilt within one interval.

What the center knows by itself (its outbox) it does not need to be told: how many
packages a subscriber has not acknowledged yet, and since when, is the lag.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import structlog
from sqlalchemy import select

from exnode.node.base.errors import PackageError
from exnode.node.base.fmt import ago
from exnode.node.kernel.api import ApplyContext, ServiceAPI, StatusBuilder

from .forwards import Forwards
from .resources import ROWS, ZERO, Resources
from .tables import freshness

log = structlog.get_logger("exnode.sync")

HEALTH = "health"
STATES = ("ok", "lagging", "stopped", "revoked", "silent", "unknown", "missing")
MAX_REPORT = 1 << 20
TICK_S = 2.0


def _reason(v: Any) -> str | None:
    return v[:500] if isinstance(v, str) and v else None


class Health:
    def __init__(self, api: ServiceAPI, res: Resources, forwards: Forwards) -> None:
        self.api = api
        self.res = res
        self.forwards = forwards
        self.every = api.config.monitor.health_every_s
        self.lag_after = api.config.monitor.lag_after_s
        # center: node -> {"received": t, "resources": {rid: {"state", "reason", ...}}}
        self.reports: dict[str, dict[str, Any]] = {}
        # bureau: the center's last view {"received": t, "resources": {rid: {...}}}
        self.view: dict[str, Any] | None = None
        self._sent: dict[str, tuple[str, float]] = {}  # dest -> (what, when)

    # --- what this node knows --------------------------------------------------------------

    def local(self) -> dict[str, dict[str, Any]]:
        """(state-DB thread) This node's own state of each of its resources."""
        with self.api.state.connect() as conn:
            waiting = self.api.waiting(conn)
        out = {}
        for rid in self.api.config.resources:
            err = self.res.errors.get(rid)
            w = sum(n for (_s, r), n in waiting.items() if r == rid)
            out[rid] = {"state": "stopped" if err else "ok", "reason": err, "waiting": w}
        return out

    def parties(self) -> dict[str, dict[str, dict[str, Any]]]:
        """(center, state-DB thread) resource -> node -> its state as the center sees it:
        the node's own report, what the center has queued for it and not had
        acknowledged, and what is held for it."""
        now = time.time()
        d = self.api.directory
        with self.api.state.connect() as conn:
            backlog = self.api.backlog(conn, [ROWS, ZERO])
            held = self.forwards.status(conn)
            fresh = conn.execute(select(freshness.c.resource, freshness.c.node)).all()
        reporters = {(r, n) for r, n in fresh}
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for rid, spec in self.api.config.resources.items():
            nodes = set(self.res.subscribers(rid)) | {n for r, n in reporters if r == rid}
            if spec.owner:
                nodes.add(spec.owner)
            nodes.discard(self.api.node_id)
            held_for = {h["node"]: h for h in held.get(rid, [])}
            view = {}
            for node in sorted(nodes):
                queued, oldest = backlog.get((node, rid), (0, None))
                h = held_for.get(node)
                behind = queued + (h["packages"] if h else 0)
                since = min([t for t in (oldest, h["since"] if h else None) if t is not None],
                            default=None)
                view[node] = {"behind": behind, "since": since,
                              **self._judge(node, rid, now, d, queued, oldest, h)}
            out[rid] = view
        return out

    def _judge(self, node: str, rid: str, now: float, d: Any, queued: int,
               oldest: float | None, held: dict[str, Any] | None) -> dict[str, Any]:
        rep = self.reports.get(node)
        mine = rep["resources"].get(rid) if rep else None
        if node in d.revoked:
            return {"state": "revoked", "reason": f"{node} is revoked; remove it from the "
                    "subscribers"}
        if not d.has(node):
            return {"state": "unknown", "reason": f"{node} is not an approved member"
                    + (f"; {held['packages']} change package(s) held for it" if held else "")}
        if mine is not None and mine.get("state") == "stopped":
            return {"state": "stopped", "reason": mine.get("reason") or "stopped"}
        if rep is not None and mine is None:
            return {"state": "missing", "reason": f"{node} has no resource '{rid}' configured"}
        if queued and oldest is not None and now - oldest > self.lag_after:
            return {"state": "lagging", "reason": f"{queued} package(s) not acknowledged, "
                    f"the oldest queued {ago(oldest)}"}
        if rep is None or now - rep["received"] > 3 * self.every:
            return {"state": "silent", "reason": "no health report " + (
                f"since {ago(rep['received'])}" if rep else "yet")}
        return {"state": "ok", "reason": None}

    # --- sending ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Send reports on a change, and every interval."""
        while True:
            await asyncio.sleep(TICK_S)
            try:
                items = await self.api.db(self._due, time.time())
                if items:
                    self.api.wake_outbox()
            except Exception as e:  # a broken state DB must not end the loop
                log.error("health_report_failed", error=f"{type(e).__name__}: {e}")

    def _due(self, now: float) -> int:
        """(state-DB thread) Queue the reports that are due; how many."""
        if self.api.is_center:
            reports = self._center_reports()
        else:
            reports = {self.api.center_id: {"resources": self.local()}}
        sent = 0
        with self.api.state.begin() as conn:
            for dest, body in reports.items():
                what = json.dumps({r: (v.get("state"), v.get("reason"),
                                       {n: (p["state"], p["reason"])
                                        for n, p in v.get("nodes", {}).items()})
                                   for r, v in body["resources"].items()}, sort_keys=True)
                last = self._sent.get(dest)
                if last is not None and last[0] == what and now - last[1] < self.every:
                    continue
                if not self.api.directory.has(dest):
                    continue
                self.api.enqueue(conn, dest, HEALTH, "", json.dumps(
                    {"at": now, **body}, separators=(",", ":")).encode(),
                    ttl_s=max(60, int(3 * self.every)))
                self._sent[dest] = (what, now)
                sent += 1
        return sent

    def _center_reports(self) -> dict[str, dict[str, Any]]:
        mine = self.local()
        parties = self.parties()
        out: dict[str, dict[str, Any]] = {}
        for rid, nodes in parties.items():
            spec = self.api.config.resources[rid]
            for node in nodes:
                entry = {"state": mine[rid]["state"], "reason": mine[rid]["reason"]}
                if spec.owner in (None, node) or node not in self.res.subscribers(rid):
                    # an owner (or a node whose changes come in) sees who it feeds
                    entry["nodes"] = {n: {k: p[k] for k in ("state", "reason", "behind",
                                                            "since")}
                                      for n, p in nodes.items() if n != node}
                out.setdefault(node, {"resources": {}})["resources"][rid] = entry
        for node in self.reports:  # whoever reports hears back, even about nothing
            out.setdefault(node, {"resources": {}})
        return out

    # --- receiving -------------------------------------------------------------------------

    def on_health(self, ctx: ApplyContext) -> None:
        if len(ctx.payload) > MAX_REPORT:
            raise PackageError("malformed", "health report too large")
        try:
            body = json.loads(ctx.payload)
            res = body["resources"]
            if not isinstance(res, dict):
                raise ValueError
            clean: dict[str, dict[str, Any]] = {}
            for rid, v in list(res.items())[:10_000]:
                if not isinstance(v, dict) or v.get("state") not in STATES:
                    raise ValueError
                entry: dict[str, Any] = {"state": v["state"], "reason": _reason(v.get("reason"))}
                if "waiting" in v:
                    entry["waiting"] = int(v["waiting"])
                if isinstance(v.get("nodes"), dict):
                    entry["nodes"] = {
                        str(n)[:64]: {"state": p["state"] if p.get("state") in STATES
                                      else "unknown", "reason": _reason(p.get("reason")),
                                      "behind": int(p.get("behind") or 0),
                                      "since": float(p["since"]) if p.get("since") else None}
                        for n, p in list(v["nodes"].items())[:10_000] if isinstance(p, dict)}
                clean[str(rid)[:128]] = entry
        except (ValueError, TypeError, KeyError, AttributeError):
            raise PackageError("malformed", "health report is not readable") from None
        report = {"received": time.time(), "resources": clean}
        if self.api.is_center:
            self.reports[ctx.header.src] = report
        else:
            self.view = report

    # --- status ----------------------------------------------------------------------------

    def status(self, status: StatusBuilder) -> None:
        if not self.api.config.resources:
            return
        if self.api.is_center:
            self._center_status(status)
        else:
            self._bureau_status(status)

    def _center_status(self, status: StatusBuilder) -> None:
        parties = self.parties()
        lines = []
        for rid, nodes in parties.items():
            for node, p in nodes.items():
                lines.append(f"health    {rid} -> {node}: {_flag(p)}")
                if p["state"] not in ("ok",):
                    status.problem(f"resource {rid}: {node} {p['state']}: {p['reason']}")
        status.add("health", parties, lines)

    def _bureau_status(self, status: StatusBuilder) -> None:
        v = self.view
        lines = []
        if v is None:
            lines.append("health    no report from the center yet")
            if time.time() - self.api.started > 3 * self.every:
                status.problem("no health report from the center since this node started")
            status.add("health", None, lines)
            return
        if time.time() - v["received"] > 3 * self.every:
            status.problem(f"no health report from the center since {ago(v['received'])}")
        for rid in sorted(set(self.api.config.resources) - set(v["resources"])):
            lines.append(f"health    {rid}: the center does not report it")
            status.problem(f"resource {rid}: the center has no such resource for this node "
                           "(is it configured there, with this node as owner or subscriber?)")
        for rid, e in sorted(v["resources"].items()):
            lines.append(f"health    {rid} at the center: {_flag(e)} "
                         f"(reported {ago(v['received'])})")
            if e["state"] != "ok":
                status.problem(f"resource {rid}: the center is {e['state']}: {e['reason']}")
            for node, p in sorted(e.get("nodes", {}).items()):
                lines.append(f"          {rid} -> {node}: {_flag(p)}")
                if p["state"] in ("stopped", "lagging", "revoked", "missing", "unknown"):
                    status.problem(f"resource {rid}: {node} {p['state']}: {p['reason']}")
        status.add("health", v, lines)


def _flag(p: dict[str, Any]) -> str:
    st = p["state"]
    text = "ok" if st == "ok" else f"{st.upper()}: {p.get('reason')}"
    if p.get("behind"):
        text += f"; {p['behind']} package(s) behind" + (
            f" since {ago(p['since'])}" if p.get("since") else "")
    return text
