"""The ``exnode`` command line. Every listing takes ``--json``; every failure is one
line on stderr and a non-zero exit code."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from exnode.node.base.config import Config, load_config, parse_duration, render_config
from exnode.node.base.errors import ConfigError, ExnodeError, NotFound, UsageError
from exnode.node.base.fmt import ago, ts

DEFAULT_CONFIG = "exnode.yaml"


def _fail(msg: str, code: int = 1) -> NoReturn:
    click.echo(f"exnode: error: {msg}", err=True)
    sys.exit(code)


class ExnodeGroup(click.Group):
    """Turns every error into one line and an exit code; never a traceback."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except ExnodeError as e:
            _fail(str(e), e.exit_code)
        except (KeyboardInterrupt, click.exceptions.Abort):
            _fail("interrupted", 130)
        except click.exceptions.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except BrokenPipeError:
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ExnodeError, click.exceptions.Exit, click.ClickException, click.Abort,
                SystemExit, KeyboardInterrupt):
            raise
        except Exception as e:
            if os.environ.get("EXNODE_DEBUG"):
                raise
            db = _database_error(ctx, e)
            if db:
                _fail(db, 1)
            _fail(f"internal error: {type(e).__name__}: {e} (set EXNODE_DEBUG=1 for details)",
                  70)


def _database_error(ctx: click.Context, e: BaseException) -> str | None:
    """A database error (server down, no such database, wrong password, unsupported URL)
    as one line naming the setting, or None when ``e`` is not one."""
    if "sqlalchemy" not in sys.modules:
        return None
    from sqlalchemy.exc import SQLAlchemyError

    if not isinstance(e, SQLAlchemyError):
        return None
    from exnode.node.base import dberrors

    obj = ctx.obj
    cfg = obj._cfg if isinstance(obj, Context) else None
    if cfg is None and isinstance(obj, Context):
        with contextlib.suppress(Exception):
            cfg = obj.config()
    setting, url = dberrors.locate(cfg, e)
    if url is None and setting and setting.startswith("databases.") and cfg is not None:
        url = cfg.databases[setting.removeprefix("databases.")].url
    return dberrors.describe(e, setting, url)


class Context:
    """``ctx.obj`` of every command (``exnode.node.kernel.api.CommandContext``): where the
    configuration is, and the one way to call the daemon and print its answer."""

    def __init__(self, config: str | None) -> None:
        self._config = config
        self._cfg: Config | None = None

    def config_path(self) -> Path:
        if self._config:
            return Path(self._config)
        env = os.environ.get("EXNODE_CONFIG")
        if env:
            return Path(env)
        if Path(DEFAULT_CONFIG).exists():
            return Path(DEFAULT_CONFIG)
        etc = Path("/etc/exnode/exnode.yaml")
        return etc if etc.exists() else Path(DEFAULT_CONFIG)

    def config(self) -> Config:
        if self._cfg is None:
            self._cfg = load_config(self.config_path())
        return self._cfg

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = 60.0) -> Any:
        from exnode.node.app.client import call

        return call(self.config().socket_path, method, path, body, timeout)

    def show(self, data: Any, as_json: bool, text: str | Callable[[Any], str] = "") -> None:
        if as_json:
            click.echo(json.dumps(data, ensure_ascii=False, default=str, indent=None))
        elif callable(text):
            click.echo(text(data))
        elif text:
            click.echo(text)


def _out(data: Any, as_json: bool, text: str = "") -> None:
    Context(None).show(data, as_json, text)


def _duration(s: str, what: str = "duration") -> float:
    try:
        return parse_duration(s)
    except ValueError:
        raise UsageError(f"{what} '{s}' is not a duration (use e.g. 30m, 12h, 7d)") from None


@click.group(cls=ExnodeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config", metavar="FILE", envvar="EXNODE_CONFIG",
              help="Node configuration (default: ./exnode.yaml, then /etc/exnode/exnode.yaml).")
@click.version_option(package_name="exnode")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """exnode: data-exchange node for government information sharing (政务信息共享交换)."""
    ctx.obj = Context(config)


# --- init / config -----------------------------------------------------------------------

