"""Transport frames: a whole package in one MQTT message, or chunks of one.

A whole package (its wire bytes, which begin with ``EXN\x01``), or ``C`` + CBOR
``[pkg_id, index, count, sha256, data]``.
Chunks are reassembled in memory within a size and time budget, and the whole is
checked against the hash before anyone reads it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import cbor2

from exnode.node.base.errors import PackageError
from exnode.node.kernel.envelope import MAGIC

# A whole package travels as its own wire bytes (they begin with the package magic
# ``EXN\x01``), so the common case copies nothing; a chunk begins with ``C``.
WHOLE = b""
CHUNK = b"C"
CHUNK_OVERHEAD = 128


def frames(pkg_id: str, wire: bytes, max_message: int) -> Iterator[bytes]:
    """Split a package into MQTT messages no larger than ``max_message`` bytes."""
    if len(wire) <= max_message:
        yield wire
        return
    step = max_message - CHUNK_OVERHEAD
    count = (len(wire) + step - 1) // step
    digest = hashlib.sha256(wire).digest()
    for i in range(count):
        yield CHUNK + cbor2.dumps([pkg_id, i, count, digest, wire[i * step:(i + 1) * step]])


class Reassembler:
    """Collects chunks until a package is whole; bounded in bytes and time."""

    def __init__(self, max_bytes: int, max_pending_bytes: int | None = None,
                 timeout_s: float = 600.0) -> None:
        self.max_bytes = max_bytes
        self.max_pending = max_pending_bytes or 2 * max_bytes
        self.timeout_s = timeout_s
        self._parts: dict[str, dict[int, bytes]] = {}
        self._meta: dict[str, tuple[int, bytes, float]] = {}
        self._pending = 0

    def feed(self, frame: bytes) -> bytes | None:
        """Return the package's wire bytes when complete, else None."""
        if not frame:
            raise PackageError("malformed", "empty message")
        if frame.startswith(MAGIC):
            return frame
        kind, body = frame[:1], frame[1:]
        if kind != CHUNK:
            raise PackageError("malformed", "unknown frame type")
        try:
            pkg_id, idx, count, digest, data = cbor2.loads(body)
            if not (isinstance(pkg_id, str) and isinstance(idx, int) and isinstance(count, int)
                    and isinstance(digest, bytes) and len(digest) == 32
                    and isinstance(data, bytes)):
                raise ValueError
        except Exception:
            raise PackageError("malformed", "chunk frame is not readable") from None
        if not (0 <= idx < count) or count > 1 + self.max_bytes // 1024:
            raise PackageError("malformed", "chunk index out of range")
        self._expire()
        meta = self._meta.get(pkg_id)
        if meta is None:
            meta = self._meta[pkg_id] = (count, digest, time.monotonic())
            self._parts[pkg_id] = {}
        if meta[0] != count or meta[1] != digest:
            self._drop(pkg_id)
            raise PackageError("malformed", "chunks of one package disagree")
        parts = self._parts[pkg_id]
        if idx not in parts:
            if self._pending + len(data) > self.max_pending:
                self._drop(pkg_id)
                raise PackageError("oversize", "too many chunked bytes pending")
            parts[idx] = data
            self._pending += len(data)
        if len(parts) < count:
            return None
        wire = b"".join(parts[i] for i in range(count))
        self._drop(pkg_id)
        if len(wire) > self.max_bytes:
            raise PackageError("oversize", f"{len(wire)} bytes > limit {self.max_bytes}")
        if hashlib.sha256(wire).digest() != digest:
            raise PackageError("hash-mismatch", "reassembled chunks do not match their hash")
        return wire

    def _drop(self, pkg_id: str) -> None:
        parts = self._parts.pop(pkg_id, {})
        self._pending -= sum(len(p) for p in parts.values())
        self._meta.pop(pkg_id, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for pid in [p for p, m in self._meta.items() if now - m[2] > self.timeout_s]:
            self._drop(pid)
