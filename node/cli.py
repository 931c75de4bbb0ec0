"""The ``exnode`` command line. Every listing takes ``--json``; every failure is one
line on stderr and a non-zero exit code."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from .config import Config, load_config, render_config
from .errors import ConfigError, ExnodeError, UsageError

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
            _fail(f"internal error: {type(e).__name__}: {e} (set EXNODE_DEBUG=1 for details)",
                  70)


def _config_path(ctx: click.Context) -> Path:
    p = ctx.obj.get("config") if ctx.obj else None
    if p:
        return Path(p)
    env = os.environ.get("EXNODE_CONFIG")
    if env:
        return Path(env)
    if Path(DEFAULT_CONFIG).exists():
        return Path(DEFAULT_CONFIG)
    etc = Path("/etc/exnode/exnode.yaml")
    return etc if etc.exists() else Path(DEFAULT_CONFIG)


def _cfg(ctx: click.Context) -> Config:
    return load_config(_config_path(ctx))


def _out(data: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, default=str, indent=None))
    elif text is not None:
        click.echo(text)


@click.group(cls=ExnodeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config", metavar="FILE", envvar="EXNODE_CONFIG",
              help="Node configuration (default: ./exnode.yaml, then /etc/exnode/exnode.yaml).")
@click.version_option(package_name="exnode")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """exnode: data-exchange node for government information sharing (政务信息共享交换)."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


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
    from . import identity as idn
    from .config import parse_config

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
    fp = None
    if role == "center":
        from . import registry
        from .state import open_state

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
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def config_check(ctx: click.Context, as_json: bool) -> None:
    """Validate the config file (exit 2 with FILE:LINE on error)."""
    path = _config_path(ctx)
    cfg = load_config(path)
    problems = []
    if not (cfg.keys_dir / "sign.key").exists():
        problems.append(f"{cfg.keys_dir}/sign.key is missing (run 'exnode init')")
    for p in cfg.keys_dir.glob("*.key") if cfg.keys_dir.exists() else []:
        if p.stat().st_mode & 0o077:
            problems.append(f"{p} is readable by others (chmod 600 {p})")
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
    info = {"config": str(path), "node": cfg.node.id, "role": cfg.node.role, "ok": True,
            "warnings": problems}
    _out(info, as_json, f"{path}: ok ({cfg.node.role} '{cfg.node.id}')"
         + "".join(f"\nwarning: {p}" for p in problems))


@config.command("schema")
def config_schema() -> None:
    """Print the configuration reference (JSON Schema from the pydantic models)."""
    click.echo(json.dumps(Config.model_json_schema(), indent=2, ensure_ascii=False))


# --- run / status / ping -------------------------------------------------------------------

@cli.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the daemon in the foreground (JSON log lines on stdout; SIGTERM stops it)."""
    from .daemon import run_node

    run_node(_cfg(ctx))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Broker connection, members, outbox depth and last contact per peer."""
    from .control import call

    cfg = _cfg(ctx)
    st = call(cfg.socket_path, "GET", "/status")
    if as_json:
        _out(st, True)
        return
    b = st["broker"]
    lines = [
        f"node      {st['node']} ({st['role']}), pid {st['pid']}, up {st['uptime_s']:.0f} s",
        f"broker    {b['host']}:{b['port']} "
        + (f"connected (MQTT {b['protocol']})" if b["connected"] else "NOT CONNECTED"),
        f"gconf     version {st['gconf']['version']}, "
        + ("valid until " + _ts(st["gconf"]["expires"]) if st["gconf"]["valid"]
           else "NOT VALID"),
        f"members   {', '.join(st['members']) or '-'}",
        f"outbox    {st['outbox_pending']} pending; inbox {st['inbox_waiting']} waiting "
        "for an earlier sequence",
    ]
    for p in st["peers"]:
        rtt = f", rtt {p['last_rtt_ms']:.1f} ms" if p.get("last_rtt_ms") else ""
        lines.append(f"peer      {p['node_id']}: last contact {_ago(p['last_contact'])}{rtt}")
    for r in st.get("resources", []):
        flag = "STOPPED: " + r["error"] if r["error"] else "STALE" if r["stale"] else "ok"
        seen = ", ".join(f"{n['node']} {_ago(n['last_current'])}" for n in r["nodes"]) or \
            "no report yet"
        lines.append(f"resource  {r['resource']}: {flag} (last current: {seen})")
    if st.get("last_error"):
        lines.append(f"last error {st['last_error']}")
    click.echo("\n".join(lines))


