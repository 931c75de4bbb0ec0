"""The example service of docs/writing-a-service.md works as the walkthrough says.

docs/examples/exnode-notes is copied, built by pip and installed into a folder of its
own, exactly like tests/plugins/test_plugins.py does with its tiny plugin. Only the copy's
``[build-system]`` table is replaced (by tests/plugins/wheel_backend.py, which reads the
rest of the example's own pyproject.toml): nothing may be downloaded here. The plugin
reaches exnode only through PYTHONPATH, in subprocesses: the CLI and every ``exnode
run`` process of a real star (a center and one bureau over the machine's Mosquitto).

Two quick checks keep the prose honest: every excerpt in the walkthrough is a piece of
the example as it is, and every Python snippet of the README's "Writing a plugin"
section registers, as a plugin module, what it says it does.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import types
from pathlib import Path

import click
import pytest

from exnode.node.base.errors import PackageError
from exnode.node.kernel.api import KindSpec
from exnode.node.kernel.state import MIGRATIONS, installed_tables
from exnode.node.tools.cluster import wait_until
from exnode.plugins.manager import DEFAULT_PLUGINS, Registry, describe, make_manager
from exnode.policies.quality import compile_ruleset

from ..helpers import craft, publish_package, refusals
from .building import BUILD_SYSTEM, clean_env, pip_install

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "exnode-notes"
DIST, VERSION, MODULE = "exnode-notes", "0.1.0", "exnode_notes"
COLUMNS = ["id", "number", "author", "title", "text", "posted_at", "filed_at", "pkg_id"]
TITLE, TEXT = "Water supply notice 停水通知", "Mains repair on Zhongshan Road, 22:00-06:00."


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example, built by pip from a copy of its folder and installed into ./site."""
    root = tmp_path_factory.mktemp("notes")
    proj = root / "exnode-notes"
    shutil.copytree(EXAMPLE, proj, ignore=shutil.ignore_patterns("__pycache__", "build",
                                                                 "dist", "*.egg-info"))
    pyproject = proj / "pyproject.toml"
    text, n = re.subn(r"(?ms)^\[build-system\]\n.*?(?=^\[)", BUILD_SYSTEM,
                      pyproject.read_text())
    assert n == 1, "the example's pyproject.toml has no [build-system] table"
    pyproject.write_text(text)
    target = pip_install(proj, root / "site")
    assert (target / MODULE / "service.py").exists()
    assert (target / MODULE / "migrations" / "notes_0001_notes_table.py").exists()
    return target


