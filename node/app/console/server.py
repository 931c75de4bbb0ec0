"""The web console (issue 11): server-rendered pages over HTTPS, served by the daemon
beside its control API and calling the very same route handlers in process, so the
console is a face on the control API and not a second implementation.

Security, in the order a request meets it:

- TLS always (the operator's certificate, or the self-signed ECDSA one exnode makes);
- security headers (a CSP without inline script, no framing, no referrer, HSTS);
- before authentication a request may carry at most 16 KiB, and failed logins are
  audited in bounded numbers (``plugins/builtin/console``): a stranger costs bounded
  memory, disk and log space;
- sessions from ``aiohttp-session`` (encrypted cookie, Secure, HttpOnly,
  SameSite=Strict) holding a server-side session id, so logout and a role change end
  them, and a new id at every login (no session fixation);
- CSRF tokens from ``aiohttp-csrf2`` on every POST;
- every page and action checks the role's permission (deny unless granted,
  ``policies/accounts.py``) and every action is written to the audit trail.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Awaitable, Callable
from datetime import timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

import aiohttp_csrf
import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web
from aiohttp_session import get_session, new_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from exnode.node.base.config import Config
from exnode.node.base.errors import ExnodeError, NotFound
from exnode.node.base.files import write_private
from exnode.node.base.tlscert import console_cert_paths, covers, make_console_cert
from exnode.node.kernel.api import Blob, ControlRequest, RouteHandler
from exnode.plugins.builtin.ledger import months
from exnode.policies import accounts as acc

from .i18n import gettext

log = structlog.get_logger("exnode.console")

HERE = Path(__file__).parent
PRE_AUTH_BODY = 16 * 1024
MAX_BODY = 64 * 1024 * 1024
COOKIE = "exnode_console"
CSRF_FIELD = "_csrf"
USER = web.AppKey("user", dict)
CONSOLE = web.AppKey("console", object)

Page = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Denied(ExnodeError):
    exit_code = 4


class _Policy(aiohttp_csrf.policy.FormAndHeaderPolicy):
    """The library's form-or-header check, refusing (not crashing) when the session
    holds no token yet."""

    async def check(self, request: web.Request, original_value: str) -> bool:
        if not original_value:
            return False
        return await super().check(request, original_value)


def _zone(name: str) -> tzinfo:
    """The node's time zone for the pages (UTC+8 when the name is unknown)."""
    try:
        return months.zone(name)
    except ExnodeError:
        return timezone(timedelta(hours=8))


def _secret(path: Path) -> bytes:
    """A 32-byte secret kept in a 0600 file (made on first use)."""
    if path.exists():
        data = path.read_bytes()
        if len(data) == 32:
            return data
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = os.urandom(32)
    write_private(path, data)
    return data


class Console:
    """One node's web console."""

    def __init__(self, cfg: Config, handlers: dict[tuple[str, str], RouteHandler]) -> None:
        self.cfg = cfg
        self.handlers = handlers
        self.is_center = cfg.node.role == "center"
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.tz = _zone(cfg.access.timezone)
        #: resource samples by resource and the query grants in force (pages._sample)
        self.samples: dict[str, tuple[float, Any, str | None]] = {}

    # --- the control API, in process ------------------------------------------------------

    def has(self, method: str, path: str) -> bool:
        return (method, path) in self.handlers

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None,
                   params: dict[str, str] | None = None,
                   query: dict[str, str] | None = None) -> Any:
        h = self.handlers.get((method, path))
        if h is None:
            raise NotFound(f"no control route {method} {path} (is its plugin loaded?)")
        return await h(ControlRequest(body=body or {}, params=params or {},
                                      query=query or {}))

    async def audit(self, request: web.Request, action: str, target: str = "",
                    outcome: str = "ok", detail: str = "") -> None:
        u = request.get("user") or {}
        await self.call("POST", "/console/audit", {
            "actor": u.get("name", "-"), "role": u.get("role", ""), "action": action,
            "target": target, "outcome": outcome, "detail": detail,
            "client": request.remote or ""})

    # --- the application ----------------------------------------------------------------

    def tls(self) -> ssl.SSLContext:
        cert, key = console_cert_paths(self.cfg)
        if self.cfg.console.cert is None and (not cert.exists() or not covers(cert, self.cfg)):
            # exnode's own certificate, for the host console.listen names now
            make_console_cert(self.cfg, cert, key)
            log.info("console_certificate_made", cert=str(cert), host=self.cfg.console.listen)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise ExnodeError(f"console certificate {cert} / key {key}: {e}") from None
        return ctx

    def app(self) -> web.Application:
        from . import pages

        secrets_dir = self.cfg.data_dir / "console"
        storage = EncryptedCookieStorage(
            _secret(secrets_dir / "session.key"),
            cookie_name=COOKIE, secure=True, httponly=True, samesite="Strict",
            max_age=None)
        app = web.Application(client_max_size=MAX_BODY, middlewares=[
            headers_middleware, errors_middleware, session_middleware(storage),
            preauth_middleware, csrf_refused_middleware, aiohttp_csrf.csrf_middleware])
        aiohttp_csrf.setup(app, policy=_Policy("X-CSRF-Token", CSRF_FIELD),
                           storage=aiohttp_csrf.storage.SessionStorage(
                               "csrf", secret_phrase=_secret(secrets_dir / "csrf.key").hex()))
        env = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(HERE / "templates"),
                                   autoescape=jinja2.select_autoescape(["html"]),
                                   context_processors=[self._context])
        env.filters["ts"] = functools.partial(pages.fmt_ts, tz=self.tz)
        env.filters["bytes"] = pages.fmt_bytes
        env.filters["left"] = pages.fmt_left
        env.globals["static"] = lambda name: f"/static/{name}"
        app[CONSOLE] = self
        app.router.add_static("/static/", HERE / "static")
        pages.add_routes(app, self)
        return app

    async def _context(self, request: web.Request) -> dict[str, Any]:
        u = request.get("user")
        lang = (u or {}).get("lang") or "zh"
        token = request.get("csrf_token")
        if token is None:
            session = await get_session(request)
            token = session.get("csrf") or await aiohttp_csrf.generate_token(request)
            request["csrf_token"] = token
        return {"request": request, "user": u, "lang": lang, "_": lambda s: gettext(lang, s),
                "csrf_field": CSRF_FIELD, "csrf_token": token,
                "may": lambda perm: bool(u) and acc.may(u["role"], perm),
                "is_center": self.is_center, "node_id": self.cfg.node.id,
                "role_zh": acc.ROLE_NAMES_ZH}

    async def start(self) -> None:
        listen = self.cfg.console.listen
        assert listen
        host, port = listen.rsplit(":", 1)
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]"), int(port), ssl_context=self.tls())
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise ExnodeError(f"console: cannot listen on {listen}: {e.strerror}") from None
        server = getattr(site, "_server", None)
        socks = getattr(server, "sockets", None) or []
        self.port = socks[0].getsockname()[1] if socks else int(port)
        log.info("console_listening", url=f"https://{host}:{self.port}/")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@web.middleware
