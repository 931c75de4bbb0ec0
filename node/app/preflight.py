"""``exnode config check --connect``: try what the configuration names, before the
daemon does.

Every check gives one :class:`Check` (ok, FAIL or warn, with a reason):

- files: password files (0600) and TLS files named in the config exist and are safe;
- ``databases.NAME``: a connection (no such database, wrong password, server down,
  unsupported URL scheme: node/base/dberrors.py);
- ``resources.ID``: its table in its database, the key columns, the fields, the owner,
  version and capture columns, and every field its quality rules name;
- ``broker``: an MQTT connect and disconnect with the configured login and TLS, under a
  throwaway client id (never the node's own, which would push the daemon off);
- ``members`` (center): owners and subscribers the configuration names that are not
  approved members in the registry.

Plain ``exnode config check`` connects to nothing; only this module does.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import ssl
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from exnode.node.base.config import Config, ResourceSpec

TIMEOUT_S = 5.0

Level = Literal["ok", "fail", "warn"]


@dataclass
class Check:
    """One line of the report: ``check`` names the setting, ``detail`` says why."""

    check: str
    level: Level
    detail: str

    @property
    def ok(self) -> bool:
        return self.level != "fail"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return {"check": d["check"], "ok": d["ok"], "detail": d["detail"],
                "level": d["level"]}

    def line(self) -> str:
        word = {"ok": "ok  ", "fail": "FAIL", "warn": "warn"}[self.level]
        return f"{word} {self.check}: {self.detail}"


def ok(check: str, detail: str) -> Check:
    return Check(check, "ok", detail)


def fail(check: str, detail: str) -> Check:
    return Check(check, "fail", detail)


def warn(check: str, detail: str) -> Check:
    return Check(check, "warn", detail)


# --- files -----------------------------------------------------------------------------------

def _file(setting: str, path: Path, secret: bool) -> Check:
    try:
        st = path.stat()
        with path.open("rb"):
            pass
    except OSError as e:
        return fail(setting, f"cannot read {path}: {e.strerror}")
    if not stat.S_ISREG(st.st_mode):
        return fail(setting, f"{path} is not a file")
    mode = stat.S_IMODE(st.st_mode)
    if secret and mode & 0o077:
        return fail(setting, f"{path} has mode {mode:04o}: others may read it "
                    f"(chmod 600 {path})")
    if mode & 0o002:
        return fail(setting, f"{path} has mode {mode:04o}: anybody may change it "
                    f"(chmod o-w {path})")
    return ok(setting, f"{path} ({mode:04o})")


def check_files(cfg: Config) -> list[Check]:
    """The password, key and CA files that the configuration names."""
    out = []
    for name, db in cfg.databases.items():
        if db.password_file:
            out.append(_file(f"databases.{name}.password_file", cfg.resolve(db.password_file),
                             secret=True))
    b = cfg.broker
    if b.password_file:
        out.append(_file("broker.password_file", cfg.resolve(b.password_file), secret=True))
    if b.tls is not None:
        out.append(_file("broker.tls.ca", cfg.resolve(b.tls.ca), secret=False))
        if b.tls.cert:
            out.append(_file("broker.tls.cert", cfg.resolve(b.tls.cert), secret=False))
        if b.tls.key:
            out.append(_file("broker.tls.key", cfg.resolve(b.tls.key), secret=True))
    return out


# --- databases and resources --------------------------------------------------------------

_CONNECT_ARGS = {"postgresql": {"connect_timeout": int(TIMEOUT_S)},
                 "mysql": {"connect_timeout": int(TIMEOUT_S)},
                 "sqlite": {"timeout": TIMEOUT_S}}


def _engine(cfg: Config, name: str) -> Any:
    """An engine for ``databases.NAME`` with a short connect timeout (raises what
    create_engine raises, or OSError for an unreadable password file)."""
    from sqlalchemy import create_engine

    url = cfg.database_url(name)
    args = _CONNECT_ARGS.get(url.get_backend_name(), {})
    return create_engine(url, connect_args=args, poolclass=_null_pool())


def _null_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool


def check_database(cfg: Config, name: str) -> tuple[Check, Any]:
    """Connect to ``databases.NAME``; (the check, the engine or None)."""
    from sqlalchemy.exc import SQLAlchemyError

    from exnode.node.base import dberrors

    setting = f"databases.{name}"
    db = cfg.databases[name]
    if db.kind != "sql":
        return warn(setting, f"kind '{db.kind}': served by a plugin's adapter, not "
                    "checked here"), None
    try:
        eng = _engine(cfg, name)
    except OSError as e:
        return fail(setting, f"cannot read the password file "
                    f"{cfg.resolve(db.password_file or '')}: {e.strerror}"), None
    except (SQLAlchemyError, ModuleNotFoundError) as e:
        return fail(setting, dberrors.describe(e, None, db.url)), None
    try:
        with eng.connect() as conn:
            version = conn.dialect.server_version_info
    except (SQLAlchemyError, ModuleNotFoundError) as e:
        eng.dispose()
        return fail(setting, dberrors.describe(e, None, db.url)), None
    shown = ".".join(str(v) for v in version or ()) or "?"
    return ok(setting, f"connected to {dberrors.safe_url(db.url)} ({eng.dialect.name} "
              f"{shown})"), eng


def _rule_fields(cfg: Config, rid: str, r: ResourceSpec) -> list[str]:
    """Every field the resource's quality rules and cleaning steps name."""
    if not r.quality:
        return []
    from exnode.plugins.manager import make_manager
    from exnode.policies.quality import RuleSpecError, builtin_registry, compile_ruleset

    reg = builtin_registry()
    make_manager(cfg.plugins.disable).hook.exnode_quality_rules(register=reg.register)
    try:
        rs = compile_ruleset({"resource": rid, **r.quality}, registry=reg,
                             exists=lambda f, v: set(), lookup=lambda res, f, v: set(v),
                             base_dir=cfg.base_dir)
    except RuleSpecError:
        return []  # reported by the offline check already
    return list(rs.fields)


