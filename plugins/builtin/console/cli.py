"""``exnode console accounts|add|passwd|role|unlock|disable|enable|audit|cert|url``."""

from __future__ import annotations

import getpass
import os
import pwd
import sys
from datetime import datetime
from typing import Any

import click

from exnode.node.base.errors import UsageError
from exnode.node.kernel.api import CommandContext


def _t(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _actor() -> dict[str, str]:
    try:
        who = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        who = str(os.getuid())
    return {"actor": f"cli:{who}", "actor_role": "shell", "client": "control socket"}


def _password(from_stdin: bool, name: str) -> str:
    if from_stdin:
        pw = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        pw = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != pw:
            raise UsageError("the two passwords differ")
    else:
        raise UsageError("give the password on standard input with --password-stdin")
    if not pw:
        raise UsageError("the password is empty")
    return pw


def _accounts_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no console accounts (add one: exnode console add NAME --role sysadmin)"
    out = [f"{'NAME':<20} {'ROLE':<10} {'LANG':<5} {'STATE':<22} LAST LOGIN"]
    for r in rows:
        state = "disabled" if r["disabled"] else (f"locked to {_t(r['locked_until'])[11:]}"
                                                  if r.get("locked_until") else "active")
        out.append(f"{r['name']:<20} {r['role']:<10} {r['lang']:<5} {state:<22} "
                   f"{_t(r.get('last_login'))}")
    return "\n".join(out)


@click.group()
def console() -> None:
    """The web console: accounts (三员分立 roles), its audit trail, its certificate."""


@console.command("accounts")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def console_accounts(obj: CommandContext, as_json: bool) -> None:
    """Console accounts with their role and state."""
    obj.show(obj.call("GET", "/console/accounts"), as_json, _accounts_text)


@console.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["sysadmin", "secadmin", "auditor",
                                                          "operator", "readonly"]),
              help="sysadmin 系统管理员, secadmin 安全管理员, auditor 审计员, operator 操作员, "
                   "readonly 只读.")
@click.option("--lang", default="zh", show_default=True, type=click.Choice(["zh", "en"]))
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def console_add(obj: CommandContext, name: str, role: str, lang: str, password_stdin: bool,
                as_json: bool) -> None:
    """Add a console account (at least 12 characters, three character classes)."""
    pw = _password(password_stdin, name)
    r = obj.call("POST", "/console/accounts", {"name": name, "role": role, "lang": lang,
                                               "password": pw, **_actor()})
    obj.show(r, as_json, f"added {r['name']} ({r['role']})")


@console.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def console_passwd(obj: CommandContext, name: str, password_stdin: bool, as_json: bool) -> None:
    """Set an account's password (its sessions end)."""
    pw = _password(password_stdin, name)
    r = obj.call("POST", f"/console/accounts/{name}/password", {"password": pw, **_actor()})
    obj.show(r, as_json, f"password of {name} set")


@console.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(["sysadmin", "secadmin", "auditor", "operator",
                                           "readonly"]))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def console_role(obj: CommandContext, name: str, role: str, as_json: bool) -> None:
    """Give an account another role (its sessions end)."""
    r = obj.call("POST", f"/console/accounts/{name}/role", {"role": role, **_actor()})
    obj.show(r, as_json, f"{name} is now {role}")


def _simple(action: str, done: str) -> Any:
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_obj
    def cmd(obj: CommandContext, name: str, as_json: bool) -> None:
        r = obj.call("POST", f"/console/accounts/{name}/{action}", _actor())
        obj.show(r, as_json, f"{name} {done}")

    cmd.__doc__ = f"{action.capitalize()} a console account."
    return console.command(action)(cmd)


_simple("unlock", "unlocked")
_simple("disable", "disabled (its sessions ended)")
_simple("enable", "enabled")


@console.command("audit")
@click.option("--verify", is_flag=True, help="Check the chain and its anchor in the exchange "
              "log; exit 1 when broken.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--actor")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def console_audit(obj: CommandContext, verify: bool, limit: int, actor: str | None,
                  as_json: bool) -> None:
    """The console's audit trail (newest last): who did what, when, from where."""
    if verify:
        r = obj.call("GET", "/console/audit/verify")
        obj.show(r, as_json, (f"audit trail intact: {r['entries']} entries" if r["ok"] else
                              "AUDIT TRAIL BROKEN: " + "; ".join(r["problems"])))
        if not r["ok"]:
            raise SystemExit(1)
        return
    q = f"/console/audit?limit={limit}" + (f"&actor={actor}" if actor else "")
    rows = obj.call("GET", q)[::-1]
    obj.show(rows, as_json, lambda rows: "\n".join(
        f"{r['id']:>6} {_t(r['ts'])} {r['actor']:<16} {r['action']:<18} {r['outcome']:<8} "
        f"{r['target']}" + (f"  {r['detail']}" if r["detail"] else "") for r in rows)
        or "no audit entries")


@console.command("cert")
@click.option("--force", is_flag=True, help="Replace the certificate the console made.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def console_cert(obj: CommandContext, force: bool, as_json: bool) -> None:
    """Make the console's self-signed TLS certificate (ECDSA P-256, which browsers accept),
    for the host of console.listen; the daemon makes it on start when missing."""
    from exnode.node.base.tlscert import console_cert_paths, make_console_cert

    cfg = obj.config()
    cert, key = console_cert_paths(cfg)
    if cert.exists() and not force:
        raise UsageError(f"{cert} exists (give --force to replace it)")
    fp = make_console_cert(cfg, cert, key)
    obj.show({"cert": str(cert), "key": str(key), "sha256": fp}, as_json,
             f"certificate {cert}\nkey {key} (0600)\nSHA-256 fingerprint {fp}")
