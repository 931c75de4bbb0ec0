"""An external plugin, built and installed like any third-party distribution, is
loaded through the ``exnode`` entry-point group next to the built-ins.

The plugin is installed with ``pip install --target`` into a folder of its own and
reaches exnode only through PYTHONPATH, in subprocesses: neither the venv nor this
test process sees it.

It is built by the test backend of ``building.py`` (PEP 517 ``backend-path``): the
venv's setuptools (65.x, as Python 3.11 ships it) cannot build wheels without the
``wheel`` package, which is not installed, and with ``--no-build-isolation --no-index``
nothing may be downloaded.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from exnode.plugins.manager import Registry, describe, make_manager

from ..helpers import init_bureau
from .building import clean_env, pip_install

SYNC_KINDS = ["health", "rejection", "rows", "verify-req", "verify-res", "zero"]  # built-in sync
# the kernel's own kinds: the exchange log's witness and the broker login's rotation
KERNEL_KINDS = ["broker-login", "broker-login-ok", "log-head", "log-trace", "log-trace-ans",
                "log-witness"]
# the sharing services: catalog, access, verification, query, corrections
SHARING = ["catalog", "access", "verification", "query", "corrections"]
SHARING_KINDS = ["catalog", "catalog-pub", "catalog-pull", "access-req", "access-ask",
                 "access-answer", "access-note", "grant", "access-revoke", "check-req",
                 "check-res", "query-req", "query-page", "correction", "correction-fwd",
                 "correction-answer", "correction-note"]
DIST, VERSION = "exnode-hello", "1.2.3"

PLUGIN = '''\
"""A tiny exnode plugin: a package kind and a CLI command."""

import click

from exnode.plugins import hookimpl



def handler(ctx):
    ctx.reply("hello", b"hello, " + ctx.payload)


@hookimpl
def exnode_package_kinds(register):
    register("hello", handler)


@hookimpl
def exnode_cli_commands(cli):
    @cli.command("hello")
    def hello():
        """Say hello (from a plugin)."""
        click.echo("hello from exnode-hello")
'''

PYPROJECT = '''\
[build-system]
requires = []
build-backend = "wheel_backend"
backend-path = ["_build"]

[project]
name = "exnode-hello"
version = "1.2.3"
description = "a test plugin for exnode"

[project.entry-points.exnode]
hello = "exnode_hello"

[tool.setuptools]
packages = ["exnode_hello"]
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The plugin, built by pip from its project folder and installed into ./site."""
    root = tmp_path_factory.mktemp("plugin")
    proj = root / "exnode-hello"
    (proj / "exnode_hello").mkdir(parents=True)
    (proj / "pyproject.toml").write_text(PYPROJECT)
    (proj / "exnode_hello" / "__init__.py").write_text(PLUGIN)
    target = root / "site"
    venv_before = sorted(p.name for p in Path(md.distribution("exnode").locate_file(""))
                         .iterdir())
    pip_install(proj, target)
    # only the target folder got the plugin; the venv is as it was
    venv_after = sorted(p.name for p in Path(md.distribution("exnode").locate_file(""))
                        .iterdir())
    assert venv_after == venv_before
    assert (target / "exnode_hello" / "__init__.py").exists()
    assert (target / f"exnode_hello-{VERSION}.dist-info" / "entry_points.txt").exists()
    return target


def exnode(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exnode.node", *args], capture_output=True,
                          text=True, timeout=120, env=clean_env(PYTHONPATH=str(site)),
                          cwd=site.parent)


def test_plugin_is_not_visible_to_the_test_process(site):
    with pytest.raises(md.PackageNotFoundError):
        md.distribution(DIST)
    assert "hello" not in Registry(make_manager()).kinds


def test_plugins_json_lists_it_next_to_the_builtins(site):
    r = exnode(site, "plugins", "--json")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    infos = {i["name"]: i for i in json.loads(r.stdout)}
    hello = infos["hello"]
    assert hello["distribution"] == DIST
    assert hello["version"] == VERSION
    assert hello["builtin"] is False
    assert hello["module"] == "exnode_hello"
    assert set(hello["hooks"]) == {"exnode_package_kinds", "exnode_cli_commands"}
    for name, hook in (("crypto-x25519-aes256gcm", "exnode_crypto_suites"),
                       ("basic", "exnode_services")):
        assert infos[name]["builtin"] is True
        assert infos[name]["distribution"] == "exnode"
        assert hook in infos[name]["hooks"]
    # built-ins are listed first
    names = [i["name"] for i in json.loads(r.stdout)]
    assert names.index("hello") > max(names.index("crypto-x25519-aes256gcm"),
                                      names.index("basic"))


