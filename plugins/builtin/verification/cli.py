"""``exnode verify RES --input records.csv --key K --check F,G``."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import click

from exnode.node.base.errors import UsageError
from exnode.node.kernel.api import CommandContext

BATCH = 50_000


def _read(path: Path, key: list[str], check: list[str]) -> list[list[str | None]]:
    try:
        f = path.open(encoding="utf-8-sig", newline="")
    except OSError as e:
        raise UsageError(f"--input {path}: {e.strerror}") from None
    with f:
        try:
            rd = csv.DictReader(f)
            cols = rd.fieldnames or []
            missing = [c for c in key + check if c not in cols]
            if missing:
                raise UsageError(f"--input {path}: no column {', '.join(missing)} (columns: "
                                 f"{', '.join(cols[:20]) or 'none'})")
            return [[(row.get(c) or None) for c in key + check] for row in rd]
        except csv.Error as e:
            raise UsageError(f"--input {path}: line {rd.line_num}: {e}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--input {path}: not UTF-8 text") from None


@click.command("verify")
@click.argument("resource")
@click.option("--input", "input_", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="CSV with a header row: the key column(s) and the "
              "columns to check.")
@click.option("--key", required=True, help="Key field(s), comma-separated.")
@click.option("--check", "check", required=True, help="Fields to check, comma-separated.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the answers as CSV here (key, found, one column per field).")
@click.option("--timeout", type=float, default=120.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def verify(obj: CommandContext, resource: str, input_: Path, key: str, check: str,
           output: Path | None, timeout: float, as_json: bool) -> None:
    """Check records against RESOURCE without seeing its data (核验): per record, found or
    not, and match or mismatch per checked field. Exit 1 when any record is not found
    or does not match."""
    keys = [k.strip() for k in key.split(",") if k.strip()]
    fields = [c.strip() for c in check.split(",") if c.strip()]
    if not keys or not fields:
        raise UsageError("--key and --check: name at least one field each")
    records = _read(input_, keys, fields)
    if not records:
        raise UsageError(f"--input {input_}: no records")
    results: list[Any] = []
    ms = 0.0
    show = sys.stderr.isatty() and len(records) > BATCH
    with click.progressbar(length=len(records), label="verifying", file=sys.stderr) if show \
            else _Quiet() as bar:
        for i in range(0, len(records), BATCH):
            part = records[i:i + BATCH]
            r = obj.call("POST", "/verify", {"resource": resource, "key": keys,
                                             "check": fields, "records": part,
                                             "timeout": timeout}, timeout=timeout + 10)
            results += r["results"]
            ms += r["ms"]
            bar.update(len(part))
    nk = len(keys)
    out = []
    for rec, (found, matches) in zip(records, results, strict=True):
        out.append({"key": rec[:nk] if nk > 1 else rec[0], "found": bool(found),
                    "fields": {f: bool(m) for f, m in zip(fields, matches, strict=False)}})
    n_found = sum(1 for o in out if o["found"])
    n_match = sum(1 for o in out if o["found"] and all(o["fields"].values()))
    summary = {"resource": resource, "records": len(out), "found": n_found,
               "all_match": n_match, "ms": round(ms, 1)}
    if output is not None:
        if not output.parent.is_dir():
            raise UsageError(f"-o {output}: no such folder")
        with output.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow([*keys, "found", *fields])
            for rec, o in zip(records, out, strict=True):
                w.writerow([*rec[:nk], "yes" if o["found"] else "no",
                            *[("match" if o["fields"].get(fl) else "mismatch")
                              if o["found"] else "" for fl in fields]])
    if as_json:
        click.echo(json.dumps({**summary, **({} if output else {"results": out})},
                              ensure_ascii=False))
    else:
        if output is None:
            for o in out:
                k = o["key"] if isinstance(o["key"], str) else ",".join(map(str, o["key"]))
                click.echo(f"{k}  " + ("not found" if not o["found"] else "  ".join(
                    f"{f}={'match' if m else 'MISMATCH'}" for f, m in o["fields"].items())))
        click.echo(f"{len(out)} record(s): {n_found} found, {n_match} matching in every "
                   f"field ({ms:.0f} ms)", err=output is None)
    if n_match < len(out):
        raise SystemExit(1)


class _Quiet:
    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None
