"""The control server: routes from the kernel and the services, one error middleware
that turns every failure into a one-line 4xx/5xx answer, and the CLI's client."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exnode.node.app.control import ControlServer, call
from exnode.node.base.errors import DaemonNotRunning, ExnodeError, PackageError, UsageError
from exnode.node.kernel.api import Blob, ControlRequest, Router


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


BYTES = b"a,b\r\n\x00\xff\n{\"not\": json}\n" * 1000


async def _blob(req: ControlRequest) -> Any:
    return Blob({"n": req.arg("n", int, 0), "last": ["k", 1], "done": False}, BYTES)


def routes(router: Router) -> None:
    router.post("/echo/{name}", _echo)
    router.post("/blob", _blob)
    router.get("/usage", _usage)
    router.post("/refused", _refused)
    router.get("/slow", _slow)
    router.get("/bug", _bug)
    router.get("/gone", _gone)


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[Path]:
    yield from _serve(tmp_path / "run" / "exnode.sock")


@pytest.fixture
def open_sock() -> Iterator[Path]:
    """A server in a folder that other users can traverse (pytest's tmp_path is 0700)."""
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="exn-ctl-"))
    os.chmod(top, 0o711)
    try:
        yield from _serve(top / "run" / "exnode.sock")
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _serve(path: Path) -> Iterator[Path]:
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


# --- who is at the other end ----------------------------------------------------------------

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def test_the_socket_folder_is_0700(sock: Path) -> None:
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700


def test_a_socket_folder_open_to_others_is_refused_on_both_sides(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    server = ControlServer(folder / "exnode.sock", routes)
    with pytest.raises(ExnodeError, match="mode 0755; it must be 0700"):
        asyncio.run(server.start())
    assert not (folder / "exnode.sock").exists()
    with pytest.raises(ExnodeError, match="must be 0700"):
        call(folder / "exnode.sock", "GET", "/usage")


def _in_child(fn: Any) -> int:
    """Run fn() in a forked child; its exit code (0 = fn returned True)."""
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if fn() else 1)
        except BaseException:
            os._exit(2)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@as_root
def test_the_daemon_answers_only_its_own_user(open_sock: Path) -> None:
    sock = open_sock
    # Open the way in (as a careless operator might): the peer check still refuses.
    os.chmod(sock.parent, 0o711)
    os.chmod(sock, 0o666)

    def other_user() -> bool:
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(sock))
        s.sendall(b"GET /usage HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        return b" 403 " in answer.split(b"\r\n", 1)[0] and b"may not use" in answer

    assert _in_child(other_user) == 0
    with pytest.raises(ExnodeError, match="0711"):  # and the CLI will not use such a folder
        call(sock, "GET", "/usage")
    os.chmod(sock.parent, 0o700)
    with pytest.raises(ExnodeError, match="no resource"):  # the owner still gets through
        call(sock, "GET", "/usage")


@as_root
def test_the_cli_talks_only_to_a_daemon_of_the_folders_owner(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    path = folder / "exnode.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # an impostor: another user listens on the socket (credentials at listen)
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            listener.listen(1)
            os.write(w, b"x")
            conn, _ = listener.accept()
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{}")
            conn.close()
        finally:
            os._exit(0)
    try:
        os.read(r, 1)
        with pytest.raises(ExnodeError, match="served by uid 65534"):
            call(path, "GET", "/status", timeout=5)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        listener.close()


def test_a_daemon_that_dies_while_answering_is_a_one_line_error(tmp_path: Path) -> None:
    """The daemon stops in the middle of a call (during `sync --initial`, say): one line,
    not an internal error (issue 9)."""
    path = tmp_path / "s.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def accept_and_hang_up() -> None:
        c, _ = srv.accept()
        c.recv(65536)
        c.close()

    t = threading.Thread(target=accept_and_hang_up, daemon=True)
    t.start()
    try:
        with pytest.raises(DaemonNotRunning, match=r"closed .* without an answer"):
            call(path, "GET", "/status", timeout=5)
    finally:
        t.join(5)
        srv.close()


def test_a_blob_answer_is_its_meta_and_its_bytes_untouched(sock: Path) -> None:
    out = call(sock, "POST", "/blob", {"n": 3})
    assert out == {"n": 3, "last": ["k", 1], "done": False, "blob": BYTES}
    # a JSON answer next to it is unchanged
    assert call(sock, "POST", "/echo/x", {"n": 1})["n"] == 1
