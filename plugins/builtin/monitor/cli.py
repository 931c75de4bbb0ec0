"""``exnode alerts [--all] [--json]``, ``exnode alerts ack ID``, ``exnode alerts items``."""

from __future__ import annotations

import getpass
from datetime import datetime
from typing import Any

import click

from exnode.node.base.errors import UsageError
from exnode.node.kernel.api import CommandContext


def _day(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else "-"


def _alerts(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no alerts"
    lines = [f"{'ID':>5} {'STATE':<12} {'KIND':<10} {'DUE':<16} TEXT"]
    for a in rows:
        state = a["state"] + (f" by {a['acked_by']}" if a.get("acked_by") else "")
        lines.append(f"{a['id']:>5} {state:<12} {a['kind']:<10} {_day(a['deadline']):<16} "
                     f"{a['text']}")
    return "\n".join(lines)


def _items(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "nothing tracked"
    lines = [f"{'KIND':<10} {'STATE':<20} {'DUE':<16} TEXT"]
    for i in rows:
        due = _day(i.get("deadline")) + (" OVERDUE" if i.get("overdue") else "")
        lines.append(f"{i['kind']:<10} {i['state']:<20} {due:<16} {i['text']}")
    return "\n".join(lines)


def _by() -> str:
    try:
        return getpass.getuser()[:64] or "operator"
    except Exception:  # no user name in this environment
        return "operator"


@click.group(invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True,
              help="Every alert (also acknowledged and cleared ones), newest first.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def alerts(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """Alerts (全程监控): tracked items past their deadline. Lists the open ones and exits
    1 when there are any; ack ID, items."""
    if ctx.invoked_subcommand is not None:
        return
    obj: CommandContext = ctx.obj
    rows = obj.call("GET", "/alerts" + ("?all=1" if show_all else ""))
    obj.show(rows, as_json, _alerts)
    if any(a["state"] == "open" for a in rows):
        raise SystemExit(1)


@alerts.command("ack")
@click.argument("alert_id")
@click.option("--by", default=None, help="Who acknowledges (default: your user name).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def alerts_ack(obj: CommandContext, alert_id: str, by: str | None, as_json: bool) -> None:
    """Acknowledge alert ALERT_ID: someone is on it (who and when are kept and logged).
    It is cleared once its item is no longer overdue."""
    if not alert_id.isdigit():
        raise UsageError(f"ID: an alert's number (exnode alerts), not '{alert_id[:40]}'")
    a = obj.call("POST", f"/alerts/{alert_id}/ack", {"by": by or _by()})
    obj.show(a, as_json, f"alert {a['id']}: acknowledged by {a['acked_by']}")


@alerts.command("items")
@click.option("--overdue", is_flag=True, help="Only the items past their deadline.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def alerts_items(obj: CommandContext, overdue: bool, as_json: bool) -> None:
    """Every item this node tracks, with its state and deadline."""
    rows = obj.call("GET", "/monitor/items" + ("?overdue=1" if overdue else ""))
    obj.show(rows, as_json, _items)
