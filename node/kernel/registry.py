"""The center's member registry: invitations, enrolment, approval, revocation, and the
signed global configuration built from it."""

from __future__ import annotations

import hmac
import time
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Connection, Engine, select

from exnode.node.base.errors import IdentityError, NotFound, UsageError
from exnode.node.kernel import identity as idn
from exnode.node.kernel.state import invites, members, meta

GCONF_VERSION_KEY = "gconf_version"


def ensure_self(engine: Engine, ident: idn.Identity, role: str = "center") -> None:
    """Put the center itself in the registry, with a certificate from its own CA."""
    with engine.begin() as conn:
        row = conn.execute(select(members.c.id).where(members.c.id == ident.node_id)).first()
        if row is not None:
            return
        ca = ident.ca_cert
        if ca is None:
            raise IdentityError("the center has no CA certificate (run 'exnode init')")
        cert = idn.issue_cert(ident.ca_key(), ca, ident.node_id, role, ident.sign_pub,
                              ident.enc_pub)
        now = time.time()
        conn.execute(members.insert().values(
            id=ident.node_id, role=role, status="approved", sign_pub=ident.sign_pub,
            enc_pub=ident.enc_pub, cert=cert, serial=str(idn.x509.load_der_x509_certificate(
                cert).serial_number), requested_at=now, updated_at=now))


def invite(engine: Engine, ident_id: str, node_id: str, ttl_s: float, approve: bool,
           readmit: bool = False) -> bytes:
    """Record a one-time invitation and return its secret. A revoked id is invited again
    only with ``readmit``: its old membership (keys, certificate) is gone from then on,
    and it enrols afresh, preferably with new keys."""
    if not idn_valid(node_id):
        raise UsageError(f"'{node_id}' is not a valid node id")
    if node_id == ident_id:
        raise UsageError("the center cannot invite itself")
    secret = idn.new_secret()
    now = time.time()
    with engine.begin() as conn:
        m = conn.execute(select(members.c.status).where(members.c.id == node_id)).scalar()
        if m in ("approved", "pending"):
            raise UsageError(f"node '{node_id}' is already a member ({m})")
        if m == "revoked" and not readmit:  # nothing brings a revoked member back silently
            raise UsageError(f"node '{node_id}' was revoked; to let it enrol again, invite "
                             "it with --readmit (it enrols afresh; give it new keys with "
                             "'exnode init --force' if its keys may be compromised)")
        if m == "revoked":
            conn.execute(members.delete().where(members.c.id == node_id))
        conn.execute(invites.delete().where(invites.c.node_id == node_id))
        conn.execute(invites.insert().values(
            node_id=node_id, secret=secret, approve=int(approve),
            created_at=now, expires=now + ttl_s, used_at=None))
    return secret


def forget_invite(engine: Engine, node_id: str) -> None:
    """Drop an invitation (its secret with it)."""
    with engine.begin() as conn:
        conn.execute(invites.delete().where(invites.c.node_id == node_id))


def idn_valid(node_id: str) -> bool:
    from exnode.node.base.config import NODE_ID_RE

    return bool(NODE_ID_RE.match(node_id))


def enrol_body(req: dict[str, Any]) -> bytes:
    return cbor2.dumps({k: req[k] for k in ("id", "sign_pub", "enc_pub", "ts")}, canonical=True)


