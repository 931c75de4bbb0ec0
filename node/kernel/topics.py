"""MQTT topic names. Each node reads only its own inbox; broker ACLs can enforce that.

All topics live under one prefix (default ``exn/v1``) so that several exchange networks,
or test runs, can share a broker without seeing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    prefix: str = "exn/v1"

    @property
    def gconf(self) -> str:
        """Retained, CA-signed global configuration; read-only for members."""
        return f"{self.prefix}/gconf"

    @property
    def enrol_all(self) -> str:
        return f"{self.prefix}/enrol/+"

    def inbox(self, node_id: str) -> str:
        """A node's inbox: only that node may read it."""
        return f"{self.prefix}/in/{node_id}"

    def enrol(self, node_id: str) -> str:
        return f"{self.prefix}/enrol/{node_id}"

    def enrol_reply(self, node_id: str) -> str:
        return f"{self.prefix}/enrol/{node_id}/reply"

    def is_enrol(self, topic: str) -> bool:
        return topic.startswith(f"{self.prefix}/enrol/")
