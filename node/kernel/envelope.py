"""Packages: a versioned header, a compressed and sealed payload, and a signature.

Wire form: ``EXN\\x01`` followed by the CBOR array ``[header, sealed, signature]``,
where ``header`` is the canonical CBOR encoding of the header map (so the signature
is stable) and the signature covers the header and the SHA-256 of ``sealed``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import cbor2
import zstandard
from uuid6 import uuid7

from exnode.node.base.errors import PackageError

MAGIC = b"EXN\x01"
VERSION = 1
CODEC = "zstd"

_tls = threading.local()


def _zc() -> zstandard.ZstdCompressor:
    c = getattr(_tls, "zc", None)
    if c is None:
        c = _tls.zc = zstandard.ZstdCompressor(level=3, write_content_size=True)
    return c


@dataclass
class Header:
    """What anyone on the path may read: who, to whom, what, and the payload's hash."""

    id: str
    kind: str
    src: str
    rcpt: list[str]
    res: str
    seq: int
    created: int  # ms since the epoch
    expires: int  # ms since the epoch
    phash: bytes  # SHA-256 of the plaintext payload
    size: int  # plaintext length
    codec: str = CODEC
    suite: str = ""
    v: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return cbor2.dumps({"v": self.v, "id": self.id, "kind": self.kind, "src": self.src,
                            "rcpt": list(self.rcpt), "res": self.res, "seq": self.seq,
                            "created": self.created, "expires": self.expires,
                            "phash": self.phash, "size": self.size, "codec": self.codec,
                            "suite": self.suite, "x": self.extra}, canonical=True)

    @classmethod
    def decode(cls, raw: bytes) -> Header:
        try:
            d = cbor2.loads(raw)
            h = cls(id=str(d["id"]), kind=str(d["kind"]), src=str(d["src"]),
                    rcpt=[str(r) for r in d["rcpt"]], res=str(d["res"]), seq=int(d["seq"]),
                    created=int(d["created"]), expires=int(d["expires"]),
                    phash=_b(d["phash"]), size=int(d["size"]), codec=str(d["codec"]),
                    suite=str(d["suite"]), v=int(d["v"]), extra=dict(d.get("x") or {}))
        except Exception:
            raise PackageError("malformed", "header is not a valid exnode header") from None
        if h.v != VERSION:
            raise PackageError("unsupported-version", f"header version {h.v}")
        if not h.rcpt:
            raise PackageError("malformed", "header names no recipient")
        return h


def _b(v: object) -> bytes:
    # bytes(n) of an int would make n zero bytes: untrusted values must already be bytes
    if not isinstance(v, bytes):
        raise ValueError("expected a byte string")
    return v


@dataclass
class Package:
    """A parsed package. ``wire`` is exactly the bytes that were signed and sent."""

    header: Header
    header_raw: bytes
    sealed: bytes
    sig: bytes
    wire: bytes

    @property
    def aad(self) -> bytes:
        return hashlib.sha256(self.header_raw).digest()

    @property
    def signed_bytes(self) -> bytes:
        return signed_bytes(self.header_raw, self.sealed)


def signed_bytes(header_raw: bytes, sealed: bytes) -> bytes:
    """What the signature covers: the header and the SHA-256 of the sealed payload.

    Signing the digest rather than the payload itself keeps signing and verification
    cheap for large packages (Ed25519 would hash a megabyte twice to sign it)."""
    return b"exnode-package-v1\0" + header_raw + hashlib.sha256(sealed).digest()


def now_ms() -> int:
    return int(time.time() * 1000)


def build(*, suite: Any, sign_key: Any, src: str, kind: str, rcpt: dict[str, Any],
          resource: str, seq: int, payload: bytes, ttl_s: int,
          extra: dict[str, Any] | None = None, pkg_id: str | None = None) -> Package:
    """Compress, seal to every recipient, and sign a payload."""
    created = now_ms()
    header = Header(id=pkg_id or str(uuid7()), kind=kind, src=src, rcpt=sorted(rcpt),
                    res=resource, seq=seq, created=created, expires=created + ttl_s * 1000,
                    phash=hashlib.sha256(payload).digest(), size=len(payload),
                    suite=suite.id, extra=extra or {})
    raw = header.encode()
    aad = hashlib.sha256(raw).digest()
    sealed = suite.seal(_zc().compress(payload), rcpt, aad)
    sig = suite.sign(sign_key, signed_bytes(raw, sealed))
    wire = MAGIC + cbor2.dumps([raw, sealed, sig])
    return Package(header, raw, sealed, sig, wire)


def parse(wire: bytes, max_bytes: int) -> Package:
    """Read a package's structure. Nothing is trusted until ``verify`` has run."""
    if len(wire) > max_bytes:
        raise PackageError("oversize", f"{len(wire)} bytes > limit {max_bytes}")
    if not wire.startswith(MAGIC):
        raise PackageError("malformed", "not an exnode package")
    try:
        raw, sealed, sig = cbor2.loads(wire[len(MAGIC):])
        if not all(isinstance(x, bytes) for x in (raw, sealed, sig)):
            raise ValueError
    except Exception:
        raise PackageError("malformed", "package body is not [header, sealed, signature]") \
            from None
    return Package(Header.decode(raw), raw, sealed, sig, wire)


def verify(pkg: Package, suites: dict[str, Any], sign_pub: Any) -> None:
    """Check the sender's signature and the expiry."""
    suite = suites.get(pkg.header.suite)
    if suite is None:
        raise PackageError("unknown-suite", pkg.header.suite)
    suite.verify(sign_pub, pkg.sig, pkg.signed_bytes)
    if pkg.header.expires < now_ms():
        raise PackageError("expired", f"expired {(now_ms() - pkg.header.expires) // 1000} s ago")


def open_payload(pkg: Package, suites: dict[str, Any], my_id: str, enc_key: Any,
                 max_bytes: int) -> bytes:
    """Decrypt, decompress and check the payload against the signed hash."""
    h = pkg.header
    if my_id not in h.rcpt:
        raise PackageError("misaddressed", f"addressed to {','.join(h.rcpt)}")
    if h.codec != CODEC:
        raise PackageError("unknown-codec", h.codec)
    if h.size > max_bytes:
        raise PackageError("oversize", f"payload of {h.size} bytes > limit {max_bytes}")
    compressed = suites[h.suite].open(pkg.sealed, my_id, enc_key, pkg.aad)
    try:
        # zstd trusts the size a frame declares over max_output_size: check it first, so a
        # small frame cannot make us allocate more than the signed header allows.
        declared = zstandard.get_frame_parameters(compressed).content_size
        if declared not in (h.size, zstandard.CONTENTSIZE_UNKNOWN):
            raise PackageError("hash-mismatch", "payload size does not match the header")
        payload = zstandard.ZstdDecompressor().decompress(compressed, max_output_size=h.size)
    except zstandard.ZstdError:
        raise PackageError("malformed", "payload does not decompress") from None
    if len(payload) != h.size or hashlib.sha256(payload).digest() != h.phash:
        raise PackageError("hash-mismatch", "payload does not match the signed hash")
    return payload
