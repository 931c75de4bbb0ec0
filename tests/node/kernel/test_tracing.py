"""The center answers a package's trace only to a party to it (sender, recipient or a
peer its log names); anyone else gets what a package never seen gets: nothing."""

from __future__ import annotations

from dataclasses import dataclass

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from exnode.node.base.errors import PackageError
from exnode.node.kernel import exlog
from exnode.node.kernel.api import ApplyContext
from exnode.node.kernel.state import open_state
from exnode.node.kernel.tracing import TRACE_ANSWER, Tracer, parties

KEY = ed25519.Ed25519PrivateKey.generate()


@dataclass
class _Header:
    src: str
    res: str = ""


def _entry(pkg: str, event: str, peer: str) -> dict:
    return {"pkg_id": pkg, "event": event, "peer": peer, "resource": "people",
            "kind": "rows", "size": 10, "status": "ok", "reason": ""}


def test_parties_of_relayed_and_direct_packages():
    assert parties(["b1>b2", "b2", "center"]) == {"b1", "b2", "center"}
    assert parties([]) == set()


@pytest.mark.parametrize("asker, entries", [("b1", 2), ("b2", 2), ("b3", 0)])
def test_only_a_party_gets_the_centers_entries(tmp_path, asker, entries):
    eng = open_state(f"sqlite:///{tmp_path}/state.db")
    try:
        with eng.begin() as conn:
            exlog.append(conn, [_entry("p-1", "received", "b1"),
                                _entry("p-1", "relayed", "b1>b2"),
                                _entry("p-2", "received", "b3")], KEY.sign)
        t = Tracer()
        with eng.begin() as conn:
            ctx = ApplyContext(conn=conn, header=_Header(asker),  # type: ignore[arg-type]
                               payload=cbor2.dumps({"id": "q1", "pkg": "P-1"}))
            t._on_trace(ctx)
        (dest, kind, _res, payload), = ctx.replies
        b = cbor2.loads(payload)
        assert (dest, kind, b["id"], b["pkg"]) == (asker, TRACE_ANSWER, "q1", "p-1")
        assert len(b["trace"]) == entries
        assert all("hash" not in r for r in b["trace"])
        with eng.begin() as conn, pytest.raises(PackageError, match="malformed"):
            t._on_trace(ApplyContext(conn=conn, header=_Header(asker),  # type: ignore[arg-type]
                                     payload=b"\xff"))
    finally:
        eng.dispose()
