"""The database-sync commands: ``exnode sync``, ``capture``, ``quality``, ``quarantine``
and ``conflicts``. Each reaches the daemon through ``ctx.obj`` (``CommandContext``)."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from exnode.node.base.errors import ExnodeError, UsageError
from exnode.node.base.fmt import ago
from exnode.node.kernel.api import CommandContext

# --- database sync -------------------------------------------------------------------------

class _SyncGroup(click.Group):
    """`exnode sync RES --initial` is `exnode sync load RES --initial`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["load", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_SyncGroup)
def sync() -> None:
    """Database sync: `exnode sync RES --initial`, `sync status`, `sync now RES`."""


@sync.command("load", hidden=True)
@click.argument("resource")
@click.option("--initial", is_flag=True, help="Send the whole table (resumable initial load).")
@click.option("--restart", is_flag=True, help="With --initial: start over from the first row.")
@click.option("--no-wait", is_flag=True, help="Start the load and return at once.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def sync_load(obj: CommandContext, resource: str, initial: bool, restart: bool,
              no_wait: bool, as_json: bool) -> None:
    """Initial load of RESOURCE: `exnode sync RESOURCE --initial`."""
    if not initial:
        raise UsageError(f"say what to do with {resource}: exnode sync {resource} --initial, "
                         f"or exnode sync now {resource}")

    _run_load(obj, resource, restart, no_wait, as_json, None)


@sync.command("repair")
@click.argument("resource")
@click.option("--node", "node", default=None,
              help="The node to re-send to (at a bureau: the center, the default; at the "
                   "center: a subscriber, required).")
@click.option("--restart", is_flag=True, help="Start over from the first row.")
@click.option("--no-wait", is_flag=True, help="Start the repair and return at once.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def sync_repair(obj: CommandContext, resource: str, node: str | None, restart: bool,
                no_wait: bool, as_json: bool) -> None:
    """Re-send every row of RESOURCE to one node that is missing some (after a skipped
    sequence, a dropped forward or a restored database); resumable like an initial
    load, in chunks of capture.chunk_rows, applied at the other end like any change."""
    cfg = obj.config()
    if node is None:
        if cfg.node.role == "center":
            raise UsageError("name the subscriber to repair: exnode sync repair "
                             f"{resource} --node NODE")
        node = cfg.center.id
    _run_load(obj, resource, restart, no_wait, as_json, node)


def _run_load(obj: CommandContext, resource: str, restart: bool, no_wait: bool,
              as_json: bool, node: str | None) -> None:
    what = f"repair of {resource} for {node}" if node else f"initial load of {resource}"
    kind = f"repair:{node}" if node else "initial"
    job = obj.call("POST", "/sync/initial",
                   {"resource": resource, "restart": restart,
                    **({"node": node} if node else {})})
    if no_wait:
        obj.show(job, as_json, f"{what} started ({job['rows']} rows sent so far)")
        return

    def poll() -> dict[str, Any]:
        jobs = obj.call("GET", "/sync/jobs")
        return next(j for j in jobs if j["resource"] == resource and j["kind"] == kind)

    show = sys.stderr.isatty() and not as_json
    job = poll()
    if show:
        with click.progressbar(length=job["total"] or 0, label=what,
                               file=sys.stderr, show_pos=True) as bar:
            done = 0
            while job["status"] == "running":
                time.sleep(0.5)
                job = poll()
                if job["total"] and bar.length != job["total"]:
                    bar.length = job["total"]
                bar.update(job["rows"] - done)
                done = job["rows"]
    else:
        while job["status"] == "running":
            time.sleep(0.5)
            job = poll()
    if job["status"] != "done":
        raise ExnodeError(f"{what} failed: {job.get('error')}")
    obj.show(job, as_json, f"{what}: {job['rows']} rows sent "
             "(applied at the other end as they arrive; see 'exnode status')")


