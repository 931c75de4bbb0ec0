"""Database sync (a built-in service): capture at the data's owner, apply at the center's
shared library (共享库), distribute to the subscribing bureaus.

- A node with ``capture`` on a resource runs a capture cycle on its schedule
  (``capturing.py``); changes go out as ``rows`` packages, and a cycle that finds
  nothing sends a signed zero-update report (零更新上报).
- A ``rows`` package is applied to the resource's table in one transaction of the target
  database, with the package id in the marker table (``exnode_applied``), so a
  re-delivered package is never applied twice (``apply.py``). At the center the conflict
  policy and the data rules decide first; refused changes go back in a signed rejection
  notice, accepted ones are forwarded to the subscribers (never back to their origin).
- A schema mismatch stops the resource: nothing is applied, the package is not
  acknowledged (so nothing is lost) and status shows the error until it is fixed.

The service knows the kernel only through ``ServiceAPI``; everything it adds arrives
through the hooks below.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import click
import structlog
from sqlalchemy import select

from exnode.node.base.config import parse_duration
from exnode.node.base.errors import UsageError
from exnode.node.base.fmt import ago
from exnode.node.kernel.api import ControlRequest, KindSpec, Router, ServiceAPI, StatusBuilder
from exnode.plugins import hookimpl

from .apply import Applier
from .capturing import Capturer
from .conflicts import Conflicts
from .forwards import Forwards
from .health import HEALTH, Health
from .quality import Quality
from .resources import REJECTION, ROWS, VERIFY_REQ, VERIFY_RES, ZERO, Resources
from .tables import TABLES, conflicts, freshness
from .verify import Verifier

log = structlog.get_logger("exnode.sync")


class SyncService:
    """Database sync on one node: its parts, composed."""

    def __init__(self, api: ServiceAPI) -> None:
        self.api = api
        self.res = Resources(api)
        self.quality = Quality(api, self.res)
        self.forwards = Forwards(api)
        self.applier = Applier(api, self.res, self.quality, self.forwards)
        self.quality.apply_and_forward = self.applier.apply_and_forward
        self.capturer = Capturer(api, self.res, self.quality, self.applier)
        self.verifier = Verifier(api, self.res)
        self.conflicts = Conflicts(api, self.res, self.applier)
        self.res.on_reset.append(self.quality.forget)
        self.health = Health(api, self.res, self.forwards)

    # --- kinds ----------------------------------------------------------------------------

    @hookimpl
    def exnode_package_kinds(self, register: Any) -> None:
        # Sync kinds travel bureau <-> center only; the center never relays them
        # bureau to bureau (it applies, checks and forwards changes itself).
        register(KindSpec(ROWS, self.applier.on_rows, ordered=True, relay=False))
        register(KindSpec(ZERO, self.applier.on_zero, ordered=True, relay=False))
        register(KindSpec(REJECTION, self.applier.on_rejection, senders="center",
                          recipients="bureau", relay=False))
        register(KindSpec(VERIFY_REQ, self.verifier.on_verify_request, relay=False))
        register(KindSpec(VERIFY_RES, self.verifier.on_verify_result, relay=False))
        register(KindSpec(HEALTH, self.health.on_health, relay=False))

    # --- lifecycle --------------------------------------------------------------------------

    @hookimpl
    def exnode_startup(self, api: ServiceAPI) -> None:
        for rid, spec in api.config.resources.items():
            if spec.capture is not None:
                api.spawn(self.capturer.run_capture(rid), f"capture {rid}")
        api.spawn(self._resume_initial(), "resume initial loads")
        if api.config.resources:
            api.spawn(self.health.run(), "health reports")
        if api.is_center:
            made = self.res.standing_grants()
            if made:
                log.info("standing_sync_grants", made=made[:50])
            members = set(api.directory.ids())
            for rid, spec in api.config.resources.items():
                missing = [s for s in spec.subscribers if s not in members]
                if missing:  # their changes are held until they are members
                    log.warning("subscribers_not_members", resource=rid, nodes=missing[:20])
            api.spawn(self._release_held(), "release held forwards")

    async def _release_held(self) -> None:
        """Held changes go out once their subscriber is a member again."""
        while True:
            try:
                if await self.api.db(self.forwards.drain):
                    self.api.wake_outbox()
                    continue
            except Exception as e:  # a broken state DB must not end the loop
                log.error("forwards_release_failed", error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(2.0)

    async def _resume_initial(self) -> None:
        for job in await self.api.db(self.capturer.jobs):
            if job["status"] == "running":
                self._start_initial_task(job["resource"], job["kind"])

    def _start_initial_task(self, rid: str, kind: str = "initial") -> None:
        name = f"{kind} {rid}"
        if not self.api.running(name):
            self.api.spawn(self.capturer.run_initial(rid, kind), name)

    @hookimpl
    def exnode_shutdown(self, api: ServiceAPI) -> None:
        self.capturer.close()
        self.res.close()

    # --- status -----------------------------------------------------------------------------

    @hookimpl
    def exnode_status_sections(self, status: StatusBuilder) -> None:
        resources = self.status()
        lines = []
        for r in resources:
            flag = "STOPPED: " + r["error"] if r["error"] else "STALE" if r["stale"] else "ok"
            seen = ", ".join(f"{n['node']} {ago(n['last_current'])}" for n in r["nodes"]) \
                or "no report yet"
            lines.append(f"resource  {r['resource']}: {flag} (last current: {seen})")
            lines += [f"          held for {h['node']}: {h['packages']} package(s) since "
                      f"{ago(h['since'])} ({h['reason']})" for h in r.get("held", [])]
            lines += [f"          dropped for {x['node']}: {x['packages']} package(s) "
                      f"({x['reason']})" for x in r.get("dropped", [])]
            if r["error"]:
                status.problem(f"resource {r['resource']}: STOPPED here: {r['error']}")
            elif r["stale"]:
                status.problem(f"resource {r['resource']}: STALE here (last current: {seen})")
        status.add("resources", resources, lines)
        self.health.status(status)

    def status(self) -> list[dict[str, Any]]:
        """Per resource: when each node was last known current, and whether that is
        older than the resource's update frequency."""
        now = time.time()
        with self.api.state.connect() as conn:
            fresh = [dict(r) for r in conn.execute(select(freshness)).mappings()]
            open_conflicts = conn.execute(select(conflicts.c.resource).where(
                conflicts.c.status == "open")).scalars().all()
            held = self.forwards.status(conn) if self.api.is_center else {}
        out = []
        for rid, spec in self.api.config.resources.items():
            limit = parse_duration(spec.freshness) if spec.freshness else None
            nodes = []
            for f in fresh:
                if f["resource"] != rid:
                    continue
                age = now - f["last_current"]
                nodes.append({"node": f["node"], "last_current": f["last_current"],
                              "last_change": f["last_change"], "age_s": round(age, 1),
                              "stale": limit is not None and age > limit})
            out.append({"resource": rid, "error": self.res.errors.get(rid),
                        "freshness_s": limit, "nodes": nodes,
                        "stale": any(n["stale"] for n in nodes) or (
                            limit is not None and not nodes
                            and now - self.api.started > limit),
                        "open_conflicts": sum(1 for r in open_conflicts if r == rid),
                        "held": held.get(rid, []),
                        "dropped": [
                            {"node": d, "packages": n,
                             "reason": f"more than {spec.hold_max} held for {d}; once it is a "
                                       f"member: exnode sync repair {rid} --node {d}"}
                            for (d, r), n in sorted(self.forwards.overflow.items())
                            if r == rid],
                        "capture": spec.capture.strategy if spec.capture else None,
                        "last_cycle": self.capturer.last_cycle.get(rid)})
        return out

    # --- control routes ---------------------------------------------------------------------

    @hookimpl
    def exnode_control_routes(self, router: Router) -> None:
        router.post("/sync/initial", self._initial)
        router.get("/sync/jobs", self._jobs)
        router.post("/sync/now", self._now)
        router.post("/sync/verify", self._verify)
        router.get("/quality/{resource}", self._quality_report)
        router.get("/quarantine", self._quarantine_list)
        router.get("/quarantine/{id}", self._quarantine_show)
        router.post("/quarantine/{id}/{action}", self._quarantine_act)
        router.get("/sync/rejections", self._rejections)
        router.get("/conflicts", self._conflicts)
        router.get("/conflicts/{id}", self._conflict_show)
        router.post("/conflicts/{id}/resolve", self._conflict_resolve)

    async def _initial(self, req: ControlRequest) -> Any:
        rid = req.arg("resource")
        node = req.arg("node", str, None)
        job = await self.api.db(self.capturer.start_initial, rid,
                                req.arg("restart", bool, False), node)
        self._start_initial_task(rid, job["kind"])
        return {k: v for k, v in job.items() if k != "after_key"}

    async def _jobs(self, _req: ControlRequest) -> Any:
        return await self.api.db(self.capturer.jobs)

    async def _now(self, req: ControlRequest) -> Any:
        rid = req.arg("resource")
        self.res.spec(rid)
        self.capturer.wake(rid)
        return {"ok": True}

    async def _verify(self, req: ControlRequest) -> Any:
        return await self.verifier.verify(req.arg("resource"), req.arg("timeout", float, 120.0))

    async def _quality_report(self, req: ControlRequest) -> Any:
        return await self.api.db(self.quality.report, req.params["resource"])

    async def _quarantine_list(self, req: ControlRequest) -> Any:
        st = req.query.get("status", "open")
        return await self.api.db(self.quality.list, req.query.get("resource"),
                                 None if st == "all" else st)

    async def _quarantine_show(self, req: ControlRequest) -> Any:
        return await self.api.db(self.quality.show, _int(req.params["id"]))

    async def _quarantine_act(self, req: ControlRequest) -> Any:
        fn = {"retry": self.quality.retry, "drop": self.quality.drop}.get(req.params["action"])
        if fn is None:
            raise UsageError(f"unknown action {req.params['action']}")
        out = await self.api.db(fn, _int(req.params["id"]))
        self.api.wake_outbox()
        return out

    async def _rejections(self, req: ControlRequest) -> Any:
        return await self.api.db(self._rejection_list, req.query.get("resource"),
                                 _int(req.query.get("limit", "100")))

    def _rejection_list(self, rid: str | None, limit: int) -> list[dict[str, Any]]:
        """Rejection notices the center sent this node: which package, how many of its
        changes were refused, and why (keys and reasons)."""
        import cbor2

        from .tables import notices

        q = select(notices).order_by(notices.c.id.desc()).limit(max(1, min(limit, 10_000)))
        if rid:
            q = q.where(notices.c.resource == rid)
        with self.api.state.connect() as conn:
            rows = conn.execute(q).mappings().all()
        out = []
        for r in rows:
            try:
                items = cbor2.loads(r["items"])
            except Exception:
                items = []
            out.append({"id": r["id"], "resource": r["resource"], "from": r["src"],
                        "pkg_id": r["pkg_id"], "received_at": r["received_at"],
                        "refused": len(items),
                        "items": [{"key": [str(k) for k in it[0]], "reason": str(it[1])}
                                  for it in items[:1000] if isinstance(it, list)
                                  and len(it) == 2 and isinstance(it[0], list)]})
        return out

    async def _conflicts(self, req: ControlRequest) -> Any:
        st = req.query.get("status", "open")
        return await self.api.db(self.conflicts.list, None if st == "all" else st)

    async def _conflict_show(self, req: ControlRequest) -> Any:
        return await self.api.db(self.conflicts.show, _int(req.params["id"]))

    async def _conflict_resolve(self, req: ControlRequest) -> Any:
        out = await self.api.db(self.conflicts.resolve, _int(req.params["id"]),
                                req.arg("keep", str, ""))
        self.api.wake_outbox()
        return out


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"'{text}' is not a number") from None


# --- module hooks -------------------------------------------------------------------------

@hookimpl
def exnode_state_tables(register: Any) -> None:
    register(TABLES)


@hookimpl
def exnode_services(api: ServiceAPI) -> SyncService:
    return SyncService(api)


@hookimpl
def exnode_cli_commands(cli: click.Group) -> None:
    from .cli import COMMANDS

    for cmd in COMMANDS:
        cli.add_command(cmd)
