"""The control server: routes from the kernel and the services, one error middleware
that turns every failure into a one-line 4xx/5xx answer, and the CLI's client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exnode.node.app.control import ControlServer, call
from exnode.node.base.errors import DaemonNotRunning, ExnodeError, PackageError, UsageError
from exnode.node.kernel.api import ControlRequest, Router


async def _echo(req: ControlRequest) -> Any:
    return {"body": req.body, "params": dict(req.params), "query": dict(req.query),
            "n": req.arg("n", int, 0)}


async def _usage(_req: ControlRequest) -> Any:
    raise UsageError("no resource 'x' here")


async def _refused(_req: ControlRequest) -> Any:
    raise PackageError("unknown-recipient", "'b9' is not an approved member")


async def _slow(_req: ControlRequest) -> Any:
    raise TimeoutError("no answer from b2 within 1 s")


async def _bug(_req: ControlRequest) -> Any:
    return {}["missing"]


async def _gone(_req: ControlRequest) -> Any:
    raise DaemonNotRunning("the sync service is not running")


def routes(router: Router) -> None:
    router.post("/echo/{name}", _echo)
    router.get("/usage", _usage)
    router.post("/refused", _refused)
    router.get("/slow", _slow)
    router.get("/bug", _bug)
    router.get("/gone", _gone)


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "run" / "exnode.sock"
    loop = asyncio.new_event_loop()
    server = ControlServer(path, routes)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert started.wait(10)
    try:
        yield path
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


def test_socket_is_private(sock: Path) -> None:
    assert sock.stat().st_mode & 0o777 == 0o600


def test_a_route_gets_body_params_and_query(sock: Path) -> None:
    out = call(sock, "POST", "/echo/b1?x=1", {"n": "7", "k": [1, 2]})
    assert out == {"body": {"n": "7", "k": [1, 2]}, "params": {"name": "b1"},
                   "query": {"x": "1"}, "n": 7}


@pytest.mark.parametrize(("method", "path", "body", "fragment"), [
    ("GET", "/usage", None, "no resource 'x' here"),
    ("POST", "/refused", {}, "unknown-recipient: 'b9' is not an approved member"),
    ("GET", "/slow", None, "no answer from b2 within 1 s"),
    ("GET", "/bug", None, "internal error: KeyError"),
    ("GET", "/gone", None, "the sync service is not running"),
    ("POST", "/echo/b1", {"n": "seven"}, "'n' is not a valid int"),
    ("POST", "/echo/b1", [1, 2], "the body must be a JSON object"),
    ("GET", "/nosuch", None, "no such control route: GET /nosuch"),
    ("GET", "/refused", None, "Method Not Allowed: GET /refused"),
])
def test_every_failure_is_one_line(sock: Path, method: str, path: str, body: Any,
                                   fragment: str) -> None:
    with pytest.raises(ExnodeError) as ei:
        call(sock, method, path, body)
    assert fragment in str(ei.value)
    assert "\n" not in str(ei.value) and "Traceback" not in str(ei.value)


def test_a_body_that_is_not_json_is_a_400(sock: Path) -> None:
    import http.client
    import socket

    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(str(sock))

    c = Conn("localhost", timeout=10)
    c.request("POST", "/echo/b1", body=b"{not json", headers={"Content-Type":
                                                                "application/json"})
    r = c.getresponse()
    assert r.status == 400 and b"not JSON" in r.read()
    c.close()


def test_a_route_registered_twice_is_an_error(tmp_path: Path) -> None:
    def twice(router: Router) -> None:
        router.get("/status", _echo)
        router.get("/status", _usage)

    with pytest.raises(ExnodeError, match="GET /status is registered twice"):
        asyncio.run(ControlServer(tmp_path / "s.sock", twice).start())


def test_no_daemon_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunning, match="the daemon is not running"):
        call(tmp_path / "nobody.sock", "GET", "/status")
