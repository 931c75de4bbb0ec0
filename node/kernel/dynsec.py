"""Broker accounts at the center, in Mosquitto's dynamic-security plugin (``broker.dynsec``).

The center's exnode keeps one broker client per bureau, named like the node, with a
fixed ``clientid`` (:func:`~exnode.node.kernel.transport.client_id`), so no member can
connect under another's id, and roles that give it exactly its topics:

- ``exn-enrol-<id>`` while it is invited or pending: write its enrolment topic, read
  the answer;
- ``exn-member-<id>`` once approved: read its own inbox and the global configuration,
  write the center's inbox.

Rejection, revocation and an invitation that expired unused delete the client (the
plugin disconnects it at once). :meth:`BrokerAccess.reconcile` brings the plugin in
line with the member registry after every change, at every (re)connect and once a
minute. It only touches clients it created (``textname`` :data:`MANAGED`).

Mosquitto 2.0.11's plugin does not substitute ``%u``/``%c`` in role ACLs, so each
node has roles of its own. Commands go to ``$CONTROL/dynamic-security/v1``; answers come
back on ``…/response``, matched by ``correlationData``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from sqlalchemy import Engine, select

from exnode.node.base.errors import ExnodeError, UsageError
from exnode.node.kernel.state import invites, members
from exnode.node.kernel.topics import Topics
from exnode.node.kernel.transport import client_id

log = structlog.get_logger("exnode")

CONTROL = "$CONTROL/dynamic-security/v1"
RESPONSE = CONTROL + "/response"
MANAGED = "exnode member"
CENTER_ROLE = "exn-center"

Publish = Callable[[str, bytes, bool], Awaitable[bool]]


def _forget_login(engine: Engine, node_id: str) -> None:
    from exnode.node.kernel.login import forget

    with engine.begin() as conn:
        forget(conn, node_id)


class DynsecError(ExnodeError):
    """The broker's dynamic-security plugin refused a command or did not answer."""


def enrol_role(node_id: str) -> str:
    return f"exn-enrol-{node_id}"


def member_role(node_id: str) -> str:
    return f"exn-member-{node_id}"


def _acl(kind: str, topic: str) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "allow": True, "priority": 0}


def role_acls(topics: Topics, center_id: str, role: str) -> list[dict[str, Any]]:
    """The ACLs of one of exnode's roles (by its name)."""
    if role == CENTER_ROLE:
        return [_acl("publishClientSend", topics.inbox("+")),
                _acl("publishClientSend", topics.enrol_reply("+")),
                _acl("publishClientSend", topics.gconf),
                _acl("subscribeLiteral", topics.inbox(center_id)),
                _acl("subscribeLiteral", topics.gconf),
                _acl("subscribeLiteral", topics.enrol_all),
                _acl("publishClientSend", CONTROL),
                _acl("subscribeLiteral", RESPONSE)]
    if role.startswith("exn-enrol-"):
        node = role.removeprefix("exn-enrol-")
        return [_acl("publishClientSend", topics.enrol(node)),
                _acl("subscribeLiteral", topics.enrol_reply(node))]
    if role.startswith("exn-member-"):
        node = role.removeprefix("exn-member-")
        return [_acl("subscribeLiteral", topics.inbox(node)),
                _acl("subscribeLiteral", topics.gconf),
                _acl("publishClientSend", topics.inbox(center_id))]
    raise ValueError(role)


def _acl_key(a: dict[str, Any]) -> tuple[str, str, bool]:
    return (str(a.get("acltype")), str(a.get("topic")), bool(a.get("allow")))


def desired_accounts(engine: Engine, center_id: str) -> dict[str, str]:
    """(state-DB thread) node id -> 'enrol' | 'member', from invitations and members."""
    now = time.time()
    out: dict[str, str] = {}
    with engine.connect() as conn:
        for r in conn.execute(select(invites.c.node_id, invites.c.expires)):
            if r.expires >= now:
                out[r.node_id] = "enrol"
        for r in conn.execute(select(members.c.id, members.c.status)):
            if r.id == center_id:
                continue
            if r.status == "approved":
                out[r.id] = "member"
            elif r.status == "pending":
                out[r.id] = "enrol"
            else:  # rejected, revoked
                out.pop(r.id, None)
    return out


