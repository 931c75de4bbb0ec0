"""``exnode corrections file|list|show|accept|reject``."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import click

from exnode.node.base.errors import UsageError
from exnode.node.kernel.api import CommandContext


def _day(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else "-"


def _key(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(parts):
        raise UsageError("KEY: give the record's key (comma-separated parts for a composite "
                         "key, none of them empty)")
    return parts


def _last_reason(c: dict[str, Any]) -> str:
    return ((c.get("history") or [{}])[-1].get("reason") or "")


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no corrections"
    lines = [f"{'ID':<36} {'RESOURCE':<14} {'FIELD':<14} {'CONSUMER':<10} {'OWNER':<10} "
             f"{'STATUS':<9} DUE"]
    for c in rows:
        due = _day(c.get("due")) + (" OVERDUE" if c.get("overdue") else "")
        lines.append(f"{c['id']:<36} {c['resource']:<14} {c.get('field') or '':<14} "
                     f"{c['consumer']:<10} {c['owner'] or '?':<10} {c['status']:<9} {due}")
    return "\n".join(lines)


def _show(c: dict[str, Any]) -> str:
    lines = [f"correction {c['id']}",
             f"resource   {c['resource']}, owned by {c.get('owner') or '?'}",
             f"consumer   {c['consumer']}",
             f"status     {c['status']}" + (f", due {_day(c['due'])}" if c.get("due") else "")
             + (" OVERDUE" if c.get("overdue") else ""),
             f"key        {', '.join(c.get('key') or [])}",
             f"field      {c.get('field')}",
             f"says       {c.get('says')}",
             f"evidence   {c.get('evidence')}"]
    for h in c.get("history") or []:
        lines.append(f"  {_day(h['at'])}  {h['by']:<10} {h['decision']}"
                     + (f": {h['reason']}" if h.get("reason") else ""))
    return "\n".join(lines)


@click.group()
def corrections() -> None:
    """Correction feedback (校核纠错): file, list, show, accept, reject."""


@corrections.command("file")
@click.argument("resource")
@click.argument("key")
@click.option("--field", required=True, help="The field whose value is wrong.")
@click.option("--says", required=True, help="What the value should be.")
@click.option("--evidence", required=True, help="How you know (sent to the owner).")
@click.option("--wait", "wait_s", type=float, default=10.0, show_default=True,
              help="Seconds to wait for the center's deadline (0: do not wait).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def corrections_file(obj: CommandContext, resource: str, key: str, field: str, says: str,
                     evidence: str, wait_s: float, as_json: bool) -> None:
    """File a correction on the record of RESOURCE with key KEY (comma-separated for a
    composite key); the center forwards it to the owner, who must answer it in
    ``access.correction_days`` working days."""
    c = obj.call("POST", "/corrections/file", {"resource": resource, "key": _key(key),
                                               "field": field, "says": says,
                                               "evidence": evidence})
    deadline = time.monotonic() + max(0.0, wait_s)
    while c["status"] == "open" and not c.get("due") and time.monotonic() < deadline:
        time.sleep(0.2)
        c = obj.call("GET", f"/corrections/{c['id']}")
    obj.show(c, as_json, f"correction {c['id']}: " + {
        "open": (f"with {c['owner']}, due {_day(c['due'])}" if c.get("due") else
                 "sent; the center has not answered yet (exnode corrections show ID)"),
        "accepted": "accepted",
        "rejected": "rejected: " + _last_reason(c),
    }.get(c["status"], c["status"]))
    if c["status"] == "rejected":
        raise SystemExit(4)


@corrections.command("list")
@click.option("--overdue", is_flag=True, help="Only open corrections past their deadline.")
@click.option("--status", type=click.Choice(["open", "accepted", "rejected", "all"]),
              default="all", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def corrections_list(obj: CommandContext, overdue: bool, status: str, as_json: bool) -> None:
    """Corrections this node knows, newest first. With --overdue, exit 1 when any."""
    rows = obj.call("GET", f"/corrections?status={status}" + ("&overdue=1" if overdue
                                                              else ""))
    obj.show(rows, as_json, _table)
    if overdue and rows:
        raise SystemExit(1)


@corrections.command("show")
@click.argument("correction_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def corrections_show(obj: CommandContext, correction_id: str, as_json: bool) -> None:
    """One correction with its history."""
    obj.show(obj.call("GET", f"/corrections/{correction_id}"), as_json, _show)


@corrections.command("accept")
@click.argument("correction_id")
@click.option("--reason", default="", help="A note for the consumer (optional).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def corrections_accept(obj: CommandContext, correction_id: str, reason: str,
                       as_json: bool) -> None:
    """(owner) Accept a correction, once the source is fixed (the fix syncs as usual)."""
    c = obj.call("POST", f"/corrections/{correction_id}/accept", {"reason": reason})
    obj.show(c, as_json, f"correction {correction_id}: accepted")


@corrections.command("reject")
@click.argument("correction_id")
@click.option("--reason", required=True, help="Why (the consumer sees it).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def corrections_reject(obj: CommandContext, correction_id: str, reason: str,
                       as_json: bool) -> None:
    """(owner) Reject a correction, with the reason."""
    if not reason.strip():
        raise UsageError("--reason: say why it is rejected (the consumer sees it)")
    c = obj.call("POST", f"/corrections/{correction_id}/reject", {"reason": reason})
    obj.show(c, as_json, f"correction {correction_id}: rejected")
