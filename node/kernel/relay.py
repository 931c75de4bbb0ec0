"""Relay (center): a package for other members is forwarded still sealed, after the
signed header's sender and recipients were checked against the directory. The center
cannot open it; it logs a ``relayed`` entry per recipient."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection

from exnode.node.base.errors import PackageError
from exnode.node.kernel import envelope
from exnode.node.kernel.api import KindSpec, Party
from exnode.node.kernel.directory import Members
from exnode.node.kernel.grants import GrantLedger
from exnode.node.kernel.topics import Topics

RECEIPT = "receipt"


def _role(node_id: str, center_id: str) -> str:
    return "center" if node_id == center_id else "bureau"


def _allowed(party: Party, node_id: str, center_id: str) -> bool:
    return party == "any" or party == _role(node_id, center_id)


def check_parties(spec: KindSpec, src: str, rcpt: list[str], center_id: str) -> None:
    """The sender and every recipient have the roles the kind allows (authority, the
    second wall after identity): raises ``PackageError`` with the reason."""
    if not _allowed(spec.senders, src, center_id):
        raise PackageError("not-allowed", f"a {_role(src, center_id)} may not send "
                           f"'{spec.name}' packages")
    for r in rcpt:
        if not _allowed(spec.recipients, r, center_id):
            raise PackageError("not-allowed", f"'{spec.name}' packages may not go to a "
                               f"{_role(r, center_id)} ({r})")


def check_grant(spec: KindSpec, h: envelope.Header, targets: list[str],
                grants: GrantLedger | None) -> None:
    """The third wall: a kind that needs a grant passes only when its sender (a
    request) or every recipient (an answer) holds one in force on the resource."""
    if spec.grant is None or grants is None:
        return
    for who in ([h.src] if spec.grant_of == "sender" else targets):
        grants.check(h.res, who, spec.grant)


class Relay:
    """Relays for one center. Repeats of a package it has relayed are dropped until the
    gap since the last relay of it has doubled (1 s, 2 s, 4 s, ... at most 30 s): a
    sender's own retries, which back off the same way, still get through when a relay
    was lost, but a replay or a flood of copies is forwarded at most a few times."""

    MIN_GAP_S = 1.0
    MAX_GAP_S = 30.0
    MAX_REMEMBERED = 200_000

    def __init__(self, node_id: str, members: Members, topics: Topics,
                 log: Callable[[Connection, list[dict[str, Any]]], None],
                 counters: dict[str, int], kinds: Mapping[str, KindSpec],
                 grants: GrantLedger | None = None) -> None:
        self.id = node_id
        self.grants = grants
        self.members = members
        self.kinds = kinds
        # pkg id -> (when it may be relayed again, the gap after that, its expiry)
        self._recent: OrderedDict[str, tuple[float, float, float]] = OrderedDict()
        # relays being published now (pkg id -> how many publishes are left); the gap of
        # a repeat starts when they are out, so a large package is not taken in again
        # while the first copy is still on its way
        self._sending: dict[str, int] = {}
        self.topics = topics
        self.log = log
        self.counters = counters

    def _repeat(self, h: envelope.Header) -> bool:
        """Whether ``h`` is a repeat to drop now (and remember it either way)."""
        now = time.monotonic()
        while self._recent:  # forget the expired, and the oldest beyond the bound
            _pid, (_at, _gap, expires) = next(iter(self._recent.items()))
            if expires > now and len(self._recent) < self.MAX_REMEMBERED:
                break
            self._recent.popitem(last=False)
        seen = self._recent.get(h.id)
        if seen is not None and now < seen[0]:
            return True
        gap = self.MIN_GAP_S if seen is None else min(seen[1] * 2, self.MAX_GAP_S)
        expires = now + max(0.0, h.expires / 1000 - time.time())
        self._recent[h.id] = (now + gap, gap, expires)
        self._recent.move_to_end(h.id)
        return False

    def sent(self, pkg_ids: list[str]) -> None:
        """The publishes of these relays are out (or failed): a repeat's gap starts now."""
        now = time.monotonic()
        for pid in pkg_ids:
            left = self._sending.get(pid)
            if left is None:
                continue
            if left > 1:
                self._sending[pid] = left - 1
                continue
            del self._sending[pid]
            seen = self._recent.get(pid)
            if seen is not None:
                self._recent[pid] = (now + seen[1], seen[1], seen[2])

    def holds(self, pkg_id: str) -> bool:
        """Whether a copy of ``pkg_id`` arriving now would be dropped as a repeat (it is
        being relayed, or was moments ago): then its chunks need not be put together."""
        if pkg_id in self._sending:
            return True
        seen = self._recent.get(pkg_id)
        return seen is not None and time.monotonic() < seen[0]

    def forward(self, conn: Connection, pkg: envelope.Package) -> list[tuple[str, bytes, str]]:
        """The publishes (topic, wire, id) that forward ``pkg`` to its other recipients;
        raises ``PackageError`` when one of them is not an approved member. A repeat
        of a package relayed moments ago is dropped (no publishes, no refusal)."""
        h = pkg.header
        d = self.members.current
        targets = [r for r in h.rcpt if r != self.id]
        if len(set(h.rcpt)) != len(h.rcpt) or len(h.rcpt) > len(d.members):
            raise PackageError("malformed", f"{len(h.rcpt)} recipients, repeated or more than "
                               "there are members")
        if h.kind != RECEIPT:
            spec = self.kinds.get(h.kind)
            if spec is None:
                raise PackageError("unknown-kind", f"the center relays no kind '{h.kind}'")
            if not spec.relay:
                raise PackageError("not-relayed", f"'{h.kind}' packages travel only between a "
                                   "bureau and the center; the center relays none")
            check_parties(spec, h.src, targets, self.id)
            check_grant(spec, h, targets, self.grants)
        for r in targets:
            if r in d.revoked or d.get(r) is None:
                raise PackageError("unknown-recipient", f"'{r}' is not an approved member")
        if self._repeat(h):
            self.counters["relay_repeats_dropped"] += 1
            return []
        self.log(conn, [{"pkg_id": h.id, "event": "relayed", "peer": f"{h.src}>{r}",
                         "resource": h.res, "kind": h.kind, "size": len(pkg.wire)}
                        for r in targets])
        self.counters["relayed"] += len(targets)
        if self.id not in h.rcpt:
            self._sending[h.id] = self._sending.get(h.id, 0) + len(targets)
        return [(self.topics.inbox(r), pkg.wire, h.id) for r in targets]