@sync.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def sync_status(obj: CommandContext, as_json: bool) -> None:
    """Resources: freshness per node, errors, open conflicts, initial loads."""
    st = obj.call("GET", "/status")
    health = st.get("text", {}).get("health", [])  # the daemon's lines, as in 'status'
    obj.show({"resources": st["resources"], "health": st.get("health"),
              "problems": st.get("problems", []),
              "jobs": obj.call("GET", "/sync/jobs")}, as_json,
             lambda d: _status_text(d, health))


def _status_text(d: dict[str, Any], health: list[str]) -> str:
    out = []
    for r in d["resources"]:
        flag = "STOPPED: " + r["error"] if r["error"] else "STALE" if r["stale"] else "ok"
        out.append(f"{r['resource']:<24} {r['capture'] or '-':<12} {flag}"
                   + (f"  ({r['open_conflicts']} open conflicts)" if r["open_conflicts"] else ""))
        out += [f"    {n['node']:<16} last current {ago(n['last_current'])}"
                + (" STALE" if n["stale"] else "") for n in r["nodes"]]
    out += health
    out += [f"initial load {j['resource']}: {j['status']}, {j['rows']}"
            + (f"/{j['total']}" if j["total"] else "") + " rows" for j in d["jobs"]]
    return "\n".join(out)


@sync.command("rejections")
@click.argument("resource", required=False)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def sync_rejections(obj: CommandContext, resource: str | None, limit: int,
                    as_json: bool) -> None:
    """Rejection notices from the center: changes of ours it refused, and why (ID
    numbers in keys and reasons are masked)."""
    from exnode.policies.quality import scrub_ids

    q = f"?limit={limit}" + (f"&resource={resource}" if resource else "")
    rows = obj.call("GET", "/sync/rejections" + q)
    for r in rows:
        for it in r["items"]:
            it["key"] = [scrub_ids(k) for k in it["key"]]
            it["reason"] = scrub_ids(it["reason"])

    def text(rows: list[dict[str, Any]]) -> str:
        out = []
        for r in rows:
            out.append(f"{ago(r['received_at'])}  {r['resource']}: {r['refused']} change(s) "
                       f"of package {r['pkg_id'][:8]} refused by {r['from']}")
            out += [f"    key {','.join(it['key'])}: {it['reason']}" for it in r["items"][:20]]
        return "\n".join(out) or "no rejection notices"

    obj.show(rows, as_json, text)


@sync.command("now")
@click.argument("resource")
@click.pass_obj
def sync_now(obj: CommandContext, resource: str) -> None:
    """Run RESOURCE's capture cycle now instead of at its next scheduled time."""

    obj.call("POST", "/sync/now", {"resource": resource})
    click.echo(f"capture of {resource} started")


@sync.command("verify")
@click.argument("resource")
@click.option("--timeout", default=120.0, show_default=True, type=float)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def sync_verify(obj: CommandContext, resource: str, timeout: float, as_json: bool) -> None:
    """Compare row counts and checksums of RESOURCE here and at its peers (at the center:
    the owner and the subscribers); list differing keys. Exit 1 if they differ."""
    rep = obj.call("POST", "/sync/verify",
               {"resource": resource, "timeout": timeout}, timeout=timeout * 3 + 10)
    obj.show(rep, as_json, _verify_text)
    if not rep["ok"]:
        sys.exit(1)


def _verify_text(rep: dict[str, Any]) -> str:
    out = [f"{rep['resource']}: " + ("all copies agree" if rep["ok"] else "copies DIFFER")]
    for n in rep["nodes"]:
        if "error" in n:
            out.append(f"  {n['node']:<16} {n['error']}")
            continue
        out.append(f"  {n['node']:<16} {n['count']:>10} rows  checksum "
                   f"{n['checksum'][:16]}  {'same' if n['same'] else 'DIFFERENT'}"
                   + (f"  ({n['quarantined']} quarantined, not counted as differences"
                      + (f": {n['explained']})" if n.get("explained") else ")")
                      if n.get("quarantined") else ""))
        if n.get("differences_at"):
            out.append(f"      which keys differ: run 'exnode sync verify {rep['resource']}' "
                       f"at {n['differences_at']}")
        d = n.get("differences") or {"counts": {}}
        out += [f"      {what.replace('_', ' ')} ({d['counts'][what]}): "
                + ", ".join(d[what][:20]) for what in ("missing_there", "extra_there",
                                                        "different")
                if d["counts"].get(what)]
    return "\n".join(out)


