"""``exnode config check --connect`` (node/app/preflight.py) and one-line database and
broker errors (node/base/dberrors.py, transport.connect_error): real PostgreSQL,
Mosquitto brokers of our own (a password file; a TLS listener), the real CLI."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from exnode.node.app.cli import _status_text
from exnode.node.tools.broker import free_port

from ...conftest import Broker
from ...e2e.test_broker_identity import _give_to_mosquitto, _tls
from ...helpers import init_bureau
from .test_cli import exnode, one_line_error


def check(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return exnode("-c", str(cfg), "config", "check", *args, cwd=cfg.parent)


def results(r: subprocess.CompletedProcess[str]) -> dict[str, list[dict]]:
    """--json output by check name (a check may give several lines)."""
    assert "Traceback" not in r.stderr, r.stderr
    out: dict[str, list[dict]] = {}
    for c in json.loads(r.stdout):
        assert set(c) >= {"check", "ok", "detail"}
        out.setdefault(c["check"], []).append(c)
    return out


def detail(res: dict[str, list[dict]], name: str) -> str:
    return " | ".join(c["detail"] for c in res[name])


@pytest.fixture
def broker_dir() -> Iterator[Path]:
    """A folder the mosquitto user may read (pytest's tmp_path is 0700 under root)."""
    d = Path(f"/tmp/exn-pf-{uuid.uuid4().hex[:8]}")
    d.mkdir(mode=0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _mosquitto(d: Path, lines: str) -> Broker:
    port = free_port()
    conf = d / f"mosquitto-{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\n" + lines)
    _give_to_mosquitto(d)
    b = Broker("127.0.0.1", port, conf=conf)
    b.start()
    return b


@pytest.fixture
def password_broker(broker_dir: Path) -> Iterator[Broker]:
    pw = broker_dir / "mosq.passwd"
    pw.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "b1", "right-password"], check=True,
                   capture_output=True, timeout=30)
    b = _mosquitto(broker_dir, f"allow_anonymous false\npassword_file {pw}\n")
    yield b
    b.stop()


@pytest.fixture
def tls_broker(broker_dir: Path) -> Iterator[Broker]:
    _tls(broker_dir)
    b = _mosquitto(broker_dir, f"allow_anonymous true\ncafile {broker_dir}/ca.pem\n"
                   f"certfile {broker_dir}/broker.pem\nkeyfile {broker_dir}/broker.key\n")
    yield b
    b.stop()


@pytest.fixture
def people_db(pg_url: str) -> str:
    eng = sa.create_engine(pg_url)
    with eng.begin() as c:
        c.exec_driver_sql("CREATE TABLE people (id integer PRIMARY KEY, name text, "
                          "phone text)")
    eng.dispose()
    return pg_url


class Listener:
    """A TCP port that counts the connections it accepts (and closes them)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


class FakePostgres(Listener):
    """Answers every login as a PostgreSQL server with password authentication would
    answer a wrong password (the machine's server trusts every local login)."""

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                self._serve(conn)
            except OSError:
                pass
            finally:
                conn.close()

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            part = conn.recv(n - len(data))
            if not part:
                raise OSError("closed")
            data += part
        return data

    def _serve(self, conn: socket.socket) -> None:
        while True:  # SSLRequest / GSSENCRequest: 'N', then the startup message
            n, code = struct.unpack("!ii", self._read(conn, 8))
            self._read(conn, n - 8)
            if code in (80877103, 80877104):
                conn.sendall(b"N")
                continue
            break
        conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
        self._read(conn, 1)
        (n,) = struct.unpack("!i", self._read(conn, 4))
        self._read(conn, n - 4)
        fields = (b"SFATAL\0VFATAL\0C28P01\0"
                  b'Mpassword authentication failed for user "app"\0\0')
        conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)


# --- Part 3: one line, exit 1, through the CLI -----------------------------------------------

def test_a_database_that_does_not_exist_is_one_line_naming_the_setting(tmp_path, pg_url):
    missing = pg_url.rsplit("/", 1)[0] + "/exnode_no_such_db"
    cfg = init_bureau(tmp_path / "n", databases={"hr": {"url": missing}},
                      resources={"people": {"database": "hr", "table": "people",
                                            "key": ["id"]}})
    r = exnode("-c", str(cfg), "capture", "install", "people", cwd=tmp_path)
    line = one_line_error(r, 1)
    assert line == ("exnode: error: databases.hr: cannot connect to "
                    f"{missing}: database \"exnode_no_such_db\" does not exist"), line
    assert "sqlalche.me" not in r.stderr and "internal error" not in r.stderr


