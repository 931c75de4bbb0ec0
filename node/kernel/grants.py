"""The grant ledger (目录授权) of one node: at the center, every grant it issued; at a
bureau, the grants that concern it (those it holds as a consumer, and those on data it
holds as the owner). The access service writes it; every service that reads data for
someone else (sync, query, verification) checks it, and so does the kernel before it
relays or applies a package whose kind needs a grant (``KindSpec.grant``).

Checks are answered from memory (loaded at start, updated once a write has committed),
so the relay path costs a dictionary lookup.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Connection, Engine, select

from exnode.node.base.errors import Refused
from exnode.node.kernel.state import grant_use, grants
from exnode.policies.grants import Grant, RateMeter, check_quota, refuse_missing

Key = tuple[str, str, str]  # resource, grantee, service


class GrantLedger:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._by: dict[Key, Grant] = {}
        self._ids: dict[str, Grant] = {}
        self.meter = RateMeter()

    def load(self) -> None:
        with self._engine.connect() as conn:
            rows = conn.execute(select(grants.c.doc).order_by(grants.c.granted_at)).scalars()
            for doc in rows:
                try:
                    self._remember(Grant.from_wire(json.loads(doc)))
                except ValueError:
                    continue

    def _remember(self, g: Grant) -> None:
        self._ids[g.id] = g
        key = (g.resource, g.grantee, g.service)
        cur = self._by.get(key)
        # the newest grant of a (resource, grantee, service) is the one in force; a
        # revocation of an older one does not undo a newer one
        if cur is None or cur.id == g.id or g.granted_at >= cur.granted_at:
            self._by[key] = g

    # --- writing ---------------------------------------------------------------------------

    def put(self, conn: Connection, g: Grant) -> Callable[[], None]:
        """Write ``g`` (a new grant, or a new state of one) in ``conn``'s transaction;
        returns what makes it visible to checks, to run once that has committed."""
        doc = json.dumps(g.to_wire(), ensure_ascii=False, sort_keys=True)
        vals = {"resource": g.resource, "grantee": g.grantee, "service": g.service,
                "status": g.status, "granted_at": g.granted_at, "expires_at": g.expires_at,
                "doc": doc}
        if conn.execute(grants.update().where(grants.c.id == g.id).values(**vals)).rowcount \
                == 0:
            conn.execute(grants.insert().values(id=g.id, **vals))
        return lambda: self._remember(g)

    # --- reading -----------------------------------------------------------------------------

    def get(self, grant_id: str) -> Grant | None:
        return self._ids.get(grant_id)

    def find(self, resource: str, grantee: str, service: str) -> Grant | None:
        return self._by.get((resource, grantee, service))

    def all(self) -> list[Grant]:
        return sorted(self._ids.values(), key=lambda g: g.granted_at)

    def active(self, resource: str, service: str, now: float | None = None) -> list[Grant]:
        """Grants in force on ``resource`` for ``service``, one per grantee."""
        now = time.time() if now is None else now
        return [g for (r, _who, s), g in self._by.items()
                if r == resource and s == service and g.refusal(now) is None]

    def check(self, resource: str, grantee: str, service: str,
              now: float | None = None) -> Grant:
        """The grant in force, or ``Refused`` with the reason (deny by default)."""
        g = self._by.get((resource, grantee, service))
        if g is None:
            raise refuse_missing(resource, grantee, service)
        why = g.refusal(now)
        if why is not None:
            raise Refused(*why)
        return g

    def use(self, conn: Connection, g: Grant, records: int) -> None:
        """Count one request of ``records`` against the grant's rate and daily quota, or
        refuse it (state-DB thread, inside ``conn``'s transaction)."""
        self.meter.take(g)
        day = datetime.now().strftime("%Y-%m-%d")
        row = conn.execute(select(grant_use.c.records, grant_use.c.requests).where(
            grant_use.c.grant_id == g.id, grant_use.c.day == day)).first()
        used = int(row[0]) if row else 0
        check_quota(g, used, records)
        if row is None:
            conn.execute(grant_use.insert().values(grant_id=g.id, day=day, records=records,
                                                   requests=1))
        else:
            conn.execute(grant_use.update().where(grant_use.c.grant_id == g.id,
                                                  grant_use.c.day == day)
                         .values(records=grant_use.c.records + records,
                                 requests=grant_use.c.requests + 1))

    def used(self, conn: Connection, grant_id: str) -> dict[str, int]:
        day = datetime.now().strftime("%Y-%m-%d")
        row = conn.execute(select(grant_use.c.records, grant_use.c.requests).where(
            grant_use.c.grant_id == grant_id, grant_use.c.day == day)).first()
        return {"records_today": int(row[0]) if row else 0,
                "requests_today": int(row[1]) if row else 0}
