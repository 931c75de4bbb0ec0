"""Authority, the second wall: an approved member is not allowed everything. Each kind
says who may send it, to whom, and whether the center relays it; the kernel checks that
at the center and again at the recipient, before any handler runs.

The attacker is bureau b3, a real member with its real key. It targets b2's copy of
``people``, which only b1 owns, through the center and, on a broker without ACLs,
straight into b2's inbox."""

from __future__ import annotations

import sqlite3

import cbor2
import pytest

from exnode.adapters.rowcodec import encode_batch
from exnode.node.tools.cluster import wait_until
from exnode.policies.changes import Change, ChangeBatch

from ..helpers import craft, db_rows, publish_package, publish_raw, refusals

DDL = "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, citizen_id TEXT)"


@pytest.fixture
def star(make_star, system_broker, tmp_path):
    dbs = {n: tmp_path / f"{n}.db" for n in ("center", "b1", "b2", "b3")}
    for p in dbs.values():
        with sqlite3.connect(p) as db:
            db.execute(DDL)
    res = {"database": "db", "table": "people", "key": ["id"], "owner": "b1"}
    s = make_star(system_broker, bureaus=("b1", "b2", "b3"), node_settings={
        n: {"databases": {"db": {"url": f"sqlite:///{dbs[n]}"}},
            "resources": {"people": {**res, **({"subscribers": ["b2"]} if n == "center"
                                               else {})}}}
        for n in dbs})
    s.up()
    s.dbs = dbs
    return s


def payload(kind: str) -> bytes:
    if kind == "rows":
        return encode_batch(ChangeBatch("people", [Change(
            "upsert", (1,), {"id": 1, "name": "forged", "citizen_id": "110101199003070011"})]),
            ["id", "name", "citizen_id"])
    if kind == "zero":
        return cbor2.dumps({"checked": 1.0})
    if kind == "verify-req":
        return cbor2.dumps({"req": "r1", "fields": ["citizen_id"], "buckets": list(range(256))})
    return cbor2.dumps({"resource": "people", "pkg_id": "x", "items": [[[1], "forged"]]})


def refused_with(star, node: str, pkg_id: str) -> str:
    def check():
        return [r[2] for r in refusals(star, node) if r[0] == pkg_id]
    return wait_until(check, 20, 0.2, f"{node} to refuse {pkg_id}")[0]


@pytest.mark.parametrize("kind", ["rows", "zero", "verify-req", "rejection"])
def test_a_bureau_cannot_send_sync_kinds_to_another_bureau(star, kind):
    t = star.topics
    # through the center: refused there, never relayed
    via = craft(star, src="b3", to="b2", kind=kind, resource="people", seq=1,
                payload=payload(kind))
    publish_package(star, t.inbox("center"), via.wire)
    reason = refused_with(star, "center", via.header.id)
    assert reason.startswith("not-relayed"), reason
    assert not db_rows(star, "center", "SELECT 1 FROM exchange_log WHERE pkg_id=? AND "
                       "event='relayed'", (via.header.id,))
    # around the center, straight into b2's inbox: refused again at b2, before any handler
    around = craft(star, src="b3", to="b2", kind=kind, resource="people", seq=1,
                   payload=payload(kind))
    publish_package(star, t.inbox("b2"), around.wire)
    reason = refused_with(star, "b2", around.header.id)
    # only the center may send a rejection notice at all; the other kinds come to a
    # bureau only from the center
    assert reason.startswith("not-allowed" if kind == "rejection" else "not-from-center"), \
        reason
    # nothing was applied, recorded or answered
    with sqlite3.connect(star.dbs["b2"]) as db:
        assert db.execute("SELECT count(*) FROM people").fetchone() == (0,)
    assert db_rows(star, "b2", "SELECT count(*) FROM freshness WHERE node='b3'") == [(0,)]
    assert db_rows(star, "b2", "SELECT count(*) FROM notices") == [(0,)]
    assert db_rows(star, "b2", "SELECT count(*) FROM outbox WHERE kind='verify-res'") == [(0,)]


