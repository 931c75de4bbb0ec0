"""``exnode notes post`` and ``exnode notes list``: the notice board from the command line.

A command never opens the state DB itself: it asks the running daemon through
``obj.call`` (the ``CommandContext`` that ``@click.pass_obj`` hands it).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import click

from exnode.node.base.fmt import ts
from exnode.node.kernel.api import CommandContext


@click.group("notes")
def notes() -> None:
    """The notice board (通知公告): post a notice to the center, list the board."""


@notes.command("post")
@click.argument("title")
@click.option("--text", default="", help="The notice itself (at most 2000 characters).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def post(obj: CommandContext, title: str, text: str, as_json: bool) -> None:
    """Post a notice called TITLE. A bureau sends it to the center; the center files it."""
    r = obj.call("POST", "/notes", {"title": title, "text": text})
    obj.show(r, as_json, lambda r: f"filed as notice {r['number']}" if r["status"] == "filed"
             else f"sent to the center (package {r['pkg_id']})")


@notes.command("list")
@click.option("--author", help="Only the notices of this node.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_notes(obj: CommandContext, author: str | None, limit: int, as_json: bool) -> None:
    """The notices on the board (at a bureau: the ones it posted), newest first."""
    query = {"limit": limit, **({"author": author} if author else {})}
    rows = obj.call("GET", "/notes?" + urlencode(query))
    obj.show(rows, as_json, _table)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no notices"
    lines = []
    for r in rows:
        number = f"#{r['number']}" if r["number"] else "-"
        lines.append(f"{number:>6}  {ts(r['posted_at'])}  {r['author']:<16} {r['status']:<6}"
                     f"  {r['title']}")
    return "\n".join(lines)