def _columns(eng: Any, r: ResourceSpec, table: str) -> list[str] | str:
    """The column names of ``table`` (or of the resource's query), or why not."""
    import sqlalchemy as sa

    try:
        t = sa.Table(table, sa.MetaData(), autoload_with=eng, schema=r.db_schema)
    except sa.exc.NoSuchTableError:
        shown = f"{r.db_schema}.{table}" if r.db_schema else table
        return f"table '{shown}' does not exist"
    return [c.key for c in t.c]


def _query_columns(eng: Any, query: str) -> list[str] | str:
    import sqlalchemy as sa

    from exnode.node.base import dberrors

    q = query.strip().rstrip(";").strip()
    probe = sa.select(sa.literal_column("*")).select_from(
        sa.text(q).columns().subquery("exnode_q")).where(sa.false())
    try:
        with eng.connect() as conn:
            return list(conn.execute(probe).keys())
    except sa.exc.DBAPIError as e:
        return f"the query does not run: {dberrors.tidy(str(e))}"


def _missing(names: list[str], have: list[str]) -> list[str]:
    exact = set(have)
    lower: dict[str, int] = {}
    for h in have:
        lower[h.lower()] = lower.get(h.lower(), 0) + 1
    return [n for n in names if n not in exact and lower.get(n.lower()) != 1]


def check_resource(cfg: Config, rid: str, r: ResourceSpec, eng: Any) -> list[Check]:
    """Table, key columns, fields and the columns the rules name, in the database."""
    from sqlalchemy.exc import SQLAlchemyError

    from exnode.node.base import dberrors

    setting = f"resources.{rid}"
    where = f"databases.{r.database}"
    try:
        have = _query_columns(eng, r.query) if r.query is not None \
            else _columns(eng, r, r.table or "")
    except SQLAlchemyError as e:
        return [fail(setting, dberrors.describe(e, where))]
    if isinstance(have, str):
        return [fail(setting, f"{have} in {where}")]
    source = "the query" if r.query is not None else f"table '{r.table}'"
    wanted: list[tuple[str, list[str]]] = [
        ("key", list(r.key)), ("fields", list(r.fields or [])),
        ("owner_column", [r.owner_column] if r.owner_column else []),
        ("version_column", [r.version_column] if r.version_column else []),
        ("capture.column", [r.capture.column] if r.capture and r.capture.column else []),
        ("quality", _rule_fields(cfg, rid, r)),
    ]
    out = []
    for what, names in wanted:
        gone = _missing(names, have)
        if gone:
            out.append(fail(f"{setting}.{what}", f"{source} in {where} has no column "
                            + ", ".join(f"'{g}'" for g in gone)))
    if r.target_table and r.target_table != r.table:
        try:
            tgt = _columns(eng, r, r.target_table)
        except SQLAlchemyError as e:
            tgt = dberrors.describe(e, where)
        if isinstance(tgt, str):
            out.append(fail(f"{setting}.target_table", f"{tgt} in {where}"))
        elif _missing(list(r.key), tgt):
            out.append(fail(f"{setting}.target_table", f"table '{r.target_table}' in "
                            f"{where} has no column " + ", ".join(
                                f"'{g}'" for g in _missing(list(r.key), tgt))))
    if not out:
        n = len({c for _w, names in wanted for c in names})
        out.append(ok(setting, f"{source} in {where} has the {n} columns the "
                      "configuration names"))
    return out