def notes_head() -> str:
    """The head of the Alembic branch labelled "notes", among every installed plugin's."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    tables = {t.name: t for t in installed_tables()}
    assert "notes" in tables
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "space")
    cfg.set_main_option("version_locations", " ".join(
        [str(MIGRATIONS / "versions"), *(str(t.versions) for t in tables.values())]))
    head = ScriptDirectory.from_config(cfg).get_revision("notes@head")
    assert head is not None
    return head.revision


def exnode(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exnode.node", *args], capture_output=True,
                          text=True, timeout=120, env=clean_env(PYTHONPATH=str(site)),
                          cwd=site.parent)


def test_the_walkthrough_quotes_the_example() -> None:
    """Each code block of the walkthrough that starts with ``# FILE`` is a piece of FILE
    of the example, as it is."""
    doc = (EXAMPLE.parents[1] / "writing-a-service.md").read_text()
    quoted = re.findall(r"```(?:python|toml)\n# ([\w/.-]+\.(?:py|toml))\n(.*?)```", doc,
                        re.S)
    assert len(quoted) >= 10
    for name, block in quoted:
        source = (EXAMPLE / name).read_text()
        assert block in source, f"the excerpt of {name} is not in the example:\n{block}"
    assert {name for name, _b in quoted} == {
        "pyproject.toml", "exnode_notes/__init__.py", "exnode_notes/tables.py",
        "exnode_notes/service.py", "exnode_notes/cli.py",
        "exnode_notes/migrations/notes_0001_notes_table.py"}


def test_the_readme_snippets_register_what_they_say() -> None:
    """Each Python snippet of the README's "Writing a plugin" section is a working plugin
    module of the real API."""
    readme = (EXAMPLE.parents[2] / "README.md").read_text()
    section = readme[readme.index("\n## Writing a plugin\n"):]
    section = section[:section.index("\n## ", 1)]
    snippets = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(snippets) == 6
    pm = make_manager()
    modules = []
    for i, code in enumerate(snippets):
        module = types.ModuleType(f"readme_snippet_{i}")
        exec(compile(code, module.__name__, "exec"), module.__dict__)
        pm.register(module, name=module.__name__)
        modules.append(module)
    reg = Registry(pm)
    assert "x25519-hkdf-sha256-chacha20poly1305-ed25519" in reg.suites
    assert "dameng" in reg.dialects.names()
    assert "sql-audited" in reg.adapters
    ruleset = compile_ruleset({"resource": "people",
                               "clean": [{"step": "digits_only", "fields": ["phone"]}],
                               "rules": [{"rule": "mobile", "field": "phone"}]},
                              registry=reg.quality_registry())
    checked = ruleset.check([{"phone": "138-0013 8000"}, {"phone": "12345"}])
    assert checked.passed == [{"phone": "13800138000"}]
    assert [[v.rule for v in vs] for _row, vs in checked.failed] == [["mobile"]]
    cli = click.Group()
    pm.hook.exnode_cli_commands(cli=cli)
    assert "members" in cli.commands
    [service] = [m for m in modules if hasattr(m, "HelloService")]
    svc = service.exnode_services(api=types.SimpleNamespace(is_center=True))
    pm.register(svc)
    reg.collect_kinds(KindSpec)
    hello = reg.kinds["hello"]
    assert (hello.senders, hello.recipients, hello.relay) == ("bureau", "center", False)
    after: list = []
    hello.handler(types.SimpleNamespace(payload=b"hi", after_commit=after.append))
    for fn in after:
        fn()
    with pytest.raises(PackageError):
        hello.handler(types.SimpleNamespace(payload=b"", after_commit=after.append))
    assert svc.hellos == 1


def test_plugins_lists_it_beside_the_builtins(site: Path) -> None:
    # the test process itself does not see the plugin: only PYTHONPATH brings it
    assert "notes" not in {i.name for i in describe(make_manager())}
    r = exnode(site, "plugins", "--json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    infos = {i["name"]: i for i in listed}
    notes = infos["notes"]
    assert (notes["distribution"], notes["version"]) == (DIST, VERSION)
    assert notes["builtin"] is False
    assert notes["module"] == MODULE
    assert set(notes["hooks"]) == {"exnode_state_tables", "exnode_cli_commands",
                                   "exnode_services"}
    for name, _module in DEFAULT_PLUGINS:
        assert infos[name]["builtin"] is True, name
    names = [i["name"] for i in listed]
    assert names.index("notes") > max(names.index(n) for n, _m in DEFAULT_PLUGINS)
    # and its commands are on the command line
    r = exnode(site, "notes", "--help")
    assert r.returncode == 0, r.stderr
    assert "post" in r.stdout and "list" in r.stdout


def test_a_bureau_posts_a_notice_to_the_center(site, make_star, system_broker, monkeypatch):
    # LocalStar starts `exnode run` and the CLI with this process's environment ...
    monkeypatch.setenv("PYTHONPATH", str(site))
    # ... and opens the center's state DB itself (to set it up and to enrol a bureau):
    # once the plugin's branch is in a state DB, only a program that has the plugin too
    # may open it. So this process sees the plugin for the length of this test.
    monkeypatch.syspath_prepend(str(site))
    star = make_star(system_broker, bureaus=("b1",))
    star.up()

    # the bureau posts through the plugin's CLI command
    r = star.cli("b1", "notes", "post", TITLE, "--text", TEXT, "--json")
    assert r.returncode == 0, r.stderr
    sent = json.loads(r.stdout)
    assert sent["status"] == "sent"
    pkg_id = sent["pkg_id"]

    # the center files it; the bureau gets the number back
    board = wait_until(lambda: star.call("center", "GET", "/notes"), 30, what="the notice")
    mine = wait_until(lambda: [n for n in star.call("b1", "GET", "/notes")
                               if n["status"] == "filed"], 30, what="the center's answer")
    assert len(board) == 1
    assert mine[0]["number"] == board[0]["number"] > 0
    assert mine[0]["pkg_id"] == pkg_id

    # GET /notes at the center, through the CLI
    r = star.cli("center", "notes", "list", "--json")
    assert r.returncode == 0, r.stderr
    [note] = json.loads(r.stdout)
    assert (note["author"], note["title"], note["text"]) == ("b1", TITLE, TEXT)
    assert (note["status"], note["pkg_id"]) == ("filed", pkg_id)
    r = star.cli("center", "notes", "list")
    assert r.returncode == 0, r.stderr
    assert TITLE in r.stdout and f"#{note['number']}" in r.stdout

    # the service's section of `exnode status`
    r = star.cli("center", "status", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["notes"] == {"notes": 1, "filed": 1, "waiting": 0, "by_author": {"b1": 1}}
    assert st["text"]["notes"] == ["notes     1 on the board (b1 1)"]
    r = star.cli("center", "status")
    assert "notes     1 on the board (b1 1)" in r.stdout.splitlines()
    assert star.status("b1")["notes"]["filed"] == 1

    # a bad notice is refused (PackageError) and nothing is filed
    bad = craft(star, src="b1", to="center", kind="note", resource="notes", seq=0,
                payload=b"not json")
    publish_package(star, star.topics.inbox("center"), bad.wire, bad.header.id)
    refused = wait_until(lambda: [x for x in refusals(star, "center")
                                  if x[0] == bad.header.id], 30, what="the refusal")
    assert refused[0][2].startswith("bad-note")
    assert len(star.call("center", "GET", "/notes")) == 1

    # the center's state DB: the table, and its own branch in alembic_version
    db = sqlite3.connect(star.dir("center") / "state.db")
    try:
        cols = [c[1] for c in db.execute("PRAGMA table_info(notes)")]
        versions = {v for (v,) in db.execute("SELECT version_num FROM alembic_version")}
        rows = db.execute("SELECT author, title FROM notes").fetchall()
    finally:
        db.close()
    assert cols == COLUMNS
    assert notes_head() == "notes_0001"
    assert "notes_0001" in versions
    assert len(versions) > 1  # beside the kernel's and the built-in services' heads
    assert rows == [("b1", TITLE)]