@cli.command()
@click.argument("node")
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 1000))
@click.option("--timeout", default=30.0, show_default=True, type=float)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ping(ctx: click.Context, node: str, count: int, timeout: float, as_json: bool) -> None:
    """A signed round trip to NODE through the center; prints the time."""
    from .control import call

    cfg = _cfg(ctx)
    rtts = []
    for _ in range(count):
        r = call(cfg.socket_path, "POST", "/ping", {"node": node, "timeout": timeout},
                 timeout=timeout + 5)
        rtts.append(r["rtt_ms"])
        if not as_json:
            click.echo(f"{cfg.node.id} -> {node} -> {cfg.node.id}: {r['rtt_ms']:.1f} ms")
    if as_json:
        _out({"node": node, "rtt_ms": rtts}, True)


@cli.command()
@click.option("--to", "dest", required=True, help="Recipient node id.")
@click.option("--resource", default="default", show_default=True)
@click.option("--file", "file", type=click.File("rb"), help="Send this file's bytes "
              "('-' for stdin).")
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Send this many packages (synthetic payloads unless --file).")
@click.option("--size", default=1024, show_default=True, type=click.IntRange(0, 64 << 20),
              help="Synthetic payload size in bytes.")
@click.option("--batch", is_flag=True, help="Pack small messages into shared packages.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def send(ctx: click.Context, dest: str, resource: str, file: Any, count: int, size: int,
         batch: bool, as_json: bool) -> None:
    """Queue data packages for another node (for tests and scripts)."""
    import base64

    from .control import call

    cfg = _cfg(ctx)
    queued = 0
    if file is None:  # synthetic payloads, made by the daemon itself
        for i in range(0, count, 10_000):
            r = call(cfg.socket_path, "POST", "/send",
                     {"to": dest, "resource": resource, "batch": batch,
                      "count": min(10_000, count - i), "size": size, "start": i},
                     timeout=600)
            queued += r["queued"]
    else:
        data = base64.b64encode(file.read()).decode()
        for i in range(0, count, 100):
            r = call(cfg.socket_path, "POST", "/send",
                     {"to": dest, "resource": resource, "batch": batch,
                      "payloads": [data] * min(100, count - i)}, timeout=600)
            queued += r["queued"]
    _out({"queued": queued, "to": dest, "resource": resource}, as_json,
         f"queued {queued} message(s) for {dest} ({resource})")


# --- enrolment ------------------------------------------------------------------------------

@cli.command()
@click.argument("token")
@click.option("--timeout", default=30.0, show_default=True, type=float)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def register(ctx: click.Context, token: str, timeout: float, as_json: bool) -> None:
    """Enrol this bureau with the center using a one-time TOKEN."""
    from .enrol import register_with_token

    path = _config_path(ctx)
    cfg = load_config(path)
    res = register_with_token(cfg, path, token, timeout)
    msg = {"approved": f"registered with center '{res['center']}' and approved; "
           "start the daemon with 'exnode run'",
           "pending": f"registered with center '{res['center']}'; awaiting approval "
           f"(on the center: exnode nodes approve {cfg.node.id})"}.get(
        res["status"], f"enrolment status: {res['status']}")
    _out(res, as_json, msg)


@cli.group()
def nodes() -> None:
    """(center) Invite, list, approve, reject and revoke members."""


def _center(ctx: click.Context) -> tuple[Config, Any, Any]:
    from . import identity as idn
    from .state import open_state

    cfg = _cfg(ctx)
    if cfg.node.role != "center":
        raise UsageError("this command runs on the center")
    return cfg, idn.Identity(cfg.node.id, cfg.keys_dir), open_state(cfg.state_url)


