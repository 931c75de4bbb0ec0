"""BrokerAccess against an in-memory stand-in for Mosquitto's dynamic-security plugin
(the commands and answers as 2.0.11 gives them; tests/e2e/test_broker_identity.py runs
the real one): the accounts follow the member registry."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from exnode.node.kernel import dynsec, registry
from exnode.node.kernel import identity as idn
from exnode.node.kernel.state import members
from exnode.node.kernel.topics import Topics
from exnode.node.kernel.transport import client_id


class FakePlugin:
    def __init__(self) -> None:
        self.clients: dict[str, dict] = {"center": {"username": "center", "roles": [
            {"rolename": "admin"}], "groups": []}}
        self.roles: dict[str, list[dict]] = {"admin": []}
        self.access: dynsec.BrokerAccess | None = None
        self.seen: list[str] = []

    def _one(self, c: dict) -> dict:
        cmd, out = c["command"], {"command": c["command"]}
        self.seen.append(cmd)
        user, role = c.get("username"), c.get("rolename")
        if cmd == "listRoles":
            out["data"] = {"roles": [{"rolename": r, "acls": a} for r, a in self.roles.items()]}
        elif cmd == "listClients":
            out["data"] = {"clients": list(self.clients.values())}
        elif cmd == "createRole":
            self.roles[role] = list(c.get("acls", []))
        elif cmd == "deleteRole":
            if self.roles.pop(role, None) is None:
                out["error"] = "Role not found"
        elif cmd in ("addRoleACL", "removeRoleACL"):
            acl = {k: c[k] for k in ("acltype", "topic") if k in c}
            self.roles[role] = [a for a in self.roles[role]
                                if (a["acltype"], a["topic"]) != (acl["acltype"], acl["topic"])]
            if cmd == "addRoleACL":
                self.roles[role].append({**acl, "allow": c["allow"], "priority": 0})
        elif cmd == "createClient":
            if user in self.clients:
                out["error"] = "Client already exists"
            else:
                self.clients[user] = {"username": user, "clientid": c.get("clientid"),
                                      "textname": c.get("textname"),
                                      "roles": c.get("roles", []), "groups": []}
        elif cmd == "deleteClient":
            if self.clients.pop(user, None) is None:
                out["error"] = "Client not found"
        elif cmd == "addClientRole":
            self.clients[user]["roles"].append({"rolename": role})
        elif cmd == "removeClientRole":
            self.clients[user]["roles"] = [r for r in self.clients[user]["roles"]
                                           if r["rolename"] != role]
        elif cmd == "setClientId":
            self.clients[user]["clientid"] = c.get("clientid")
        elif cmd == "modifyClient":
            self.clients[user]["textname"] = c["textname"]
        else:
            out["error"] = "Unknown command"
        if "correlationData" in c:
            out["correlationData"] = c["correlationData"]
        return out

    async def publish(self, topic: str, payload: bytes, retain: bool) -> bool:
        assert topic == dynsec.CONTROL and not retain
        answer = {"responses": [self._one(c) for c in json.loads(payload)["commands"]]}
        assert self.access is not None
        asyncio.get_running_loop().call_soon(self.access.received,
                                             json.dumps(answer).encode())
        return True


def run(eng, fn) -> None:
    async def db(f, *args):
        return f(*args)

    async def go() -> None:
        plugin = FakePlugin()
        access = dynsec.BrokerAccess("center", "center", Topics("p/v1"), plugin.publish, db,
                                     eng, timeout=2)
        plugin.access = access
        await fn(plugin, access)

    asyncio.run(go())


def enrol(eng, ident, node: str, approve: bool) -> None:
    secret = registry.invite(eng, "center", node, 600, approve)
    req = {"id": node, "sign_pub": bytes([len(node)]) * 32, "enc_pub": b"\x02" * 32,
           "ts": int(time.time())}
    req["mac"] = idn.enrol_mac(secret, registry.enrol_body(req))
    registry.handle_enrol(eng, ident, req)


def test_accounts_follow_the_registry(center):
    eng, ident = center

    async def steps(plugin: FakePlugin, access: dynsec.BrokerAccess) -> None:
        # first: the center gets its own role (and is disconnected for it: no answer)
        await access.reconcile()
        await asyncio.sleep(0)
        assert {"rolename": "exn-center"} in plugin.clients["center"]["roles"]
        assert {(a["acltype"], a["topic"]) for a in plugin.roles["exn-center"]} >= {
            ("publishClientSend", "p/v1/in/+"), ("subscribeLiteral", "p/v1/enrol/+"),
            ("publishClientSend", "p/v1/gconf")}
        # invited: an account with the enrolment role only, its client id bound
        registry.invite(eng, "center", "b1", 600, False)
        pw = await access.create("b1")
        b1 = plugin.clients["b1"]
        assert len(pw) >= 24 and b1["clientid"] == client_id("b1", "p/v1")
        assert b1["roles"] == [{"rolename": "exn-enrol-b1"}]
        assert {(a["acltype"], a["topic"]) for a in plugin.roles["exn-enrol-b1"]} == {
            ("publishClientSend", "p/v1/enrol/b1"), ("subscribeLiteral", "p/v1/enrol/b1/reply")}
        # approved: the member role instead, and the enrolment role is gone
        registry.forget_invite(eng, "b1")
        with eng.begin() as conn:
            conn.execute(members.insert().values(
                id="b1", role="bureau", status="approved", sign_pub=b"\x01" * 32,
                enc_pub=b"\x02" * 32, requested_at=0, updated_at=0))
        await access.reconcile()
        assert plugin.clients["b1"]["roles"] == [{"rolename": "exn-member-b1"}]
        assert "exn-enrol-b1" not in plugin.roles
        assert {(a["acltype"], a["topic"]) for a in plugin.roles["exn-member-b1"]} == {
            ("subscribeLiteral", "p/v1/in/b1"), ("subscribeLiteral", "p/v1/gconf"),
            ("publishClientSend", "p/v1/in/center")}
        # revoked: the account and its roles are gone
        registry.set_status(eng, ident, "b1", "revoke")
        assert (await access.reconcile())["deleted"] == 1
        assert "b1" not in plugin.clients and "exn-member-b1" not in plugin.roles
        # nothing changes when nothing changed; accounts not made by exnode stay
        plugin.clients["operator"] = {"username": "operator", "roles": [], "groups": []}
        before = len(plugin.seen)
        await access.reconcile()
        assert [c for c in plugin.seen[before:] if c not in ("listRoles", "listClients")] == []
        assert "operator" in plugin.clients

    run(eng, steps)


def test_an_account_made_by_hand_for_a_member_is_taken_over(center):
    eng, ident = center
    enrol(eng, ident, "b2", approve=True)

    async def steps(plugin: FakePlugin, access: dynsec.BrokerAccess) -> None:
        plugin.clients["center"]["roles"].append({"rolename": "exn-center"})
        plugin.clients["b2"] = {"username": "b2", "roles": [{"rolename": "old"}], "groups": []}
        await access.reconcile()
        b2 = plugin.clients["b2"]
        assert b2["textname"] == dynsec.MANAGED and b2["clientid"] == client_id("b2", "p/v1")
        assert b2["roles"] == [{"rolename": "exn-member-b2"}]

    run(eng, steps)


def test_an_expired_invitation_loses_its_account(center):
    eng, _ident = center

    async def steps(plugin: FakePlugin, access: dynsec.BrokerAccess) -> None:
        plugin.clients["center"]["roles"].append({"rolename": "exn-center"})
        registry.invite(eng, "center", "b3", 0.01, False)
        await access.create("b3")
        await asyncio.sleep(0.05)
        await access.reconcile()
        assert "b3" not in plugin.clients

    run(eng, steps)


def test_no_answer_is_a_one_line_error(center):
    eng, _ident = center

    async def steps(plugin: FakePlugin, access: dynsec.BrokerAccess) -> None:
        async def silent(topic: str, payload: bytes, retain: bool) -> bool:
            return True

        access.publish = silent
        access.timeout = 0.2
        with pytest.raises(dynsec.DynsecError, match="no answer") as e:
            await access.reconcile()
        assert "\n" not in str(e.value)

    run(eng, steps)
