"""``exnode ledger [--month YYYY-MM] [--format json|csv|xlsx|pdf] [-o FILE] [--bom]``
and ``exnode ledger verify FILE [--sig FILE.sig] [--member ID] [--ca CA.crt]``.

Light: the standard library and click; the figures and files are made by the daemon
(``GET /ledger``), which signs them with the node's key."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from exnode.node.base.errors import UsageError
from exnode.node.kernel.api import CommandContext

from .months import parse_month

FORMATS = ("json", "csv", "xlsx", "pdf")
SIG_SUFFIX = ".sig"


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file beside it, fsync,
    rename), 0600 from the first byte."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UsageError(f"-o {path}: cannot write it ({e.strerror or e})") from None


def _writable(path: Path) -> None:
    d = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"-o {path}: is a directory")
    if not d.is_dir():
        raise UsageError(f"-o {path}: no directory {d}")
    if not os.access(d, os.W_OK | os.X_OK):
        raise UsageError(f"-o {path}: the directory {d} is not writable")


def _fmt_of(fmt: str | None, output: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise UsageError(f"--format '{fmt}': one of {', '.join(FORMATS)}")
        return fmt
    if output and output != "-":
        ext = Path(output).suffix.lower().lstrip(".")
        if ext in FORMATS:
            return ext
    return "json"


def _summary(data: dict[str, Any]) -> str:
    lg = data["log"]
    lines = [f"ledger {data['month']} at {data['node']} ({data['from_local']} – "
             f"{data['to_local']}): {lg['rows']} log rows"
             + (f", ids {lg['first_id']}-{lg['last_id']}" if lg["rows"] else "")]
    for sec in data["sections"]:
        if not sec.get("available", True):
            lines.append(f"  {sec['id']:<14} (not loaded here)")
            continue
        tot = sec["total"]
        figs = ", ".join(f"{c['name']} {'-' if tot.get(c['name']) is None else tot[c['name']]}"
                         for c in sec["columns"])
        lines.append(f"  {sec['id']:<14} {figs}")
    return "\n".join(lines)


@click.group(invoke_without_command=True)
@click.option("--month", help="YYYY-MM, in the node's time zone (access.timezone); "
              "default: the previous month.")
@click.option("--format", "fmt", default=None, metavar="json|csv|xlsx|pdf",
              help="Default: from -o's extension, else json.")
@click.option("-o", "--output", help="The file to write (FILE.sig beside it); '-' or none "
              "with json: print.")
@click.option("--bom", is_flag=True, help="CSV: a UTF-8 BOM first, so Excel reads Chinese.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ledger(ctx: click.Context, month: str | None, fmt: str | None, output: str | None,
           bom: bool, as_json: bool) -> None:
    """The monthly ledger (台账): per resource and per peer, packages, bytes, queries,
    verifications, requests, corrections, zero-update reports, quarantine and freshness,
    from the exchange log; files are signed by the node (FILE.sig)."""
    if ctx.invoked_subcommand is not None:
        return
    obj: CommandContext = ctx.obj
    if month is not None:
        parse_month(month)
    fmt = _fmt_of(fmt, output)
    to_stdout = output in (None, "-")
    if fmt != "json" and output is None:
        raise UsageError(f"--format {fmt}: give the file with -o FILE (or -o - for stdout)")
    path = None if to_stdout else Path(output or "")
    if path is not None:
        _writable(path)
    q = f"format={fmt}" + (f"&month={month}" if month else "") + ("&bom=1" if bom else "")
    if fmt == "json" and to_stdout:
        data = obj.call("GET", f"/ledger?{q}", timeout=600)
        obj.show(data, as_json or output == "-", _summary)
        return
    out = obj.call("GET", f"/ledger?{q}&signed=1", timeout=600)
    blob: bytes = out.pop("blob")
    if path is None:
        sys.stdout.buffer.write(blob)
        sys.stdout.buffer.flush()
        return
    sig_path = path.with_name(path.name + SIG_SUFFIX)
    write_private(path, blob)
    write_private(sig_path, (json.dumps(out["sig"], ensure_ascii=False, indent=1) + "\n")
                  .encode())
    info = {"file": str(path), "sig": str(sig_path), "month": out["month"], "format": fmt,
            "size": out["size"], "sha256": out["sha256"], "node": out["sig"]["node"],
            "log": out["log"], "totals": out["totals"]}
    obj.show(info, as_json, f"wrote {path} ({out['size']:,} bytes, sha256 "
             f"{out['sha256'][:16]}…) and {sig_path}, signed by {info['node']}")


@ledger.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--sig", "sig_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Default: FILE.sig.")
@click.option("--member", help="The node that must have signed it (default: whoever the "
              "signature names).")
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False, path_type=Path),
              help="The center's CA certificate (default: the node's keys/ca.crt).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def ledger_verify(obj: CommandContext, file: Path, sig_file: Path | None, member: str | None,
                  ca_file: Path | None, as_json: bool) -> None:
    """Check a ledger file against its signature, offline: with this node's own key when
    it signed it, else with the signer's certificate checked against the center's CA.
    Exit 1 with the reason when it does not verify."""
    from . import signing

    sig_file = sig_file or file.with_name(file.name + SIG_SUFFIX)
    try:
        data = file.read_bytes()
    except OSError as e:
        raise UsageError(f"{file}: {e.strerror or e}") from None
    try:
        raw = sig_file.read_bytes()
    except OSError as e:
        raise signing.NotVerified(f"{sig_file}: {e.strerror or e} (no signature)") from None
    doc = signing.load_sig(raw)
    if member and doc["node"] != member:
        raise signing.NotVerified(f"signed by {doc['node']}, not by {member}")
    cfg = None
    with contextlib.suppress(Exception):
        cfg = obj.config()
    key, how = None, ""
    if cfg is not None and doc["node"] == cfg.node.id and ca_file is None:
        key, how = _own_key(cfg.keys_dir / "sign.key"), "this node's key"
    if key is None:
        ca = ca_file or (cfg.keys_dir / "ca.crt" if cfg is not None else None)
        if ca is None:
            raise UsageError("--ca: the center's CA certificate is needed (no node "
                             "configuration here)")
        try:
            ca_pem = ca.read_bytes()
        except OSError as e:
            raise UsageError(f"--ca {ca}: {e.strerror or e}") from None
        key, how = signing.cert_key(doc, ca_pem), f"{doc['node']}'s certificate from the CA"
    signing.verify(data, doc, key)
    out = {"ok": True, "file": str(file), "node": doc["node"], "month": doc["month"],
           "format": doc.get("format"), "sha256": doc["sha256"], "checked_with": how}
    obj.show(out, as_json, f"{file}: signature ok: the {doc['month']} ledger of "
             f"{doc['node']}, checked with {how}")


def _own_key(path: Path) -> bytes | None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        k = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(k, ed25519.Ed25519PrivateKey):
        return None
    return k.public_key().public_bytes(serialization.Encoding.Raw,
                                       serialization.PublicFormat.Raw)
