"""Fixtures for the real services on this machine and for brokers of our own.

- ``system_broker``: the machine's Mosquitto at 127.0.0.1:1883.
- ``own_mosquitto``: a Mosquitto of our own on a free port (persistence, TCP_NODELAY),
  which a test may kill and restart.
- ``amqtt_broker``: the embedded broker (``exnode broker``) on a free port.
- ``pg_url``: a fresh PostgreSQL database on 127.0.0.1:5432, dropped afterwards.
- ``make_star``: a LocalStar factory whose processes are always stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exnode.node.tools.broker import free_port, wait_port
from exnode.node.tools.cluster import LocalStar, exnode_cmd


@dataclass
class Broker:
    host: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    conf: Path | None = None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)

    def start(self) -> None:
        assert self.conf is not None
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_port(self.host, self.port, 15), "mosquitto did not start"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def system_broker() -> Broker:
    if not _answers(1883):
        pytest.fail("Mosquitto is not answering on 127.0.0.1:1883 (.ci/run starts it)")
    return Broker("127.0.0.1", 1883)


def mosquitto_conf(path: Path, port: int, extra: str = "") -> Path:
    data = path / "mosq-data"
    data.mkdir(parents=True, exist_ok=True)
    conf = path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
        f"persistence true\npersistence_location {data}/\nautosave_interval 1\n"
        "max_queued_messages 100000\nmax_inflight_messages 0\n" + extra)
    return conf


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[Broker]:
    if shutil.which("mosquitto") is None:
        pytest.fail("the mosquitto binary is not installed (apt-get install mosquitto)")
    port = free_port()
    b = Broker("127.0.0.1", port, conf=mosquitto_conf(tmp_path, port))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def amqtt_broker() -> Iterator[Broker]:
    port = free_port()
    p = subprocess.Popen([*exnode_cmd(), "broker", "--port", str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_port("127.0.0.1", port, 20), "embedded broker did not start"
    b = Broker("127.0.0.1", port, proc=p)
    yield b
    b.stop()


@pytest.fixture
def pg_url() -> Iterator[str]:
    import sqlalchemy as sa

    admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                             isolation_level="AUTOCOMMIT")
    name = f"exnode_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f"CREATE DATABASE {name}")
    except sa.exc.OperationalError as e:
        pytest.fail(f"PostgreSQL is not answering on 127.0.0.1:5432: {e}")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A throwaway MariaDB database on 127.0.0.1:3306, dropped afterwards."""
    import sqlalchemy as sa

    admin = sa.create_engine("mysql+pymysql://root@127.0.0.1:3306/?charset=utf8mb4")
    name = f"exnode_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.begin() as c:
            c.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 "
                              "COLLATE utf8mb4_unicode_ci")
    except sa.exc.OperationalError as e:
        pytest.fail(f"MariaDB is not answering on 127.0.0.1:3306: {e}")
    yield f"mysql+pymysql://root@127.0.0.1:3306/{name}?charset=utf8mb4"
    with admin.begin() as c:
        c.exec_driver_sql("SET SESSION lock_wait_timeout = 20")  # fail, never hang
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
    admin.dispose()


@pytest.fixture
def make_star(tmp_path: Path) -> Iterator[Callable[..., LocalStar]]:
    stars: list[LocalStar] = []

    def factory(broker: Broker, **kw: Any) -> LocalStar:
        # Unix socket paths must stay short (108 bytes): use a short folder.
        root = Path(f"/tmp/exn-{uuid.uuid4().hex[:8]}")
        kw.setdefault("settings", {})
        kw["settings"].setdefault("delivery", {}).setdefault("retry_initial_s", 1.0)
        kw["settings"].setdefault("broker", {}).setdefault("session_expiry_s", 600)
        s = LocalStar(root, broker.host, broker.port, **kw)
        stars.append(s)
        return s

    yield factory
    for s in stars:
        s.close()
        for node in s.nodes:  # shown by pytest only when the test failed
            print(f"--- {node} daemon.log (last lines)\n" + s.tail(node, 25).replace(" | ", "\n"))
        shutil.rmtree(s.root, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    _ = time
