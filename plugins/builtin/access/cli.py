"""``exnode access request|list|show|review|answer|grants|revoke``."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import click

from exnode.node.base.errors import UsageError
from exnode.node.kernel.api import CommandContext

from . import parse_until


def _day(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else "-"


def _fields(text: str | None) -> list[str] | None:
    if not text:
        return None
    out = [f.strip() for f in text.split(",") if f.strip()]
    if not out:
        raise UsageError("--fields: name at least one field")
    return out


def _masks(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for m in items:
        field, sep, rule = m.partition("=")
        if not sep or not field.strip() or not rule.strip():
            raise UsageError(f"--mask '{m}': write FIELD=RULE, e.g. citizen_id=last:4")
        out[field.strip()] = rule.strip()
    return out


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no access requests"
    lines = [f"{'ID':<36} {'RESOURCE':<14} {'SERVICE':<7} {'CONSUMER':<10} {'STATUS':<9} DUE"]
    for r in rows:
        due = _day(r.get("due")) + (" OVERDUE" if r.get("overdue") else "")
        lines.append(f"{r['id']:<36} {r['resource']:<14} {r['service']:<7} "
                     f"{r['consumer']:<10} {r['status']:<9} {due}")
    return "\n".join(lines)


def _show(r: dict[str, Any]) -> str:
    lines = [f"request   {r['id']}", f"resource  {r['resource']} ({r['service']}), provided "
             f"by {r.get('provider') or '?'}", f"consumer  {r['consumer']}",
             f"status    {r['status']}" + (f", due {_day(r['due'])}" if r.get("due") else "")
             + (" OVERDUE" if r.get("overdue") else ""),
             f"purpose   {r.get('purpose', '')}", f"basis     {r.get('basis') or '-'}",
             f"fields    {', '.join(r['fields']) if r.get('fields') else 'all'}"]
    if r.get("grant_id"):
        lines.append(f"grant     {r['grant_id']}")
    for h in r.get("history") or []:
        lines.append(f"  {_day(h['at'])}  {h['step']:<8} {h['by']:<10} {h['decision']}"
                     + (f": {h['reason']}" if h.get("reason") else ""))
    return "\n".join(lines)


@click.group()
def access() -> None:
    """Access requests and grants (目录授权): request, review, answer, revoke."""


@access.command("request")
@click.argument("resource")
@click.option("--service", type=click.Choice(["query", "verify", "sync"]), default="query",
              show_default=True, help="What the grant is for.")
@click.option("--fields", default=None, help="Comma-separated fields (default: all).")
@click.option("--purpose", required=True, help="What the data is for (recorded).")
@click.option("--basis", default="", help="The legal or policy basis (依据).")
@click.option("--rows", "rows", multiple=True, help="A row filter 'FIELD OP VALUE' "
              "(repeatable).")
@click.option("--until", default=None, help="Last day of the grant (YYYY-MM-DD).")
@click.option("--wait", "wait_s", type=float, default=15.0, show_default=True,
              help="Seconds to wait for the center's first answer (0: do not wait).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def access_request(obj: CommandContext, resource: str, service: str, fields: str | None,
                   purpose: str, basis: str, rows: tuple[str, ...], until: str | None,
                   wait_s: float, as_json: bool) -> None:
    """Ask the center for a grant on RESOURCE. Unconditional resources are granted at
    once; conditional ones are reviewed by the center, then answered by the provider."""
    r = obj.call("POST", "/access/request", {
        "resource": resource, "service": service, "fields": _fields(fields),
        "purpose": purpose, "basis": basis, "rows": list(rows), "until": parse_until(until)})
    deadline = time.monotonic() + max(0.0, wait_s)
    while r["status"] == "sent" and time.monotonic() < deadline:
        time.sleep(0.2)
        r = obj.call("GET", f"/access/requests/{r['id']}")
    obj.show(r, as_json, f"request {r['id']}: " + {
        "sent": "sent; the center has not answered yet (exnode access show ID)",
        "granted": f"granted (grant {r.get('grant_id')})",
        "review": f"with the center for review, due {_day(r.get('due'))}",
        "provider": f"with the provider, due {_day(r.get('due'))}",
        "refused": "refused: " + ((r.get("history") or [{}])[-1].get("reason") or ""),
    }.get(r["status"], r["status"]))
    if r["status"] == "refused":
        raise SystemExit(4)


@access.command("list")
@click.option("--overdue", is_flag=True, help="Only requests past their step's deadline.")
@click.option("--status", type=click.Choice(["open", "review", "provider", "granted",
                                             "refused", "all"]), default="all",
              show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def access_list(obj: CommandContext, overdue: bool, status: str, as_json: bool) -> None:
    """Access requests this node knows, newest first. With --overdue, exit 1 when any."""
    rows = obj.call("GET", f"/access/requests?status={status}"
                    + ("&overdue=1" if overdue else ""))
    obj.show(rows, as_json, _table)
    if overdue and rows:
        raise SystemExit(1)


@access.command("show")
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def access_show(obj: CommandContext, request_id: str, as_json: bool) -> None:
    """One request with its history."""
    obj.show(obj.call("GET", f"/access/requests/{request_id}"), as_json, _show)


@access.command("review")
@click.argument("request_id")
@click.option("--approve/--refuse", default=None, help="Pass it to the provider, or refuse.")
@click.option("--reason", default="", help="Why (required to refuse).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def access_review(obj: CommandContext, request_id: str, approve: bool | None, reason: str,
                  as_json: bool) -> None:
    """(center) The compliance review of a conditional request."""
    if approve is None:
        raise UsageError("say --approve or --refuse")
    r = obj.call("POST", f"/access/requests/{request_id}/review",
                 {"approve": approve, "reason": reason})
    obj.show(r, as_json, f"request {request_id}: {r['status']}"
             + (f", due {_day(r.get('due'))}" if r.get("due") else ""))


@access.command("answer")
@click.argument("request_id")
@click.option("--approve/--refuse", default=None)
@click.option("--reason", default="", help="Why (required to refuse).")
@click.option("--fields", default=None, help="Narrow the fields (comma-separated).")
@click.option("--rows", "rows", multiple=True, help="Add a row filter 'FIELD OP VALUE'.")
@click.option("--mask", "masks", multiple=True, help="FIELD=RULE: last:N, first:N, "
              "edges:A,B, all, null, hash, year (repeatable).")
@click.option("--until", default=None, help="Last day of the grant (YYYY-MM-DD).")
@click.option("--rate", "rate", type=click.IntRange(1), default=None,
              help="Requests a minute at most.")
@click.option("--quota", "quota", type=click.IntRange(1), default=None,
              help="Records a day at most.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def access_answer(obj: CommandContext, request_id: str, approve: bool | None, reason: str,
                  fields: str | None, rows: tuple[str, ...], masks: tuple[str, ...],
                  until: str | None, rate: int | None, quota: int | None,
                  as_json: bool) -> None:
    """(provider) Answer a reviewed request for your data, with its conditions."""
    if approve is None:
        raise UsageError("say --approve or --refuse")
    r = obj.call("POST", f"/access/requests/{request_id}/answer", {
        "approve": approve, "reason": reason, "fields": _fields(fields), "rows": list(rows),
        "masks": _masks(masks), "until": parse_until(until), "rate_per_min": rate,
        "daily_quota": quota})
    obj.show(r, as_json, f"request {request_id}: "
             + ("approved" if approve else "refused") + "; the center issues the answer")


def _grants_table(gs: list[dict[str, Any]]) -> str:
    if not gs:
        return "no grants"
    lines = [f"{'GRANT':<36} {'RESOURCE':<14} {'SERVICE':<7} {'GRANTEE':<10} {'STATE':<8} "
             "EXPIRES  FIELDS"]
    for g in gs:
        lines.append(f"{g['id']:<36} {g['resource']:<14} {g['service']:<7} "
                     f"{g['grantee']:<10} {g['state'].replace('grant-', ''):<8} "
                     f"{_day(g.get('expires_at'))[:10]}  "
                     + (", ".join(g["fields"]) if g.get("fields") else "all")
                     + (f"  masks: {g['masks']}" if g.get("masks") else ""))
    return "\n".join(lines)


@access.command("grants")
@click.option("--resource", default=None)
@click.option("--all", "show_all", is_flag=True, help="Also expired and revoked grants.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def access_grants(obj: CommandContext, resource: str | None, show_all: bool,
                  as_json: bool) -> None:
    """Grants this node knows (in force, unless --all)."""
    q = "&".join(p for p in (f"resource={resource}" if resource else "",
                             "all=1" if show_all else "") if p)
    obj.show(obj.call("GET", "/access/grants" + (f"?{q}" if q else "")), as_json,
             _grants_table)


@access.command("revoke")
@click.argument("grant_id")
@click.option("--reason", default="", help="Why (the grantee sees it).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def access_revoke(obj: CommandContext, grant_id: str, reason: str, as_json: bool) -> None:
    """Revoke a grant: at once here, and at the others as soon as they hear."""
    g = obj.call("POST", f"/access/grants/{grant_id}/revoke", {"reason": reason})
    obj.show(g, as_json, f"grant {grant_id} revoked")
