"""Opened adapters of a node's resources, for the services that read data for someone
else (catalog reflection, query, verification). Each service keeps its own pool, so
one service's connections never wait behind another's."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc

from exnode.node.base.config import Config, ResourceSpec
from exnode.node.base.errors import ConfigError, NotFound

PING_IDLE_S = 10.0


def data_engine(url: str, ping_idle_s: float = PING_IDLE_S) -> Engine:
    """An engine for a business database: a pooled connection that sat idle for more
    than ``ping_idle_s`` is pinged before use (and replaced if the database dropped
    it), one in steady use is not: SQLAlchemy's ``pool_pre_ping`` would add a round
    trip to every short lookup (a third of a millisecond of each verification)."""
    eng = create_engine(url)

    @event.listens_for(eng, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["exnode_idle_since"] = time.monotonic()

    @event.listens_for(eng, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("exnode_idle_since")
        if since is None or time.monotonic() - since <= ping_idle_s:
            return
        try:
            alive = eng.dialect.do_ping(dbapi_conn)
        except Exception:
            alive = False
        if not alive:
            # the pool throws this connection away and checks out a fresh one
            raise exc.DisconnectionError("idle connection dropped by the database")

    return eng


class AdapterPool:
    def __init__(self, cfg: Config, factories: Mapping[str, Callable[..., Any]],
                 dialects: Any) -> None:
        self.cfg = cfg
        self.factories = factories
        self.dialects = dialects
        self._engines: dict[str, Engine] = {}
        self._adapters: dict[str, Any] = {}

    def spec(self, rid: str) -> ResourceSpec:
        spec = self.cfg.resources.get(rid)
        if spec is None:
            raise NotFound(f"resource '{rid}' is not configured on this node")
        return spec

    def engine(self, name: str) -> Engine:
        eng = self._engines.get(name)
        if eng is None:
            eng = self._engines[name] = data_engine(self.cfg.database_url(name))
        return eng

    def adapter(self, rid: str) -> Any:
        """The opened adapter of ``rid`` (reflected once; :meth:`reset` to reflect
        again). Raises ``SchemaMismatch`` or a database error as it comes."""
        ad = self._adapters.get(rid)
        if ad is None:
            spec = self.spec(rid)
            kind = self.cfg.databases[spec.database].kind
            factory = self.factories.get(kind)
            if factory is None:
                raise ConfigError(f"databases.{spec.database}.kind: no adapter '{kind}'")
            ad = factory(self.engine(spec.database), rid, spec, dialects=self.dialects)
            ad.open()
            self._adapters[rid] = ad
        return ad

    def reset(self, rid: str) -> None:
        self._adapters.pop(rid, None)

    def close(self) -> None:
        for e in self._engines.values():
            e.dispose()
        self._engines.clear()
        self._adapters.clear()
