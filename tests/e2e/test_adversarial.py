"""Hostile and broken packages: each is refused with a logged reason, and the daemons
keep serving."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from exnode.node.tools.cluster import wait_until

from ..helpers import craft, db_rows, publish_package, publish_raw, refusals


def _refused_with(star, node, pkg_id, code):
    def check():
        return [r for r in refusals(star, node) if r[0] == pkg_id and code in r[2]]
    return wait_until(check, 20, what=f"{node} to refuse {pkg_id} ({code})")


def _still_serving(star):
    for src, dst in (("b1", "b2"), ("b2", "b1")):
        assert star.call(src, "POST", "/ping", {"node": dst, "timeout": 20})["rtt_ms"] > 0
    for n in star.nodes:
        assert star.status(n)["broker"]["connected"]


@pytest.fixture
def star(make_star, own_mosquitto):
    s = make_star(own_mosquitto, node_settings={"b2": {"delivery": {
        "max_package_bytes": 300_000}}})
    s.up()
    return s


def test_bit_flipped_packages_are_refused(star):
    t = star.topics
    pkg = craft(star, src="b1", to="b2", resource="flip", seq=1)
    wire = bytearray(pkg.wire)
    # one flip in the signed header, one in the sealed payload, one in the signature
    for pos in (20, len(wire) // 2, len(wire) - 3):
        bad = bytearray(wire)
        bad[pos] ^= 0x04
        publish_package(star, t.inbox("center"), bytes(bad))
    wait_until(lambda: len(refusals(star, "center")) >= 3, 20, what="3 refusals")
    reasons = " ".join(r[2] for r in refusals(star, "center"))
    assert "bad-signature" in reasons or "malformed" in reasons
    # the same flips sent straight into b2's inbox (a broker without ACLs)
    for pos in (20, len(wire) // 2, len(wire) - 3):
        bad = bytearray(wire)
        bad[pos] ^= 0x04
        publish_package(star, t.inbox("b2"), bytes(bad))
    wait_until(lambda: len(refusals(star, "b2")) >= 3, 20, what="b2 refusals")
    assert db_rows(star, "b2", "SELECT count(*) FROM received WHERE resource='flip'") == [(0,)]
    _still_serving(star)


def test_replayed_package_is_acknowledged_not_applied_again(star):
    t = star.topics
    pkg = craft(star, src="b1", to="b2", resource="replay", seq=1, items=[b"once"])
    publish_package(star, t.inbox("center"), pkg.wire)
    wait_until(lambda: db_rows(star, "b2", "SELECT count(*) FROM received WHERE "
                               "resource='replay'") == [(1,)], 20, what="first delivery")
    # replayed into b2's inbox (the center drops quick repeats of what it relayed: see
    # tests/e2e/test_authority.py): acknowledged again, never applied again
    for _ in range(3):
        publish_package(star, t.inbox("b2"), pkg.wire)
    wait_until(lambda: len(db_rows(star, "b2", "SELECT id FROM exchange_log WHERE pkg_id=? "
                                   "AND event='duplicate'", (pkg.header.id,))) == 3, 20,
               what="3 duplicates logged")
    assert db_rows(star, "b2", "SELECT count(*) FROM received WHERE resource='replay'") == [(1,)]
    # an old package replayed after it expired is refused as expired
    old = craft(star, src="b1", to="b2", resource="replay", seq=2, ttl_s=0)
    publish_package(star, t.inbox("b2"), old.wire)
    _refused_with(star, "b2", old.header.id, "expired")
    _still_serving(star)


def test_forged_sender_is_refused(star):
    t = star.topics
    mallory = ed25519.Ed25519PrivateKey.generate()
    forged = craft(star, src="b1", to="b2", resource="forged", signer=mallory)
    publish_package(star, t.inbox("center"), forged.wire)
    _refused_with(star, "center", forged.header.id, "bad-signature")
    publish_package(star, t.inbox("b2"), forged.wire)
    _refused_with(star, "b2", forged.header.id, "bad-signature")
    # a sender nobody enrolled
    stranger = craft(star, src="mallory", to="b2", resource="forged", signer=mallory)
    publish_package(star, t.inbox("center"), stranger.wire)
    _refused_with(star, "center", stranger.header.id, "unknown-sender")
    assert db_rows(star, "b2", "SELECT count(*) FROM received WHERE resource='forged'") == [(0,)]
    _still_serving(star)


def test_package_for_another_node_is_refused(star):
    t = star.topics
    for_b2 = craft(star, src="b1", to="b2", resource="misaddr")
    publish_package(star, t.inbox("b1"), for_b2.wire)
    _refused_with(star, "b1", for_b2.header.id, "misaddressed")
    # addressed to b2 but sealed to b1's key: b2 cannot open it and says so
    wrong_key = craft(star, src="center", to="b2", kind="ping", resource="",
                      seq=0, rcpt_key_of="b1")
    publish_package(star, t.inbox("b2"), wrong_key.wire)
    _refused_with(star, "b2", wrong_key.header.id, "decrypt-failed")
    _still_serving(star)


def test_oversize_and_garbage_are_refused(star):
    t = star.topics
    big = craft(star, src="b1", to="b2", resource="big", payload=b"\0" * 400_000)
    publish_package(star, t.inbox("b2"), big.wire)
    wait_until(lambda: any("oversize" in r[2] for r in refusals(star, "b2")), 20,
               what="oversize refusal")
    publish_raw(star.host, star.port, t.inbox("b2"), [b"", b"P", b"Pgarbage", b"C\x01\x02",
                                                       b"Z" * 100])
    publish_raw(star.host, star.port, t.inbox("center"), [b"PEXN\x01\xff\xff"])
    wait_until(lambda: len(refusals(star, "b2")) >= 5, 20, what="garbage refusals")
    _still_serving(star)


def test_revoked_member_is_refused(star):
    r = star.cli("center", "nodes", "revoke", "b2", "--json")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: "b2" not in star.status("b1")["members"], 20,
               what="b1 to learn of the revocation")
    # b2 still holds its keys and signs correctly, but the center refuses it
    pkg = craft(star, src="b2", to="b1", resource="revoked")
    publish_package(star, star.topics.inbox("center"), pkg.wire)
    _refused_with(star, "center", pkg.header.id, "revoked-sender")
    publish_package(star, star.topics.inbox("b1"), pkg.wire)
    _refused_with(star, "b1", pkg.header.id, "revoked-sender")
    # and nobody sends to it any more
    r = star.cli("b1", "ping", "b2", "--timeout", "3")
    assert r.returncode != 0 and "not an approved member" in r.stderr
    assert "Traceback" not in r.stderr
    assert star.call("b1", "POST", "/ping", {"node": "center", "timeout": 20})["rtt_ms"] > 0


def test_early_packages_are_bounded_and_checked_again_when_their_turn_comes(make_star,
                                                                           own_mosquitto):
    """Packages that come before their turn wait, but only so many per stream; one that
    expires while it waits is refused when its turn comes, not applied."""
    star = make_star(own_mosquitto, node_settings={"b2": {"delivery": {
        "waiting_per_stream": 3}}})
    star.up()
    t = star.topics
    # seq 2 expires in two seconds; 3..7 are fine, but only three may wait
    short = craft(star, src="b1", to="b2", resource="early", seq=2, ttl_s=2, items=[b"2"])
    later = [craft(star, src="b1", to="b2", resource="early", seq=s, items=[b"%d" % s])
             for s in range(3, 8)]
    for p in (short, *later):
        publish_package(star, t.inbox("b2"), p.wire)
    wait_until(lambda: star.status("b2")["counters"].get("waiting_full", 0) >= 3, 20, 0.2,
               "the waiting room full")
    assert db_rows(star, "b2", "SELECT seq FROM inbox WHERE status='waiting' ORDER BY seq") \
        == [(2,), (3,), (4,)]
    import time

    time.sleep(2.5)
    first = craft(star, src="b1", to="b2", resource="early", seq=1, items=[b"1"])
    publish_package(star, t.inbox("b2"), first.wire)

    def gone() -> list[tuple]:
        # refused as expired when its turn came, or dropped as expired by the periodic
        # sweep if that ran first: either way, never applied
        return db_rows(star, "b2", "SELECT event FROM exchange_log WHERE pkg_id=? AND "
                       "reason LIKE '%expired%'", (short.header.id,))

    wait_until(gone, 20, 0.2, "the expired early package dropped")
    wait_until(lambda: star.status("b2")["counters"].get("applied", 0) >= 3, 20, 0.2,
               "1, 3 and 4 applied")
    got = db_rows(star, "b2", "SELECT payload FROM received WHERE resource='early' "
                  "ORDER BY seq")
    assert [bytes(r[0]) for r in got] == [b"1", b"3", b"4"], got  # 2 refused, 5-7 not kept
