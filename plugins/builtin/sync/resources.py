"""The resources of one node as database sync sees them: their specs, their databases
and adapters, whether they are stopped, and where their changes go."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from typing import Any

import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from exnode.adapters.contract import SchemaMismatch
from exnode.adapters.pool import data_engine
from exnode.node.base import dberrors
from exnode.node.base.config import ResourceSpec
from exnode.node.base.errors import ConfigError, PackageError
from exnode.node.kernel.api import ServiceAPI
from exnode.policies.grants import Grant

log = structlog.get_logger("exnode.sync")

ROWS = "rows"
ZERO = "zero"
REJECTION = "rejection"
VERIFY_REQ = "verify-req"
VERIFY_RES = "verify-res"
STANDING = "configuration: "  # the basis of a configured subscriber's grant


def key_text(key: tuple[Any, ...]) -> str:
    """A key as stable text for state tables."""
    return json.dumps([v if isinstance(v, int | str) else str(v) for v in key],
                      ensure_ascii=False, separators=(",", ":"))


def jsonable(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A row for JSON output: bytes as 0x-hex, other non-JSON values as text."""
    if row is None:
        return None
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, bytes):
            out[k] = "0x" + v.hex()
        elif v is None or isinstance(v, bool | int | float | str):
            out[k] = v
        else:
            out[k] = str(v)
    return out


class Resources:
    """Specs, databases and adapters of this node's resources."""

    def __init__(self, api: ServiceAPI) -> None:
        self.api = api
        self.cfg = api.config
        self._engines: dict[str, Engine] = {}
        self._adapters: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        dberrors.install(self.cfg)  # database errors name their setting (status, CLI)
        self.on_reset: list[Any] = []  # callbacks(rid) when a resource's adapter is dropped

    def engine(self, name: str) -> Engine:
        eng = self._engines.get(name)
        if eng is None:
            eng = self._engines[name] = data_engine(self.cfg.database_url(name))
        return eng

    def spec(self, rid: str) -> ResourceSpec:
        spec = self.cfg.resources.get(rid)
        if spec is None:
            raise PackageError("unknown-resource", f"resource '{rid}' is not configured here")
        return spec

    def adapter(self, rid: str) -> Any:
        """The opened adapter for a resource (``databases.<name>.kind`` picks it); a schema
        problem stops the resource."""
        ad = self._adapters.get(rid)
        if ad is None:
            spec = self.spec(rid)
            kind = self.cfg.databases[spec.database].kind
            factory = self.api.plugins.adapters.get(kind)
            if factory is None:
                raise ConfigError(f"databases.{spec.database}.kind: no adapter '{kind}' "
                                  f"(known: {', '.join(sorted(self.api.plugins.adapters))})")
            ad = factory(self.engine(spec.database), rid, spec,
                         dialects=self.api.plugins.dialects)
            try:
                ad.open()
            except SchemaMismatch as e:
                self.stop(rid, str(e))
                raise
            self._adapters[rid] = ad
        return ad

    def reset(self, rid: str) -> None:
        """Forget the resource's adapter (and what was derived from it): the table is
        reflected afresh on the next use."""
        self._adapters.pop(rid, None)
        for fn in self.on_reset:
            fn(rid)

    def stop(self, rid: str, why: str | BaseException) -> None:
        """Stop resource ``rid`` for ``why``, kept as one line (a database error names
        its setting and has no SQLAlchemy text: node/base/dberrors.py)."""
        if isinstance(why, SQLAlchemyError):
            spec = self.cfg.resources.get(rid)
            why = dberrors.describe(why, f"databases.{spec.database}" if spec else None)
        elif isinstance(why, BaseException):
            why = dberrors.tidy(f"{type(why).__name__}: {why}")
        elif "sqlalche.me" in why:  # SQLAlchemy's text, turned into a string by the caller
            spec = self.cfg.resources.get(rid)
            why = (f"databases.{spec.database}: " if spec else "") + dberrors.tidy(why)
        else:
            why = dberrors.tidy(why)
        if self.errors.get(rid) != why:
            log.error("resource_stopped", resource=rid, reason=why)
        self.errors[rid] = why

    def close(self) -> None:
        for e in self._engines.values():
            e.dispose()

    # --- where changes go ---------------------------------------------------------------

    def destinations(self, rid: str, origin: str | None = None) -> list[str]:
        """Who gets this node's changes of ``rid`` (never the change's origin)."""
        spec = self.spec(rid)
        if self.api.is_center:
            if spec.direction == "upload":
                return []
            out = [s for s in self.subscribers(rid) if s != origin]
        else:
            out = [self.api.center_id] if spec.direction in ("upload", "both") else []
        return [d for d in out if d != self.api.node_id]

    def forward_to(self, rid: str, origin: str) -> list[str]:
        """Center: subscribers that get changes the center accepted from ``origin``."""
        self.spec(rid)
        return [s for s in self.subscribers(rid) if s not in (origin, self.api.node_id)]

    def subscribers(self, rid: str) -> list[str]:
        """(center) The bureaus that receive ``rid``'s changes: those holding a sync grant
        in force (目录授权). ``resources.X.subscribers`` in the configuration are standing
        grants (:meth:`standing_grants`); a revoked or expired grant stops the changes
        at once."""
        return sorted(g.grantee for g in self.api.grants.active(rid, "sync"))

    def standing_grants(self) -> list[str]:
        """(center, at start) A sync grant for each configured subscriber, and the
        standing grants of subscribers no longer configured revoked. A standing grant an
        operator revoked stays revoked (it is not brought back by the configuration)."""
        made = []
        now = time.time()
        with self.api.state.begin() as conn:
            shown = []
            wanted = set()
            for rid, spec in self.cfg.resources.items():
                for node in spec.subscribers:
                    gid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"exnode:subscriber:{rid}:{node}"))
                    wanted.add(gid)
                    if self.api.grants.get(gid) is not None:
                        continue
                    g = Grant(id=gid, resource=rid, grantee=node, service="sync",
                              purpose="configured subscriber", basis=STANDING
                              + f"resources.{rid}.subscribers", granted_at=now,
                              holder=self.api.node_id)
                    shown.append(self.api.grants.put(conn, g))
                    made.append(f"{rid}:{node}")
            for g in self.api.grants.all():
                if g.basis.startswith(STANDING) and g.id not in wanted \
                        and g.status == "active":
                    shown.append(self.api.grants.put(conn, replace(
                        g, status="revoked", revoked_at=now,
                        reason="no longer a subscriber in the configuration")))
        for fn in shown:
            fn()
        return made