@cli.command()
@click.option("--role", type=click.Choice(["center", "bureau"]), required=True)
@click.option("--id", "node_id", required=True, help="This node's id.")
@click.option("--dir", "directory", type=click.Path(file_okay=False), required=True,
              help="Folder for the config file, keys and state.")
@click.option("--broker-host", default="127.0.0.1", show_default=True)
@click.option("--broker-port", default=1883, show_default=True, type=click.IntRange(1, 65535))
@click.option("--center-id", default="center", show_default=True,
              help="(bureau) the center's node id.")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Keys, state and socket here instead of beside the config file "
              "(e.g. --dir /etc/exnode --data-dir /var/lib/exnode).")
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@click.option("--json", "as_json", is_flag=True)
def init(role: str, node_id: str, directory: str, broker_host: str, broker_port: int,
         center_id: str, data_dir: str | None, force: bool, as_json: bool) -> None:
    """Write a commented config file and generate this node's keys (files 0600)."""
    from exnode.node.base.config import parse_config
    from exnode.node.kernel import identity as idn

    d = Path(directory)
    cfg_path = d / DEFAULT_CONFIG
    if cfg_path.exists() and not force:
        raise UsageError(f"{cfg_path} exists (use --force to overwrite the file; keys are kept)")
    text = render_config(role, node_id, broker_host, broker_port, center_id)
    if data_dir:
        text = text.replace("  data_dir: .\n", f"  data_dir: {Path(data_dir).resolve()}\n")
    parse_config(text, str(cfg_path))  # the template must validate, and the id too
    d.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(text, encoding="utf-8")
    cfg = load_config(cfg_path)
    idn.generate_node_keys(cfg.keys_dir)
    from exnode.node.base.tlscert import console_cert_paths, make_console_cert

    console_cert, console_key = console_cert_paths(cfg)
    if not console_cert.exists():  # ECDSA P-256: a key type browsers accept
        make_console_cert(cfg, console_cert, console_key)
    fp = None
    if role == "center":
        from exnode.node.kernel import registry
        from exnode.node.kernel.state import open_state

        if not (cfg.keys_dir / idn.CA_CERT).exists():
            idn.create_ca(cfg.keys_dir, node_id)
        ident = idn.Identity(node_id, cfg.keys_dir)
        eng = open_state(cfg.state_url)
        registry.ensure_self(eng, ident)
        eng.dispose()
        ca = ident.ca_cert
        assert ca is not None
        fp = idn.fingerprint(ca)
    info = {"config": str(cfg_path), "role": role, "id": node_id, "keys": str(cfg.keys_dir),
            "ca_fingerprint": fp}
    nxt = ("next: exnode -c {c} run   (then: exnode -c {c} nodes invite BUREAU-ID)"
           if role == "center" else
           "next: ask the center for a token, then: exnode -c {c} register TOKEN")
    _out(info, as_json, f"wrote {cfg_path} and keys in {cfg.keys_dir}"
         + (f"\nCA fingerprint: {fp}" if fp else "") + "\n" + nxt.format(c=cfg_path))


@cli.group()
def config() -> None:
    """Check or describe the configuration."""


