"""The real ``exnode`` command line, run as a subprocess: every failure is one line on
stderr with the right exit code and never a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from exnode.node.base.config import load_config
from exnode.node.kernel import exlog
from exnode.node.kernel import identity as idn
from exnode.node.kernel.state import open_state


def exnode(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXNODE_")}
    return subprocess.run([sys.executable, "-m", "exnode.node", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return r


def one_line_error(r: subprocess.CompletedProcess[str], code: int,
                   prefix: str = "exnode: error: ") -> str:
    """Assert a failure of exactly one stderr line; return that line."""
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def ca_fingerprint_of(keys: Path) -> str:
    cert = x509.load_pem_x509_certificate((keys / "ca.crt").read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@pytest.fixture(scope="module")
def center(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-center")
    r = ok(exnode("init", "--role", "center", "--id", "center", "--dir", "node",
                  "--broker-host", "mq.example.org", "--broker-port", "8883", "--json",
                  cwd=root))
    info = json.loads(r.stdout)
    d = root / "node"
    assert info == {"config": "node/exnode.yaml", "role": "center", "id": "center",
                    "keys": str((d / "keys").resolve()),
                    "ca_fingerprint": ca_fingerprint_of(d / "keys")}
    return d / "exnode.yaml"


@pytest.fixture(scope="module")
def bureau(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-bureau")
    r = ok(exnode("init", "--role", "bureau", "--id", "b1", "--dir", str(root / "node"),
                  "--center-id", "hub", "--json", cwd=root))
    info = json.loads(r.stdout)
    assert info["role"] == "bureau" and info["id"] == "b1"
    assert info["ca_fingerprint"] is None
    return root / "node" / "exnode.yaml"


# --- init ---------------------------------------------------------------------------------

def test_init_center_files_and_modes(center):
    d = center.parent
    keys = d / "keys"
    cfg = load_config(center)
    assert cfg.node.role == "center" and cfg.node.id == "center"
    assert cfg.broker.host == "mq.example.org" and cfg.broker.port == 8883
    assert mode(keys) == 0o700
    for name in ("sign.key", "enc.key", "ca.key"):
        assert mode(keys / name) == 0o600, name
    assert (keys / "ca.crt").exists()
    assert mode(d / "state.db") == 0o600
    # the center is the first member of its own registry, with a certificate
    db = sqlite3.connect(d / "state.db")
    try:
        row = db.execute("SELECT role, status, cert FROM members WHERE id='center'").fetchone()
    finally:
        db.close()
    assert row[0] == "center" and row[1] == "approved"
    ca = x509.load_pem_x509_certificate((keys / "ca.crt").read_bytes())
    assert idn.member_from_cert(row[2], ca).id == "center"


def test_init_bureau_files_and_modes(bureau):
    keys = bureau.parent / "keys"
    cfg = load_config(bureau)
    assert cfg.node.role == "bureau" and cfg.center.id == "hub"
    assert mode(keys) == 0o700
    assert sorted(p.name for p in keys.iterdir()) == ["enc.key", "sign.key"]
    for p in keys.iterdir():
        assert mode(p) == 0o600
    assert not (bureau.parent / "state.db").exists()


def test_init_text_then_twice_needs_force(tmp_path):
    r = ok(exnode("init", "--role", "center", "--id", "hub", "--dir", "c", cwd=tmp_path))
    keys_dir = tmp_path / "c" / "keys"
    fp = ca_fingerprint_of(keys_dir)
    assert f"CA fingerprint: {fp}" in r.stdout.splitlines()
    assert "nodes invite" in r.stdout
    keys = {p.name: p.read_bytes() for p in keys_dir.iterdir()}
    cfg_text = (tmp_path / "c" / "exnode.yaml").read_text()
    r = exnode("init", "--role", "center", "--id", "hub2", "--dir", "c", cwd=tmp_path)
    line = one_line_error(r, 2)
    assert "exists" in line and "--force" in line
    assert (tmp_path / "c" / "exnode.yaml").read_text() == cfg_text
    r = ok(exnode("init", "--role", "center", "--id", "hub", "--dir", "c", "--force", "--json",
                  cwd=tmp_path))
    # --force rewrites the file but keeps the keys and the CA
    assert json.loads(r.stdout)["ca_fingerprint"] == fp
    assert {p.name: p.read_bytes() for p in keys_dir.iterdir()} == keys


def test_init_with_a_bad_id(tmp_path):
    r = exnode("init", "--role", "bureau", "--id", "Bureau One", "--dir", "b", cwd=tmp_path)
    line = one_line_error(r, 2)
    assert "node.id" in line
    assert not (tmp_path / "b" / "exnode.yaml").exists()


# --- members ------------------------------------------------------------------------------

def test_nodes_invite_prints_a_token(center):
    r = ok(exnode("-c", str(center), "nodes", "invite", "b7", cwd=center.parent))
    tokens = [w for w in r.stdout.split() if w.startswith("exn1.") and not w.endswith("...")]
    assert len(tokens) == 1, r.stdout
    tok = idn.parse_token(tokens[0])
    assert tok["node_id"] == "b7"
    assert tok["center_id"] == "center"
    assert (tok["host"], tok["port"]) == ("mq.example.org", 8883)
    assert tok["ca_fp"] == ca_fingerprint_of(center.parent / "keys")
    assert len(tok["secret"]) == 32


def test_nodes_invite_json(center):
    before = time.time()
    r = ok(exnode("-c", str(center), "nodes", "invite", "b8", "--approve", "--ttl", "1h",
                  "--json", cwd=center.parent))
    after = time.time()
    out = json.loads(r.stdout)
    assert out["node"] == "b8" and out["approve"] is True
    tok = idn.parse_token(out["token"])
    assert tok["node_id"] == "b8"
    assert abs(tok["expires"] - out["expires"]) <= 1
    assert before + 3600 - 1 <= tok["expires"] <= after + 3600


@pytest.mark.parametrize("args,fragment", [
    (["nodes", "invite", "Not Valid"], "not a valid node id"),
    (["nodes", "invite", "b9", "--ttl", "forever"], "not a duration"),
])
def test_nodes_usage_errors(center, args, fragment):
    line = one_line_error(exnode("-c", str(center), *args, cwd=center.parent), 2)
    assert fragment in line


@pytest.mark.parametrize("args,fragment", [
    (["nodes", "approve", "nosuch"], "nosuch"),
    (["nodes", "revoke", "nosuch"], "nosuch"),
    (["log", "show", "0195f3c1-7d2e-7c4b-8a8e-0123456789ab"], "not known to this node"),
    (["log", "show", "abcd"], "not known to this node"),
])
def test_what_is_not_there_is_exit_3_everywhere(center, args, fragment):
    """One exit code for "not found" (issue 9, finding 7: it was 1 or 2 by command)."""
    line = one_line_error(exnode("-c", str(center), *args, cwd=center.parent), 3)
    assert fragment in line


def test_open_invitations_are_listed_without_their_secret(center):
    ok(exnode("-c", str(center), "nodes", "invite", "b6", "--approve", cwd=center.parent))
    rows = json.loads(ok(exnode("-c", str(center), "nodes", "invitations", "--json",
                                cwd=center.parent)).stdout)
    b6 = next(r for r in rows if r["node_id"] == "b6")
    assert b6["approve"] is True and b6["expired"] is False
    assert set(b6) == {"node_id", "approve", "created_at", "expires", "expired"}
    text = ok(exnode("-c", str(center), "nodes", "invitations", cwd=center.parent)).stdout
    assert "b6" in text and "yes" in text


def test_nodes_invite_on_a_bureau(bureau):
    line = one_line_error(exnode("-c", str(bureau), "nodes", "invite", "b2",
                                 cwd=bureau.parent), 2)
    assert "center" in line


def test_nodes_list_json(center):
    rows = json.loads(ok(exnode("-c", str(center), "nodes", "list", "--json",
                                cwd=center.parent)).stdout)
    me = [r for r in rows if r["id"] == "center"]
    assert len(me) == 1
    assert me[0]["role"] == "center" and me[0]["status"] == "approved"
    assert me[0]["serial"]


def test_register_with_a_garbage_token(bureau):
    line = one_line_error(exnode("-c", str(bureau), "register", "exn1.garbage-token",
                                 cwd=bureau.parent), 1)
    assert "damaged" in line


# --- the daemon is not running --------------------------------------------------------------

@pytest.mark.parametrize("args", [["status"], ["ping", "b1", "--json"]])
def test_commands_needing_the_daemon(center, args):
    r = exnode("-c", str(center), *args, cwd=center.parent)
    assert r.returncode != 0
    line = one_line_error(r, r.returncode)
    assert "exnode run" in line
    assert r.stdout == ""


def test_stale_socket_means_not_running(bureau):
    sock_path = bureau.parent / "run" / "exnode.sock"
    sock_path.parent.mkdir(mode=0o700)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock_path))
    s.close()  # the file stays, nobody listens
    try:
        assert sock_path.exists()
        r = exnode("-c", str(bureau), "status", cwd=bureau.parent)
        line = one_line_error(r, r.returncode)
        assert r.returncode != 0
        assert "exnode run" in line
    finally:
        sock_path.unlink()


def test_no_config_file(tmp_path):
    line = one_line_error(exnode("status", cwd=tmp_path), 2)
    assert "exnode.yaml" in line and "exnode init" in line


def test_unknown_option_is_a_usage_error(center):
    r = exnode("-c", str(center), "status", "--bogus", cwd=center.parent)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "No such option" in r.stderr and "--bogus" in r.stderr


# --- the exchange log -------------------------------------------------------------------------

def test_log_since_garbage(center):
    line = one_line_error(exnode("-c", str(center), "log", "--since", "garbage",
                                 cwd=center.parent), 2)
    assert "--since" in line


def test_log_verify_on_a_fresh_center(center):
    r = ok(exnode("-c", str(center), "log", "verify", cwd=center.parent))
    assert r.stdout.startswith("exchange log ok: 0 rows")


def test_log_verify_names_a_tampered_row(tmp_path):
    ok(exnode("init", "--role", "center", "--id", "center", "--dir", "c", cwd=tmp_path))
    cfg_path = tmp_path / "c" / "exnode.yaml"
    cfg = load_config(cfg_path)
    ident = idn.Identity(cfg.node.id, cfg.keys_dir)
    eng = open_state(cfg.state_url)
    try:
        for n in range(1, 6):
            with eng.begin() as conn:
                exlog.append(conn, [{"pkg_id": f"pkg-{n}", "event": "sent", "peer": "b1",
                                     "resource": "r", "kind": "data", "size": n}], ident.sign)
    finally:
        eng.dispose()
    out = json.loads(ok(exnode("-c", str(cfg_path), "log", "verify", "--json",
                               cwd=tmp_path)).stdout)
    assert out == {"ok": True, "rows": 5, "bad_row": None, "problem": "",
                   "head_file": None, "witness": {"checked": False}}

    db = sqlite3.connect(tmp_path / "c" / "state.db")
    try:
        db.execute("UPDATE exchange_log SET status='refused', reason='x' WHERE id=3")
        db.commit()
    finally:
        db.close()
    line = one_line_error(exnode("-c", str(cfg_path), "log", "verify", cwd=tmp_path), 1,
                          prefix="exchange log FAILED verification: ")
    assert "row 3 " in line


def test_config_check_names_owners_and_subscribers_that_are_not_members(tmp_path):
    ok(exnode("init", "--role", "center", "--id", "center", "--dir", "c", cwd=tmp_path))
    cfg_path = tmp_path / "c" / "exnode.yaml"
    eng = open_state(load_config(cfg_path).state_url)
    try:
        from exnode.node.kernel import registry

        registry.invite(eng, "center", "b2", 3600, approve=False)  # invited, not approved
    finally:
        eng.dispose()
    with cfg_path.open("a") as f:
        f.write("databases:\n  db: {url: 'sqlite:///shared.db'}\n"
                "resources:\n  people:\n    database: db\n    table: people\n"
                "    key: [id]\n    owner: b1\n    subscribers: [b2, b9]\n")
    out = json.loads(ok(exnode("-c", str(cfg_path), "config", "check", "--json",
                               cwd=tmp_path)).stdout)
    w = "\n".join(out["warnings"])
    assert "resources.people.owner: 'b1' is not a member" in w
    assert "resources.people.subscribers: 'b9' is not a member" in w
    assert "'b2' is" in w and "held at the center" in w


def test_log_filters_by_kind_and_event_and_show_takes_a_unique_prefix(tmp_path):
    ok(exnode("init", "--role", "center", "--id", "center", "--dir", "c", cwd=tmp_path))
    cfg_path = tmp_path / "c" / "exnode.yaml"
    cfg = load_config(cfg_path)
    ident = idn.Identity(cfg.node.id, cfg.keys_dir)
    eng = open_state(cfg.state_url)
    ids = ["0195f3c1-aaaa-7c4b-8a8e-000000000001", "0195f3c1-aaab-7c4b-8a8e-000000000002",
           "0195f3c2-bbbb-7c4b-8a8e-000000000003"]
    try:
        with eng.begin() as conn:
            exlog.append(conn, [
                {"pkg_id": ids[0], "event": "applied", "peer": "b1", "kind": "rows"},
                {"pkg_id": ids[1], "event": "applied", "peer": "b1", "kind": "zero"},
                {"pkg_id": ids[2], "event": "refused", "peer": "b2", "kind": "rows"}],
                ident.sign)
    finally:
        eng.dispose()

    def log(*args: str) -> list[dict]:
        return json.loads(ok(exnode("-c", str(cfg_path), "log", "--json", *args,
                                    cwd=tmp_path)).stdout)

    assert [r["pkg_id"] for r in log("--kind", "rows")] == [ids[0], ids[2]]
    assert [r["pkg_id"] for r in log("--event", "refused")] == [ids[2]]
    assert [r["pkg_id"] for r in log("--kind", "rows", "--event", "applied")] == [ids[0]]
    text = ok(exnode("-c", str(cfg_path), "log", cwd=tmp_path)).stdout
    assert "0195f3c2 " in text  # the short id
    shown = json.loads(ok(exnode("-c", str(cfg_path), "log", "show", "0195f3c2", "--json",
                                 cwd=tmp_path)).stdout)
    assert shown["pkg_id"] == ids[2] and shown["trace"][0]["event"] == "refused"
    r = exnode("-c", str(cfg_path), "log", "show", "0195f3c1", cwd=tmp_path)
    assert r.returncode != 0 and "matches 2 packages" in one_line_error(r, r.returncode)
    r = exnode("-c", str(cfg_path), "log", "show", "zz", cwd=tmp_path)
    assert r.returncode != 0 and "at least 4 characters" in one_line_error(r, r.returncode)


def test_config_check_names_unreadable_broker_files_and_open_password_files(tmp_path):
    ok(exnode("init", "--role", "bureau", "--id", "b1", "--dir", "n", cwd=tmp_path))
    cfg_path = tmp_path / "n" / "exnode.yaml"
    pw = tmp_path / "n" / "broker.password"
    pw.write_text("secret\n")
    pw.chmod(0o644)
    text = cfg_path.read_text().replace(
        "  # tls:\n  #   ca: /etc/exnode/broker-ca.pem\n",
        "  tls:\n    ca: /nonexistent/ca.pem\n")
    text = text.replace("  # password_file: broker.password", "  password_file: broker.password")
    cfg_path.write_text(text)
    out = json.loads(ok(exnode("-c", str(cfg_path), "config", "check", "--json",
                               cwd=tmp_path)).stdout)
    w = "\n".join(out["warnings"])
    assert "broker.tls.ca: cannot read /nonexistent/ca.pem: No such file or directory" in w
    assert f"broker.password_file: {pw} is readable by others" in w
    assert "None" not in w


def test_builtin_command_table_matches_what_the_plugins_register():
    import importlib

    import click

    from exnode.plugins.manager import BUILTIN_COMMANDS, DEFAULT_PLUGINS

    registered = {}
    for _name, module in DEFAULT_PLUGINS:
        group = click.Group()
        hook = getattr(importlib.import_module(module), "exnode_cli_commands", None)
        if hook is not None:
            hook(cli=group)
        registered.update({cmd: module for cmd in group.commands})
    assert registered == BUILTIN_COMMANDS


@pytest.mark.parametrize(("args", "loaded", "not_loaded"), [
    (["query", "--help"], "exnode.plugins.builtin.query", "exnode.plugins.builtin.sync"),
    (["-c", "x.yaml", "verify", "--help"], "exnode.plugins.builtin.verification",
     "exnode.plugins.builtin.query"),
    (["status", "--help"], None, "exnode.plugins.builtin.query"),
    (["--help"], "exnode.plugins.builtin.sync", None),
])
def test_a_command_loads_only_the_plugin_it_needs(tmp_path, args, loaded, not_loaded):
    code = "\n".join([
        "import sys", "from exnode.node.app.cli import main",
        f"sys.argv = ['exnode', *{args!r}]",
        "try:", "    main()", "except SystemExit as e:", "    code = e.code",
        "print(sorted(m for m in sys.modules if m.startswith('exnode.plugins.builtin.')"
        " and m.count('.') == 3), code, file=sys.stderr)"])
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    mods, _, rc = r.stderr.strip().splitlines()[-1].rpartition("] ")
    assert rc == "0", r.stderr
    assert "Usage:" in r.stdout
    if loaded:
        assert f"'{loaded}'" in mods
    if not_loaded:
        assert f"'{not_loaded}'" not in mods


def test_a_client_command_starts_without_sqlalchemy_or_aiohttp(tmp_path):
    """``exnode query`` and ``exnode verify`` talk to the daemon and write a file: they
    need neither the state DB's SQLAlchemy nor the control server's aiohttp (0.25 s of
    start-up)."""
    code = "\n".join([
        "import sys", "from exnode.node.app.cli import main",
        "sys.argv = ['exnode', 'query', '--help']",
        "try:", "    main()", "except SystemExit:", "    pass",
        "import exnode.node.app.client, exnode.plugins.builtin.query.cli",
        "import exnode.plugins.builtin.query.formats, exnode.plugins.builtin.verification.cli",
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'aiohttp', "
        "'alembic', 'psycopg'}), file=sys.stderr)"])
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert "Usage:" in r.stdout, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "[]", r.stderr
