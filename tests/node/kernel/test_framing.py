"""Transport frames: whole packages or chunks, and a bounded reassembler that keeps
nothing of a chunk before its claim is authenticated and refuses anything inconsistent
with a PackageError."""

from __future__ import annotations

import hashlib
import random

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from exnode.node.base.errors import PackageError
from exnode.node.kernel.envelope import MAGIC
from exnode.node.kernel.framing import CHUNK, ENTRY_OVERHEAD, WHOLE, Reassembler, claim_bytes
from exnode.node.kernel.framing import frames as _frames

PKG_ID = "0195f3c1-7d2e-7c4b-8a8e-0123456789ab"  # a uuid7, like every package id
KEYS = {"alice": ed25519.Ed25519PrivateKey.generate(),
        "mallory": ed25519.Ed25519PrivateKey.generate()}
MEMBERS = {"alice"}  # mallory has a key, but is not a member


def rand(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def pid(n: int) -> str:
    """The n-th package id (the reassembler takes only uuid-shaped ids)."""
    return f"0195f3c1-7d2e-7c4b-8a8e-{n:012x}"


def signer(node: str = "alice"):  # type: ignore[no-untyped-def]
    return lambda message: (node, KEYS[node].sign(message))


def authenticate(by: str, sig: bytes, message: bytes) -> None:
    """What a node does: the claim must be signed by an approved member."""
    if by not in MEMBERS:
        raise PackageError("unknown-sender", by)
    try:
        KEYS[by].public_key().verify(sig, message)
    except InvalidSignature:
        raise PackageError("bad-signature", "chunk claim") from None


def frames(pkg_id: str, wire: bytes, max_message: int, node: str = "alice") -> list[bytes]:
    return list(_frames(pkg_id, wire, max_message, signer(node)))


def Reassembler_(max_bytes: int, **kw) -> Reassembler:
    return Reassembler(max_bytes, authenticate, **kw)


def chunk(pkg_id: str, idx, count, digest, data, node: str = "alice") -> bytes:
    """A chunk whose claim ``node`` signed (when the fields let it be signed)."""
    try:
        sig = KEYS[node].sign(claim_bytes(pkg_id, count, digest))
    except Exception:
        sig = b"\0" * 64
    return CHUNK + cbor2.dumps([pkg_id, idx, count, digest, data, node, sig])


def feed_all(r: Reassembler, fs: list[bytes]) -> list[bytes | None]:
    return [r.feed(f) for f in fs]


def refused(r: Reassembler, frame: bytes) -> PackageError:
    with pytest.raises(PackageError) as ei:
        r.feed(frame)
    return ei.value


# --- frames() ---------------------------------------------------------------------------

def test_small_package_is_one_whole_frame():
    wire = rand(1000)
    assert (frames(PKG_ID, wire, 4096)) == [WHOLE + wire]


def test_whole_frame_boundary():
    wire = rand(4096)  # a whole package may fill the message exactly: it has no prefix
    assert (frames(PKG_ID, wire, 4096)) == [WHOLE + wire]
    fs = (frames(PKG_ID, rand(4097), 4096))
    assert len(fs) == 2
    assert all(f.startswith(CHUNK) and len(f) <= 4096 for f in fs)


@pytest.mark.parametrize("size,max_message", [
    (10_000, 4096), (1_000_000, 4096), (3_000_000, 1_900_000), (5 << 20, 65536),
    (1_900_001, 1_900_000),
])
def test_frames_split_large_packages_within_the_limit(size, max_message):
    wire = rand(size, seed=size)
    fs = (frames(PKG_ID, wire, max_message))
    assert len(fs) > 1
    assert all(f.startswith(CHUNK) for f in fs)
    assert max(len(f) for f in fs) <= max_message
    parts = [cbor2.loads(f[1:]) for f in fs]
    assert [p[1] for p in parts] == list(range(len(fs)))
    assert {p[2] for p in parts} == {len(fs)}
    assert {p[0] for p in parts} == {PKG_ID}
    assert {bytes(p[3]) for p in parts} == {hashlib.sha256(wire).digest()}
    assert b"".join(p[4] for p in parts) == wire
    assert {p[5] for p in parts} == {"alice"} and len({p[6] for p in parts}) == 1


# --- reassembly ------------------------------------------------------------------------------

def test_whole_frame_passes_through():
    r = Reassembler_(1 << 20)
    wire = MAGIC + rand(100)  # a whole package is its own frame: it starts with the magic
    assert r.feed(WHOLE + wire) == wire


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_out_of_order_chunks_reassemble(seed):
    wire = rand(200_000, seed=seed)
    fs = (frames(PKG_ID, wire, 4096))
    random.Random(seed).shuffle(fs)
    r = Reassembler_(1 << 20)
    out = feed_all(r, fs)
    assert out[:-1] == [None] * (len(fs) - 1)
    assert out[-1] == wire


def test_interleaved_packages_reassemble():
    a, b = rand(50_000, seed=10), rand(70_000, seed=11)
    fa = (frames(pid(0xA), a, 4096))
    fb = (frames(pid(0xB), b, 4096))
    mixed = [f for pair in zip(fa, fb, strict=False) for f in pair] + fb[len(fa):]
    r = Reassembler_(1 << 20)
    done = [w for w in feed_all(r, mixed) if w is not None]
    assert done == [a, b]


def test_duplicate_chunks_are_ignored():
    wire = rand(30_000, seed=5)
    fs = (frames(PKG_ID, wire, 4096))
    # every chunk but the last arrives twice (MQTT QoS 1 redelivers); the pending
    # budget is exactly one copy (and the entry), so counting a duplicate would overflow
    r = Reassembler_(len(wire), max_pending_bytes=len(wire) + ENTRY_OVERHEAD)
    seq = [f for f in fs[:-1] for _ in range(2)] + [fs[-1]]
    out = feed_all(r, seq)
    assert out[:-1] == [None] * (len(seq) - 1)
    assert out[-1] == wire


def test_pending_budget_is_released_after_completion():
    wire = rand(30_000, seed=6)
    r = Reassembler_(len(wire), max_pending_bytes=len(wire) + ENTRY_OVERHEAD)
    for n in range(3):
        fs = (frames(pid(n), wire, 4096))
        assert feed_all(r, fs)[-1] == wire


def test_corrupted_chunk_is_hash_mismatch():
    wire = rand(20_000, seed=7)
    fs = (frames(PKG_ID, wire, 4096))
    p, idx, count, digest, data, _by, _sig = cbor2.loads(fs[2][1:])
    data = bytearray(data)
    data[100] ^= 0x01
    fs[2] = chunk(p, idx, count, digest, bytes(data))
    r = Reassembler_(1 << 20)
    for f in fs[:-1]:
        assert r.feed(f) is None
    assert refused(r, fs[-1]).reason == "hash-mismatch"


def test_lost_and_replaced_chunk_data_of_other_length_is_hash_mismatch():
    wire = rand(20_000, seed=8)
    fs = (frames(PKG_ID, wire, 4096))
    p, idx, count, digest, data, _by, _sig = cbor2.loads(fs[0][1:])
    fs[0] = chunk(p, idx, count, digest, data[:-1])
    r = Reassembler_(1 << 20)
    with pytest.raises(PackageError) as ei:
        feed_all(r, fs)
    assert ei.value.reason == "hash-mismatch"


def test_chunks_that_disagree_on_count_or_hash_are_refused():
    wire = rand(20_000, seed=9)
    fs = (frames(PKG_ID, wire, 4096))
    p, _idx, count, digest, data, _by, _sig = cbor2.loads(fs[1][1:])
    r = Reassembler_(1 << 20)
    assert r.feed(fs[0]) is None
    assert refused(r, chunk(p, 1, count + 1, digest, data)).reason == "malformed"
    r = Reassembler_(1 << 20)
    assert r.feed(fs[0]) is None
    other = hashlib.sha256(b"another package").digest()
    assert refused(r, chunk(p, 1, count, other, data)).reason == "malformed"


def test_after_a_disagreement_the_package_starts_over():
    wire = rand(20_000, seed=12)
    fs = (frames(PKG_ID, wire, 4096))
    p, _idx, count, digest, data, _by, _sig = cbor2.loads(fs[1][1:])
    r = Reassembler_(1 << 20)
    r.feed(fs[0])
    with pytest.raises(PackageError):
        r.feed(chunk(p, 1, count + 1, digest, data))
    assert feed_all(r, fs)[-1] == wire


def test_reassembled_package_over_the_limit_is_oversize():
    limit = 10_000
    wire = rand(limit + 1, seed=13)
    fs = (frames(PKG_ID, wire, 4096))
    r = Reassembler_(limit)
    with pytest.raises(PackageError) as ei:
        feed_all(r, fs)
    assert ei.value.reason == "oversize"
    # exactly at the limit is fine
    fs = (frames(PKG_ID, wire[:limit], 4096))
    assert feed_all(Reassembler_(limit), fs)[-1] == wire[:limit]


def test_a_full_budget_evicts_the_oldest_incomplete_package():
    r = Reassembler_(20_000, max_pending_bytes=30_000)
    # many packages, each only partly sent, fill the budget: the newest stay, the oldest
    # go, and what is held never exceeds the budget
    firsts = []
    for n in range(20):
        fs = frames(pid(n), rand(20_000, seed=n), 4096)
        firsts.append(fs)
        assert r.feed(fs[0]) is None
        assert r.held <= 30_000
    assert r.evicted > 0
    # the newest one still completes
    assert feed_all(r, firsts[-1][1:])[-1] == rand(20_000, seed=19)


def test_at_most_so_many_packages_are_pending():
    r = Reassembler_(1 << 20, max_pending_packages=4)
    for n in range(10):
        assert r.feed(frames(pid(n), rand(10_000, seed=n), 4096)[0]) is None
    assert len(r._pending) <= 4 + 1 and r.evicted >= 5


def test_nothing_is_kept_before_the_claim_is_authenticated():
    r = Reassembler_(1 << 20)
    wire = rand(50_000, seed=3)
    for f in frames(PKG_ID, wire, 4096, node="mallory"):  # not a member
        assert refused(r, f).reason == "unknown-sender"
    assert r.held == 0
    # a member's claim with another's signature is refused too, and keeps nothing
    fs = frames(PKG_ID, wire, 4096)
    p, idx, count, digest, data, _by, _sig = cbor2.loads(fs[0][1:])
    forged = CHUNK + cbor2.dumps([p, idx, count, digest, data, "alice",
                                  KEYS["mallory"].sign(claim_bytes(p, count, digest))])
    assert refused(r, forged).reason == "bad-signature"
    assert r.held == 0
    # a forged chunk does not spoil a real package being reassembled
    assert r.feed(fs[0]) is None
    assert refused(r, forged).reason == "bad-signature"
    assert feed_all(r, fs[1:])[-1] == wire


def test_expiry_drops_the_oldest_first():
    r = Reassembler_(1 << 20, timeout_s=0.0)
    assert r.feed(frames(pid(1), rand(10_000), 4096)[0]) is None
    assert r.feed(frames(pid(2), rand(10_000, seed=2), 4096)[0]) is None
    assert list(r._pending) == [pid(2)] and r.held < 10_000


def test_more_chunks_than_the_size_limit_allows_is_refused():
    r = Reassembler_(10 * 1024)
    d = hashlib.sha256(b"x").digest()
    assert refused(r, chunk(PKG_ID, 0, 1000, d, b"x")).reason == "malformed"


D = hashlib.sha256(b"x").digest()
GARBAGE = {
    "empty": b"",
    "unknown type": b"Z" + cbor2.dumps([PKG_ID, 0, 2, D, b"x", "alice", b"s"]),
    "chunk without body": CHUNK,
    "chunk not cbor": CHUNK + b"\xff\xfe",
    "chunk a map": CHUNK + cbor2.dumps({"id": PKG_ID}),
    "chunk too short": CHUNK + cbor2.dumps([PKG_ID, 0, 2, D, b"x", "alice"]),
    "chunk too long": CHUNK + cbor2.dumps([PKG_ID, 0, 2, D, b"x", "alice", b"s", b"y"]),
    "id not a uuid": chunk("x" * 1_500_000, 0, 2, D, b"x"),
    "sender not a node id": CHUNK + cbor2.dumps([PKG_ID, 0, 2, D, b"x", "A" * 100, b"s"]),
    "signature huge": CHUNK + cbor2.dumps([PKG_ID, 0, 2, D, b"x", "alice", b"s" * 1000]),
    "index negative": chunk(PKG_ID, -1, 2, D, b"x"),
    "index = count": chunk(PKG_ID, 2, 2, D, b"x"),
    "count zero": chunk(PKG_ID, 0, 0, D, b"x"),
    "count huge": chunk(PKG_ID, 0, 1 << 40, D, b"x"),
    "index not a number": chunk(PKG_ID, "first", 2, D, b"x"),
    "data text": chunk(PKG_ID, 0, 2, D, "text"),
    # bytes(n) of an integer is n zero bytes: a few wire bytes would become megabytes
    "data an integer": chunk(PKG_ID, 0, 2, D, 1 << 20),
    "digest an integer": chunk(PKG_ID, 0, 2, 1 << 20, b"x"),
}


@pytest.mark.parametrize("frame", list(GARBAGE.values()), ids=list(GARBAGE))
def test_garbage_frames_are_refused(frame):
    r = Reassembler_(1 << 20)
    assert refused(r, frame).reason == "malformed"


def test_a_copy_the_relay_would_drop_is_not_put_together_again() -> None:
    """The center's relay of a large package is still going out when the sender's retry
    comes in: its chunks are authenticated and let go, nothing is held (issue 8, the
    flood bound); once the relay no longer holds the id, a copy is taken in again."""
    wire = MAGIC + rand(50_000)
    holding = {PKG_ID}
    r = Reassembler_(1 << 20, skip=lambda p: p in holding)
    fs = frames(PKG_ID, wire, 4096)
    assert all(r.feed(f) is None for f in fs)
    assert r.held == 0 and r.skipped == len(fs)
    holding.clear()
    assert [r.feed(f) for f in fs][-1] == wire
    # a forged claim is refused before the skip is asked
    bad = chunk(PKG_ID, 0, 2, hashlib.sha256(b"x").digest(), b"x", node="mallory")
    holding.add(PKG_ID)
    with pytest.raises(PackageError):
        r.feed(bad)


def test_the_relay_holds_a_package_while_it_goes_out_and_for_the_gap_after() -> None:
    import time

    from exnode.node.kernel.relay import Relay

    relay = Relay("center", None, None, lambda conn, rows: None, {}, {})  # type: ignore[arg-type]
    relay._recent[PKG_ID] = (time.monotonic() + 1.0, 1.0, time.monotonic() + 60)
    relay._sending[PKG_ID] = 2
    assert relay.holds(PKG_ID)
    relay.sent([PKG_ID])
    assert relay.holds(PKG_ID) and relay._sending[PKG_ID] == 1
    relay.MIN_GAP_S = 0.0
    relay._recent[PKG_ID] = (0.0, 0.0, time.monotonic() + 60)
    relay.sent([PKG_ID])
    assert not relay.holds(PKG_ID)  # out, and its gap (0 s here) over
    assert not relay.holds(pid(7))