async def csrf_refused_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp-csrf refuses with a bare 403 (it ignores a configured renderer): the
    pages themselves refuse with :class:`Denied`, so a 403 raised here is the CSRF
    check's. Audit it and answer with one line."""
    try:
        return await handler(request)
    except web.HTTPForbidden:
        return await csrf_refused(request)


async def csrf_refused(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]  # type: ignore[assignment]
    if request.get("user"):
        await console.audit(request, f"{request.method} {request.path}"[:64],
                            outcome="refused", detail="missing or wrong CSRF token")
    lang = (request.get("user") or {}).get("lang", "zh")
    return web.Response(status=403, text=gettext(lang, "The form was stale; please try again"),
                        content_type="text/plain")


@web.middleware
async def headers_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    resp = await handler(request)
    h = resp.headers
    h.setdefault("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
                 "style-src 'self'; script-src 'self'; frame-ancestors 'none'; "
                 "form-action 'self'; base-uri 'none'")
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("Strict-Transport-Security", "max-age=31536000")
    if not request.path.startswith("/static/"):
        h.setdefault("Cache-Control", "no-store")
    return resp


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Project errors become a page with one line; nothing leaks a traceback."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Denied as e:
        return await _error_page(request, 403, str(e))
    except ExnodeError as e:
        return await _error_page(request, 404 if isinstance(e, NotFound) else 400, str(e))
    except TimeoutError as e:
        return await _error_page(request, 504, str(e) or "timed out")
    except Exception as e:
        log.error("console_failed", path=request.path, error=f"{type(e).__name__}: {e}")
        return await _error_page(request, 500, f"internal error: {type(e).__name__}")


async def _error_page(request: web.Request, status: int, msg: str) -> web.StreamResponse:
    if request.path.startswith("/api/"):
        return web.json_response({"error": msg}, status=status)
    try:
        return aiohttp_jinja2.render_template("error.html", request,
                                              {"status": status, "message": msg},
                                              status=status)
    except Exception:
        return web.Response(status=status, text=msg, content_type="text/plain")


@web.middleware
async def preauth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Find the visitor's account from the session; strangers get the login page only,
    and may send at most 16 KiB."""
    console: Console = request.app[CONSOLE]  # type: ignore[assignment]
    session = await get_session(request)
    user = None
    sid = session.get("sid")
    if isinstance(sid, str):
        user = await console.call("POST", "/console/session", {"sid": sid})
        if user is None:
            session.invalidate()
    if user is not None:
        request["user"] = user
        request["sid"] = sid
        return await handler(request)
    if request.body_exists and (request.content_length is None
                                or request.content_length > PRE_AUTH_BODY):
        raise web.HTTPRequestEntityTooLarge(max_size=PRE_AUTH_BODY,
                                            actual_size=request.content_length or 0)
    if request.path in ("/login", "/healthz") or request.path.startswith("/static/"):
        return await handler(request)
    if request.path.startswith("/api/"):
        return web.json_response({"error": "log in first"}, status=401)
    raise web.HTTPFound("/login")


async def begin_session(request: web.Request, user: dict[str, Any]) -> None:
    """A fresh session for a login: whatever cookie the visitor came with is dropped."""
    old = await get_session(request)
    old.invalidate()
    session = await new_session(request)
    session["sid"] = user["sid"]
    session["csrf"] = await aiohttp_csrf.generate_token(request)


def render(request: web.Request, template: str, ctx: dict[str, Any],
           status: int = 200) -> web.Response:
    return aiohttp_jinja2.render_template(template, request, ctx, status=status)


def blob_of(out: Any) -> tuple[dict[str, Any], bytes]:
    if isinstance(out, Blob):
        return out.meta, out.data
    raise ExnodeError("the control route did not answer with a file")
