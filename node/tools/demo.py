"""``exnode demo``: an embedded broker, a center and two bureaus on this machine.

Everything is real: separate processes, keys, SQLite state DBs, sealed and signed
packages through an MQTT broker. It finishes within a minute and leaves nothing running
(unless ``--keep-running``).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from exnode.node.base.errors import ExnodeError
from exnode.node.tools.broker import free_port, wait_port
from exnode.node.tools.cluster import LocalStar, exnode_cmd, wait_until


def _step(msg: str, quiet: bool) -> None:
    if not quiet:
        click.echo(f"• {msg}", err=True)


def _interrupt(_sig: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo like Ctrl-C: everything it started


def run_demo(keep_running: bool = False, directory: str | None = None,
             as_json: bool = False) -> int:
    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)
    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="exnode-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    console_port = _console_port()
    node_settings = _sync_settings(root)
    node_settings["center"]["console"] = {"listen": f"127.0.0.1:{console_port}"}
    broker = subprocess.Popen([*exnode_cmd(), "broker", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    star = LocalStar(root, "127.0.0.1", port, bureaus=("b1", "b2"), prefix="exn/v1",
                     settings={"delivery": {"retry_initial_s": 1.0}},
                     node_settings=node_settings)
    summary: dict[str, Any] = {"dir": str(root), "broker": f"127.0.0.1:{port} (embedded amqtt)"}
    ok = False
    try:
        if not wait_port("127.0.0.1", port, 20):
            raise ExnodeError("the embedded broker did not start")
        _step(f"embedded MQTT broker (amqtt) on 127.0.0.1:{port}", as_json)
        star.init()
        _make_tables(root)
        _step(f"initialised center, b1, b2 in {root} (keys 0600, SQLite state)", as_json)
        star.start("center")
        _step("center running: CA, member registry, relay", as_json)
        for b in star.bureaus:
            res = star.enrol(b, approve=False)
            _step(f"{b} registered with a one-time token: {res['status']}", as_json)
            star.cli("center", "nodes", "approve", b, check=True)
            _step(f"{b} approved by the center operator", as_json)
        for b in star.bureaus:
            star.start(b, wait=False)
        for b in star.bureaus:
            star.wait_connected(b)
            star.wait_members(b, set(star.nodes))
        _step("bureaus running; signed global configuration received", as_json)
        summary["console"] = _console_accounts(star, console_port)
        _step(f"web console on {summary['console']['url']} with one account per role",
              as_json)

        pings = []
        for src, dst in (("b1", "b2"), ("b2", "b1"), ("b1", "center"), ("b1", "b2")):
            r = star.call(src, "POST", "/ping", {"node": dst, "timeout": 20})
            pings.append({"from": src, "to": dst, "rtt_ms": r["rtt_ms"]})
            _step(f"ping {src} -> {dst} (through the center): {r['rtt_ms']:.1f} ms", as_json)

        import base64

        items = [f"demo record {i}".encode() for i in range(100)]
        star.call("b1", "POST", "/send", {"to": "b2", "resource": "demo.records",
                                          "batch": True,
                                          "payloads": [base64.b64encode(i).decode()
                                                       for i in items]})
        wait_until(lambda: star.status("b1")["outbox_pending"] == 0, 20, what="delivery")
        _step("b1 sent 100 records to b2 in sealed, batched packages; receipt received",
              as_json)

        summary["sync"] = _sync_demo(star, root, as_json)
        def settled() -> dict[str, Any] | None:
            sts = {n: star.status(n) for n in star.nodes}
            return sts if all(v["outbox_pending"] == 0 for v in sts.values()) else None

        try:  # a moment when no package is in flight (capture sends a report every second)
            statuses = wait_until(settled, 10, 0.05)
        except TimeoutError:
            statuses = {n: star.status(n) for n in star.nodes}

        nodes = {}
        for n in star.nodes:
            st = statuses[n]
            v = star.cli(n, "log", "verify", "--json")
            ver = json.loads(v.stdout) if v.stdout.strip() else {"ok": False}
            nodes[n] = {"role": st["role"], "members": st["members"],
                        "sent": st["counters"].get("published", 0),
                        "applied": st["counters"].get("applied", 0),
                        "relayed": st["counters"].get("relayed", 0),
                        "refused": st["counters"].get("refused", 0),
                        "outbox_pending": st["outbox_pending"],
                        "log_verify": "ok" if ver.get("ok") else ver.get("problem", "failed"),
                        "log_rows": ver.get("rows", 0)}
        summary.update(nodes=nodes, pings=pings, seconds=round(time.monotonic() - t0, 1))
        ok = all(v["log_verify"] == "ok" for v in nodes.values()) and summary["sync"]["verified"]
        if as_json:
            click.echo(json.dumps(summary))
        else:
            _print_summary(summary)
        if keep_running:
            _keep(star, root)
        return 0 if ok else 1
    except ExnodeError as e:
        click.echo(f"exnode: error: demo failed: {e}", err=True)
        return 1
    finally:
        star.close()
        broker.send_signal(signal.SIGTERM)
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()
        if not directory and not keep_running and ok:
            shutil.rmtree(root, ignore_errors=True)


def _print_summary(s: dict[str, Any]) -> None:
    click.echo("")
    click.echo(f"exnode demo: a center and two bureaus over {s['broker']}")
    click.echo(f"{'node':<8} {'role':<7} {'members':<20} {'sent':>5} {'applied':>8} "
               f"{'relayed':>8} {'refused':>8} {'outbox':>7}  log verify")
    for n, v in s["nodes"].items():
        click.echo(f"{n:<8} {v['role']:<7} {','.join(v['members']):<20} {v['sent']:>5} "
                   f"{v['applied']:>8} {v['relayed']:>8} {v['refused']:>8} "
                   f"{v['outbox_pending']:>7}  {v['log_verify']} ({v['log_rows']} rows)")
    click.echo("round trips: " + ", ".join(f"{p['from']}->{p['to']} {p['rtt_ms']:.1f} ms"
                                          for p in s["pings"]))
    sy = s["sync"]
    click.echo(f"database sync: people b1 (owner) -> center shared library -> b2: "
               f"{sy['rows']} rows, {sy['inserted']} inserted, {sy['updated']} updated, "
               f"{sy['deleted']} deleted; sync verify: "
               + ("all copies agree" if sy["verified"] else "copies DIFFER"))
    click.echo(f"finished in {s['seconds']} s")
    c = s.get("console")
    if c:
        click.echo(f"web console (控制台): {c['url']}  log in as "
                   + ", ".join(f"{n} ({r})" for n, r in c["accounts"].items())
                   + f", password {c['password']}")
        click.echo("  (self-signed certificate; the console lives while the demo runs: "
                   "make demo-console keeps it running)")


def _keep(star: LocalStar, root: Path) -> None:
    click.echo("")
    click.echo("The star keeps running. Try, in another terminal:")
    for cmd in ("status", "ping b2", "log", "log verify", "alerts"):
        click.echo(f"  exnode -c {star.config_path('b1')} {cmd}")
    click.echo(f"  exnode -c {star.config_path('center')} nodes list")
    click.echo("Press Ctrl-C to stop.")
    try:
        while all(p.poll() is None for p in star.procs.values()):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    _ = sys


DEMO_ROLES = {"admin": "sysadmin", "sec": "secadmin", "aud": "auditor", "op": "operator",
              "ro": "readonly"}


def _console_port() -> int:
    """8443 when it is free (an address easy to type), else any free port."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8443))
            return 8443
        except OSError:
            return free_port()