@click.group()
def capture() -> None:
    """Install or remove the change-capture triggers of a resource's table."""


def _trigger_target(obj: CommandContext, resource: str) -> tuple[Any, Any]:
    from sqlalchemy import create_engine

    cfg = obj.config()
    spec = cfg.resources.get(resource)
    if spec is None:
        raise UsageError(f"no resource '{resource}' in {cfg.source}")
    if spec.table is None:
        raise UsageError(f"resource '{resource}' maps a query; triggers need a table")
    return create_engine(cfg.database_url(spec.database)), spec


@capture.command("install")
@click.argument("resource")
@click.pass_obj
def capture_install(obj: CommandContext, resource: str) -> None:
    """Create the change table and the triggers on RESOURCE's table."""
    from exnode.adapters import triggers

    eng, spec = _trigger_target(obj, resource)
    triggers.install(eng, spec.table, spec.key, schema=spec.db_schema)
    click.echo(f"triggers installed on {spec.table} for {resource}")


@capture.command("remove")
@click.argument("resource")
@click.option("--drop-changes", is_flag=True, help="Also drop the change table.")
@click.pass_obj
def capture_remove(obj: CommandContext, resource: str, drop_changes: bool) -> None:
    """Remove RESOURCE's triggers (the change table stays unless --drop-changes)."""
    from exnode.adapters import triggers

    eng, spec = _trigger_target(obj, resource)
    triggers.remove(eng, spec.table, schema=spec.db_schema, drop_changes=drop_changes)
    click.echo(f"triggers removed from {spec.table}")


@click.group()
def quality() -> None:
    """Data rule checks (数据规则约束检查): reports."""


@quality.command("report")
@click.argument("resource")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def quality_report(obj: CommandContext, resource: str, as_json: bool) -> None:
    """Rows checked and failed per rule, open quarantine, daily trend."""
    obj.show(obj.call("GET", f"/quality/{resource}"), as_json, _report_text)


def _report_text(r: dict[str, Any]) -> str:
    res = r["resource"]
    out = [] if r["rules"] else [f"{res}: no rules declared here"]
    out.append(f"{res}: {r['checked']} rows checked, {r['failed']} failed, "
               f"{r['quarantine_open']} in quarantine, "
               f"{r['rejections_received']} rejections received")
    out += [f"  {rule:<24} {n:>8}" for rule, n in sorted(r["per_rule"].items(),
                                                       key=lambda x: -x[1])]
    out += [f"  {d['day']} {d['stage']:<7} checked {d['checked']:>8}  failed {d['failed']:>6}"
            for d in r["trend"][-14:]]
    return "\n".join(out)


@click.group()
def quarantine() -> None:
    """Rows held back by the data rules: list, show, retry, drop."""


@quarantine.command("list")
@click.option("--resource")
@click.option("--all", "show_all", is_flag=True, help="Retried and dropped ones too.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def quarantine_list(obj: CommandContext, resource: str | None, show_all: bool,
                    as_json: bool) -> None:
    """Quarantined rows with the rules they broke."""
    from urllib.parse import urlencode


    q = {"status": "all" if show_all else "open"}
    if resource:
        q["resource"] = resource
    obj.show(obj.call("GET", "/quarantine?" + urlencode(q)), as_json, lambda rows: "\n".join(
        f"{r['id']:>5} {r['resource']:<20} key {r['key']:<16} {r['stage']:<6} "
        f"{r['status']:<8} " + "; ".join(f"{v['rule']}({v['field']})" for v in r["violations"])
        for r in rows) or "quarantine is empty")


