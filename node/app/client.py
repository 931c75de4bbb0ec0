"""The CLI's side of the control API: calls to the running daemon over its Unix
socket, with nothing but the standard library (the server's aiohttp stays out of every
command's start-up)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

from exnode.node.base.errors import DaemonNotRunning, ExnodeError

BLOB_TYPE = "application/x-exnode-blob"
"""An answer of one JSON line and then bytes (:class:`exnode.node.kernel.api.Blob`)."""


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (None off Linux)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def private_dir(folder: Path, create: bool) -> int:
    """Check (or make) the socket's folder: a real directory, mode 0700, owned by this
    user (or, for root, by anyone: root may use another user's daemon). Returns the
    owner's uid; raises ``ExnodeError`` with what is wrong."""
    if create and not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
    st = os.lstat(folder)  # FileNotFoundError: the caller says the daemon is not running
    me = os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        raise ExnodeError(f"{folder}: the control socket's folder is not a directory")
    if st.st_uid != me and me != 0:
        raise ExnodeError(f"{folder}: the control socket's folder belongs to uid "
                          f"{st.st_uid}, not to this user (uid {me}); run as its user")
    if st.st_mode & 0o077:
        raise ExnodeError(f"{folder}: the control socket's folder is mode "
                          f"{stat.S_IMODE(st.st_mode):04o}; it must be 0700 "
                          f"(chmod 700 {folder})")
    return st.st_uid


def answers(path: Path) -> bool:
    """Whether a daemon answers on the control socket ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        owner = private_dir(Path(self._path).parent, create=False)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        uid = peer_uid(s)
        if uid is not None and uid != owner:
            s.close()
            raise ExnodeError(f"refusing to talk to {self._path}: it is served by uid {uid}, "
                              f"not by the owner of its folder (uid {owner})")
        self.sock = s


def call(sock: Path, method: str, path: str, body: dict[str, Any] | None = None,
         timeout: float = 60.0) -> Any:
    """Call the daemon's control API; raise a one-line error when it is not there."""
    conn = _UnixHTTPConnection(str(sock), timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
    except (FileNotFoundError, ConnectionRefusedError):
        raise DaemonNotRunning(f"the daemon is not running (no answer on {sock}); "
                               "start it with 'exnode run'") from None
    except PermissionError:
        raise DaemonNotRunning(f"not allowed to use {sock} (run as the daemon's user)") from None
    except TimeoutError:
        raise ExnodeError(f"the daemon did not answer within {timeout:.0f} s") from None
    except (ConnectionError, http.client.HTTPException):  # it stopped while answering
        raise DaemonNotRunning(f"the daemon closed {sock} without an answer (did it stop? "
                               "see its log, e.g. journalctl -u exnode)") from None
    finally:
        conn.close()
    if resp.status < 400 and resp.getheader("Content-Type", "").startswith(BLOB_TYPE):
        head, _, data = raw.partition(b"\n")
        try:
            meta = json.loads(head)
        except ValueError:
            raise ExnodeError(f"unexpected answer from the daemon: {head[:200]!r}") from None
        return {**meta, "blob": data}
    try:
        out = json.loads(raw)
    except ValueError:
        raise ExnodeError(f"unexpected answer from the daemon: {raw[:200]!r}") from None
    if resp.status >= 400:
        err = ExnodeError(out.get("error", f"HTTP {resp.status}") if isinstance(out, dict)
                          else f"HTTP {resp.status}")
        code = out.get("exit") if isinstance(out, dict) else None
        if type(code) is int and 1 <= code <= 4:
            err.exit_code = code
        raise err
    return out