def test_plugins_text_names_the_distribution(site):
    r = exnode(site, "plugins")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("hello "))
    assert f"{DIST} {VERSION}" in line
    builtin = next(ln for ln in r.stdout.splitlines() if ln.startswith("basic "))
    assert "built-in" in builtin


def test_plugin_cli_command(site):
    r = exnode(site, "hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hello from exnode-hello"


def composed_kinds(config: Path, disable: list[str]) -> dict[str, Any]:
    """The package kinds a node with this config composes (its per-node services)."""
    from exnode.node.base.config import load_config
    from exnode.node.kernel.node import Node

    cfg = load_config(config)
    cfg.plugins.disable = disable
    node = Node(cfg)
    try:
        node.compose()
        return dict(node.plugins.kinds)
    finally:
        node.engine.dispose()


def test_registry_picks_up_the_new_kind(site, tmp_path):
    probe = textwrap.dedent('''\
        import json
        from types import SimpleNamespace

        import sys

        from exnode.node.base.config import load_config
        from exnode.node.kernel.node import Node
        from exnode.plugins.manager import loaded_distributions

        def composed(disable):
            cfg = load_config(sys.argv[1])
            cfg.plugins.disable = disable
            node = Node(cfg)
            node.compose()  # the per-node services, and the package kinds they bring
            node.engine.dispose()
            return node.plugins

        reg = composed([])
        replies = []
        ctx = SimpleNamespace(payload=b"bob", reply=lambda k, p: replies.append([k, p.decode()]))
        reg.kinds["hello"].handler(ctx)
        blocked = composed(["hello"])
        print(json.dumps({
            "kinds": sorted(reg.kinds), "ordered": sorted(reg.ordered),
            "suites": sorted(reg.suites), "replies": replies,
            "module": reg.kinds["hello"].handler.__module__,
            "blocked_kinds": sorted(blocked.kinds),
            "dists": loaded_distributions(),
        }))
    ''')
    config = init_bureau(tmp_path / "b9", "b9")
    r = subprocess.run([sys.executable, "-c", probe, str(config)], capture_output=True,
                       text=True, timeout=120, env=clean_env(PYTHONPATH=str(site)),
                       cwd=site.parent)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # the external plugin's kind beside the built-ins (core kinds, database sync) and
    # the kernel's own (the exchange log's witness)
    assert out["kinds"] == sorted(["data", "hello", "ping", "pong", *KERNEL_KINDS,
                                   *SYNC_KINDS, *SHARING_KINDS])
    assert out["ordered"] == ["data", "rows", "zero"]
    assert out["suites"] == ["x25519-hkdf-sha256-aes256gcm-ed25519"]
    assert out["module"] == "exnode_hello"
    assert out["replies"] == [["hello", "hello, bob"]]
    assert out["blocked_kinds"] == sorted(["data", "ping", "pong", *KERNEL_KINDS,
                                           *SYNC_KINDS, *SHARING_KINDS])
    assert out["dists"][DIST] == VERSION
    assert "exnode" in out["dists"]


def test_builtins_in_process(tmp_path):
    infos = {i.name: i for i in describe(make_manager())}
    assert {"crypto-x25519-aes256gcm", "basic", "sync", "sql", "tools"} <= set(infos)
    assert all(i.builtin and i.distribution == "exnode" for i in infos.values()
               if i.name in ("crypto-x25519-aes256gcm", "basic"))
    config = init_bureau(tmp_path / "b9", "b9")
    # with both services disabled only the kernel's own kinds are left
    assert set(composed_kinds(config, ["basic", "sync", *SHARING])) == set(KERNEL_KINDS)
    kinds = composed_kinds(config, ["basic"])
    assert "rows" in kinds and "ping" not in kinds
    reg = Registry(make_manager(disable=["basic", "sync", *SHARING]))
    assert list(reg.suites) == ["x25519-hkdf-sha256-aes256gcm-ed25519"]