def test_a_wrong_database_password_is_one_line_without_the_password(tmp_path):
    fake = FakePostgres()
    try:
        (tmp_path / "hr.password").write_text("s3cret-pw\n")
        (tmp_path / "hr.password").chmod(0o600)
        url = f"postgresql+psycopg://app@127.0.0.1:{fake.port}/hr"
        cfg = init_bureau(tmp_path / "n", databases={"hr": {
            "url": url, "password_file": str(tmp_path / "hr.password")}},
            resources={"people": {"database": "hr", "table": "people", "key": ["id"]}})
        r = exnode("-c", str(cfg), "capture", "install", "people", cwd=tmp_path)
        line = one_line_error(r, 1)
        assert line.startswith("exnode: error: databases.hr: cannot connect to "
                               f"{url}: "
                               'wrong password for user "app"'), line
        assert "databases.hr.password_file" in line
        assert "s3cret-pw" not in r.stderr + r.stdout
        # and config check --connect says the same, as a FAIL line
        res = results(check(cfg, "--connect", "--json"))
        assert 'wrong password for user "app"' in detail(res, "databases.hr")
        assert "s3cret-pw" not in json.dumps(res)
    finally:
        fake.close()


def test_a_database_server_that_is_down(tmp_path):
    port = free_port()
    cfg = init_bureau(tmp_path / "n", databases={"hr": {
        "url": f"postgresql+psycopg://app@127.0.0.1:{port}/hr"}},
        resources={"people": {"database": "hr", "table": "people", "key": ["id"]}})
    line = one_line_error(exnode("-c", str(cfg), "capture", "install", "people",
                                 cwd=tmp_path), 1)
    assert f"databases.hr: cannot connect to postgresql+psycopg://app@127.0.0.1:{port}/hr: " \
           f"cannot reach the database server on 127.0.0.1:{port}" in line
    assert "is it running?" in line


# --- Part 4: config check --connect ------------------------------------------------------------

