"""The center's directory from its member registry: certificates are checked against the
CA once, their validity window on every read of the registry."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from sqlalchemy import update

from exnode.node.base.config import load_config, render_config
from exnode.node.kernel import directory
from exnode.node.kernel import identity as idn
from exnode.node.kernel.directory import Members
from exnode.node.kernel.state import members


def _keys() -> tuple[bytes, bytes]:
    return (idn.raw_public(ed25519.Ed25519PrivateKey.generate().public_key()),
            idn.raw_public(x25519.X25519PrivateKey.generate().public_key()))


def _cert(ident: idn.Identity, node: str) -> bytes:
    ca = ident.ca_cert
    assert ca is not None
    return idn.issue_cert(ident.ca_key(), ca, node, "bureau", *_keys())


def _add(eng: Any, ident: idn.Identity, node: str, status: str = "approved",
         cert: bytes | None = None) -> None:
    sign, enc = _keys()
    now = time.time()
    with eng.begin() as conn:
        conn.execute(members.insert().values(
            id=node, role="bureau", status=status, sign_pub=sign, enc_pub=enc,
            cert=cert if cert is not None else _cert(ident, node), serial="1",
            requested_at=now, updated_at=now))


@pytest.fixture
def registry_of(tmp_path: Path, center: tuple[Any, idn.Identity], monkeypatch: Any) -> Any:
    eng, ident = center
    path = tmp_path / "exnode.yaml"
    path.write_text(render_config("center", "center"), encoding="utf-8")
    m = Members(load_config(path), ident, eng)
    checks: list[bytes] = []
    real = idn.member_from_cert

    def counted(cert: bytes, ca: Any) -> idn.Member:
        checks.append(cert)
        return real(cert, ca)

    monkeypatch.setattr(idn, "member_from_cert", counted)
    return m, eng, ident, checks


def test_each_certificate_is_checked_once(registry_of):
    m, eng, ident, checks = registry_of
    for n in ("b1", "b2", "b3"):
        _add(eng, ident, n)
    m.from_registry()
    assert m.current.ids() == ["b1", "b2", "b3", "center"] and len(checks) == 4
    first = dict(m.current.members)
    m.from_registry()
    m.from_registry()
    assert len(checks) == 4
    assert m.current.members == first


def test_a_new_certificate_is_checked_and_a_revoked_member_leaves(registry_of):
    m, eng, ident, checks = registry_of
    for n in ("b1", "b2"):
        _add(eng, ident, n)
    m.from_registry()
    with eng.begin() as conn:
        conn.execute(update(members).where(members.c.id == "b1").values(
            cert=_cert(ident, "b1")))
        conn.execute(update(members).where(members.c.id == "b2").values(status="revoked"))
    checks.clear()
    m.from_registry()
    assert len(checks) == 1
    assert m.current.ids() == ["b1", "center"] and m.current.revoked == {"b2"}
    assert m.current.members["b1"].cert_der == checks[0]


def test_a_certificate_of_another_ca_is_refused_every_time(registry_of, tmp_path):
    m, eng, ident, checks = registry_of
    other = tmp_path / "other"
    idn.generate_node_keys(other)
    idn.create_ca(other, "elsewhere")
    _add(eng, ident, "b1", cert=_cert(idn.Identity("elsewhere", other), "b1"))
    m.from_registry()
    m.from_registry()
    assert m.current.ids() == ["center"]
    assert checks.count(checks[-1]) == 2  # not kept: checked again, refused again


def test_a_checked_certificate_that_expired_is_dropped(registry_of, monkeypatch):
    m, eng, ident, _checks = registry_of
    _add(eng, ident, "b1")
    m.from_registry()
    assert "b1" in m.current.ids()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=900)
    monkeypatch.setattr(directory, "_utcnow", lambda: later)
    m.from_registry()
    assert m.current.ids() == []  # the center's own certificate has expired by then too
    monkeypatch.setattr(directory, "_utcnow", lambda: dt.datetime.now(dt.UTC))
    m.from_registry()
    assert m.current.ids() == ["b1", "center"]
