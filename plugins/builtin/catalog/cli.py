"""``exnode catalog list|search|show|export|publish``."""

from __future__ import annotations

import csv
import io
import json
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import click

from exnode.node.base.errors import UsageError
from exnode.node.kernel.api import CommandContext

SHARE = {"unconditional": "无条件共享", "conditional": "有条件共享", "none": "不予共享"}
CSV_COLUMNS = ["resource", "resource_id", "metadata_id", "metadata_version", "name",
               "abstract", "provider", "provider_node", "classification", "format",
               "keywords", "share", "open_type", "update_frequency", "release_date",
               "online_address", "held_at", "elements"]


def _table(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "no resources listed"
    lines = [f"{'RESOURCE':<20} {'VER':>3}  {'SHARE':<14} {'PROVIDER':<12} NAME"]
    for e in entries:
        lines.append(f"{e['resource']:<20} {e.get('version', ''):>3}  "
                     f"{e['share'] + ' ' + SHARE.get(e['share'], ''):<14} "
                     f"{e['provider_node']:<12} {e['name']}")
    return "\n".join(lines)


@click.group()
def catalog() -> None:
    """The resource catalog (目录): list, search, show, export."""


@catalog.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def catalog_list(obj: CommandContext, as_json: bool) -> None:
    """Every resource the catalog lists (current versions)."""
    obj.show(obj.call("GET", "/catalog"), as_json, _table)


@catalog.command("search")
@click.argument("words", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def catalog_search(obj: CommandContext, words: tuple[str, ...], as_json: bool) -> None:
    """Resources whose name, abstract, keywords or fields hold every word (Chinese
    too: 户籍, 婚姻登记)."""
    q = urllib.parse.quote(" ".join(words))
    found = obj.call("GET", f"/catalog/search?q={q}")
    obj.show(found, as_json, _table(found) if found else "nothing found")


def _show_text(e: dict[str, Any]) -> str:
    lines = [f"{e['name']}  ({e['resource']}, version {e.get('version')})",
             f"  resource id    {e['resource_id']}", f"  metadata id    {e['metadata_id']}",
             f"  provider       {e['provider']} ({e['provider_node']})",
             f"  classification {e['classification']}",
             f"  share          {e['share']} {SHARE.get(e['share'], '')}"
             + (f": {e['share_condition']}" if e.get("share_condition") else ""),
             f"  held at        {e['held_at']}",
             f"  update         {e.get('update_frequency') or '-'}",
             f"  keywords       {', '.join(e.get('keywords') or []) or '-'}",
             f"  abstract       {e['abstract']}", "  elements:"]
    for el in e.get("elements") or []:
        lines.append(f"    {el['name']:<20} {el.get('cn_name') or '':<10} "
                     f"{el.get('type') or '':<14} {el.get('standard') or ''}")
    vs = e.get("versions") or []
    if len(vs) > 1:
        lines.append(f"  versions       {', '.join(str(v['version']) for v in vs)}")
    return "\n".join(lines)


@catalog.command("show")
@click.argument("resource")
@click.option("--version", "ver", type=int, default=None, help="An older version.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def catalog_show(obj: CommandContext, resource: str, ver: int | None, as_json: bool) -> None:
    """One resource's entry with its data elements (数据项)."""
    path = f"/catalog/{urllib.parse.quote(resource, safe='')}"
    if ver is not None:
        path += f"?version={ver}"
    obj.show(obj.call("GET", path), as_json, _show_text)


@catalog.command("export")
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json",
              show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write here instead of standard output.")
@click.option("--bom", is_flag=True, help="CSV: start with a UTF-8 BOM (for Excel).")
@click.pass_obj
def catalog_export(obj: CommandContext, fmt: str, output: Path | None, bom: bool) -> None:
    """The whole catalog as JSON (every field) or CSV (one row per resource)."""
    entries = obj.call("GET", "/catalog")
    if fmt == "json":
        out = json.dumps(entries, ensure_ascii=False, indent=2) + "\n"
    else:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(CSV_COLUMNS)
        for e in entries:
            row = []
            for c in CSV_COLUMNS:
                v = e.get(c)
                if c == "keywords":
                    v = ";".join(v or [])
                elif c == "elements":
                    v = ";".join(el["name"] + (f"({el['cn_name']})" if el.get("cn_name")
                                               else "") for el in v or [])
                row.append("" if v is None else v)
            w.writerow(row)
        out = ("\ufeff" if bom else "") + buf.getvalue()
    if output is None:
        sys.stdout.write(out)
        return
    if not output.parent.is_dir():
        raise UsageError(f"{output.parent}: no such folder")
    output.write_text(out, encoding="utf-8", newline="")
    click.echo(f"{len(entries)} resource(s) written to {output}", err=True)


@catalog.command("publish")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def catalog_publish(obj: CommandContext, as_json: bool) -> None:
    """Publish this node's entries to the center now (it also does so at start)."""
    r = obj.call("POST", "/catalog/publish", {})
    obj.show(r, as_json, f"{r['published']} entr{'y' if r['published'] == 1 else 'ies'} "
             "published" + "".join(f"\n  {p}" for p in r.get("problems", [])))