def check_databases(cfg: Config) -> list[Check]:
    """Every database, then every resource in the databases that answered."""
    out = []
    engines: dict[str, Any] = {}
    try:
        for name in cfg.databases:
            c, eng = check_database(cfg, name)
            out.append(c)
            if eng is not None:
                engines[name] = eng
        for rid, r in cfg.resources.items():
            eng = engines.get(r.database)
            if eng is None:
                if cfg.databases.get(r.database) is not None \
                        and cfg.databases[r.database].kind == "sql":
                    out.append(fail(f"resources.{rid}", f"not checked: databases."
                                    f"{r.database} does not answer"))
                continue
            out += check_resource(cfg, rid, r, eng)
    finally:
        for eng in engines.values():
            eng.dispose()
    return out


# --- broker ----------------------------------------------------------------------------------

def _expects_tls(host: str, port: int) -> bool:
    """Whether a TLS handshake (not verified: only asking) succeeds on host:port."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S) as raw, \
                ctx.wrap_socket(raw, server_hostname=host):
            return True
    except (OSError, ssl.SSLError):
        return False


async def _connect_once(cfg: Config, password: str | None, tls: ssl.SSLContext | None,
                        timeout: float) -> str:
    """Connect and disconnect at once; the MQTT version that worked."""
    import aiomqtt

    b = cfg.broker
    versions = {"5": [aiomqtt.ProtocolVersion.V5], "3.1.1": [aiomqtt.ProtocolVersion.V311],
                "auto": [aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311]}[b.protocol]
    for i, proto in enumerate(versions):
        try:
            async with aiomqtt.Client(
                    b.host, b.port, identifier=f"exn-check-{secrets.token_hex(6)}",
                    protocol=proto, username=b.username, password=password,
                    tls_context=tls, timeout=timeout, keepalive=max(5, int(timeout) * 2)):
                return "5" if proto == aiomqtt.ProtocolVersion.V5 else "3.1.1"
        except aiomqtt.MqttCodeError as e:
            rc = getattr(e, "rc", None)
            if getattr(rc, "value", rc) in (1, 132) and i + 1 < len(versions):
                continue  # the broker speaks only 3.1.1
            raise
    raise AssertionError("no MQTT version to try")


def check_broker(cfg: Config, timeout: float = TIMEOUT_S) -> Check:
    """An MQTT connect and disconnect with the configured login and TLS."""
    import aiomqtt

    from exnode.node.base.errors import ConfigError
    from exnode.node.kernel.transport import broker_credentials, connect_error

    b = cfg.broker
    where = f"{b.host}:{b.port}"
    try:
        password, tls = broker_credentials(cfg)
    except ConfigError as e:
        return fail("broker", f"not connected: {str(e).removeprefix(f'{cfg.source}: ')}")
    try:
        proto = asyncio.run(asyncio.wait_for(_connect_once(cfg, password, tls, timeout),
                                             timeout * 3))
    except (aiomqtt.MqttError, OSError, TimeoutError) as e:
        why = connect_error(e, cfg)
        if tls is None and "expect TLS" in why and _expects_tls(b.host, b.port):
            why = (f"the broker at {where} expects TLS (a TLS handshake there succeeds) and "
                   "the config has no broker.tls section: set broker.tls.ca")
        return fail("broker", why)
    login = f" as '{b.username}'" if b.username else " (anonymous)"
    return ok("broker", f"connected to {where}{login}, MQTT {proto}"
              + (", TLS" if tls is not None else ", no TLS"))


# --- center: members ---------------------------------------------------------------------

def check_members(unknown: list[str], cfg: Config) -> list[Check]:
    """(center) The owners and subscribers that are not approved members (from
    ``cli._unknown_parties``), one warning each."""
    if not unknown:
        n = len({x for r in cfg.resources.values() for x in [r.owner, *r.subscribers]
                 if x and x != cfg.node.id})
        return [ok("members", f"the {n} owners and subscribers named are approved members")]
    out = []
    for line in unknown:
        setting, _, why = line.partition(": ")
        out.append(warn(setting, why or line))
    return out


# --- all ----------------------------------------------------------------------------------------

def run_checks(cfg: Config, offline: list[str],
               unknown_parties: Callable[[Config], list[str]] | None = None) -> list[Check]:
    """Every check, in order: the offline warnings of ``config check`` (``offline``),
    files, databases and resources, the broker, and (center) the members."""
    out = [ok("config", f"{cfg.source} is valid ({cfg.node.role} '{cfg.node.id}')")]
    out += [warn("config", p) for p in offline]
    out += check_files(cfg)
    out += check_databases(cfg)
    out.append(check_broker(cfg))
    if cfg.node.role == "center" and cfg.resources and unknown_parties is not None:
        out += check_members(unknown_parties(cfg), cfg)
    return out