def _poke_gconf(cfg: Config) -> bool:
    from .control import call
    from .errors import DaemonNotRunning

    try:
        call(cfg.socket_path, "POST", "/gconf/publish", {}, timeout=15)
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
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def nodes_invite(ctx: click.Context, node_id: str, approve: bool, ttl: str,
                 broker_host: str | None, broker_port: int | None, as_json: bool) -> None:
    """Issue a one-time enrolment token for NODE_ID."""
    from . import identity as idn
    from . import registry

    cfg, ident, eng = _center(ctx)
    ttl_s = _duration(ttl)
    secret = registry.invite(eng, cfg.node.id, node_id, ttl_s, approve)
    ca = ident.ca_cert
    assert ca is not None
    token = idn.make_token(center_id=cfg.node.id, host=broker_host or cfg.broker.host,
                           port=broker_port or cfg.broker.port,
                           ca_fp=idn.fingerprint(ca), node_id=node_id, secret=secret,
                           expires=int(time.time() + ttl_s), prefix=cfg.broker.topic_prefix)
    _out({"node": node_id, "token": token, "expires": int(time.time() + ttl_s),
          "approve": approve}, as_json,
         f"token for '{node_id}' (valid {ttl}, single use; treat it as a password):\n{token}\n"
         f"on the bureau: exnode register {token[:16]}...")


@nodes.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def nodes_list(ctx: click.Context, as_json: bool) -> None:
    """Members and enrolment requests."""
    from . import registry

    _c, _i, eng = _center(ctx)
    rows = registry.list_members(eng)
    if as_json:
        _out(rows, True)
        return
    click.echo(f"{'NODE':<20} {'ROLE':<8} {'STATUS':<10} UPDATED")
    for r in rows:
        click.echo(f"{r['id']:<20} {r['role']:<8} {r['status']:<10} {_ts(r['updated_at'])}")


def _status_cmd(action: str) -> Any:
    @click.argument("node_id")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def cmd(ctx: click.Context, node_id: str, as_json: bool) -> None:
        from . import registry

        cfg, ident, eng = _center(ctx)
        st = registry.set_status(eng, ident, node_id, action)
        published = _poke_gconf(cfg)
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
    path = _config_path(ctx)
    if path.exists():
        disable = load_config(path).plugins.disable
    infos = describe(make_manager(disable))
    if as_json:
        _out([i.__dict__ for i in infos], True)
        return
    for i in infos:
        origin = "built-in" if i.builtin else f"{i.distribution} {i.version}"
        click.echo(f"{i.name:<32} {origin:<24} hooks: {', '.join(i.hooks)}")


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--peer")
@click.option("--resource")
@click.option("--since", help="e.g. 10m, 2h, 1d, or an ISO date/time.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000_000))
@click.pass_context
def log(ctx: click.Context, as_json: bool, peer: str | None, resource: str | None,
        since: str | None, limit: int) -> None:
    """The exchange log (交换信息库): newest entries last."""
    if ctx.invoked_subcommand is not None:
        return
    from sqlalchemy import select

    from .state import exchange_log, open_state

    cfg = _cfg(ctx)
    eng = open_state(cfg.state_url)
    t = exchange_log
    q = select(t)
    if peer:
        q = q.where((t.c.peer == peer) | t.c.peer.like(f"{peer}>%") | t.c.peer.like(f"%>{peer}"))
    if resource:
        q = q.where(t.c.resource == resource)
    if since:
        q = q.where(t.c.ts >= _since(since))
    q = q.order_by(t.c.id.desc()).limit(limit)
    with eng.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()][::-1]
    for r in rows:
        r.pop("prev_hash", None)
        r.pop("hash", None)
    if as_json:
        _out(rows, True)
        return
    for r in rows:
        reason = f"  {r['reason']}" if r["reason"] else ""
        click.echo(f"{r['id']:>7} {_ts(r['ts'])} {r['event']:<9} {r['kind']:<8} "
                   f"{r['peer']:<22} {r['resource'] or '-':<14} {r['size']:>9} "
                   f"{r['status']}{reason}")


