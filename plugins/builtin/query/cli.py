"""``exnode query RES --where 'FIELD OP VALUE' ... --format csv|jsonl|xlsx -o FILE``."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from exnode.node.base.errors import ExnodeError, UsageError
from exnode.node.kernel.api import CommandContext

from .formats import FORMATS, Download


@click.command("query")
@click.argument("resource")
@click.option("--where", "where", multiple=True, help="A filter 'FIELD OP VALUE' (=, !=, <, "
              "<=, >, >=, like, in, between, is null, is not null); repeat to AND them.")
@click.option("--fields", default=None, help="Comma-separated fields (default: all granted).")
@click.option("--order", "order", multiple=True, help="Sort by FIELD or -FIELD (descending).")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most N rows.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here (resumable); without it, csv or jsonl go to standard output.")
@click.option("--bom", is_flag=True, help="CSV: a UTF-8 BOM first, so Excel reads Chinese.")
@click.option("--resume", is_flag=True, help="Continue a download that was cut.")
@click.option("--page", "page_rows", type=click.IntRange(1, 100_000), default=20_000,
              show_default=True, help="Rows per page.")
@click.option("--timeout", type=float, default=120.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def query(obj: CommandContext, resource: str, where: tuple[str, ...], fields: str | None,
          order: tuple[str, ...], limit: int | None, fmt: str, output: Path | None,
          bom: bool, resume: bool, page_rows: int, timeout: float, as_json: bool) -> None:
    """Read RESOURCE from its holder (needs a query grant): page by page, with bounded
    memory, resumable with --resume after a cut."""
    names = [f.strip() for f in fields.split(",") if f.strip()] if fields else None
    body: dict[str, Any] = {"resource": resource, "where": list(where), "fields": names,
                            "order": list(order), "timeout": timeout}
    if output is None:
        if fmt == "xlsx" or resume:
            raise UsageError("-o FILE is needed for xlsx and for --resume")
        _to_stdout(obj, body, fmt, limit, page_rows, timeout)
        return
    meta = {"resource": resource, "where": list(where), "fields": names,
            "order": list(order), "limit": limit}
    if fmt == "csv":  # the holder sends CSV text (its database writes it, where it can)
        body["as"] = "csv"
    t0 = time.monotonic()
    first = _call(obj, {**body, "limit": 1 if resume else min(page_rows, limit or page_rows)},
                  timeout)
    dl = Download.open(output, fmt, first["fields"], bom=bom, meta=meta, resume=resume)
    tty = sys.stderr.isatty()
    try:
        cursor = dl.cursor or {}
        page = None if resume else first
        while True:
            left = None if limit is None else limit - dl.rows
            if left is not None and left <= 0:
                break
            if page is None:
                page = _call(obj, {**body, "after": cursor.get("after"),
                                   "offset": cursor.get("offset", 0) if order else 0,
                                   "limit": min(page_rows, left or page_rows)}, timeout)
            if "blob" in page:  # CSV text; never more rows than asked for: no cut
                n = int(page["n"])
                cursor = {"after": page.get("last"), "offset": dl.rows + n}
                dl.write_csv(page["blob"], n, cursor)
            else:
                rows = [tuple(r) for r in page["rows"]]
                if left is not None:
                    rows = rows[:left]
                n = len(rows)
                cursor = {"after": page.get("last"), "offset": dl.rows + n}
                dl.write(rows, cursor)
            if tty:
                click.echo(f"\r{dl.rows:,} rows", nl=False, err=True)
            if page.get("done") or not n:
                break
            page = None
    except ExnodeError as e:
        dl.abort()
        if tty:
            click.echo("", err=True)
        err = ExnodeError(f"{e} (cut after {dl.rows:,} rows; {output}.part is kept: fix "
                          "the cause and add --resume)")
        err.exit_code = e.exit_code
        raise err from None
    except BaseException:
        dl.abort()
        raise
    n = dl.finish()
    secs = time.monotonic() - t0
    if tty:
        click.echo("", err=True)
    summary = {"resource": resource, "rows": n, "file": str(output), "format": fmt,
               "seconds": round(secs, 2)}
    obj.show(summary, as_json, f"{n:,} rows written to {output} in {secs:.1f} s")


def _call(obj: CommandContext, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    return obj.call("POST", "/query/page", body, timeout=timeout + 10)


def _to_stdout(obj: CommandContext, body: dict[str, Any], fmt: str, limit: int | None,
               page_rows: int, timeout: float) -> None:
    written = 0
    after, writer = None, None
    while limit is None or written < limit:
        left = None if limit is None else limit - written
        page = _call(obj, {**body, "after": after, "offset": written,
                           "limit": min(page_rows, left or page_rows)}, timeout)
        fields, rows = page["fields"], page["rows"][:left] if left else page["rows"]
        if fmt == "csv":
            if writer is None:
                writer = csv.writer(sys.stdout)
                writer.writerow(fields)
            writer.writerows(["" if v is None else v for v in r] for r in rows)
        else:
            for r in rows:
                sys.stdout.write(json.dumps(dict(zip(fields, r, strict=True)),
                                            ensure_ascii=False) + "\n")
        written += len(rows)
        after = page.get("last")
        if page.get("done") or not rows:
            break