class BrokerAccess:
    """(center) The bureaus' broker accounts, through the dynamic-security plugin."""

    def __init__(self, center_id: str, username: str | None, topics: Topics,
                 publish: Publish, db: Callable[..., Awaitable[Any]], engine: Engine,
                 connected: asyncio.Event | None = None, timeout: float = 10.0) -> None:
        self.center_id = center_id
        self.username = username
        self.topics = topics
        self.publish = publish
        self.db = db
        self.engine = engine
        self.timeout = timeout
        self.connected = connected
        self._background: set[asyncio.Future[Any]] = set()
        self._missing: list[str] = []
        self.wake = asyncio.Event()
        self.last_error = ""
        self.accounts = 0
        self._ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._lock = asyncio.Lock()

    # --- talking to the plugin -------------------------------------------------------------

    def received(self, payload: bytes) -> None:
        """A message on the response topic; never blocks (called from the receive loop)."""
        try:
            responses = json.loads(payload).get("responses", [])
        except (ValueError, AttributeError):
            return
        for r in responses if isinstance(responses, list) else []:
            if not isinstance(r, dict):
                continue
            fut = self._waiting.pop(str(r.get("correlationData", "")), None)
            if fut is not None and not fut.done():
                fut.set_result(r)

    async def command(self, cmds: list[dict[str, Any]], wait: bool = True,
                      ok_errors: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Send commands in one message; their answers in order. An error other than
        ``ok_errors`` raises :class:`DynsecError`."""
        loop = asyncio.get_running_loop()
        futs = []
        for c in cmds:
            cid = f"exn-{next(self._ids)}-{secrets.token_hex(4)}"
            c["correlationData"] = cid
            if wait:
                fut: asyncio.Future[dict[str, Any]] = loop.create_future()
                self._waiting[cid] = fut
                futs.append(fut)
        message = json.dumps({"commands": cmds}).encode()
        if not wait:
            # A command that disconnects this very client: its acknowledgement may never
            # come, so nothing waits for it.
            task = asyncio.ensure_future(self.publish(CONTROL, message, False))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return []
        try:
            async with asyncio.timeout(self.timeout):
                while True:  # until published (a reconnect may be under way)
                    if self.connected is not None:
                        await self.connected.wait()
                    if await self.publish(CONTROL, message, False):
                        break
                    await asyncio.sleep(0.2)
                out = list(await asyncio.gather(*futs))
        except TimeoutError:
            raise DynsecError("dynamic security: no connection or no answer from the "
                              "broker's plugin within "
                              f"{self.timeout:.0f} s (is it loaded, and may "
                              f"'{self.username}' use {CONTROL}?)") from None
        finally:
            for c in cmds:
                self._waiting.pop(c["correlationData"], None)
        for c, r in zip(cmds, out, strict=True):
            err = r.get("error")
            if err and err not in ok_errors:
                raise DynsecError(f"dynamic security: {c['command']} "
                                  f"{c.get('username') or c.get('rolename') or ''}: {err}")
        return out

    # --- accounts ----------------------------------------------------------------------------

    async def create(self, node_id: str) -> str:
        """(invite) A fresh broker account for ``node_id`` with enrolment rights only; any
        account it had is replaced (so an older token's password stops working). Returns
        the new password."""
        password = secrets.token_urlsafe(24)
        role = enrol_role(node_id)
        await self.db(_forget_login, self.engine, node_id)
        async with self._lock:
            await self.command([{"command": "deleteClient", "username": node_id}],
                               ok_errors=("Client not found",))
            await self._ensure_roles([role])
            await self.command([{
                "command": "createClient", "username": node_id, "password": password,
                "clientid": client_id(node_id, self.topics.prefix), "textname": MANAGED,
                "roles": [{"rolename": role}]}])
        log.info("broker_account_created", node=node_id)
        return password

    async def set_password(self, node_id: str, password: str) -> None:
        """(login rotation) The member's new password; the broker disconnects it, and it
        logs in again with the new one (node/kernel/login.py)."""
        async with self._lock:
            await self.command([{"command": "setClientPassword", "username": node_id,
                                 "password": password}])

    async def _ensure_roles(self, names: list[str],
                            have: dict[str, list[dict[str, Any]]] | None = None) -> None:
        """Create each role, or correct its ACLs (a role change disconnects nobody)."""
        if have is None:
            have = await self._roles()
        cmds: list[dict[str, Any]] = []
        for name in names:
            want = role_acls(self.topics, self.center_id, name)
            if name not in have:
                cmds.append({"command": "createRole", "rolename": name, "acls": want})
                continue
            want_keys = {_acl_key(a) for a in want}
            got = {_acl_key(a): a for a in have[name]}
            cmds += [{"command": "removeRoleACL", "rolename": name, "acltype": a["acltype"],
                      "topic": a["topic"]} for k, a in got.items() if k not in want_keys]
            cmds += [{"command": "addRoleACL", "rolename": name, **a}
                     for a in want if _acl_key(a) not in got]
        if cmds:
            await self.command(cmds)

    async def _roles(self) -> dict[str, list[dict[str, Any]]]:
        r = (await self.command([{"command": "listRoles", "verbose": True}]))[0]
        return {str(x["rolename"]): list(x.get("acls", []))
                for x in r.get("data", {}).get("roles", [])}

    async def _clients(self) -> dict[str, dict[str, Any]]:
        r = (await self.command([{"command": "listClients", "verbose": True}]))[0]
        return {str(x["username"]): x for x in r.get("data", {}).get("clients", [])}

    async def reconcile(self) -> dict[str, int]:
        """Bring the plugin in line with the registry: the center's own role, each
        member's roles, no account for anyone rejected, revoked or no longer invited.
        Returns what it changed."""
        async with self._lock:
            return await self._reconcile()

    async def _reconcile(self) -> dict[str, int]:
        want = await self.db(desired_accounts, self.engine, self.center_id)
        roles = await self._roles()
        clients = await self._clients()
        done = {"deleted": 0, "changed": 0, "missing": 0}
        # The center's own rights (its account is the operator's; exnode adds a role).
        await self._ensure_roles([CENTER_ROLE], roles)
        me = clients.get(self.username or "")
        if me is not None and CENTER_ROLE not in {r.get("rolename") for r in me.get("roles", [])}:
            # The plugin disconnects a client whose roles change, so this is the last
            # thing this connection does; the transport reconnects with the new rights.
            log.info("broker_center_role_added", role=CENTER_ROLE)
            await self.command([{"command": "addClientRole", "username": self.username,
                                 "rolename": CENTER_ROLE}], wait=False)
            # Hold the lock until the transport has seen the disconnection, so that no
            # command goes out on the connection the broker is closing.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    while self.connected is not None and self.connected.is_set():
                        await asyncio.sleep(0.02)
            return done
        needed = [enrol_role(n) if s == "enrol" else member_role(n) for n, s in want.items()]
        await self._ensure_roles(needed, roles)
        cmds: list[dict[str, Any]] = []
        for name in want:
            c = clients.get(name)
            if c is not None and c.get("textname") != MANAGED and name != self.username:
                # An account made by hand for a member (a star that moves to the plugin
                # from a password file): from now on exnode manages it, roles and all.
                cmds.append({"command": "modifyClient", "username": name,
                             "textname": MANAGED})
                c["textname"] = MANAGED
                log.info("broker_account_adopted", node=name)
        for name, c in clients.items():
            if c.get("textname") != MANAGED:
                continue
            state = want.get(name)
            if state is None:
                cmds.append({"command": "deleteClient", "username": name})
                done["deleted"] += 1
                continue
            role = enrol_role(name) if state == "enrol" else member_role(name)
            mine = {str(r.get("rolename")) for r in c.get("roles", [])}
            if mine != {role}:
                cmds += [{"command": "removeClientRole", "username": name, "rolename": r}
                         for r in mine - {role}]
                if role not in mine:
                    cmds.append({"command": "addClientRole", "username": name,
                                 "rolename": role})
                done["changed"] += 1
            cid = client_id(name, self.topics.prefix)
            if c.get("clientid") != cid:
                cmds.append({"command": "setClientId", "username": name, "clientid": cid})
        if cmds:
            await self.command(cmds)
        # Roles of accounts that are gone.
        keep = set(needed)
        stale = [r for r in roles if (r.startswith("exn-enrol-") or r.startswith("exn-member-"))
                 and r not in keep]
        if stale:
            await self.command([{"command": "deleteRole", "rolename": r} for r in stale],
                               ok_errors=("Role not found",))
        missing = sorted(n for n in want if n not in clients)
        if missing and missing != self._missing:
            # Its password exists only in its token and at the bureau: nothing to create
            # it from. Say so (the member cannot connect), once until it changes.
            log.warning("broker_account_missing", nodes=missing[:20], count=len(missing))
        self._missing = missing
        done["missing"] = len(missing)
        self.accounts = len(want) - len(missing)
        if done["deleted"] or done["changed"]:
            log.info("broker_accounts_reconciled", **done)
        return done

    async def run(self, connected: asyncio.Event) -> None:
        """Reconcile when woken (registry changed, reconnect) and once a minute; the node
        cancels it when it stops."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 60)
            self.wake.clear()
            if not connected.is_set():
                continue
            try:
                await self.reconcile()
                self.last_error = ""
            except ExnodeError as e:
                self.last_error = str(e)
                log.warning("broker_reconcile_failed", reason=str(e))


def require(access: BrokerAccess | None) -> BrokerAccess:
    if access is None:
        raise UsageError("broker accounts are managed only with broker.dynsec: true on "
                         "the center")
    return access
