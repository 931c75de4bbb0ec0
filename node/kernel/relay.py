"""Relay (center): a package for other members is forwarded still sealed, after the
signed header's sender and recipients were checked against the directory. The center
cannot open it; it logs a ``relayed`` entry per recipient."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from exnode.node.base.errors import PackageError
from exnode.node.kernel import envelope
from exnode.node.kernel.directory import Members
from exnode.node.kernel.topics import Topics


class Relay:
    def __init__(self, node_id: str, members: Members, topics: Topics,
                 log: Callable[[Connection, list[dict[str, Any]]], None],
                 counters: dict[str, int]) -> None:
        self.id = node_id
        self.members = members
        self.topics = topics
        self.log = log
        self.counters = counters

    def forward(self, conn: Connection, pkg: envelope.Package) -> list[tuple[str, bytes, str]]:
        """The publishes (topic, wire, id) that forward ``pkg`` to its other recipients;
        raises ``PackageError`` when one of them is not an approved member."""
        h = pkg.header
        d = self.members.current
        targets = [r for r in h.rcpt if r != self.id]
        for r in targets:
            if r in d.revoked or d.get(r) is None:
                raise PackageError("unknown-recipient", f"'{r}' is not an approved member")
        self.log(conn, [{"pkg_id": h.id, "event": "relayed", "peer": f"{h.src}>{r}",
                         "resource": h.res, "kind": h.kind, "size": len(pkg.wire)}
                        for r in targets])
        self.counters["relayed"] += len(targets)
        return [(self.topics.inbox(r), pkg.wire, h.id) for r in targets]
