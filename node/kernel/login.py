"""A member's broker password is replaced once it is approved, so the one in its token
(which the operator carried, and which may lie in a mail or a ticket) opens nothing.

With ``broker.dynsec`` the center made the member's broker account at the invitation,
with a password that travels in the token. Once the member is approved:

1. the center sends it a new password in a ``broker-login`` package (sealed to the
   member, like every package);
2. the member keeps it beside its password file (``<password_file>.next``, 0600) and
   answers ``broker-login-ok`` with the password's SHA-256;
3. the center sets the new password in the broker (which disconnects the member) and
   remembers that this member's login was replaced;
4. the member's transport, refused with the old password, logs in with the new one
   and makes it the password file.

A center that restarts between 1 and 3 forgets the password it sent and sends another;
the member only ever replaces ``.next``, so it never loses the password that works.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cbor2
import structlog
from sqlalchemy import Connection, Engine, delete, select

from exnode.node.base.config import Config
from exnode.node.base.errors import PackageError
from exnode.node.kernel import identity as idn
from exnode.node.kernel.api import ApplyContext, KindSpec
from exnode.node.kernel.state import meta

log = structlog.get_logger("exnode")

LOGIN = "broker-login"
LOGIN_OK = "broker-login-ok"


def next_password_file(cfg: Config) -> Path | None:
    """Where a new broker password waits until it has been used once."""
    if not cfg.broker.password_file:
        return None
    main = cfg.resolve(cfg.broker.password_file)
    return main.with_name(main.name + ".next")


def _key(node_id: str) -> str:
    return "brlogin:" + hashlib.sha256(node_id.encode()).hexdigest()[:40]


def replaced(conn: Connection, node_id: str) -> bool:
    return conn.execute(select(meta.c.key).where(meta.c.key == _key(node_id))).first() \
        is not None


def forget(conn: Connection, node_id: str) -> None:
    """(invite) A new account, with the token's password: to be replaced again."""
    conn.execute(delete(meta).where(meta.c.key == _key(node_id)))


class LoginRotation:
    """Both ends of the exchange above."""

    def __init__(self, cfg: Config, engine: Engine,
                 set_password: Callable[[str, str], Awaitable[None]] | None,
                 spawn: Callable[[Any, str], Any]) -> None:
        self.cfg = cfg
        self.engine = engine
        self.set_password = set_password  # (center, with dynsec) the broker's side
        self.spawn = spawn
        self.pending: dict[str, str] = {}  # (center) node -> the password sent to it

    def kinds(self) -> list[KindSpec]:
        return [KindSpec(LOGIN, self._on_login, senders="center", recipients="bureau",
                         relay=False),
                KindSpec(LOGIN_OK, self._on_ok, senders="bureau", recipients="center",
                         relay=False)]

    # --- center ----------------------------------------------------------------------------

    def due(self, approved: list[str]) -> list[tuple[str, str, str, bytes]]:
        """(state-DB thread) The packages that give each approved member whose login is
        still the token's a new password (at most one outstanding per member)."""
        if self.set_password is None:
            return []
        out = []
        with self.engine.connect() as conn:
            for node in approved:
                if node in self.pending or replaced(conn, node):
                    continue
                pw = secrets.token_urlsafe(24)
                self.pending[node] = pw
                out.append((node, LOGIN, "", cbor2.dumps({"password": pw})))
        return out

    def _on_ok(self, ctx: ApplyContext) -> None:
        src = ctx.header.src
        try:
            digest = cbor2.loads(ctx.payload)["sha256"]
            if not isinstance(digest, bytes):
                raise ValueError
        except Exception:
            raise PackageError("malformed", "broker-login-ok must be {sha256}") from None
        pw, setter = self.pending.get(src), self.set_password
        if pw is None or setter is None or not secrets.compare_digest(
                digest, hashlib.sha256(pw.encode()).digest()):
            return  # an answer to a password this center no longer holds: a new one follows
        if not replaced(ctx.conn, src):
            ctx.conn.execute(meta.insert().values(key=_key(src), value=b"1"))

        def change() -> None:
            self.pending.pop(src, None)
            self.spawn(self._set(setter, src, pw), f"broker-login-{src}")
        ctx.after_commit(change)

    @staticmethod
    async def _set(setter: Callable[[str, str], Awaitable[None]], node: str, pw: str) -> None:
        await setter(node, pw)
        log.info("broker_login_replaced", node=node)

    # --- member ----------------------------------------------------------------------------

    def _on_login(self, ctx: ApplyContext) -> None:
        try:
            pw = cbor2.loads(ctx.payload)["password"]
            if not isinstance(pw, str) or not 16 <= len(pw) <= 128 or not pw.isprintable():
                raise ValueError
        except Exception:
            raise PackageError("malformed", "broker-login must be {password}") from None
        path = next_password_file(self.cfg)
        if path is None:
            raise PackageError("not-allowed", "this node has no broker.password_file to "
                               "keep a new broker password in")
        idn.write_private(path, pw.encode() + b"\n")
        ctx.reply(LOGIN_OK, cbor2.dumps({"sha256": hashlib.sha256(pw.encode()).digest()}))
