"""The local control API: a small HTTP API on a Unix socket (mode 0600) that the
``exnode`` CLI uses to talk to the running daemon."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .errors import DaemonNotRunning, ExnodeError, PackageError

if TYPE_CHECKING:
    from .daemon import Node


class ControlServer:
    """Serves the control API of one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.path = node.cfg.socket_path
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=512 * 1024 * 1024)
        app.add_routes([web.get("/status", self.status), web.post("/ping", self.ping),
                        web.post("/gconf/publish", self.gconf),
                        web.post("/send", self.send), web.post("/flush", self.flush),
                        web.post("/sync/initial", self.sync_initial),
                        web.get("/sync/jobs", self.sync_jobs),
                        web.post("/sync/now", self.sync_now),
                        web.post("/sync/verify", self.sync_verify),
                        web.get("/quality/{resource}", self.quality_report),
                        web.get("/quarantine", self.quarantine_list),
                        web.get("/quarantine/{id}", self.quarantine_show),
                        web.post("/quarantine/{id}/{action}", self.quarantine_act),
                        web.get("/conflicts", self.conflicts),
                        web.get("/conflicts/{id}", self.conflict_show),
                        web.post("/conflicts/{id}/resolve", self.conflict_resolve)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        if self.path.exists():
            if _answers(self.path):
                raise ExnodeError(f"another exnode is already running on {self.path}")
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old = os.umask(0o177)  # the socket is created 0600, with no window where it is not
        try:
            await web.UnixSite(self._runner, str(self.path)).start()
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def status(self, _req: web.Request) -> web.Response:
        return web.json_response(await self.node.db(self.node.status_sync))

    async def ping(self, req: web.Request) -> web.Response:
        body = await req.json()
        try:
            rtt = await self.node.ping(str(body["node"]), float(body.get("timeout", 30)))
        except TimeoutError:
            return _err(504, f"no answer from {body['node']} within {body.get('timeout', 30)} s")
        except PackageError as e:
            return _err(400, str(e))
        return web.json_response({"node": body["node"], "rtt_ms": round(rtt, 2)})

    async def gconf(self, _req: web.Request) -> web.Response:
        if not self.node.is_center:
            return _err(400, "only the center publishes the global configuration")
        return web.json_response({"version": await self.node.publish_gconf()})

    async def send(self, req: web.Request) -> web.Response:
        body = await req.json()
        try:
            dest, resource = str(body["to"]), str(body.get("resource", "default"))
            if "payloads" in body:
                payloads = [base64.b64decode(p) for p in body["payloads"]]
            else:
                payloads = synthetic(resource, int(body["count"]), int(body.get("size", 1024)),
                                     bool(body.get("random")), int(body.get("start", 0)))
            if body.get("batch"):
                for p in payloads:
                    await self.node.submit(dest, resource, p)
                await self.node.flush()
                return web.json_response({"queued": len(payloads)})
            ids = await self.node.send_many(
                [(dest, "data", resource, _cbor_list(p)) for p in payloads])
        except PackageError as e:
            return _err(400, str(e))
        except (KeyError, ValueError, TypeError) as e:
            return _err(400, f"bad request: {e}")
        return web.json_response({"queued": len(ids), "ids": ids})

    def _sync(self) -> Any:
        engine = getattr(self.node, "sync", None)
        if engine is None:
            raise ExnodeError("database sync is not running on this node")
        return engine

    async def _run(self, fn: Any, *args: Any) -> web.Response:
        try:
            return web.json_response(await self.node.db(fn, *args))
        except ExnodeError as e:
            return _err(400, str(e))

    async def sync_initial(self, req: web.Request) -> web.Response:
        body = await req.json()
        try:
            eng = self._sync()
            rid = str(body["resource"])
            job = await self.node.db(eng.start_initial, rid, bool(body.get("restart")))
        except ExnodeError as e:
            return _err(400, str(e))
        if not any(t.get_name() == f"initial {rid}" and not t.done()
                   for t in self.node._spawned):
            self.node.spawn(eng.run_initial(rid), f"initial {rid}").set_name(f"initial {rid}")
        return web.json_response({k: v for k, v in job.items() if k != "after_key"})

    async def sync_jobs(self, _req: web.Request) -> web.Response:
        try:
            return await self._run(self._sync().jobs)
        except ExnodeError as e:
            return _err(400, str(e))

    async def sync_now(self, req: web.Request) -> web.Response:
        body = await req.json()
        try:
            eng = self._sync()
            eng.spec(str(body["resource"]))
        except ExnodeError as e:
            return _err(400, str(e))
        eng.wake(str(body["resource"]))
        return web.json_response({"ok": True})

    async def sync_verify(self, req: web.Request) -> web.Response:
        body = await req.json()
        try:
            eng = self._sync()
            return web.json_response(await eng.verify(str(body["resource"]),
                                                      float(body.get("timeout", 120))))
        except ExnodeError as e:
            return _err(400, str(e))

    async def quality_report(self, req: web.Request) -> web.Response:
        try:
            return await self._run(self._sync().quality.report, req.match_info["resource"])
        except ExnodeError as e:
            return _err(400, str(e))

    async def quarantine_list(self, req: web.Request) -> web.Response:
        try:
            st = req.query.get("status", "open")
            return await self._run(self._sync().quality.list, req.query.get("resource"),
                                   None if st == "all" else st)
        except ExnodeError as e:
            return _err(400, str(e))

    async def quarantine_show(self, req: web.Request) -> web.Response:
        try:
            return await self._run(self._sync().quality.show, int(req.match_info["id"]))
        except (ExnodeError, ValueError) as e:
            return _err(400, str(e))

    async def quarantine_act(self, req: web.Request) -> web.Response:
        action = req.match_info["action"]
        try:
            q = self._sync().quality
            fn = {"retry": q.retry, "drop": q.drop}.get(action)
            if fn is None:
                return _err(400, f"unknown action {action}")
            resp = await self._run(fn, int(req.match_info["id"]))
        except (ExnodeError, ValueError) as e:
            return _err(400, str(e))
        self.node._wake.set()
        return resp

    async def conflicts(self, req: web.Request) -> web.Response:
        try:
            st = req.query.get("status", "open")
            return await self._run(self._sync().list_conflicts, None if st == "all" else st)
        except ExnodeError as e:
            return _err(400, str(e))

    async def conflict_show(self, req: web.Request) -> web.Response:
        try:
            return await self._run(self._sync().show_conflict, int(req.match_info["id"]))
        except (ExnodeError, ValueError) as e:
            return _err(400, str(e))

    async def conflict_resolve(self, req: web.Request) -> web.Response:
        body = await req.json()
        try:
            resp = await self._run(self._sync().resolve_conflict, int(req.match_info["id"]),
                                   str(body.get("keep", "")))
        except (ExnodeError, ValueError) as e:
            return _err(400, str(e))
        self.node._wake.set()
        return resp

    async def flush(self, _req: web.Request) -> web.Response:
        await self.node.flush()
        return web.json_response({"ok": True})


def synthetic(resource: str, count: int, size: int, random: bool = False,
              start: int = 0) -> list[bytes]:
    """Load-test payloads made in the daemon: ``resource:i:`` padded to ``size`` bytes
    (or followed by random bytes, which do not compress)."""
    if not 0 < count <= 10_000_000 or not 0 <= size <= 256 * 1024 * 1024:
        raise ValueError("count must be 1..10,000,000 and size 0..256 MiB")
    out = []
    noise = os.urandom(size + 64) if random else b""
    for i in range(start, start + count):
        head = f"{resource}:{i}:".encode()
        n = max(0, size - len(head))
        # a different window of one random block each time: cheap, and still incompressible
        tail = noise[i % 64:i % 64 + n] if random else b"." * n
        out.append(head + tail)
    return out


def _cbor_list(p: bytes) -> bytes:
    import cbor2

    return cbor2.dumps([p])


def _err(code: int, msg: str) -> web.Response:
    return web.json_response({"error": msg}, status=code)


def _answers(path: Path) -> bool:
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
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def call(sock: Path, method: str, path: str, body: dict[str, Any] | None = None,
         timeout: float = 60.0) -> dict[str, Any]:
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
    finally:
        conn.close()
    try:
        out = json.loads(raw)
    except ValueError:
        raise ExnodeError(f"unexpected answer from the daemon: {raw[:200]!r}") from None
    if resp.status >= 400:
        raise ExnodeError(out.get("error", f"HTTP {resp.status}"))
    return out
