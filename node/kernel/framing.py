"""Transport frames: a whole package in one MQTT message, or chunks of one.

A whole package travels as its wire bytes (they begin with ``EXN\\x01``). A chunk is
``C`` + CBOR ``[pkg_id, index, count, sha256, data, by, sig]``: ``sha256`` is the hash
of the whole package and ``sig`` is the signature of the member ``by`` that sent the
chunks (the sender, or the center when it relays) over the package id, the count and
that hash. Every chunk carries the claim, so chunks may come in any order; the
reassembler checks the claim against the directory *before* it keeps a single byte,
counts every byte it holds, keeps at most so many incomplete packages, evicts the
oldest when it must, and expires the oldest first without scanning the others.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import cbor2

from exnode.node.base.errors import PackageError
from exnode.node.kernel.envelope import MAGIC

# A whole package travels as its own wire bytes (they begin with the package magic
# ``EXN\x01``), so the common case copies nothing; a chunk begins with ``C``.
WHOLE = b""
CHUNK = b"C"
CHUNK_OVERHEAD = 256
ENTRY_OVERHEAD = 512  # what an incomplete package costs besides its data, roughly
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CHUNK_START = b"\x87\x78\x24"  # CBOR: an array of 7, then a text of 36 bytes
_NODE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

#: ``sign(message) -> (node id, signature)``: how this node signs its chunk claims.
Signer = Callable[[bytes], tuple[str, bytes]]
#: ``authenticate(node id, signature, message)``: raises PackageError unless ``node id``
#: is an approved member whose key made ``signature``.
Authenticate = Callable[[str, bytes, bytes], None]


def claim_bytes(pkg_id: str, count: int, digest: bytes) -> bytes:
    """What a chunk claim signs."""
    return b"exnode-chunks-v1\0" + pkg_id.encode() + count.to_bytes(8, "big") + digest


def frames(pkg_id: str, wire: bytes, max_message: int,
           sign: Signer | None = None) -> Iterator[bytes]:
    """Split a package into MQTT messages no larger than ``max_message`` bytes; chunks
    need ``sign`` (a whole package is authenticated by its own signature)."""
    if len(wire) <= max_message:
        yield wire
        return
    if sign is None:
        raise ValueError("chunked packages need a signer")
    step = max_message - CHUNK_OVERHEAD
    count = (len(wire) + step - 1) // step
    digest = hashlib.sha256(wire).digest()
    by, sig = sign(claim_bytes(pkg_id, count, digest))
    for i in range(count):
        yield CHUNK + cbor2.dumps([pkg_id, i, count, digest, wire[i * step:(i + 1) * step],
                                   by, sig])


@dataclass
class _Pending:
    claim: tuple[int, bytes, str, bytes]  # count, digest, by, sig
    started: float
    # chunks in order are appended to ``whole`` as they come (so the package is never
    # held twice); ``early`` keeps those that came before their turn
    whole: bytearray = field(default_factory=bytearray)
    next: int = 0
    early: dict[int, bytes] = field(default_factory=dict)
    held: int = ENTRY_OVERHEAD


class Reassembler:
    """Collects authenticated chunks until a package is whole; bounded in bytes, in
    packages and in time."""

    def __init__(self, max_bytes: int, authenticate: Authenticate,
                 max_pending_bytes: int | None = None, max_pending_packages: int = 64,
                 timeout_s: float = 600.0, skip: Callable[[str], bool] | None = None) -> None:
        self.max_bytes = max_bytes
        # a package this says it would drop anyway (the center's relay of a copy still
        # on its way) is not put together again: its chunks are only authenticated
        self.skip = skip
        self.skipped = 0
        self.authenticate = authenticate
        self.max_pending = max_pending_bytes or 2 * max_bytes
        self.max_packages = max_pending_packages
        self.timeout_s = timeout_s
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self.held = 0
        self.evicted = 0

    def feed(self, frame: bytes) -> bytes | bytearray | None:
        """Return the package's wire bytes when complete, else None."""
        if not frame:
            raise PackageError("malformed", "empty message")
        if frame.startswith(MAGIC):
            return frame
        if frame[:1] != CHUNK:
            raise PackageError("malformed", "unknown frame type")
        # [pkg_id (a 36-character text), ...]: anything else is refused before it is
        # decoded, so an oversized id or a deep structure costs nothing
        if frame[1:4] != _CHUNK_START:
            raise PackageError("malformed", "chunk frame is not readable")
        try:
            pkg_id, idx, count, digest, data, by, sig = cbor2.loads(memoryview(frame)[1:])
            if not (isinstance(pkg_id, str) and _UUID.fullmatch(pkg_id)
                    and type(idx) is int and type(count) is int
                    and isinstance(digest, bytes) and len(digest) == 32
                    and isinstance(data, bytes) and isinstance(by, str)
                    and _NODE.fullmatch(by) and isinstance(sig, bytes) and len(sig) <= 128):
                raise ValueError
        except Exception:
            raise PackageError("malformed", "chunk frame is not readable") from None
        if not (0 <= idx < count) or count > 1 + self.max_bytes // 1024:
            raise PackageError("malformed", "chunk index out of range")
        self._expire()
        claim = (count, digest, by, sig)
        entry = self._pending.get(pkg_id)
        if entry is None or entry.claim != claim:
            # nothing is kept before the claim is authenticated
            self.authenticate(by, sig, claim_bytes(pkg_id, count, digest))
            if entry is None and self.skip is not None and self.skip(pkg_id):
                self.skipped += 1
                return None
            if entry is not None:
                self._drop(pkg_id)
                raise PackageError("malformed", "chunks of one package disagree")
            entry = self._pending[pkg_id] = _Pending(claim, time.monotonic())
            self.held += entry.held
        if idx < entry.next or idx in entry.early:
            return None  # a duplicate (QoS 1 redelivers)
        if entry.held + len(data) > self.max_bytes + ENTRY_OVERHEAD:
            self._drop(pkg_id)
            raise PackageError("oversize", f"chunks of {pkg_id} exceed {self.max_bytes} bytes")
        self._make_room(pkg_id, len(data))
        entry.held += len(data)
        self.held += len(data)
        if idx != entry.next:
            entry.early[idx] = data
            return None
        entry.whole += data
        del data
        entry.next += 1
        while entry.next in entry.early:
            entry.whole += entry.early.pop(entry.next)
            entry.next += 1
        if entry.next < count:
            return None
        wire = entry.whole
        self._drop(pkg_id)
        if len(wire) > self.max_bytes:
            raise PackageError("oversize", f"{len(wire)} bytes > limit {self.max_bytes}")
        if hashlib.sha256(wire).digest() != digest:
            raise PackageError("hash-mismatch", "reassembled chunks do not match their hash")
        return wire

    def _make_room(self, keep: str, more: int) -> None:
        """Evict the oldest incomplete packages (never ``keep``) until ``more`` bytes fit
        and no more than ``max_pending_packages`` are pending."""
        while (self.held + more > self.max_pending or len(self._pending) > self.max_packages):
            oldest = next((p for p in self._pending if p != keep), None)
            if oldest is None:
                self._drop(keep)
                raise PackageError("oversize", "too many chunked bytes pending")
            self._drop(oldest)
            self.evicted += 1

    def _drop(self, pkg_id: str) -> None:
        entry = self._pending.pop(pkg_id, None)
        if entry is not None:
            self.held -= entry.held

    def _expire(self) -> None:
        now = time.monotonic()
        while self._pending:  # oldest first: stop at the first that is still in time
            pkg_id, entry = next(iter(self._pending.items()))
            if now - entry.started <= self.timeout_s:
                return
            self._drop(pkg_id)