def test_connect_finds_missing_tables_columns_and_databases(tmp_path, people_db,
                                                            system_broker):
    missing = people_db.rsplit("/", 1)[0] + "/exnode_no_such_db"
    cfg = init_bureau(tmp_path / "n", databases={
        "hr": {"url": people_db}, "gone": {"url": missing}, "odd": {"url": "foo://x/y"}},
        resources={
            "people": {"database": "hr", "table": "people", "key": ["id"],
                       "fields": ["name", "email"],
                       "quality": {"rules": [{"rule": "required", "field": "mobile"}]}},
            "good": {"database": "hr", "table": "people", "key": ["id"],
                     "fields": ["name", "phone"]},
            "nowhere": {"database": "hr", "table": "no_such_table", "key": ["id"]},
            "lost": {"database": "gone", "table": "t", "key": ["id"]}})
    r = check(cfg, "--connect", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    res = results(r)
    assert res["databases.hr"][0]["ok"]
    assert not res["databases.gone"][0]["ok"]
    assert 'database "exnode_no_such_db" does not exist' in detail(res, "databases.gone")
    assert "unsupported URL scheme 'foo'" in detail(res, "databases.odd")
    assert "has no column 'email'" in detail(res, "resources.people.fields")
    assert "has no column 'mobile'" in detail(res, "resources.people.quality")
    assert res["resources.good"][0]["ok"]
    assert "table 'no_such_table' does not exist in databases.hr" in detail(
        res, "resources.nowhere")
    assert not res["resources.lost"][0]["ok"]
    assert res["broker"][0]["ok"], res["broker"]
    text = check(cfg, "--connect")
    assert text.returncode == 1 and "Traceback" not in text.stderr
    lines = text.stdout.splitlines()
    assert all(ln.split(" ", 1)[0] in ("ok", "FAIL", "warn") for ln in lines), lines
    assert any(ln.startswith("FAIL resources.people.fields: ") for ln in lines)


def test_connect_passes_and_checks_the_modes_of_password_files(tmp_path, people_db,
                                                               system_broker):
    pw = tmp_path / "db.password"
    pw.write_text("unused\n")
    pw.chmod(0o600)
    cfg = init_bureau(tmp_path / "n", databases={"hr": {"url": people_db,
                                                        "password_file": str(pw)}},
                      resources={"people": {"database": "hr", "table": "people",
                                            "key": ["id"]}})
    r = check(cfg, "--connect", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(c["ok"] for cs in results(r).values() for c in cs)
    pw.chmod(0o644)
    r = check(cfg, "--connect", "--json")
    assert r.returncode == 1
    assert "others may read it (chmod 600" in detail(results(r), "databases.hr.password_file")


def test_connect_names_a_wrong_broker_password(tmp_path, password_broker):
    pw = tmp_path / "broker.password"
    pw.write_text("wrong-password\n")
    pw.chmod(0o600)
    broker = {"host": "127.0.0.1", "port": password_broker.port, "username": "b1",
              "password_file": str(pw)}
    cfg = init_bureau(tmp_path / "n", broker=broker)
    r = check(cfg, "--connect", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    d = detail(results(r), "broker")
    assert d.startswith("connection refused by the broker: "), d
    assert "bad user name or password" in d and "broker.password_file" in d
    assert "wrong-password" not in r.stdout
    pw.write_text("right-password\n")
    r = check(cfg, "--connect", "--json")
    assert r.returncode == 0, r.stdout
    assert "as 'b1'" in detail(results(r), "broker")


def test_connect_names_a_tls_listener_without_tls_configured(tmp_path, tls_broker,
                                                             broker_dir):
    broker = {"host": "127.0.0.1", "port": tls_broker.port}
    cfg = init_bureau(tmp_path / "n", broker=broker)
    r = check(cfg, "--connect", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    d = detail(results(r), "broker")
    assert "expects TLS" in d and "set broker.tls.ca" in d, d
    cfg = init_bureau(tmp_path / "m", broker={**broker, "tls": {
        "ca": str(broker_dir / "ca.pem")}})
    r = check(cfg, "--connect", "--json")
    assert r.returncode == 0, r.stdout
    res = results(r)
    assert "TLS" in detail(res, "broker") and res["broker.tls.ca"][0]["ok"]


def test_connect_names_an_unreachable_broker(tmp_path):
    cfg = init_bureau(tmp_path / "n", broker={"host": "127.0.0.1", "port": free_port()})
    r = check(cfg, "--connect")
    assert r.returncode == 1
    assert "FAIL broker: broker unreachable: nothing listens on 127.0.0.1:" in r.stdout


def test_plain_config_check_connects_to_nothing(tmp_path):
    db, mq = Listener(), Listener()
    try:
        cfg = init_bureau(tmp_path / "n", broker={"host": "127.0.0.1", "port": mq.port},
                          databases={"hr": {
                              "url": f"postgresql+psycopg://app@127.0.0.1:{db.port}/hr"}},
                          resources={"people": {"database": "hr", "table": "people",
                                                "key": ["id"]}})
        r = check(cfg, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["ok"] is True
        assert (db.accepted, mq.accepted) == (0, 0)
        r = check(cfg, "--connect")  # the same file: now it does connect, and fails
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert db.accepted > 0 and mq.accepted > 0
    finally:
        db.close()
        mq.close()


def test_center_members_are_checked_against_the_registry(tmp_path, system_broker):
    r = exnode("init", "--role", "center", "--id", "center", "--dir", "c", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "c" / "exnode.yaml"
    with cfg.open("a") as f:
        f.write("databases:\n  db: {url: 'sqlite:///shared.db'}\n"
                "resources:\n  people:\n    database: db\n    query: select 1 as id\n"
                "    key: [id]\n    owner: b1\n")
    r = check(cfg, "--connect", "--json")
    res = results(r)
    assert res["resources.people.owner"][0]["level"] == "warn"
    assert "'b1' is not a member" in detail(res, "resources.people.owner")
    assert r.returncode == 0, r.stdout  # a warning, not a failure


# --- status: the transport's reason after NOT CONNECTED ------------------------------------

def test_status_text_prints_the_broker_error_after_not_connected():
    why = ("connection refused by the broker: bad user name or password (user 'b1'; "
           "broker.username / broker.password_file)")
    st = {"node": "b1", "role": "bureau", "pid": 1, "uptime_s": 3.0,
          "broker": {"host": "mq", "port": 1883, "connected": False, "protocol": ""},
          "gconf": {"version": 0, "expires": 0, "valid": False}, "members": [],
          "outbox_pending": 0, "inbox_waiting": 0, "peers": [], "last_error": why}
    text = _status_text(st)
    assert f"broker    mq:1883 NOT CONNECTED: {why}" in text
    assert "last error" not in text  # not twice


# --- the daemon's side: control answers and a stopped resource's status line -------------

def _no_such_database_error() -> sa.exc.OperationalError:
    eng = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/exnode_no_such_db")
    try:
        eng.connect()
    except sa.exc.OperationalError as e:
        return e
    finally:
        eng.dispose()
    raise AssertionError("connected to a database that should not exist")


def test_a_stopped_resource_keeps_one_line_naming_the_database(tmp_path):
    from types import SimpleNamespace

    from exnode.node.base.config import load_config
    from exnode.plugins.builtin.sync.resources import Resources

    cfg = load_config(init_bureau(tmp_path / "n", databases={"hr": {
        "url": "postgresql+psycopg://postgres@127.0.0.1:5432/exnode_no_such_db"}},
        resources={"people": {"database": "hr", "table": "people", "key": ["id"]}}))
    res = Resources(SimpleNamespace(config=cfg))  # type: ignore[arg-type]
    e = _no_such_database_error()
    for why in (e, str(e)):
        res.stop("people", why)
        line = res.errors["people"]
        assert "\n" not in line and "sqlalche.me" not in line, line
        assert line.startswith("databases.hr: "), line
        assert 'database "exnode_no_such_db" does not exist' in line


def test_the_control_api_answers_a_database_error_in_one_line():
    import asyncio
    from types import SimpleNamespace

    from exnode.node.app.control import errors_middleware

    e = _no_such_database_error()

    async def handler(_req: object) -> None:
        raise e

    req = SimpleNamespace(method="POST", path="/sync/initial")
    resp = asyncio.run(errors_middleware(req, handler))  # type: ignore[arg-type]
    assert resp.status == 400
    msg = json.loads(resp.body)["error"]
    assert "\n" not in msg and "internal error" not in msg
    assert msg.endswith('database "exnode_no_such_db" does not exist'), msg
