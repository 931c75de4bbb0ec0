"""Packages with the default crypto suite: round trips, and every way a package can be
wrong is refused with a PackageError (never another exception)."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import tracemalloc
from dataclasses import dataclass

import cbor2
import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exnode.node.base.errors import PackageError
from exnode.node.kernel import envelope as env
from exnode.plugins.builtin.crypto import DefaultSuite

SUITE = DefaultSuite()
SUITES = {SUITE.id: SUITE}
LIMIT = 16 << 20


@dataclass(frozen=True)
class Node:
    id: str
    sign: ed25519.Ed25519PrivateKey
    enc: x25519.X25519PrivateKey


def node(node_id: str) -> Node:
    return Node(node_id, ed25519.Ed25519PrivateKey.generate(),
                x25519.X25519PrivateKey.generate())


ALICE, BOB, CAROL, DAVE, MALLORY = (node(n) for n in ("alice", "bob", "carol", "dave",
                                                      "mallory"))


def rand(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def make(payload: bytes, src: Node = ALICE, to: tuple[Node, ...] = (BOB,), ttl_s: int = 3600,
         **kw) -> env.Package:
    return env.build(suite=SUITE, sign_key=src.sign, src=src.id, kind="data",
                     rcpt={n.id: n.enc.public_key() for n in to}, resource="res.a", seq=7,
                     payload=payload, ttl_s=ttl_s, **kw)


def receive(wire: bytes, sender: Node = ALICE, me: Node = BOB, limit: int = LIMIT) -> bytes:
    """What a node does with a package: parse, check the signature, open."""
    pkg = env.parse(wire, limit)
    env.verify(pkg, SUITES, sender.sign.public_key())
    return env.open_payload(pkg, SUITES, me.id, me.enc, limit)


def refused(wire: bytes, **kw) -> PackageError:
    with pytest.raises(PackageError) as ei:
        receive(wire, **kw)
    return ei.value


def header(**kw) -> env.Header:
    now = env.now_ms()
    h = env.Header(id="0195f3c1-7d2e-7c4b-8a8e-0123456789ab", kind="data", src=ALICE.id,
                   rcpt=[BOB.id], res="res.a", seq=1, created=now, expires=now + 60_000,
                   suite=SUITE.id)
    return dataclasses.replace(h, **kw)


def forge(h: env.Header, compressed: bytes, signer: Node = ALICE,
          to: tuple[Node, ...] = (BOB,), size: int = 0, phash: bytes = b"\0" * 32) -> bytes:
    """A package put together by hand and signed by ``signer``: what a member that
    does not follow the rules can send. ``size`` and ``phash`` are what the sealed part
    claims about the payload."""
    raw = h.encode()
    aad = hashlib.sha256(raw).digest()
    inner = cbor2.dumps([size, phash, compressed])
    sealed = SUITE.seal(inner, {n.id: n.enc.public_key() for n in to}, aad)
    return assemble(raw, sealed, signer)


def claims(data: bytes, size: int | None = None) -> dict[str, object]:
    """What the sealed part says of ``data``: its length (or ``size``) and SHA-256."""
    return {"size": len(data) if size is None else size,
            "phash": hashlib.sha256(data).digest()}


def assemble(raw: bytes, sealed: bytes, signer: Node) -> bytes:
    """Wire bytes for a header and sealed payload, signed by ``signer`` over exactly
    what the format signs."""
    unsigned = env.Package(env.Header.decode(raw), raw, sealed, b"", b"")
    sig = SUITE.sign(signer.sign, unsigned.signed_bytes)
    return env.MAGIC + cbor2.dumps([raw, sealed, sig])


def zstd(data: bytes, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=content_size).compress(data)


# --- round trips ------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1024, 3 << 20], ids=["0B", "1KiB", "3MiB"])
def test_round_trip(size):
    payload = rand(size)
    pkg = make(payload, ttl_s=600, extra={"note": "x"})
    assert pkg.wire.startswith(env.MAGIC)
    got = env.parse(pkg.wire, LIMIT)
    h = got.header
    assert (h.src, h.rcpt, h.kind, h.res, h.seq) == ("alice", ["bob"], "data", "res.a", 7)
    # nothing in the clear header tells the payload's length or hash
    assert set(cbor2.loads(got.header_raw)) == env.HEADER_KEYS
    assert hashlib.sha256(payload).digest() not in pkg.wire
    assert h.expires - h.created == 600_000
    assert h.suite == SUITE.id
    assert h.codec == "zstd"
    assert h.extra == {"note": "x"}
    assert got.header_raw == pkg.header_raw and got.sealed == pkg.sealed
    env.verify(got, SUITES, ALICE.sign.public_key())
    assert env.open_payload(got, SUITES, "bob", BOB.enc, LIMIT) == payload
    if size:
        assert payload not in pkg.wire, "the payload must not travel in clear"


def test_package_id_is_kept_and_unique():
    assert make(b"x", pkg_id="0195f3c1-7d2e-7c4b-8a8e-0123456789ab").header.id \
        == "0195f3c1-7d2e-7c4b-8a8e-0123456789ab"
    assert make(b"x").header.id != make(b"x").header.id


def test_every_recipient_opens_it_and_nobody_else():
    payload = rand(5000, seed=2)
    pkg = make(payload, to=(DAVE, BOB, CAROL))
    assert pkg.header.rcpt == ["bob", "carol", "dave"]
    for me in (BOB, CAROL, DAVE):
        assert receive(pkg.wire, me=me) == payload
    assert refused(pkg.wire, me=MALLORY).reason == "misaddressed"
    # a recipient's id with another node's key does not open it
    p = env.parse(pkg.wire, LIMIT)
    with pytest.raises(PackageError) as ei:
        env.open_payload(p, SUITES, "bob", CAROL.enc, LIMIT)
    assert ei.value.reason == "decrypt-failed"


# --- tampering --------------------------------------------------------------------------

def regions(pkg: env.Package) -> dict[str, range]:
    w = pkg.wire
    out = {}
    for name, part in (("header", pkg.header_raw), ("sealed", pkg.sealed), ("sig", pkg.sig)):
        at = w.find(part)
        assert at > 0 and w.find(part, at + 1) == -1
        out[name] = range(at, at + len(part))
    return out


@pytest.mark.parametrize("size,to", [(200, (BOB,)), (1024, (BOB, CAROL))],
                         ids=["small", "1KiB-two-recipients"])
def test_any_flipped_bit_is_refused(size, to):
    pkg = make(rand(size, seed=size), to=to)
    where = regions(pkg)
    reasons = {"header": set(), "sealed": set(), "sig": set(), "framing": set()}
    for bit in range(len(pkg.wire) * 8):
        w = bytearray(pkg.wire)
        w[bit // 8] ^= 1 << (bit % 8)
        try:
            receive(bytes(w))
        except PackageError as e:
            part = next((k for k, r in where.items() if bit // 8 in r), "framing")
            reasons[part].add(e.reason)
        else:
            pytest.fail(f"package with bit {bit} flipped was accepted")
    assert reasons["sealed"] == {"bad-signature"}
    assert reasons["sig"] == {"bad-signature"}
    assert "bad-signature" in reasons["header"]
    assert reasons["header"] <= {"bad-signature", "malformed", "unknown-suite",
                                 "unsupported-version"}
    assert "malformed" in reasons["framing"]


def test_sealed_payload_is_authenticated_even_without_the_signature():
    # Defence in depth: the AEAD alone refuses a changed sealed payload.
    pkg = make(rand(64))
    for bit in range(0, len(pkg.sealed) * 8, 3):
        sealed = bytearray(pkg.sealed)
        sealed[bit // 8] ^= 1 << (bit % 8)
        bad = dataclasses.replace(pkg, sealed=bytes(sealed))
        with pytest.raises(PackageError):
            env.open_payload(bad, SUITES, "bob", BOB.enc, LIMIT)


def test_wrong_sender_key_is_bad_signature():
    pkg = make(b"hello")
    e = refused(pkg.wire, sender=MALLORY)
    assert e.reason == "bad-signature"


def test_expired_package():
    pkg = make(b"hello", ttl_s=-5)
    assert refused(pkg.wire).reason == "expired"


def test_misaddressed_package():
    pkg = make(b"hello", to=(CAROL,))
    assert refused(pkg.wire, me=BOB).reason == "misaddressed"


def test_rcpt_in_header_without_a_sealed_key_is_misaddressed():
    data = b"for carol only"
    h = header(rcpt=["bob", "carol"])
    wire = forge(h, zstd(data), to=(CAROL,), **claims(data))
    assert refused(wire, me=BOB).reason == "misaddressed"
    assert receive(wire, me=CAROL) == data


def test_oversize():
    payload = rand(4096)
    pkg = make(payload)
    assert receive(pkg.wire, limit=len(pkg.wire)) == payload
    with pytest.raises(PackageError) as ei:
        env.parse(pkg.wire, len(pkg.wire) - 1)
    assert ei.value.reason == "oversize"
    p = env.parse(pkg.wire, LIMIT)
    with pytest.raises(PackageError) as ei:
        env.open_payload(p, SUITES, "bob", BOB.enc, len(payload) - 1)
    assert ei.value.reason == "oversize"


def test_header_moved_onto_another_packages_payload():
    secret = b"the honest payload"
    honest = make(secret)
    other = make(b"another package of alice's")
    # Mallory puts the other package's header on the honest sealed payload, signs it
    # with her own key and leaves src=alice: alice's key does not verify it.
    wire = assemble(other.header_raw, honest.sealed, MALLORY)
    assert refused(wire).reason == "bad-signature"
    # Signed and named as herself, it verifies as Mallory's package, but the sealed
    # payload is bound to the honest header and does not open under hers.
    h = dataclasses.replace(env.Header.decode(honest.header_raw), src=MALLORY.id)
    wire = assemble(h.encode(), honest.sealed, MALLORY)
    assert refused(wire, sender=MALLORY).reason == "decrypt-failed"


def test_validly_signed_package_with_wrong_hash_is_hash_mismatch():
    data = b"what was really sent"
    h = header()
    wire = forge(h, zstd(data), **claims(b"what the sealed part claims", size=len(data)))
    assert refused(wire).reason == "hash-mismatch"


def test_validly_signed_package_with_wrong_size_is_refused():
    data = b"0123456789" * 10
    for size in (len(data) + 1, len(data) - 1):
        wire = forge(header(), zstd(data, content_size=False), **claims(data, size=size))
        assert refused(wire).reason in ("hash-mismatch", "malformed")


def test_payload_that_is_not_zstd_is_malformed():
    data = b"plain text"
    h = header()
    assert refused(forge(h, data, **claims(data))).reason == "malformed"


def test_unknown_suite_and_codec():
    data = b"abc"
    h = header(suite="rot13")
    with pytest.raises(PackageError) as ei:
        env.verify(env.parse(forge(h, zstd(data), **claims(data)), LIMIT), SUITES,
                   ALICE.sign.public_key())
    assert ei.value.reason == "unknown-suite"
    h = header(codec="gzip")
    assert refused(forge(h, zstd(data), **claims(data))).reason == "unknown-codec"


# --- decompression bombs --------------------------------------------------------------------

def test_bomb_without_content_size_is_bounded_by_header_size():
    # 32 MiB of zeros, compressed to a few KiB, in a package that says 16 bytes.
    bomb = zstd(b"\0" * (32 << 20), content_size=False)
    h = header()
    assert refused(forge(h, bomb, **claims(b"\0" * 16))).reason in ("malformed", "hash-mismatch")


def test_bomb_with_content_size_is_bounded_by_header_size():
    # The zstd frame declares its true size (32 MiB); the signed header says 16 bytes.
    bomb = zstd(b"\0" * (32 << 20))
    assert len(bomb) < 64 * 1024
    h = header()
    pkg = env.parse(forge(h, bomb, **claims(b"\0" * 16)), LIMIT)
    env.verify(pkg, SUITES, ALICE.sign.public_key())
    tracemalloc.start()
    try:
        with pytest.raises(PackageError):
            env.open_payload(pkg, SUITES, "bob", BOB.enc, LIMIT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"opening a 16-byte package allocated {peak} bytes"


def test_bomb_declaring_a_huge_content_size_is_a_package_error():
    # A frame whose header claims 1 PiB of content: the decoder must not believe it.
    small = zstd(b"abc" * 100)
    assert small[4] == 0x60  # single segment, 2-byte content size
    forged = small[:4] + b"\xe0" + (1 << 50).to_bytes(8, "little") + small[7:]
    assert zstandard.get_frame_parameters(forged).content_size == 1 << 50
    data = b"abc" * 100
    h = header()
    pkg = env.parse(forge(h, forged, **claims(data)), LIMIT)
    env.verify(pkg, SUITES, ALICE.sign.public_key())
    with pytest.raises(PackageError):
        env.open_payload(pkg, SUITES, "bob", BOB.enc, LIMIT)


# --- garbage ------------------------------------------------------------------------------

def _raw() -> bytes:
    return header().encode()


def _with(**fields: object) -> bytes:
    """A package whose header map has ``fields`` set as given (past the dataclass)."""
    d = {**cbor2.loads(_raw()), **fields}
    return env.MAGIC + cbor2.dumps([cbor2.dumps(d, canonical=True), b"s", b"g"])


GARBAGE = {
    "empty": b"",
    "magic only": env.MAGIC,
    "wrong magic": b"EXN\x02" + cbor2.dumps([b"", b"", b""]),
    "not cbor": env.MAGIC + b"\xff\xfe\xfd",
    "cbor map": env.MAGIC + cbor2.dumps({"a": 1}),
    "two items": env.MAGIC + cbor2.dumps([b"a", b"b"]),
    "four items": env.MAGIC + cbor2.dumps([b"a", b"b", b"c", b"d"]),
    "header not cbor": env.MAGIC + cbor2.dumps([b"\xff", b"", b""]),
    "header a list": env.MAGIC + cbor2.dumps([cbor2.dumps([1, 2]), b"", b""]),
    "header missing field": env.MAGIC + cbor2.dumps([cbor2.dumps({"v": 1, "id": "x"}),
                                                      b"", b""]),
    "header version 1": env.MAGIC + cbor2.dumps([header(v=1).encode(), b"", b""]),
    "header without recipient": env.MAGIC + cbor2.dumps([header(rcpt=[]).encode(), b"", b""]),
    "text instead of bytes": env.MAGIC + cbor2.dumps([_raw(), "sealed", "sig"]),
    # an integer where bytes belong: bytes(n) would make n zero bytes out of 5 wire bytes
    "integer instead of bytes": env.MAGIC + cbor2.dumps([_raw(), 1 << 20, 64]),
    # every header field is checked on decode: nothing unbounded reaches a log or a table
    "id not a uuid": _with(id="x" * 1_500_000),
    "src not a node id": _with(src="B1; DROP TABLE"),
    "src too long": _with(src="b" * 64),
    "recipient twice": _with(rcpt=["bob", "bob"]),
    "2000 recipients": _with(rcpt=[f"n{i}" for i in range(2000)]),
    "kind not a kind": _with(kind="Rows!"),
    "resource too long": _with(res="r" * 129),
    "resource with a newline": _with(res="people\nforged log line"),
    "seq beyond 63 bits": _with(seq=2 ** 70),
    "negative seq": _with(seq=-1),
    "seq a boolean": _with(seq=True),
    "expiry beyond the year 6000": _with(expires=2 ** 60),
    "suite not a suite id": _with(suite="x" * 500),
    "extra with a nested map": _with(x={"a": {"b": 1}}),
    "an unknown field": _with(phash=b"\0" * 32),
    "a CBOR tag in the header": env.MAGIC + cbor2.dumps([
        cbor2.dumps({**cbor2.loads(_raw()), "res": cbor2.CBORTag(4711, "people")}), b"", b""]),
}


@pytest.mark.parametrize("wire", list(GARBAGE.values()), ids=list(GARBAGE))
def test_garbage_is_refused_at_parse(wire):
    with pytest.raises(PackageError) as ei:
        env.parse(wire, LIMIT)
    assert ei.value.reason in ("malformed", "unsupported-version")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_fuzzed_wire_bytes_raise_only_package_errors(data):
    for wire in (data, env.MAGIC + data):
        try:
            env.parse(wire, LIMIT)
        except PackageError:
            pass


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=80) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*sorted(env.HEADER_KEYS), "phash", "zz"]), _VALUES,
                       max_size=14))
def test_fuzzed_headers_raise_only_package_errors(fields):
    d = {**cbor2.loads(_raw()), **fields}
    wire = env.MAGIC + cbor2.dumps([cbor2.dumps(d), b"sealed", b"sig"])
    try:
        h = env.parse(wire, LIMIT).header
    except PackageError:
        return
    # what decodes is bounded
    assert len(h.id) == 36 and len(h.src) <= 63 and len(h.res) <= env.MAX_RESOURCE
    assert 0 < len(h.rcpt) <= env.MAX_RECIPIENTS and 0 <= h.seq <= env.MAX_SEQ