def test_the_center_sends_rejections_and_relays_what_may_be_relayed(star):
    # a bureau may not send a rejection notice even to the center
    pkg = craft(star, src="b3", to="center", kind="rejection", resource="people",
                payload=payload("rejection"))
    publish_package(star, star.topics.inbox("center"), pkg.wire)
    reason = refused_with(star, "center", pkg.header.id)
    assert reason.startswith("not-allowed"), reason
    # kinds that may be relayed still are: b3 -> center -> b2
    assert star.call("b3", "POST", "/ping", {"node": "b2", "timeout": 20})["rtt_ms"] > 0


def test_a_bureau_gets_no_keys_from_the_center(star):
    """A verify request from a bureau is answered by the center with counts and
    checksums only: asking for the keys of its rows is refused."""
    pkg = craft(star, src="b3", to="center", kind="verify-req", resource="people",
                payload=payload("verify-req"))
    publish_package(star, star.topics.inbox("center"), pkg.wire)
    reason = refused_with(star, "center", pkg.header.id)
    assert reason.startswith("not-allowed") and "operator" in reason, reason
    # a bureau's own `sync verify` still compares counts and checksums with the center
    r = star.cli("b2", "sync", "verify", "people", "--json")
    assert r.returncode == 0, r.stdout + r.stderr



def resigned(star, pkg, signer_node: str, **changes):
    """``pkg`` with header fields changed, sealed again to its first recipient and signed
    by ``signer_node``'s real key: what a member that breaks the rules can send."""
    import dataclasses
    import hashlib

    from exnode.node.kernel import envelope

    from ..helpers import SUITE, identity, members

    h = dataclasses.replace(pkg.header, **changes)
    raw = h.encode()
    to = pkg.header.rcpt[0]
    inner = SUITE.open(pkg.sealed, to, identity(star, to).enc_key, pkg.aad)
    sealed = SUITE.seal(inner, {to: members(star)[to].enc_pub}, hashlib.sha256(raw).digest())
    sig = SUITE.sign(identity(star, signer_node).sign_key, envelope.signed_bytes(raw, sealed))
    return envelope.MAGIC + cbor2.dumps([raw, sealed, sig]), h.id


def relayed(star, pkg_id):
    return db_rows(star, "center", "SELECT count(*) FROM exchange_log WHERE pkg_id=? AND "
                   "event='relayed'", (pkg_id,))[0][0]


def test_repeated_recipients_are_refused_not_relayed(star):
    pkg = craft(star, src="b1", to="b2", kind="ping", resource="",
                payload=cbor2.dumps({"nonce": "n", "t": 1.0}))
    wire, pkg_id = resigned(star, pkg, "b1", rcpt=["b2"] * 2000)
    publish_package(star, star.topics.inbox("center"), wire)
    # refused as the header is decoded, before anything trusts it: logged with bounded
    # values only (no id, peer '?')
    got = wait_until(lambda: [r for r in refusals(star, "center")
                              if r[2].startswith("malformed") and r[1] == "?"], 20, 0.2,
                     "the refusal at the center")
    assert got[0][0] == "", got
    assert relayed(star, pkg_id) == 0
    assert star.status("center")["counters"].get("relayed", 0) == 0


def test_a_replayed_package_is_not_relayed_again(star):
    pkg = craft(star, src="b1", to="b2", resource="replayed", items=[b"once"])
    # a sniffer replays what it saw, at once
    publish_raw(star.host, star.port, star.topics.inbox("center"), [pkg.wire] * 5)
    wait_until(lambda: relayed(star, pkg.header.id) >= 1, 20, 0.2, "the first relay")
    wait_until(lambda: star.status("center")["counters"].get("relay_repeats_dropped", 0) >= 4,
               20, 0.2, "the repeats dropped")
    assert relayed(star, pkg.header.id) == 1
    wait_until(lambda: db_rows(star, "b2", "SELECT count(*) FROM received WHERE "
                               "resource='replayed'") == [(1,)], 20, 0.2, "the one copy at b2")
    assert relayed(star, pkg.header.id) == 1