@quarantine.command("show")
@click.argument("qid", type=int)
@click.option("--reveal", is_flag=True, help="Show ID numbers in the row unmasked (to fix "
              "the source); by default they are masked like in the reasons.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def quarantine_show(obj: CommandContext, qid: int, reveal: bool, as_json: bool) -> None:
    """One quarantined row and why."""
    from exnode.policies.quality import scrub_ids

    r = obj.call("GET", f"/quarantine/{qid}")
    if not reveal:  # the reasons mask ID numbers; the row below them must not show them
        r["key"] = scrub_ids(str(r["key"]))
        r["row"] = {k: scrub_ids(v) if isinstance(v, str) else v
                    for k, v in (r["row"] or {}).items()} if r["row"] is not None else None
    obj.show(r, as_json, lambda r: "\n".join([
        f"quarantined row {r['id']}: {r['resource']} key {r['key']} ({r['stage']}, "
        f"from {r['src']}, {r['status']})",
        *(f"  {v['rule']}({v['field']}): {v['reason']}" for v in r["violations"]),
        *(f"    {k:<20} {v}" for k, v in (r["row"] or {}).items())]))


def _quarantine_action(action: str) -> Any:
    @click.argument("qid", type=int)
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_obj
    def cmd(obj: CommandContext, qid: int, as_json: bool) -> None:
        r = obj.call("POST", f"/quarantine/{qid}/{action}", {})
        if as_json:
            obj.show(r, True)
        elif action == "retry" and not r["passed"]:
            click.echo(f"row {qid} still fails: " + "; ".join(
                f"{v['rule']}({v['field']}): {v['reason']}" for v in r["violations"]))
        else:
            click.echo(f"row {qid}: {r['status']}")
        if action == "retry" and not r["passed"]:
            sys.exit(1)

    cmd.__doc__ = {"retry": "Check row QID again (at the owner: as the source has it now) and "
                            "send it through if it passes.",
                   "drop": "Give up on row QID (it stays listed with --all)."}[action]
    return cmd


for _qa in ("retry", "drop"):
    quarantine.command(_qa)(_quarantine_action(_qa))


@click.group()
def conflicts() -> None:
    """(center) The conflict queue of resources with conflict: manual."""


@conflicts.command("list")
@click.option("--all", "show_all", is_flag=True, help="Resolved ones too.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def conflicts_list(obj: CommandContext, show_all: bool, as_json: bool) -> None:
    """Open conflicts."""
    rows = obj.call("GET", "/conflicts?status=" + ("all" if show_all else "open"))
    obj.show(rows, as_json, lambda rows: "\n".join(
        f"{r['id']:>5} {r['resource']:<20} from {r['src']:<12} key {r['key']:<20} "
        f"{r['status']}  {r['reason']}" for r in rows) or "no open conflicts")


@conflicts.command("show")
@click.argument("conflict_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def conflicts_show(obj: CommandContext, conflict_id: int, as_json: bool) -> None:
    """The incoming change beside the shared library's current row."""
    obj.show(obj.call("GET", f"/conflicts/{conflict_id}"), as_json, _conflict_text)


def _conflict_text(r: dict[str, Any]) -> str:
    inc, cur = r["incoming"]["row"] or {}, r["current"] or {}
    out = [f"conflict {r['id']}: {r['resource']} key {r['key']} from {r['src']} "
           f"({r['status']}): {r['reason']}",
           f"  {'field':<20} {'incoming (' + r['incoming']['op'] + ')':<30} current"]
    out += [f"  {k:<20} {inc.get(k)!s:<30} {cur.get(k)}"
            + (" *" if inc.get(k) != cur.get(k) else "") for k in sorted(set(inc) | set(cur))]
    return "\n".join(out)


@conflicts.command("resolve")
@click.argument("conflict_id", type=int)
@click.option("--keep", type=click.Choice(["incoming", "current"]), required=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def conflicts_resolve(obj: CommandContext, conflict_id: int, keep: str, as_json: bool) -> None:
    """Apply the incoming change, or keep the current row and notify the sender."""
    r = obj.call("POST", f"/conflicts/{conflict_id}/resolve", {"keep": keep})
    obj.show(r, as_json, f"conflict {conflict_id} resolved: kept {keep}")




COMMANDS = [sync, capture, quality, quarantine, conflicts]