@log.command("show")
@click.argument("pkg_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def log_show(ctx: click.Context, pkg_id: str, as_json: bool) -> None:
    """A package's trace as far as this node knows it."""
    from sqlalchemy import select

    from .state import exchange_log, inbox, open_state, outbox

    cfg = _cfg(ctx)
    eng = open_state(cfg.state_url)
    with eng.connect() as conn:
        rows = [dict(r) for r in conn.execute(
            select(exchange_log).where(exchange_log.c.pkg_id == pkg_id)
            .order_by(exchange_log.c.id)).mappings()]
        ob = conn.execute(select(outbox.c.dest, outbox.c.status, outbox.c.attempts,
                                 outbox.c.seq).where(outbox.c.pkg_id == pkg_id)).mappings().first()
        ib = conn.execute(select(inbox.c.src, inbox.c.status, inbox.c.seq, inbox.c.reason)
                          .where(inbox.c.pkg_id == pkg_id)).mappings().first()
    if not rows and ob is None and ib is None:
        raise UsageError(f"package {pkg_id} is not known to this node")
    data = {"pkg_id": pkg_id, "trace": [{k: r[k] for k in ("id", "ts", "event", "peer",
                                                           "kind", "resource", "size",
                                                           "status", "reason")} for r in rows],
            "outbox": dict(ob) if ob else None, "inbox": dict(ib) if ib else None}
    if as_json:
        _out(data, True)
        return
    click.echo(f"package {pkg_id}")
    for r in rows:
        click.echo(f"  {_ts(r['ts'])}  {r['event']:<9} {r['peer']:<22} {r['status']}"
                   + (f"  {r['reason']}" if r["reason"] else ""))
    if ob:
        click.echo(f"  outbox: to {ob['dest']}, {ob['status']}, {ob['attempts']} attempt(s), "
                   f"seq {ob['seq']}")
    if ib:
        click.echo(f"  inbox: from {ib['src']}, {ib['status']}, seq {ib['seq']}")


@log.command("verify")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def log_verify(ctx: click.Context, as_json: bool) -> None:
    """Recompute the hash chain; exit 1 and name the row if anything was changed."""
    from . import exlog
    from .identity import Identity
    from .state import open_state

    cfg = _cfg(ctx)
    eng = open_state(cfg.state_url)
    ident = Identity(cfg.node.id, cfg.keys_dir)
    pub = ident.sign_key.public_key()

    def check_sig(sig: bytes, body: bytes) -> bool:
        try:
            pub.verify(sig, body)
            return True
        except Exception:
            return False

    show = sys.stderr.isatty() and not as_json
    with eng.connect() as conn:
        if show:
            with click.progressbar(length=0, label="verifying", file=sys.stderr) as bar:
                res = exlog.verify(conn, check_sig, progress=lambda n: bar.update(5000))
        else:
            res = exlog.verify(conn, check_sig)
    data = {"ok": res.ok, "rows": res.rows, "bad_row": res.bad_row, "problem": res.problem}
    if as_json:
        _out(data, True)
    elif res.ok:
        click.echo(f"exchange log ok: {res.rows} rows, hash chain and signed head intact")
    else:
        click.echo(f"exchange log FAILED verification: {res.problem}", err=True)
    if not res.ok:
        sys.exit(1)


# --- database sync -------------------------------------------------------------------------

class _SyncGroup(click.Group):
    """`exnode sync RES --initial` is `exnode sync load RES --initial`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["load", *args]
        return super().parse_args(ctx, args)


@cli.group(cls=_SyncGroup)
def sync() -> None:
    """Database sync: `exnode sync RES --initial`, `sync status`, `sync now RES`."""


@sync.command("load", hidden=True)
@click.argument("resource")
@click.option("--initial", is_flag=True, help="Send the whole table (resumable initial load).")
@click.option("--restart", is_flag=True, help="With --initial: start over from the first row.")
@click.option("--no-wait", is_flag=True, help="Start the load and return at once.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def sync_load(ctx: click.Context, resource: str, initial: bool, restart: bool,
              no_wait: bool, as_json: bool) -> None:
    """Initial load of RESOURCE: `exnode sync RESOURCE --initial`."""
    if not initial:
        raise UsageError(f"say what to do with {resource}: exnode sync {resource} --initial, "
                         f"or exnode sync now {resource}")
    from .control import call

    cfg = _cfg(ctx)
    job = call(cfg.socket_path, "POST", "/sync/initial",
               {"resource": resource, "restart": restart})
    if no_wait:
        _out(job, as_json, f"initial load of {resource} started ({job['rows']} rows sent so far)")
        return

    def poll() -> dict[str, Any]:
        jobs = call(cfg.socket_path, "GET", "/sync/jobs")
        return next(j for j in jobs if j["resource"] == resource and j["kind"] == "initial")

    show = sys.stderr.isatty() and not as_json
    job = poll()
    if show:
        with click.progressbar(length=job["total"] or 0, label=f"initial load {resource}",
                               file=sys.stderr, show_pos=True) as bar:
            done = 0
            while job["status"] == "running":
                time.sleep(0.5)
                job = poll()
                if job["total"] and bar.length != job["total"]:
                    bar.length = job["total"]
                bar.update(job["rows"] - done)
                done = job["rows"]
    else:
        while job["status"] == "running":
            time.sleep(0.5)
            job = poll()
    if job["status"] != "done":
        raise ExnodeError(f"initial load of {resource} failed: {job.get('error')}")
    _out(job, as_json, f"initial load of {resource}: {job['rows']} rows sent "
         "(applied at the other end as they arrive; see 'exnode status')")


@sync.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def sync_status(ctx: click.Context, as_json: bool) -> None:
    """Resources: freshness per node, errors, open conflicts, initial loads."""
    from .control import call

    cfg = _cfg(ctx)
    st = call(cfg.socket_path, "GET", "/status")
    jobs = call(cfg.socket_path, "GET", "/sync/jobs")
    if as_json:
        _out({"resources": st["resources"], "jobs": jobs}, True)
        return
    for r in st["resources"]:
        flag = "STALE" if r["stale"] else "ok"
        if r["error"]:
            flag = "STOPPED: " + r["error"]
        click.echo(f"{r['resource']:<24} {r['capture'] or '-':<12} {flag}"
                   + (f"  ({r['open_conflicts']} open conflicts)" if r["open_conflicts"] else ""))
        for n in r["nodes"]:
            click.echo(f"    {n['node']:<16} last current {_ago(n['last_current'])}"
                       + (" STALE" if n["stale"] else ""))
    for j in jobs:
        click.echo(f"initial load {j['resource']}: {j['status']}, {j['rows']}"
                   + (f"/{j['total']}" if j["total"] else "") + " rows")


@sync.command("now")
@click.argument("resource")
@click.pass_context
def sync_now(ctx: click.Context, resource: str) -> None:
    """Run RESOURCE's capture cycle now instead of at its next scheduled time."""
    from .control import call

    call(_cfg(ctx).socket_path, "POST", "/sync/now", {"resource": resource})
    click.echo(f"capture of {resource} started")


@sync.command("verify")
@click.argument("resource")
@click.option("--timeout", default=120.0, show_default=True, type=float)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def sync_verify(ctx: click.Context, resource: str, timeout: float, as_json: bool) -> None:
    """Compare row counts and checksums of RESOURCE here and at its peers (at the center:
    the owner and the subscribers); list differing keys. Exit 1 if they differ."""
    from .control import call

    rep = call(_cfg(ctx).socket_path, "POST", "/sync/verify",
               {"resource": resource, "timeout": timeout}, timeout=timeout * 3 + 10)
    if as_json:
        _out(rep, True)
    else:
        click.echo(f"{resource}: " + ("all copies agree" if rep["ok"] else "copies DIFFER"))
        for n in rep["nodes"]:
            if "error" in n:
                click.echo(f"  {n['node']:<16} {n['error']}")
                continue
            click.echo(f"  {n['node']:<16} {n['count']:>10} rows  checksum "
                       f"{n['checksum'][:16]}  {'same' if n['same'] else 'DIFFERENT'}")
            d = n.get("differences")
            if d:
                for what in ("missing_there", "extra_there", "different"):
                    if d["counts"][what]:
                        click.echo(f"      {what.replace('_', ' ')} ({d['counts'][what]}): "
                                   + ", ".join(d[what][:20]))
    if not rep["ok"]:
        sys.exit(1)


@cli.group()
def capture() -> None:
    """Install or remove the change-capture triggers of a resource's table."""


def _trigger_target(ctx: click.Context, resource: str) -> tuple[Any, Any]:
    from sqlalchemy import create_engine

    cfg = _cfg(ctx)
    spec = cfg.resources.get(resource)
    if spec is None:
        raise UsageError(f"no resource '{resource}' in {cfg.source}")
    if spec.table is None:
        raise UsageError(f"resource '{resource}' maps a query; triggers need a table")
    return create_engine(cfg.database_url(spec.database)), spec


@capture.command("install")
@click.argument("resource")
@click.pass_context
def capture_install(ctx: click.Context, resource: str) -> None:
    """Create the change table and the triggers on RESOURCE's table."""
    from exnode.policies import triggers

    eng, spec = _trigger_target(ctx, resource)
    triggers.install(eng, spec.table, spec.key, schema=spec.db_schema)
    click.echo(f"triggers installed on {spec.table} for {resource}")


@capture.command("remove")
@click.argument("resource")
@click.option("--drop-changes", is_flag=True, help="Also drop the change table.")
@click.pass_context
def capture_remove(ctx: click.Context, resource: str, drop_changes: bool) -> None:
    """Remove RESOURCE's triggers (the change table stays unless --drop-changes)."""
    from exnode.policies import triggers

    eng, spec = _trigger_target(ctx, resource)
    triggers.remove(eng, spec.table, schema=spec.db_schema, drop_changes=drop_changes)
    click.echo(f"triggers removed from {spec.table}")


@cli.group()
def quality() -> None:
    """Data rule checks (数据规则约束检查): reports."""


@quality.command("report")
@click.argument("resource")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def quality_report(ctx: click.Context, resource: str, as_json: bool) -> None:
    """Rows checked and failed per rule, open quarantine, daily trend."""
    from .control import call

    r = call(_cfg(ctx).socket_path, "GET", f"/quality/{resource}")
    if as_json:
        _out(r, True)
        return
    if not r["rules"]:
        click.echo(f"{resource}: no rules declared here")
    click.echo(f"{resource}: {r['checked']} rows checked, {r['failed']} failed, "
               f"{r['quarantine_open']} in quarantine, "
               f"{r['rejections_received']} rejections received")
    for rule, n in sorted(r["per_rule"].items(), key=lambda x: -x[1]):
        click.echo(f"  {rule:<24} {n:>8}")
    for d in r["trend"][-14:]:
        click.echo(f"  {d['day']} {d['stage']:<7} checked {d['checked']:>8}  failed "
                   f"{d['failed']:>6}")


@cli.group()
def quarantine() -> None:
    """Rows held back by the data rules: list, show, retry, drop."""


@quarantine.command("list")
@click.option("--resource")
@click.option("--all", "show_all", is_flag=True, help="Retried and dropped ones too.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def quarantine_list(ctx: click.Context, resource: str | None, show_all: bool,
                    as_json: bool) -> None:
    """Quarantined rows with the rules they broke."""
    from urllib.parse import urlencode

    from .control import call

    q = {"status": "all" if show_all else "open"}
    if resource:
        q["resource"] = resource
    rows = call(_cfg(ctx).socket_path, "GET", "/quarantine?" + urlencode(q))
    if as_json:
        _out(rows, True)
        return
    for r in rows:
        reasons = "; ".join(f"{v['rule']}({v['field']})" for v in r["violations"])
        click.echo(f"{r['id']:>5} {r['resource']:<20} key {r['key']:<16} {r['stage']:<6} "
                   f"{r['status']:<8} {reasons}")
    if not rows:
        click.echo("quarantine is empty")


@quarantine.command("show")
@click.argument("qid", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def quarantine_show(ctx: click.Context, qid: int, as_json: bool) -> None:
    """One quarantined row and why."""
    from .control import call

    r = call(_cfg(ctx).socket_path, "GET", f"/quarantine/{qid}")
    if as_json:
        _out(r, True)
        return
    click.echo(f"quarantined row {r['id']}: {r['resource']} key {r['key']} ({r['stage']}, "
               f"from {r['src']}, {r['status']})")
    for v in r["violations"]:
        click.echo(f"  {v['rule']}({v['field']}): {v['reason']}")
    for k, v in (r["row"] or {}).items():
        click.echo(f"    {k:<20} {v}")


def _quarantine_action(action: str) -> Any:
    @click.argument("qid", type=int)
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def cmd(ctx: click.Context, qid: int, as_json: bool) -> None:
        from .control import call

        r = call(_cfg(ctx).socket_path, "POST", f"/quarantine/{qid}/{action}", {})
        if as_json:
            _out(r, True)
        elif action == "retry" and not r["passed"]:
            click.echo(f"row {qid} still fails: " + "; ".join(
                f"{v['rule']}({v['field']}): {v['reason']}" for v in r["violations"]))
        else:
            click.echo(f"row {qid}: {r['status']}")
        if action == "retry" and not r["passed"]:
            sys.exit(1)

    cmd.__doc__ = {"retry": "Check row QID again (at the owner: as the source has it now) and "
                            "send it through if it passes.",
                   "drop": "Give up on row QID (it stays listed with --all)."}[action]
    return cmd


for _qa in ("retry", "drop"):
    quarantine.command(_qa)(_quarantine_action(_qa))


@cli.group()
def conflicts() -> None:
    """(center) The conflict queue of resources with conflict: manual."""


@conflicts.command("list")
@click.option("--all", "show_all", is_flag=True, help="Resolved ones too.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def conflicts_list(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """Open conflicts."""
    from .control import call

    rows = call(_cfg(ctx).socket_path, "GET",
                "/conflicts?status=" + ("all" if show_all else "open"))
    if as_json:
        _out(rows, True)
        return
    for r in rows:
        click.echo(f"{r['id']:>5} {r['resource']:<20} from {r['src']:<12} key {r['key']:<20} "
                   f"{r['status']}  {r['reason']}")
    if not rows:
        click.echo("no open conflicts")


@conflicts.command("show")
@click.argument("conflict_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def conflicts_show(ctx: click.Context, conflict_id: int, as_json: bool) -> None:
    """The incoming change beside the shared library's current row."""
    from .control import call

    r = call(_cfg(ctx).socket_path, "GET", f"/conflicts/{conflict_id}")
    if as_json:
        _out(r, True)
        return
    click.echo(f"conflict {r['id']}: {r['resource']} key {r['key']} from {r['src']} "
               f"({r['status']}): {r['reason']}")
    inc, cur = r["incoming"]["row"] or {}, r["current"] or {}
    click.echo(f"  {'field':<20} {'incoming (' + r['incoming']['op'] + ')':<30} current")
    for k in sorted(set(inc) | set(cur)):
        mark = " *" if inc.get(k) != cur.get(k) else ""
        click.echo(f"  {k:<20} {inc.get(k)!s:<30} {cur.get(k)}{mark}")


@conflicts.command("resolve")
@click.argument("conflict_id", type=int)
@click.option("--keep", type=click.Choice(["incoming", "current"]), required=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def conflicts_resolve(ctx: click.Context, conflict_id: int, keep: str, as_json: bool) -> None:
    """Apply the incoming change, or keep the current row and notify the sender."""
    from .control import call

    r = call(_cfg(ctx).socket_path, "POST", f"/conflicts/{conflict_id}/resolve", {"keep": keep})
    _out(r, as_json, f"conflict {conflict_id} resolved: kept {keep}")


# --- demo ----------------------------------------------------------------------------------

@cli.command()
@click.option("--keep-running", is_flag=True, help="Leave the star up for exploring.")
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Where to put the nodes (default: a new temporary folder).")
@click.option("--json", "as_json", is_flag=True)
def demo(keep_running: bool, directory: str | None, as_json: bool) -> None:
    """Start an embedded broker, a center and two bureaus; enrol, ping, summarise."""
    from .demo import run_demo

    sys.exit(run_demo(keep_running=keep_running, directory=directory, as_json=as_json))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=1883, show_default=True, type=click.IntRange(0, 65535),
              help="0 picks a free port.")
def broker(host: str, port: int) -> None:
    """Run the embedded MQTT broker (amqtt) in the foreground, for demos and tests."""
    from .broker import free_port, run_broker

    run_broker(host, port or free_port())


# --- helpers -------------------------------------------------------------------------------

def _ts(t: float | None) -> str:
    if not t:
        return "-"
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _ago(t: float) -> str:
    s = time.time() - t
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 \
        else f"{s / 3600:.1f} h ago"


_DUR = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def _duration(s: str) -> float:
    m = _DUR.match(s.strip())
    if not m:
        raise UsageError(f"'{s}' is not a duration (use e.g. 30m, 12h, 7d)")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _since(s: str) -> float:
    if _DUR.match(s.strip()):
        return time.time() - _duration(s)
    try:
        return dt.datetime.fromisoformat(s).timestamp()
    except ValueError:
        raise UsageError(f"--since '{s}': use a duration (10m, 2h, 1d) or an ISO "
                         "date/time") from None


def main() -> None:
    """Console entry point."""
    try:
        from exnode.plugins.manager import make_manager

        make_manager().hook.exnode_cli_commands(cli=cli)
    except Exception as e:  # a broken plugin must not take the CLI down
        click.echo(f"exnode: warning: plugin CLI commands not loaded: {e}", err=True)
    cli(prog_name="exnode")


__all__ = ["ConfigError", "cli", "main"]
