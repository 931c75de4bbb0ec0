"""The daemon as an operator sees it: clean stops, a center outage, the control socket,
and the one-command demo."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest

from exnode.node.tools.cluster import wait_until

from ..helpers import db_rows


def test_sigterm_keeps_the_outbox_and_delivers_after_restart(make_star, system_broker):
    star = make_star(system_broker)
    star.up()
    star.stop("b2")  # the recipient is away
    r = star.cli("b1", "send", "--to", "b2", "--resource", "term", "--count", "30")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: star.status("b1")["counters"].get("published", 0) >= 30, 20,
               what="first publishes")
    assert star.stop("b1") == 0  # SIGTERM: a clean exit
    log = (star.dir("b1") / "daemon.log").read_text()
    assert '"event": "node_stopped"' in log
    assert not star.socket("b1").exists()
    assert db_rows(star, "b1", "SELECT count(*) FROM outbox WHERE status='pending' AND "
                   "resource='term'") == [(30,)]
    star.start("b2")
    star.start("b1")
    wait_until(lambda: star.status("b1")["outbox_pending"] == 0, 60, what="delivery")
    rows = db_rows(star, "b2", "SELECT seq FROM received WHERE resource='term' ORDER BY id")
    assert [s for (s,) in rows] == list(range(1, 31))


def test_bureaus_keep_working_through_a_center_outage(make_star, system_broker):
    star = make_star(system_broker)
    star.up()
    star.stop("center")
    # a bureau restarted during the outage still knows the members from its cached,
    # signed global configuration, and keeps queueing
    star.stop("b1")
    star.start("b1")
    st = star.status("b1")
    assert set(st["members"]) == {"center", "b1", "b2"} and st["gconf"]["valid"]
    time.sleep(1.0)  # the services' start-up packages (the catalog pull) are queued
    before = star.status("b1")["outbox_pending"]
    r = star.cli("b1", "send", "--to", "b2", "--resource", "outage", "--count", "10")
    assert r.returncode == 0, r.stderr
    time.sleep(1.5)
    assert star.status("b1")["outbox_pending"] == before + 10
    star.start("center")
    wait_until(lambda: star.status("b1")["outbox_pending"] == 0, 60, what="delivery")
    assert db_rows(star, "b2", "SELECT count(*) FROM received WHERE resource='outage'") \
        == [(10,)]


def test_control_socket_and_keys_are_private(make_star, system_broker):
    star = make_star(system_broker, bureaus=("b1",))
    star.up()
    for n in star.nodes:
        sock = star.socket(n)
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        for key in (star.dir(n) / "keys").glob("*.key"):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE((star.dir(n) / "state.db").stat().st_mode) == 0o600
    # a second daemon on the same folder refuses to start, and says why
    r = subprocess.run([sys.executable, "-m", "exnode.node", "-c",
                        str(star.config_path("b1")), "run"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    assert "already running" in (r.stderr + r.stdout)
    assert "Traceback" not in r.stderr


def test_demo_runs_and_leaves_nothing_behind(tmp_path):
    r = subprocess.run([sys.executable, "-m", "exnode.node", "demo", "--json",
                        "--dir", str(tmp_path / "demo")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out["nodes"]) == {"center", "b1", "b2"}
    for n, v in out["nodes"].items():
        assert v["log_verify"] == "ok", n
        assert set(v["members"]) == {"center", "b1", "b2"}
        assert v["outbox_pending"] == 0
    assert out["nodes"]["center"]["relayed"] > 0
    assert len(out["pings"]) == 4 and all(p["rtt_ms"] > 0 for p in out["pings"])
    assert out["seconds"] < 60
    assert out["sync"]["verified"] and out["sync"]["rows"] == 9
    time.sleep(0.5)
    # no daemon of this demo is left, and its broker's port is closed
    assert _pids_mentioning(str(tmp_path)) == set()
    port = int(out["broker"].split(":")[1].split()[0])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_sigterm_to_a_kept_running_demo_stops_everything_it_started(tmp_path):
    import signal

    d = tmp_path / "kept"
    p = subprocess.Popen([sys.executable, "-m", "exnode.node", "demo", "--keep-running",
                          "--dir", str(d)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    try:
        assert p.stdout is not None
        for line in p.stdout:  # wait until it says it keeps running
            if "Press Ctrl-C to stop" in line:
                break
        else:
            raise AssertionError("the demo ended before keeping its star running")
        started = _pids_mentioning(str(d))
        assert len(started) >= 3, started  # three daemons (and the broker's children)
        p.send_signal(signal.SIGTERM)
        p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
    time.sleep(0.5)
    assert _pids_mentioning(str(d)) == set(), "daemons left running after SIGTERM"


def _pids_mentioning(text: str) -> set[int]:
    pids = set()
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmd = open(f"/proc/{p}/cmdline", "rb").read()
        except OSError:
            continue
        if text.encode() in cmd:
            pids.add(int(p))
    return pids
