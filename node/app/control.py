"""The local control API: a small HTTP API on a Unix socket (mode 0600) that the
``exnode`` CLI uses to talk to the running daemon.

The socket lives in a folder of its own (mode 0700, owned by the daemon's user), and
both ends check who is at the other end (``SO_PEERCRED``): the daemon answers only its
own user (and root), the CLI talks only to a daemon of the user that owns the folder.

Routes come from the kernel and from the services (``exnode_control_routes``). Every
handler gets a ``ControlRequest`` and returns JSON-able data; one middleware turns the
project's errors into 4xx answers with one line, so no handler repeats that.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from exnode.node.app.client import BLOB_TYPE, peer_uid, private_dir
from exnode.node.app.client import answers as answers  # the CLI's side, re-exported
from exnode.node.app.client import call as call
from exnode.node.base.errors import DaemonNotRunning, ExnodeError, NotFound, UsageError
from exnode.node.kernel.api import Blob, ControlRequest, RouteHandler

log = structlog.get_logger("exnode")

MAX_BODY = 512 * 1024 * 1024




def _err(code: int, msg: str, exit_code: int = 1) -> web.Response:
    """An error answer: the one-line message, and the exit code the CLI returns for it
    (the same as when the CLI itself finds the error: 2 usage, 3 not found, ...)."""
    return web.json_response({"error": msg, "exit": exit_code}, status=code)





@web.middleware
async def peer_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Only the daemon's own user (and root) may use the control API."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    uid = peer_uid(sock) if sock is not None else None
    if uid is not None and uid not in (os.geteuid(), 0):
        log.warning("control_refused", uid=uid)
        return _err(403, f"uid {uid} may not use this daemon's control socket")
    return await handler(request)


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Project errors -> 4xx (DaemonNotRunning 503), timeouts -> 504, bugs -> 500; each
    with a one-line ``error``."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _err(404, f"no such control route: {request.method} {request.path} (is the "
                    "plugin that serves it loaded?)")
    except web.HTTPException as e:
        return _err(e.status, f"{e.reason}: {request.method} {request.path}")
    except DaemonNotRunning as e:
        return _err(503, str(e))
    except ExnodeError as e:
        return _err(404 if isinstance(e, NotFound) else 400, str(e), e.exit_code)
    except TimeoutError as e:
        return _err(504, str(e) or "timed out")
    except Exception as e:
        if _is_database_error(e):  # server down, no such database, wrong password
            from exnode.node.base import dberrors

            return _err(400, dberrors.describe(e))
        log.error("control_failed", path=request.path, error=f"{type(e).__name__}: {e}")
        return _err(500, f"internal error: {type(e).__name__}: {e}")


def _is_database_error(e: BaseException) -> bool:
    if "sqlalchemy" not in sys.modules:
        return False
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(e, SQLAlchemyError)


class _Router:
    """Collects routes for aiohttp, wrapping each handler to take a ControlRequest."""

    def __init__(self) -> None:
        self.routes: list[web.RouteDef] = []
        self.paths: set[tuple[str, str]] = set()
        self.handlers: dict[tuple[str, str], RouteHandler] = {}  # for the web console

    def _add(self, method: str, path: str, handler: RouteHandler) -> None:
        if (method, path) in self.paths:
            raise ExnodeError(f"control route {method} {path} is registered twice")
        self.paths.add((method, path))
        self.handlers[(method, path)] = handler

        async def serve(request: web.Request) -> web.Response:
            body: Any = {}
            if request.can_read_body:
                try:
                    body = await request.json()
                except ValueError:
                    raise UsageError("bad request: the body is not JSON") from None
                if not isinstance(body, dict):
                    raise UsageError("bad request: the body must be a JSON object")
            req = ControlRequest(body=body, params=dict(request.match_info),
                                 query=dict(request.query))
            out = await handler(req)
            if isinstance(out, Blob):  # one JSON line, then the bytes
                return web.Response(body=json.dumps(out.meta, default=str).encode() + b"\n"
                                    + out.data, content_type=BLOB_TYPE)
            return web.json_response(out, dumps=lambda d: json.dumps(d, default=str))

        self.routes.append(web.route(method, path, serve))

    def get(self, path: str, handler: RouteHandler) -> None:
        self._add("GET", path, handler)

    def post(self, path: str, handler: RouteHandler) -> None:
        self._add("POST", path, handler)


class ControlServer:
    """Serves the control API of one node on its Unix socket."""

    def __init__(self, path: Path, add_routes: Any) -> None:
        self.path = path
        self.add_routes = add_routes
        self._runner: web.AppRunner | None = None
        self.handlers: dict[tuple[str, str], RouteHandler] = {}

    async def start(self) -> None:
        router = _Router()
        self.add_routes(router)
        self.handlers = router.handlers
        app = web.Application(client_max_size=MAX_BODY,
                              middlewares=[peer_middleware, errors_middleware])
        app.add_routes(router.routes)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        private_dir(self.path.parent, create=True)
        if self.path.exists() or self.path.is_symlink():
            if answers(self.path):
                raise ExnodeError(f"another exnode is already running on {self.path}")
            self.path.unlink()
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


