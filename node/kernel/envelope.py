"""Packages: a versioned header, a compressed and sealed payload, and a signature.

Wire form: ``EXN\\x01`` followed by the CBOR array ``[header, sealed, signature]``,
where ``header`` is the canonical CBOR encoding of the header map (so the signature
is stable) and the signature covers the header and the SHA-256 of ``sealed``.

The clear header says who, to whom, what kind, which resource and when, and nothing
about the content: the payload's length and SHA-256 travel inside the sealed part
(``[size, sha256, zstd frame]``), where only a recipient sees them. Every header field
is checked on decode (types, patterns, bounds; no CBOR tags), so nothing unbounded or
unexpected reaches a log or a table, even from a package that fails authentication.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import cbor2
import zstandard
from uuid6 import uuid7

from exnode.node.base.errors import PackageError

MAGIC = b"EXN\x01"
VERSION = 2
CODEC = "zstd"

NODE_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
KIND = re.compile(r"[a-z][a-z0-9-]{0,31}")
SUITE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,79}")
MAX_RECIPIENTS = 1024
MAX_RESOURCE = 128
MAX_SEQ = (1 << 63) - 1
MAX_MS = 1 << 47  # milliseconds: about the year 6429
HEADER_KEYS = {"v", "id", "kind", "src", "rcpt", "res", "seq", "created", "expires",
               "codec", "suite", "x"}

_tls = threading.local()


def _zc() -> zstandard.ZstdCompressor:
    c = getattr(_tls, "zc", None)
    if c is None:
        c = _tls.zc = zstandard.ZstdCompressor(level=3, write_content_size=True)
    return c


@dataclass
class Header:
    """What anyone on the path may read: who, to whom, what kind, which resource, when."""

    id: str
    kind: str
    src: str
    rcpt: list[str]
    res: str
    seq: int
    created: int  # ms since the epoch
    expires: int  # ms since the epoch
    codec: str = CODEC
    suite: str = ""
    v: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return cbor2.dumps({"v": self.v, "id": self.id, "kind": self.kind, "src": self.src,
                            "rcpt": list(self.rcpt), "res": self.res, "seq": self.seq,
                            "created": self.created, "expires": self.expires,
                            "codec": self.codec, "suite": self.suite, "x": self.extra},
                           canonical=True)

    @classmethod
    def decode(cls, raw: bytes) -> Header:
        try:
            d = cbor2.loads(raw, tag_hook=_no_tags)
        except Exception:
            raise PackageError("malformed", "header is not a valid exnode header") from None
        if not isinstance(d, dict) or not set(d) <= HEADER_KEYS:
            raise PackageError("malformed", "header is not a valid exnode header")
        if d.get("v") != VERSION:
            v = d.get("v")
            raise PackageError("unsupported-version", f"header version "
                               f"{v if isinstance(v, int) and 0 <= v < 1000 else '?'}")
        rcpt = d.get("rcpt")
        if not isinstance(rcpt, list) or not 0 < len(rcpt) <= MAX_RECIPIENTS:
            raise PackageError("malformed", "header names no recipient, or too many")
        h = cls(id=_uuid(d.get("id")), kind=_match(KIND, d.get("kind"), "kind"),
                src=_match(NODE_ID, d.get("src"), "src"),
                rcpt=[_match(NODE_ID, r, "recipient") for r in rcpt],
                res=_text(d.get("res"), MAX_RESOURCE, "resource"),
                seq=_int(d.get("seq"), MAX_SEQ, "seq"),
                created=_int(d.get("created"), MAX_MS, "created"),
                expires=_int(d.get("expires"), MAX_MS, "expires"),
                codec=_text(d.get("codec"), 16, "codec"),
                suite=_match(SUITE_ID, d.get("suite"), "suite"), v=VERSION,
                extra=_extra(d.get("x", {})))
        if len(set(h.rcpt)) != len(h.rcpt):
            raise PackageError("malformed", "header names a recipient twice")
        return h


def _no_tags(_decoder: Any, _tag: Any) -> Any:
    raise ValueError("CBOR tags are not allowed in a header")


def _bad(what: str) -> PackageError:
    return PackageError("malformed", f"header field {what} is not valid")


def _match(pattern: re.Pattern[str], v: object, what: str) -> str:
    if not isinstance(v, str) or not pattern.fullmatch(v):
        raise _bad(what)
    return v


def _text(v: object, limit: int, what: str) -> str:
    if not isinstance(v, str) or len(v) > limit or not v.isprintable():
        raise _bad(what)
    return v


def _int(v: object, limit: int, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= limit:
        raise _bad(what)
    return v


def _uuid(v: object) -> str:
    try:
        if isinstance(v, str) and len(v) == 36 and str(uuid.UUID(v)) == v:
            return v
    except ValueError:
        pass
    raise _bad("id")


def _extra(v: object) -> dict[str, Any]:
    """Small flags a kind may carry in the clear (``initial``): short keys, scalars."""
    if not isinstance(v, dict) or len(v) > 8 or not all(
            isinstance(k, str) and len(k) <= 32 and (v[k] is None or isinstance(
                v[k], bool | int | str)) and not (isinstance(v[k], str) and len(v[k]) > 64)
            for k in v):
        raise _bad("x")
    return dict(v)


@dataclass
class Package:
    """A parsed package. ``wire`` is exactly the bytes that were signed and sent."""

    header: Header
    header_raw: bytes
    sealed: bytes | memoryview
    sig: bytes
    wire: bytes | bytearray

    @property
    def aad(self) -> bytes:
        return hashlib.sha256(self.header_raw).digest()

    @property
    def signed_bytes(self) -> bytes:
        return signed_bytes(self.header_raw, self.sealed)


def signed_bytes(header_raw: bytes, sealed: bytes | memoryview) -> bytes:
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
                    suite=suite.id, extra=extra or {})
    raw = header.encode()
    aad = hashlib.sha256(raw).digest()
    inner = cbor2.dumps([len(payload), hashlib.sha256(payload).digest(),
                         _zc().compress(payload)])
    sealed = suite.seal(inner, rcpt, aad)
    sig = suite.sign(sign_key, signed_bytes(raw, sealed))
    wire = MAGIC + cbor2.dumps([raw, sealed, sig])
    return Package(header, raw, sealed, sig, wire)


def parse(wire: bytes, max_bytes: int) -> Package:
    """Read a package's structure. Nothing is trusted until ``verify`` has run.

    The sealed payload stays a view into ``wire``: a large package is not copied to be
    checked, relayed or opened."""
    if len(wire) > max_bytes:
        raise PackageError("oversize", f"{len(wire)} bytes > limit {max_bytes}")
    if not wire.startswith(MAGIC):
        raise PackageError("malformed", "not an exnode package")
    view = memoryview(wire)
    try:
        raw, sealed, sig = _three_byte_strings(view, len(MAGIC))
    except ValueError:
        raise PackageError("malformed", "package body is not [header, sealed, signature]") \
            from None
    return Package(Header.decode(bytes(raw)), bytes(raw), sealed, bytes(sig), wire)


def _three_byte_strings(view: memoryview, at: int) -> list[memoryview]:
    """The items of a CBOR array of exactly three definite-length byte strings that
    fills ``view`` from ``at``, as views (what ``encode`` writes, and nothing else)."""
    if len(view) <= at or view[at] != 0x83:
        raise ValueError("not an array of 3")
    at += 1
    out = []
    for _ in range(3):
        if at >= len(view):
            raise ValueError("short")
        b = view[at]
        major, info = b >> 5, b & 0x1F
        at += 1
        if major != 2 or info > 27:  # byte string, definite length
            raise ValueError("not a byte string")
        if info < 24:
            n = info
        else:
            width = 1 << (info - 24)
            if at + width > len(view):
                raise ValueError("short")
            n = int.from_bytes(view[at:at + width], "big")
            at += width
        if at + n > len(view):
            raise ValueError("short")
        out.append(view[at:at + n])
        at += n
    if at != len(view):
        raise ValueError("trailing bytes")
    return out


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
    """Decrypt, decompress and check the payload against its sealed size and hash."""
    h = pkg.header
    if my_id not in h.rcpt:
        raise PackageError("misaddressed", f"addressed to {','.join(h.rcpt)}")
    if h.codec != CODEC:
        raise PackageError("unknown-codec", h.codec)
    inner = suites[h.suite].open(pkg.sealed, my_id, enc_key, pkg.aad)
    try:
        size, phash, compressed = cbor2.loads(inner, tag_hook=_no_tags)
        if not (isinstance(size, int) and not isinstance(size, bool) and size >= 0
                and isinstance(phash, bytes) and len(phash) == 32
                and isinstance(compressed, bytes)):
            raise ValueError
    except Exception:
        raise PackageError("malformed", "sealed payload is not [size, sha256, data]") \
            from None
    if size > max_bytes:
        raise PackageError("oversize", f"payload of {size} bytes > limit {max_bytes}")
    try:
        # zstd trusts the size a frame declares over max_output_size: check it first, so a
        # small frame cannot make us allocate more than the sealed size allows.
        declared = zstandard.get_frame_parameters(compressed).content_size
        if declared not in (size, zstandard.CONTENTSIZE_UNKNOWN):
            raise PackageError("hash-mismatch", "payload size does not match its record")
        payload = zstandard.ZstdDecompressor().decompress(compressed, max_output_size=size)
    except zstandard.ZstdError:
        raise PackageError("malformed", "payload does not decompress") from None
    if len(payload) != size or hashlib.sha256(payload).digest() != phash:
        raise PackageError("hash-mismatch", "payload does not match its sealed hash")
    return payload
