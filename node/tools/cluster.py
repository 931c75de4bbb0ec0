"""A local star: one center and some bureaus on this machine, each a separate
``exnode run`` process with its own folder, keys and state DB.

``exnode demo``, the end-to-end tests and the benchmarks all use it, so they exercise
exactly what an operator runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from exnode.node.app.client import call
from exnode.node.base.config import load_config, render_config
from exnode.node.base.errors import ExnodeError
from exnode.node.kernel import identity as idn
from exnode.node.kernel import registry
from exnode.node.kernel.enrol import register_with_token
from exnode.node.kernel.state import open_state
from exnode.node.kernel.topics import Topics


def exnode_cmd() -> list[str]:
    """How to start the ``exnode`` CLI of this installation."""
    return [sys.executable, "-m", "exnode.node"]


class LocalStar:
    """Start, enrol, stop and inspect a star of nodes in ``root``."""

    def __init__(self, root: Path, host: str, port: int, bureaus: tuple[str, ...] = ("b1", "b2"),
                 center_id: str = "center", prefix: str | None = None,
                 settings: dict[str, dict[str, Any]] | None = None,
                 node_settings: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
        self.root = Path(root)
        self.host, self.port = host, port
        self.center_id = center_id
        self.bureaus = bureaus
        self.prefix = prefix or f"exn-test-{uuid.uuid4().hex[:8]}/v1"
        self.topics = Topics(self.prefix)
        self.settings = settings or {}
        self.node_settings = node_settings or {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Any] = {}

    @property
    def nodes(self) -> tuple[str, ...]:
        return (self.center_id, *self.bureaus)

    def dir(self, node: str) -> Path:
        return self.root / node

    def config_path(self, node: str) -> Path:
        return self.dir(node) / "exnode.yaml"

    # --- set-up -----------------------------------------------------------------------

    def init(self) -> None:
        for node in self.nodes:
            role = "center" if node == self.center_id else "bureau"
            d = self.dir(node)
            d.mkdir(parents=True, exist_ok=True)
            data = yaml.safe_load(render_config(role, node, self.host, self.port,
                                                self.center_id))
            data["broker"]["topic_prefix"] = self.prefix
            for section, values in [*self.settings.items(),
                                    *self.node_settings.get(node, {}).items()]:
                if not data.get(section):
                    data[section] = {}
                data[section].update(values)
            if role == "center":
                data.pop("center", None)
            self.config_path(node).write_text(yaml.safe_dump(data, sort_keys=False))
            cfg = load_config(self.config_path(node))
            idn.generate_node_keys(cfg.keys_dir)
            if role == "center":
                if not (cfg.keys_dir / idn.CA_CERT).exists():
                    idn.create_ca(cfg.keys_dir, node)
                eng = open_state(cfg.state_url)
                registry.ensure_self(eng, idn.Identity(node, cfg.keys_dir))
                eng.dispose()

    def enrol(self, bureau: str, approve: bool = True) -> dict[str, Any]:
        """Invite, register and (optionally) approve a bureau; the center must be running."""
        ccfg = load_config(self.config_path(self.center_id))
        ident = idn.Identity(self.center_id, ccfg.keys_dir)
        eng = open_state(ccfg.state_url)
        try:
            password = None
            if ccfg.broker.dynsec:  # the running center creates the broker account
                ans = self.call(self.center_id, "POST", "/nodes/invite",
                                {"node": bureau, "ttl_s": 3600})
                secret, password = bytes.fromhex(ans["secret"]), ans["broker_password"]
            else:
                secret = registry.invite(eng, self.center_id, bureau, 3600, approve=False)
            ca = ident.ca_cert
            assert ca is not None
            token = idn.make_token(center_id=self.center_id, host=self.host, port=self.port,
                                   ca_fp=idn.fingerprint(ca), node_id=bureau, secret=secret,
                                   expires=int(time.time() + 3600), prefix=self.prefix,
                                   broker_password=password)
            res = register_with_token(load_config(self.config_path(bureau)),
                                      self.config_path(bureau), token, timeout=30)
            if approve:
                registry.set_status(eng, ident, bureau, "approve")
        finally:
            eng.dispose()
        if approve:
            self.call(self.center_id, "POST", "/gconf/publish", {})
        return res

    # --- processes --------------------------------------------------------------------

    def start(self, node: str, wait: bool = True) -> subprocess.Popen[bytes]:
        log = open(self.dir(node) / "daemon.log", "ab")
        self.logs[node] = log
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        p = subprocess.Popen([*exnode_cmd(), "-c", str(self.config_path(node)), "run"],
                             stdout=log, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        self.procs[node] = p
        if wait:
            self.wait_connected(node)
        return p

    def stop(self, node: str, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        p = self.procs.pop(node, None)
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log = self.logs.pop(node, None)
        if log:
            log.close()
        return p.returncode

    def kill(self, node: str) -> None:
        self.stop(node, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self.socket(node).unlink()

    def close(self) -> None:
        for node in list(self.procs):
            self.stop(node)

    def __enter__(self) -> LocalStar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- talking to nodes ---------------------------------------------------------------

    def call(self, node: str, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
        return call(self.socket(node), method, path, body, timeout)

    def socket(self, node: str) -> Path:
        """The node's control socket (the default place, in data_dir/run)."""
        return self.dir(node) / "run" / "exnode.sock"

    def status(self, node: str) -> dict[str, Any]:
        return self.call(node, "GET", "/status")

    def cli(self, node: str | None, *args: str, check: bool = False,
            timeout: float = 120, input_text: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        pre = ["-c", str(self.config_path(node))] if node else []
        return subprocess.run([*exnode_cmd(), *pre, *args], capture_output=True, text=True,
                              timeout=timeout, check=check, input=input_text)

    def wait_connected(self, node: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            p = self.procs.get(node)
            if p is not None and p.poll() is not None:
                raise ExnodeError(f"{node} exited with {p.returncode}: "
                                  + self.tail(node))
            try:
                st = self.status(node)
                if st["broker"]["connected"]:
                    return st
            except ExnodeError as e:
                last = e
            time.sleep(0.1)
        raise ExnodeError(f"{node} did not connect within {timeout} s ({last}): "
                          + self.tail(node))

    def wait_members(self, node: str, members: set[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status(node)
            if members <= set(st["members"]) and st["gconf"]["valid"]:
                return
            time.sleep(0.1)
        raise ExnodeError(f"{node} does not see members {sorted(members)}")

    def tail(self, node: str, n: int = 5) -> str:
        p = self.dir(node) / "daemon.log"
        if not p.exists():
            return ""
        return " | ".join(p.read_text(errors="replace").splitlines()[-n:])

    def up(self, init: bool = True) -> None:
        """init (unless done already), start the center, enrol every bureau, start them,
        wait until each has the global configuration."""
        if init:
            self.init()
        self.start(self.center_id)
        for b in self.bureaus:
            self.enrol(b)
        for b in self.bureaus:
            self.start(b, wait=False)
        for b in self.bureaus:
            self.wait_connected(b)
            self.wait_members(b, set(self.nodes))


def wait_until(pred: Any, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