@config.command("check")
@click.option("--connect", is_flag=True, help="Also connect to every database and the "
              "broker, check every resource's table and columns, the files' modes and "
              "(center) the members; exit 1 if a check fails.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def config_check(ctx: click.Context, connect: bool, as_json: bool) -> None:
    """Validate the config file (exit 2 with FILE:LINE on error); with --connect, try
    what it names: one line per check, ok, FAIL or warn (exit 1 on a FAIL)."""
    path = ctx.obj.config_path()
    cfg = load_config(path)
    problems = []
    if not (cfg.keys_dir / "sign.key").exists():
        problems.append(f"{cfg.keys_dir}/sign.key is missing (run 'exnode init')")
    for p in cfg.keys_dir.glob("*.key") if cfg.keys_dir.exists() else []:
        if p.stat().st_mode & 0o077:
            problems.append(f"{p} is readable by others (chmod 600 {p})")
    from exnode.node.kernel.transport import broker_credentials

    try:  # the files only: nothing is connected to
        broker_credentials(cfg)
    except ConfigError as e:
        problems.append(str(e).removeprefix(f"{cfg.source}: "))
    if cfg.broker.password_file:
        pw = cfg.resolve(cfg.broker.password_file)
        if pw.exists() and pw.stat().st_mode & 0o077:
            problems.append(f"broker.password_file: {pw} is readable by others "
                            f"(chmod 600 {pw})")
    if cfg.node.role == "bureau" and not (cfg.keys_dir / "ca.crt").exists():
        problems.append("not registered with a center yet (run 'exnode register TOKEN')")
    if any(r.quality for r in cfg.resources.values()):
        from exnode.plugins.manager import make_manager
        from exnode.policies.quality import RuleSpecError, builtin_registry, compile_ruleset

        reg = builtin_registry()
        make_manager(cfg.plugins.disable).hook.exnode_quality_rules(register=reg.register)
        for rid, r in cfg.resources.items():
            if not r.quality:
                continue
            try:  # reference and shared-library checks need the daemon; compile only
                compile_ruleset({"resource": rid, **r.quality}, registry=reg,
                                exists=lambda f, v: set(), lookup=lambda res, f, v: set(v),
                                base_dir=cfg.base_dir)
            except RuleSpecError as e:
                raise ConfigError(f"{path}: resources.{rid}.quality: {e}") from None
    if connect:
        from exnode.node.app.preflight import run_checks

        checks = run_checks(cfg, problems, _unknown_parties)
        ctx.obj.show([c.as_dict() for c in checks], as_json,
                     "\n".join(c.line() for c in checks))
        if not all(c.ok for c in checks):
            sys.exit(1)
        return
    if cfg.node.role == "center" and cfg.resources:
        problems += _unknown_parties(cfg)
    info = {"config": str(path), "node": cfg.node.id, "role": cfg.node.role, "ok": True,
            "warnings": problems}
    _out(info, as_json, f"{path}: ok ({cfg.node.role} '{cfg.node.id}')"
         + "".join(f"\nwarning: {p}" for p in problems))


def _unknown_parties(cfg: Config) -> list[str]:
    """(center) Owners and subscribers the configuration names that are not approved
    members in the center's registry (their changes would be held, not sent)."""
    from sqlalchemy import select

    from exnode.node.kernel.state import members, open_state

    eng = open_state(cfg.state_url)
    try:
        with eng.connect() as conn:
            status = dict(conn.execute(select(members.c.id, members.c.status)).all())
    finally:
        eng.dispose()
    out = []
    for rid, r in cfg.resources.items():
        for role, ids in (("owner", [r.owner] if r.owner else []),
                          ("subscribers", r.subscribers)):
            for n in ids:
                if n == cfg.node.id or status.get(n) == "approved":
                    continue
                why = f"is {status[n]}" if n in status else "is not a member"
                out.append(f"resources.{rid}.{role}: '{n}' {why}"
                           + (" (its changes are held at the center until it is approved)"
                              if role == "subscribers" else ""))
    return out


@config.command("schema")
def config_schema() -> None:
    """Print the configuration reference (JSON Schema from the pydantic models)."""
    click.echo(json.dumps(Config.model_json_schema(), indent=2, ensure_ascii=False))


# --- run / status / ping -------------------------------------------------------------------

@cli.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the daemon in the foreground (JSON log lines on stdout; SIGTERM stops it)."""
    from exnode.node.app.runtime import run_node

    run_node(ctx.obj.config())


@cli.command()
@click.option("--check", is_flag=True,
              help="Print only the problems, one per line; exit 1 if there is any.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, check: bool, as_json: bool) -> None:
    """Broker connection, members, outbox depth, last contact per peer and the health of
    every resource; with --check, exit 1 when anything is stopped, stale, behind or
    disconnected (for monitoring)."""
    st = ctx.obj.call("GET", "/status")
    problems = st.get("problems", [])
    if not check:
        ctx.obj.show(st, as_json, _status_text)
        return
    ctx.obj.show({"ok": not problems, "problems": problems}, as_json,
                 lambda d: "\n".join(f"PROBLEM {p}" for p in d["problems"]) or "ok")
    if problems:
        sys.exit(1)


def _status_text(st: dict[str, Any]) -> str:
    b = st["broker"]
    why = b.get("last_error") or st.get("last_error") or ""  # the transport's, first
    lines = [
        f"node      {st['node']} ({st['role']}), pid {st['pid']}, up {st['uptime_s']:.0f} s",
        f"broker    {b['host']}:{b['port']} "
        + (f"connected (MQTT {b['protocol']})" if b["connected"]
           else "NOT CONNECTED" + (f": {why}" if why else "")),
        f"gconf     version {st['gconf']['version']}, "
        + ("valid until " + ts(st["gconf"]["expires"]) if st["gconf"]["valid"]
           else "NOT VALID"),
        f"members   {', '.join(st['members']) or '-'}",
        f"outbox    {st['outbox_pending']} pending; inbox {st['inbox_waiting']} waiting "
        "for an earlier sequence",
    ]
    for p in st["peers"]:
        rtt = f", rtt {p['last_rtt_ms']:.1f} ms" if p.get("last_rtt_ms") else ""
        lines.append(f"peer      {p['node_id']}: last contact {ago(p['last_contact'])}{rtt}")
    for section in st.get("text", {}).values():  # the services' sections
        lines += section
    if st.get("last_error") and (b["connected"] or st["last_error"] != why):
        lines.append(f"last error {st['last_error']}")
    lines += [f"PROBLEM   {p}" for p in st.get("problems", [])]
    return "\n".join(lines)


# --- enrolment ------------------------------------------------------------------------------

@cli.command()
@click.argument("token")
@click.option("--timeout", default=30.0, show_default=True, type=float)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def register(ctx: click.Context, token: str, timeout: float, as_json: bool) -> None:
    """Enrol this bureau with the center using a one-time TOKEN ('-': read it from
    standard input, so that it shows in no process list or shell history)."""
    from exnode.node.base.errors import DaemonNotRunning
    from exnode.node.kernel.enrol import register_with_token

    path = ctx.obj.config_path()
    cfg = load_config(path)
    if token == "-":
        token = sys.stdin.readline().strip()
    try:  # register logs in under the node's one client id: it would push the daemon off
        ctx.obj.call("GET", "/status", timeout=5)
        raise UsageError("the daemon of this node is running; stop it before 'register'")
    except DaemonNotRunning:
        pass
    res = register_with_token(cfg, path, token, timeout)
    msg = {"approved": f"registered with center '{res['center']}' and approved; "
           "start the daemon with 'exnode run'",
           "pending": f"registered with center '{res['center']}'; awaiting approval "
           f"(on the center: exnode nodes approve {cfg.node.id})"}.get(
        res["status"], f"enrolment status: {res['status']}")
    if res["status"] not in ("approved", "pending"):  # revoked, rejected: not a member
        if as_json:
            _out(res, True)
        raise ExnodeError(f"the center answered '{res['status']}': this node is not a member "
                          "(ask the center's operator)")
    _out(res, as_json, msg)


@cli.group()
def nodes() -> None:
    """(center) Invite, list, approve, reject and revoke members."""


def _center(ctx: click.Context) -> tuple[Config, Any, Any]:
    from exnode.node.kernel import identity as idn
    from exnode.node.kernel.state import open_state

    cfg = ctx.obj.config()
    if cfg.node.role != "center":
        raise UsageError("this command runs on the center")
    return cfg, idn.Identity(cfg.node.id, cfg.keys_dir), open_state(cfg.state_url)


def _poke_gconf(ctx: click.Context) -> bool:
    from exnode.node.base.errors import DaemonNotRunning

    try:
        ctx.obj.call("POST", "/gconf/publish", {}, timeout=15)
        return True
    except DaemonNotRunning:
        return False


@nodes.command("invite")
@click.argument("node_id")
@click.option("--approve", is_flag=True, help="Approve the node as soon as it registers.")
@click.option("--ttl", default="7d", show_default=True, help="Token lifetime (e.g. 1h, 7d).")
@click.option("--broker-host", help="Broker address the bureau should use (default: this "
              "node's broker.host).")
@click.option("--broker-port", type=click.IntRange(1, 65535), help="Broker port for the bureau.")
@click.option("--readmit", is_flag=True, help="Invite a revoked node id again (it enrols "
              "afresh; the changes held for it go out once it is approved).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def nodes_invite(ctx: click.Context, node_id: str, approve: bool, ttl: str,
                 broker_host: str | None, broker_port: int | None, readmit: bool,
                 as_json: bool) -> None:
    """Issue a one-time enrolment token for NODE_ID."""
    from exnode.node.kernel import identity as idn
    from exnode.node.kernel import registry

    cfg, ident, eng = _center(ctx)
    ttl_s = _duration(ttl)
    password = None
    if cfg.broker.dynsec:
        # The daemon records the invitation and creates the node's broker account over
        # its own broker connection; the password exists only in the token from here on.
        from exnode.node.base.errors import DaemonNotRunning

        if not registry.idn_valid(node_id):
            raise UsageError(f"'{node_id}' is not a valid node id")
        try:
            ans = ctx.obj.call("POST", "/nodes/invite", {"node": node_id, "ttl_s": ttl_s,
                                                         "approve": approve,
                                                         "readmit": readmit}, timeout=30)
        except DaemonNotRunning:
            raise UsageError("broker.dynsec: the center's daemon must be running to create "
                             "the node's broker account (start it, then invite)") from None
        secret, password = bytes.fromhex(ans["secret"]), ans["broker_password"]
    else:
        secret = registry.invite(eng, cfg.node.id, node_id, ttl_s, approve, readmit)
    ca = ident.ca_cert
    assert ca is not None
    try:
        token = idn.make_token(center_id=cfg.node.id, host=broker_host or cfg.broker.host,
                               port=broker_port or cfg.broker.port,
                               ca_fp=idn.fingerprint(ca), node_id=node_id, secret=secret,
                               expires=int(time.time() + ttl_s),
                               prefix=cfg.broker.topic_prefix, broker_password=password)
    except ExnodeError:  # e.g. a --broker-host that is no host name: no invitation left
        registry.forget_invite(eng, node_id)
        raise
    _out({"node": node_id, "token": token, "expires": int(time.time() + ttl_s),
          "approve": approve}, as_json,
         f"token for '{node_id}' (valid {ttl}, single use; treat it as a password):\n{token}\n"
         f"on the bureau: exnode register {token[:16]}...")


@nodes.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def nodes_list(ctx: click.Context, as_json: bool) -> None:
    """Members and enrolment requests."""
    from exnode.node.kernel import registry

    _c, _i, eng = _center(ctx)
    ctx.obj.show(registry.list_members(eng), as_json, lambda rows: "\n".join(
        [f"{'NODE':<20} {'ROLE':<8} {'STATUS':<10} UPDATED"]
        + [f"{r['id']:<20} {r['role']:<8} {r['status']:<10} {ts(r['updated_at'])}"
           for r in rows]))


@nodes.command("invitations")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def nodes_invitations(ctx: click.Context, as_json: bool) -> None:
    """Invitations whose token has not been used yet (a used one is gone)."""
    from exnode.node.kernel import registry

    _c, _i, eng = _center(ctx)
    ctx.obj.show(registry.list_invitations(eng), as_json, lambda rows: "\n".join(
        [f"{'NODE':<20} {'APPROVE':<8} {'CREATED':<20} EXPIRES"]
        + [f"{r['node_id']:<20} {'yes' if r['approve'] else 'no':<8} "
           f"{ts(r['created_at']):<20} {ts(r['expires'])}"
           + (" (expired)" if r["expired"] else "") for r in rows]) if rows
        else "no open invitations")


def _status_cmd(action: str) -> Any:
    @click.argument("node_id")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def cmd(ctx: click.Context, node_id: str, as_json: bool) -> None:
        from exnode.node.kernel import registry

        _cfg, ident, eng = _center(ctx)
        st = registry.set_status(eng, ident, node_id, action)
        published = _poke_gconf(ctx)
        _out({"node": node_id, "status": st, "gconf_published": published}, as_json,
             f"{node_id}: {st}" + ("" if published else
                                   " (daemon not running: published when it starts)"))

    cmd.__doc__ = f"{action.capitalize()} member NODE_ID and publish the global configuration."
    return cmd


for _action in ("approve", "reject", "revoke"):
    nodes.command(_action)(_status_cmd(_action))


# --- plugins and the exchange log --------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """Loaded plugins and where they come from (less those the config disables)."""
    from exnode.plugins.manager import describe, make_manager

    disable: list[str] = []
    path = ctx.obj.config_path()
    if path.exists():
        disable = load_config(path).plugins.disable
    infos = [i.__dict__ for i in describe(make_manager(disable))]
    ctx.obj.show(infos, as_json, lambda infos: "\n".join(
        f"{i['name']:<32} "
        f"{'built-in' if i['builtin'] else i['distribution'] + ' ' + i['version']:<24} "
        f"hooks: {', '.join(i['hooks'])}" for i in infos))


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--peer")
@click.option("--resource")
@click.option("--since", help="e.g. 10m, 2h, 1d, or an ISO date/time.")
@click.option("--kind", "kinds", multiple=True, help="Only this package kind (rows, zero, "
              "data, receipt, ...); may be repeated.")
@click.option("--event", "events", multiple=True, help="Only this event (created, sent, "
              "applied, refused, relayed, ...); may be repeated.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000_000))
@click.pass_context
def log(ctx: click.Context, as_json: bool, peer: str | None, resource: str | None,
        since: str | None, kinds: tuple[str, ...], events: tuple[str, ...],
        limit: int) -> None:
    """The exchange log (交换信息库): newest entries last, with short package ids
    (`log show` takes any unique prefix)."""
    if ctx.invoked_subcommand is not None:
        return
    from exnode.node.kernel import exlog
    from exnode.node.kernel.state import open_state

    eng = open_state(ctx.obj.config().state_url)
    with eng.connect() as conn:
        rows = exlog.listing(conn, peer, resource, _since(since) if since else None, kinds,
                             events, limit)
    ctx.obj.show(rows, as_json, lambda rows: "\n".join(
        f"{r['id']:>7} {ts(r['ts'])} {(r['pkg_id'] or '-')[:8]:<8} {r['event']:<9} "
        f"{r['kind']:<8} {r['peer']:<22} "
        f"{r['resource'] or '-':<14} {r['size']:>9} {r['status']}"
        + (f"  {r['reason']}" if r["reason"] else "") for r in rows))


@log.command("show")
@click.argument("pkg_id")
@click.option("--hops", is_flag=True, help="(bureau) Ask the center for its hop of the "
              "package too (the daemon must run; the center answers a party only).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def log_show(ctx: click.Context, pkg_id: str, hops: bool, as_json: bool) -> None:
    """A package's trace as far as this node knows it."""
    from exnode.node.kernel import exlog
    from exnode.node.kernel.state import open_state

    eng = open_state(ctx.obj.config().state_url)
    with eng.connect() as conn:
        pkg_id = _unique_package(conn, pkg_id)
        data = exlog.trace(conn, pkg_id)
    if data is None:
        raise NotFound(f"package {pkg_id} is not known to this node")
    if hops:
        data = ctx.obj.call("GET", f"/log/trace/{pkg_id}?hops=1", timeout=30.0)
    ctx.obj.show(data, as_json, _trace_text)


def _unique_package(conn: Any, prefix: str) -> str:
    """The one package id that starts with ``prefix`` (a whole id is taken as it is)."""
    from sqlalchemy import select

    from exnode.node.kernel.state import exchange_log, inbox, outbox

    p = prefix.strip().lower()
    if len(p) == 36 or not p:
        return p
    if len(p) < 4 or any(c not in "0123456789abcdef-" for c in p):
        raise UsageError(f"'{prefix}': give at least 4 characters of a package id")
    found: set[str] = set()
    for t in (exchange_log, outbox, inbox):
        found |= set(conn.execute(select(t.c.pkg_id).where(t.c.pkg_id.like(p + "%"))
                                  .distinct().limit(5)).scalars())
    found.discard("")
    if len(found) > 1:
        raise UsageError(f"'{prefix}' matches {len(found)} packages "
                         f"({', '.join(sorted(found)[:3])}, ...); give more of the id")
    return found.pop() if found else p


def _trace_text(d: dict[str, Any]) -> str:
    ob, ib = d["outbox"], d["inbox"]
    out = [f"package {d['pkg_id']}"]
    for hop in d.get("hops") or [{"node": None, "trace": d["trace"]}]:
        if hop["node"]:
            out.append(f" at {hop['node']}" + (f": {hop['error']}" if hop.get("error") else
                                               "" if hop["trace"] else ": nothing"))
        out += [f"  {ts(r['ts'])}  {r['event']:<9} {r['peer']:<22} {r['status']}"
                + (f"  {r['reason']}" if r["reason"] else "") for r in hop["trace"]]
    if ob:
        out.append(f"  outbox: to {ob['dest']}, {ob['status']}, {ob['attempts']} attempt(s), "
                   f"seq {ob['seq']}")
    if ib:
        out.append(f"  inbox: from {ib['src']}, {ib['status']}, seq {ib['seq']}")
    return "\n".join(out)


@log.command("verify")
@click.option("--offline", is_flag=True, help="Do not ask the center for its witness "
              "(the daemon need not run).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def log_verify(ctx: click.Context, offline: bool, as_json: bool) -> None:
    """Recompute the hash chain and check the head against its copies (the head file
    beside the keys, the center's witness); exit 1 and say why if anything was changed."""
    from exnode.node.base.errors import DaemonNotRunning
    from exnode.node.kernel import exlog
    from exnode.node.kernel.identity import Identity
    from exnode.node.kernel.state import open_state
    from exnode.node.kernel.witness import head_path, read_head_file, signed_by

    cfg = ctx.obj.config()
    eng = open_state(cfg.state_url)
    ident = Identity(cfg.node.id, cfg.keys_dir)
    pub = ident.sign_key.public_key()

    def check_sig(sig: bytes, body: bytes) -> bool:
        try:
            pub.verify(sig, body)
            return True
        except Exception:
            return False

    def fail(problem: str, rows: int = 0, bad_row: int | None = None) -> NoReturn:
        data = {"ok": False, "rows": rows, "bad_row": bad_row, "problem": problem}
        if as_json:
            _out(data, True)
        else:
            click.echo(f"exchange log FAILED verification: {problem}", err=True)
        sys.exit(1)

    anchors: list[exlog.Anchor] = []
    file_head = read_head_file(head_path(cfg))
    if file_head is not None:
        if not signed_by(pub, file_head):
            fail(f"the head file {head_path(cfg)} is not signed by this node")
        anchors.append(exlog.Anchor("the head file beside the keys", file_head.id,
                                    file_head.hash))
    witness: dict[str, Any] = {"checked": False}
    if cfg.node.role == "bureau" and not offline:
        try:
            w = ctx.obj.call("POST", "/log/witness", {"timeout": 15.0}, timeout=25)
            witness = {"checked": True, "row": w["id"]}
            if w["id"]:
                anchors.append(exlog.Anchor(f"the center's witness ({cfg.center_id})",
                                            int(w["id"]), str(w["hash"])))
        except DaemonNotRunning:
            witness["why"] = "the daemon is not running"
        except ExnodeError as e:
            witness["why"] = str(e)
    show = sys.stderr.isatty() and not as_json
    with exlog.snapshot(eng) as conn:  # rows and head as of one moment
        if show:
            with click.progressbar(length=0, label="verifying", file=sys.stderr) as bar:
                res = exlog.verify(conn, check_sig, progress=lambda n: bar.update(5000),
                                   anchors=anchors)
        else:
            res = exlog.verify(conn, check_sig, anchors=anchors)
    if not res.ok:
        fail(res.problem, res.rows, res.bad_row)
    data = {"ok": True, "rows": res.rows, "bad_row": None, "problem": "",
            "head_file": file_head.id if file_head else None, "witness": witness}
    if as_json:
        _out(data, True)
        return
    parts = [f"exchange log ok: {res.rows} rows, hash chain and signed head intact"]
    if file_head:
        parts.append(f"head file at row {file_head.id}")
    if witness["checked"]:
        parts.append(f"the center witnessed row {witness['row']}")
    elif cfg.node.role == "bureau":
        parts.append(f"center's witness not checked ({witness.get('why', '--offline')})")
    click.echo("; ".join(parts))


@log.command("witnesses")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def log_witnesses(obj: Context, as_json: bool) -> None:
    """(center) The highest exchange-log head each member sent, and any alerts."""
    data = obj.call("GET", "/log/witnesses")

    def text(d: dict[str, Any]) -> str:
        rows = [f"{w['node']:<16} row {w['head']:<10} "
                f"{ago(w['received_at'])}"
                + (f"  ALERTS {w['alerts']}: {w['last_alert']}" if w["alerts"] else "")
                for w in d["witnesses"]]
        return "\n".join(rows) or "no member has sent its log head yet"
    obj.show(data, as_json, text)


# --- helpers -------------------------------------------------------------------------------

@cli.group()
def inbox() -> None:
    """Ordered streams waiting for an earlier package: `inbox list`, `inbox skip`."""


@inbox.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def inbox_list(obj: Context, as_json: bool) -> None:
    """Streams (source, resource) whose packages wait for an earlier sequence."""
    def text(rows: list[dict[str, Any]]) -> str:
        return "\n".join(
            f"{r['src']:<16} {r['resource']:<24} {r['waiting']} waiting for sequence "
            f"{r['missing_from']}" + (f"-{r['missing_to']}" if r["missing_to"] >
                                      r["missing_from"] else "")
            + f" since {ago(r['since'])}" for r in rows) or "nothing waits"
    obj.show(obj.call("GET", "/inbox/streams"), as_json, text)


@inbox.command("skip")
@click.argument("src")
@click.argument("resource")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def inbox_skip(obj: Context, src: str, resource: str, as_json: bool) -> None:
    """Give up on the sequences SRC's RESOURCE stream waits for (they expired at the
    sender and will not come) and apply what waited behind them. Logged as 'skipped';
    bring back the rows they carried with `exnode sync repair RESOURCE` at SRC."""
    out = obj.call("POST", "/inbox/skip", {"src": src, "resource": resource})
    gap = (f"{out['skipped_from']}" if out["skipped_from"] == out["skipped_to"]
           else f"{out['skipped_from']}-{out['skipped_to']}")
    obj.show(out, as_json, f"skipped sequence {gap} from {src} for {resource}; applied up "
             f"to {out['applied_to']}. The rows the skipped packages carried are missing "
             f"here: run 'exnode sync repair {resource}' at {src}.")


def _since(s: str) -> float:
    with contextlib.suppress(ValueError):
        return time.time() - parse_duration(s)
    try:
        return dt.datetime.fromisoformat(s).timestamp()
    except ValueError:
        raise UsageError(f"--since '{s}': use a duration (10m, 2h, 1d) or an ISO "
                         "date/time") from None


def _command_name(args: list[str]) -> str | None:
    """The command ``args`` name (skipping ``-c FILE``), or None (help, version)."""
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-c", "--config"):
            i += 2
            continue
        if a.startswith("-"):
            if a.startswith("--config=") or (a.startswith("-c") and len(a) > 2):
                i += 1
                continue
            return None  # --help, --version, or a mistake: load everything
        return a
    return None


def main() -> None:
    """Console entry point. A core command loads no plugin commands, a built-in
    plugin's command only its plugin; anything else (``--help``, a plugin installed
    from elsewhere) loads them all."""
    name = _command_name(sys.argv[1:])
    if name is not None and name in cli.commands:
        cli(prog_name="exnode")
        return
    try:
        import importlib

        from exnode.plugins.manager import BUILTIN_COMMANDS, make_manager

        module = BUILTIN_COMMANDS.get(name or "")
        if module is not None:
            importlib.import_module(module).exnode_cli_commands(cli=cli)
        else:
            make_manager().hook.exnode_cli_commands(cli=cli)
    except Exception as e:  # a broken plugin must not take the CLI down
        click.echo(f"exnode: warning: plugin CLI commands not loaded: {e}", err=True)
    cli(prog_name="exnode")


__all__ = ["ConfigError", "cli", "main"]