def _console_accounts(star: LocalStar, port: int) -> dict[str, Any]:
    """One console account per role (三员分立 and the two working roles), sharing one
    random password that the demo prints (a demo, not a deployment)."""
    import secrets

    password = f"Demo-{secrets.token_hex(4)}-{secrets.randbelow(90) + 10}!"
    for name, role in DEMO_ROLES.items():
        r = star.cli("center", "console", "add", name, "--role", role, "--password-stdin",
                     input_text=password)
        if r.returncode != 0:
            raise ExnodeError(f"console account {name}: {r.stderr.strip()}")
    return {"url": f"https://127.0.0.1:{port}/", "accounts": DEMO_ROLES,
            "password": password}


# --- the database-sync part of the demo ----------------------------------------------------

PEOPLE_DDL = ("CREATE TABLE IF NOT EXISTS people (id INTEGER PRIMARY KEY, name TEXT, "
              "citizen_id TEXT, district TEXT, updated_at TEXT)")


def _sync_settings(root: Path) -> dict[str, Any]:
    """SQLite business DB at b1, shared library (共享库) at the center, copy at b2."""
    res = {"database": "db", "table": "people", "key": ["id"], "owner": "b1"}
    return {
        "b1": {"databases": {"db": {"url": f"sqlite:///{root}/b1/business.db"}},
               "resources": {"people": {**res, "freshness": "1m", "capture": {
                   "strategy": "snapshot", "schedule": {"every": "1s"}}}}},
        "center": {"databases": {"db": {"url": f"sqlite:///{root}/center/shared.db"}},
                   "resources": {"people": {**res, "subscribers": ["b2"],
                                            "freshness": "1m"}}},
        "b2": {"databases": {"db": {"url": f"sqlite:///{root}/b2/copy.db"}},
               "resources": {"people": res}},
    }


def _make_tables(root: Path) -> None:
    import sqlite3

    for n, f in (("b1", "business.db"), ("center", "shared.db"), ("b2", "copy.db")):
        db = sqlite3.connect(root / n / f)
        db.execute(PEOPLE_DDL)
        db.commit()
        db.close()


def _sync_demo(star: LocalStar, root: Path, quiet: bool) -> dict[str, Any]:
    import sqlite3

    def run(sql: str, args: tuple = ()) -> None:
        db = sqlite3.connect(root / "b1" / "business.db")
        db.execute(sql, args)
        db.commit()
        db.close()

    def copy() -> dict[int, tuple]:
        db = sqlite3.connect(root / "b2" / "copy.db")
        rows = {r[0]: r for r in db.execute("SELECT * FROM people")}
        db.close()
        return rows

    people = [(i, f"居民{i}", f"11010119900307{i:03d}X"[-18:], "东城区", "2026-11-27T08:00:00")
              for i in range(1, 11)]
    for p in people:
        run("INSERT INTO people VALUES (?,?,?,?,?)", p)
    wait_until(lambda: len(copy()) == 10, 30, what="the rows at b2")
    _step("b1 inserted 10 people in its business DB; captured, sent to the center's shared "
          "library and on to b2", quiet)
    run("UPDATE people SET district='西城区', updated_at='2026-11-27T09:00:00' WHERE id=3")
    run("DELETE FROM people WHERE id=10")
    wait_until(lambda: len(copy()) == 9 and copy()[3][3] == "西城区", 30, what="the changes")
    _step("b1 updated one row and deleted one; b2's copy followed", quiet)
    v = star.cli("center", "sync", "verify", "people", "--json")
    rep = json.loads(v.stdout) if v.stdout.strip() else {"ok": False}
    _step("sync verify at the center: " + ("owner, shared library and subscriber agree"
                                          if rep.get("ok") else "copies differ"), quiet)
    return {"resource": "people", "rows": len(copy()), "inserted": 10, "updated": 1,
            "deleted": 1, "verified": bool(rep.get("ok"))}