def handle_enrol(engine: Engine, ident: idn.Identity,
                 req: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Check an enrolment request against its invitation. Returns (reply, secret)."""
    node_id = str(req.get("id", ""))
    for name, size in (("sign_pub", 32), ("enc_pub", 32), ("mac", 32)):
        v = req.get(name)
        # exact lengths: bytes(n) of an integer would allocate n bytes
        if not isinstance(v, bytes) or len(v) != size:
            raise IdentityError(f"enrolment request: '{name}' must be {size} bytes")
    if not isinstance(req.get("ts"), int | float) or isinstance(req.get("ts"), bool):
        raise IdentityError("enrolment request: 'ts' must be a number")
    with engine.begin() as conn:
        inv = conn.execute(select(invites).where(invites.c.node_id == node_id)).mappings().first()
        if inv is None or inv["expires"] < time.time():
            raise IdentityError(f"no valid invitation for '{node_id}'")
        secret = bytes(inv["secret"])
        mac = idn.enrol_mac(secret, enrol_body(req))
        if not hmac.compare_digest(mac, req["mac"]):
            raise IdentityError(f"enrolment of '{node_id}' failed authentication")
        sign_pub, enc_pub = req["sign_pub"], req["enc_pub"]
        existing = conn.execute(select(members).where(members.c.id == node_id)).mappings().first()
        if existing is not None and (existing["sign_pub"] != sign_pub
                                     or existing["enc_pub"] != enc_pub):
            raise IdentityError(f"'{node_id}' is already enrolled with other keys")
        now = time.time()
        if existing is None:
            conn.execute(members.insert().values(
                id=node_id, role="bureau", status="pending", sign_pub=sign_pub,
                enc_pub=enc_pub, cert=None, serial=None, requested_at=now, updated_at=now))
        # One use: once this request is answered the secret is gone, and the same token
        # (or a replay of this request) finds no invitation.
        conn.execute(invites.delete().where(invites.c.node_id == node_id))
        if inv["approve"] and (existing is None or existing["status"] == "pending"):
            _approve(conn, ident, node_id)
        row = conn.execute(select(members).where(members.c.id == node_id)).mappings().one()
        raw = conn.execute(select(meta.c.value).where(meta.c.key == GCONF_VERSION_KEY)).scalar()
    ca = ident.ca_cert
    assert ca is not None
    # The newest gconf version published: the bureau refuses anything older from its
    # first gconf on (one left retained from before a revocation, say).
    reply = {"id": node_id, "status": row["status"], "cert": row["cert"],
             "ca": ca.public_bytes(serialization.Encoding.PEM),
             "gconf_floor": int(raw.decode()) if raw else 0}
    return reply, secret


def _approve(conn: Connection, ident: idn.Identity, node_id: str) -> None:
    row = conn.execute(select(members).where(members.c.id == node_id)).mappings().first()
    if row is None:
        raise NotFound(f"no member or enrolment request '{node_id}'")
    ca = ident.ca_cert
    assert ca is not None
    cert = idn.issue_cert(ident.ca_key(), ca, node_id, row["role"], row["sign_pub"],
                          row["enc_pub"])
    serial = str(idn.x509.load_der_x509_certificate(cert).serial_number)
    conn.execute(members.update().where(members.c.id == node_id).values(
        status="approved", cert=cert, serial=serial, updated_at=time.time()))


def set_status(engine: Engine, ident: idn.Identity, node_id: str, action: str) -> str:
    """approve | reject | revoke a member; returns the new status."""
    with engine.begin() as conn:
        row = conn.execute(select(members).where(members.c.id == node_id)).mappings().first()
        if row is None:
            raise NotFound(f"no member or enrolment request named '{node_id}'")
        if node_id == ident.node_id:
            raise UsageError("the center cannot change its own membership")
        st = row["status"]
        if action == "approve":
            if st == "approved":
                return st
            if st == "revoked":
                raise UsageError(f"'{node_id}' was revoked; invite it again under a new id")
            _approve(conn, ident, node_id)
            return "approved"
        if action == "reject":
            if st != "pending":
                raise UsageError(f"'{node_id}' is {st}, not pending; use 'revoke'")
            conn.execute(members.update().where(members.c.id == node_id)
                         .values(status="rejected", updated_at=time.time()))
            return "rejected"
        if action == "revoke":
            conn.execute(members.update().where(members.c.id == node_id)
                         .values(status="revoked", updated_at=time.time()))
            return "revoked"
    raise UsageError(f"unknown action {action}")


def list_members(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(members.c.id, members.c.role, members.c.status,
                                   members.c.serial, members.c.requested_at,
                                   members.c.updated_at).order_by(members.c.id)).mappings()
        return [dict(r) for r in rows]


def list_invitations(engine: Engine) -> list[dict[str, Any]]:
    """Open invitations (not yet used): node, whether it approves at once, when it was
    made and when it expires. Never the secret."""
    with engine.connect() as conn:
        rows = conn.execute(select(invites.c.node_id, invites.c.approve, invites.c.created_at,
                                   invites.c.expires).order_by(invites.c.node_id)).mappings()
        now = time.time()
        return [{**dict(r), "approve": bool(r["approve"]), "expired": r["expires"] < now}
                for r in rows]


def build_gconf(engine: Engine, ident: idn.Identity, validity_s: float,
                broker: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """Sign a new version of the global configuration from the registry."""
    with engine.begin() as conn:
        raw = conn.execute(select(meta.c.value).where(meta.c.key == GCONF_VERSION_KEY)).scalar()
        version = (int(raw.decode()) if raw else 0) + 1
        # Versions must never go backwards, even when two publishers race.
        version = max(version, int(time.time()))
        if raw is None:
            conn.execute(meta.insert().values(key=GCONF_VERSION_KEY, value=str(version).encode()))
        else:
            conn.execute(meta.update().where(meta.c.key == GCONF_VERSION_KEY)
                         .values(value=str(version).encode()))
        rows = conn.execute(select(members)).mappings().all()
    now = time.time()
    g = {"v": 1, "version": version, "issued": int(now), "expires": int(now + validity_s),
         "center": ident.node_id, "broker": broker,
         "members": [{"id": r["id"], "role": r["role"], "cert": r["cert"]}
                     for r in rows if r["status"] == "approved" and r["cert"]],
         "revoked": [{"id": r["id"], "serial": r["serial"] or ""}
                     for r in rows if r["status"] == "revoked"]}
    return idn.sign_gconf(ident.ca_key(), g), g
