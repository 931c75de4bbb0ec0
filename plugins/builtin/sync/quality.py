"""Data rule checks in the sync pipeline (数据规则约束检查).

Rows are cleaned and checked at the owner before they are sent, and again at the
center on receipt. A failing row goes to the quarantine with its rules and reasons,
never silently dropped and never let through; at the center the owner also gets a
signed rejection notice. ``exnode quarantine retry`` sends a row through once its
source is fixed. A row this node's database cannot store, or not exactly, is
quarantined at stage ``apply``. An entry still open when a later change of its key goes
through (the owner sends it, or this node applies it) is closed as ``superseded``, with
a note: the fixed row was delivered.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import cbor2
import structlog
from sqlalchemy import Connection, func, select

from exnode.adapters.rowcodec import decode_batch, encode_batch
from exnode.node.base.errors import ExnodeError, NotFound, UsageError
from exnode.node.kernel.api import ServiceAPI
from exnode.policies.changes import Change, ChangeBatch

from .resources import Resources, jsonable, key_text
from .rowlog import send_rows
from .tables import notices, quality_stats, quarantine

log = structlog.get_logger("exnode.quality")


class Quality:
    """Compiled rule sets per resource and the quarantine of one node."""

    def __init__(self, api: ServiceAPI, res: Resources) -> None:
        self.api = api
        self.res = res
        # Set by the service: the one apply-and-forward path (see apply.py).
        self.apply_and_forward: Callable[..., int] | None = None
        self._rulesets: dict[str, Any] = {}
        self._registry: Any = None
        self._tables: dict[str, Any] = {}

    def forget(self, rid: str) -> None:
        """The resource's table is reflected afresh on its next check."""
        self._tables.pop(rid, None)

    def registry(self) -> Any:
        if self._registry is None:
            self._registry = self.api.plugins.quality_registry()
        return self._registry

    def ruleset(self, rid: str) -> Any:
        """The resource's rule set, compiled once (None when it declares no rules)."""
        if rid in self._rulesets:
            return self._rulesets[rid]
        spec = self.res.spec(rid)
        rs = None
        if spec.quality:
            from exnode.policies.quality import RuleSpecError, compile_ruleset

            try:
                rs = compile_ruleset({"resource": rid, **spec.quality}, registry=self.registry(),
                                     exists=self._exists(rid), lookup=self._lookup,
                                     base_dir=self.api.config.base_dir)
            except RuleSpecError as e:
                raise ExnodeError(f"rules of resource '{rid}': {e}") from None
        self._rulesets[rid] = rs
        return rs

    def _exists(self, rid: str) -> Any:
        """unique_shared: which values the shared library already holds (center only;
        elsewhere the center checks it)."""

        def exists(field: str, values: list[Any]) -> set[Any]:
            if not self.api.is_center or not values:
                return set()
            return self._present(rid, field, values)

        return exists

    def _lookup(self, resource: str, field: str, values: list[Any]) -> set[Any]:
        """reference: which values exist in another resource on this node. A resource
        not kept here is checked where it is (values pass)."""
        if resource not in self.api.config.resources:
            return set(values)
        return self._present(resource, field, values)

    def _present(self, rid: str, field: str, values: list[Any]) -> set[Any]:
        import sqlalchemy as sa

        ad = self.res.adapter(rid)
        t = self._tables.get(rid)
        if t is None:  # reflected once, not for every batch checked
            name = ad.spec.target_table or ad.spec.table
            t = self._tables[rid] = sa.Table(name, sa.MetaData(), autoload_with=ad.engine,
                                             schema=ad.spec.db_schema)
        out: set[Any] = set()
        uniq = list(dict.fromkeys(values))
        with ad.engine.connect() as conn:
            for i in range(0, len(uniq), 1000):
                out.update(conn.execute(sa.select(t.c[field]).where(
                    t.c[field].in_(uniq[i:i + 1000]))).scalars())
        return out

    def check(self, conn: Connection, rid: str, changes: list[Change], stage: str, src: str,
              pkg_id: str | None) -> tuple[list[Change], list[tuple[Change, str]]]:
        """Clean and check the upserts; quarantine failures (inside ``conn``'s transaction).
        Returns the changes that go on and the refused ones with a one-line reason."""
        rs = self.ruleset(rid)
        ups = [c for c in changes if c.op == "upsert" and c.row is not None]
        if rs is None or not ups:
            if stage == "owner":  # they are sent: the owner's open entries are moot
                self.supersede(conn, rid, changes, pkg_id, ("owner",))
            return changes, []
        result = rs.check([c.row for c in ups])
        bad_rows = {id(row): v for row, v in result.failed}
        fields = self.res.adapter(rid).fields
        now = time.time()
        passed, refused, q_rows = [], [], []
        by_rule: dict[str, int] = {}
        for c in changes:
            v = bad_rows.get(id(c.row)) if c.row is not None else None
            if v is None:
                passed.append(c)
                continue
            for x in v:
                by_rule[x.rule] = by_rule.get(x.rule, 0) + 1
            reason = "; ".join(f"{x.rule}({x.field}): {x.reason}" for x in v)
            refused.append((c, reason))
            q_rows.append({"resource": rid, "key": key_text(c.key), "stage": stage, "src": src,
                           "pkg_id": pkg_id, "created": now, "updated": now, "status": "open",
                           "violations": cbor2.dumps([[x.rule, x.field, x.reason] for x in v]),
                           "row": encode_batch(ChangeBatch(rid, [c]), fields)})
        if stage == "owner":
            self.supersede(conn, rid, passed, pkg_id, ("owner",))
        if q_rows:
            conn.execute(quarantine.insert(), q_rows)
            log.warning("rows_quarantined", resource=rid, stage=stage, count=len(q_rows),
                        rules=sorted(by_rule))
        self._stats(conn, rid, stage, len(ups), len(q_rows), by_rule)
        return passed, refused

    def quarantine_unstorable(self, conn: Connection, rid: str, change: Change, src: str,
                              pkg_id: str | None, reason: str) -> None:
        """A change this node's database refused (a value it cannot store): kept in the
        quarantine with the database's reason, like a rule failure, so that it neither
        blocks the rows behind it nor disappears."""
        now = time.time()
        fields = self.res.adapter(rid).fields
        conn.execute(quarantine.insert().values(
            resource=rid, key=key_text(change.key), stage="apply", src=src, pkg_id=pkg_id,
            created=now, updated=now, status="open",
            violations=cbor2.dumps([["storable", "", reason[:500]]]),
            row=encode_batch(ChangeBatch(rid, [change]), fields)))
        self._stats(conn, rid, "apply", 1, 1, {"storable": 1})

    def supersede(self, conn: Connection, rid: str, changes: list[Change], pkg_id: str | None,
                  stages: tuple[str, ...], keep: int | None = None) -> int:
        """A later change of a key went through (sent by the owner, applied here): the
        key's open quarantine entries of ``stages`` are closed as 'superseded', with a
        note naming the package, but entry ``keep``. Returns how many were closed.

        One indexed query when the resource has no open entry, the usual case."""
        if not changes or conn.execute(select(quarantine.c.id).where(
                quarantine.c.status == "open", quarantine.c.resource == rid,
                quarantine.c.stage.in_(stages)).limit(1)).first() is None:
            return 0
        texts = list(dict.fromkeys(key_text(c.key) for c in changes))
        now = time.time()
        what = f"package {pkg_id}" if pkg_id else "a later capture"
        note = ["superseded", "", f"a later change of this key went through ({what})"]
        closed = 0
        for i in range(0, len(texts), 500):
            for qid, violations in conn.execute(select(
                    quarantine.c.id, quarantine.c.violations).where(
                    quarantine.c.status == "open", quarantine.c.resource == rid,
                    quarantine.c.stage.in_(stages),
                    quarantine.c.key.in_(texts[i:i + 500]))).all():
                if qid == keep:
                    continue
                conn.execute(quarantine.update().where(quarantine.c.id == qid).values(
                    status="superseded", updated=now,
                    violations=cbor2.dumps([*cbor2.loads(violations), note])))
                closed += 1
        if closed:
            log.info("quarantine_superseded", resource=rid, count=closed)
        return closed

    def _stats(self, conn: Connection, rid: str, stage: str, checked: int, failed: int,
               by_rule: dict[str, int]) -> None:
        day = dt.date.today().isoformat()
        row = conn.execute(select(quality_stats).where(
            quality_stats.c.resource == rid, quality_stats.c.stage == stage,
            quality_stats.c.day == day)).mappings().first()
        if row is None:
            conn.execute(quality_stats.insert().values(
                resource=rid, stage=stage, day=day, checked=checked, failed=failed,
                by_rule=cbor2.dumps(by_rule)))
            return
        merged = cbor2.loads(row["by_rule"])
        for k, n in by_rule.items():
            merged[k] = merged.get(k, 0) + n
        conn.execute(quality_stats.update().where(
            quality_stats.c.resource == rid, quality_stats.c.stage == stage,
            quality_stats.c.day == day).values(checked=row["checked"] + checked,
                                               failed=row["failed"] + failed,
                                               by_rule=cbor2.dumps(merged)))

    # --- operator commands ---------------------------------------------------------------

    def report(self, rid: str) -> dict[str, Any]:
        self.res.spec(rid)
        with self.api.state.connect() as conn:
            days = [dict(r) for r in conn.execute(select(quality_stats).where(
                quality_stats.c.resource == rid).order_by(quality_stats.c.day))
                    .mappings()]
            open_n = conn.execute(select(func.count()).where(
                quarantine.c.resource == rid, quarantine.c.status == "open")).scalar()
            notes = conn.execute(select(notices.c["items"]).where(notices.c.resource == rid)) \
                .scalars().all()
        per_rule: dict[str, int] = {}
        trend = []
        for d in days:
            rules = cbor2.loads(d["by_rule"])
            for k, n in rules.items():
                per_rule[k] = per_rule.get(k, 0) + n
            trend.append({"day": d["day"], "stage": d["stage"], "checked": d["checked"],
                          "failed": d["failed"]})
        return {"resource": rid, "checked": sum(d["checked"] for d in days),
                "failed": sum(d["failed"] for d in days), "per_rule": per_rule,
                "quarantine_open": open_n, "trend": trend,
                "rejections_received": sum(len(cbor2.loads(n)) for n in notes),
                "rules": self.ruleset(rid) is not None}

    def list(self, rid: str | None, status: str | None) -> list[dict[str, Any]]:
        q = select(quarantine.c.id, quarantine.c.resource, quarantine.c.key, quarantine.c.stage,
                   quarantine.c.src, quarantine.c.status, quarantine.c.created,
                   quarantine.c.violations).order_by(quarantine.c.id)
        if rid:
            q = q.where(quarantine.c.resource == rid)
        if status:
            q = q.where(quarantine.c.status == status)
        out = []
        with self.api.state.connect() as conn:
            for r in conn.execute(q).mappings():
                d = dict(r)
                d["violations"] = [{"rule": a, "field": b, "reason": c}
                                   for a, b, c in cbor2.loads(r["violations"])]
                out.append(d)
        return out

    def show(self, qid: int) -> dict[str, Any]:
        with self.api.state.connect() as conn:
            r = conn.execute(select(quarantine).where(quarantine.c.id == qid)).mappings().first()
        if r is None:
            raise NotFound(f"no quarantined row {qid}")
        d = {k: v for k, v in dict(r).items() if k not in ("row", "violations")}
        d["violations"] = [{"rule": a, "field": b, "reason": c}
                           for a, b, c in cbor2.loads(r["violations"])]
        d["row"] = jsonable(decode_batch(r["row"]).changes[0].row)
        return d

    def drop(self, qid: int) -> dict[str, Any]:
        with self.api.state.begin() as conn:
            n = conn.execute(quarantine.update().where(
                quarantine.c.id == qid, quarantine.c.status == "open").values(
                status="dropped", updated=time.time())).rowcount
        if not n:
            raise UsageError(f"no open quarantined row {qid}")
        return {"id": qid, "status": "dropped"}

    def retry(self, qid: int) -> dict[str, Any]:
        """Check the row again: at the owner as it is in the source now, at the center as
        it was received. If it passes, send it on (owner) or apply and forward it."""
        with self.api.state.begin() as conn:
            r = conn.execute(select(quarantine).where(quarantine.c.id == qid)).mappings().first()
            if r is None or r["status"] != "open":
                raise UsageError(f"no open quarantined row {qid}")
            rid = r["resource"]
            ad = self.res.adapter(rid)
            old = decode_batch(r["row"]).changes[0]
            if r["stage"] == "owner":
                current = ad.fetch([old.key]).get(old.key)
                change = Change("delete", old.key, None) if current is None \
                    else Change("upsert", old.key, current)
            else:
                change = old
            rs = self.ruleset(rid)
            if change.row is not None and rs is not None:
                res = rs.check([change.row])
                if res.failed:
                    v = res.failed[0][1]
                    conn.execute(quarantine.update().where(quarantine.c.id == qid).values(
                        violations=cbor2.dumps([[x.rule, x.field, x.reason] for x in v]),
                        updated=time.time()))
                    return {"id": qid, "status": "open", "passed": False,
                            "violations": [{"rule": x.rule, "field": x.field,
                                            "reason": x.reason} for x in v]}
            if r["stage"] == "owner":
                data = encode_batch(ChangeBatch(rid, [change]), ad.fields)
                for dest in self.res.destinations(rid):
                    send_rows(self.api, conn, dest, rid, data, 1)
            else:
                assert self.apply_and_forward is not None
                self.apply_and_forward(conn, rid, [change], r["src"],
                                       f"quarantine-{qid}-{int(time.time())}", ad=ad,
                                       retrying=qid)
                # set aside again (the center's rules, or a value the database still
                # cannot store): this entry stays open with the new reason, no second one
                again = conn.execute(select(quarantine.c.id, quarantine.c.violations).where(
                    quarantine.c.resource == rid, quarantine.c.key == r["key"],
                    quarantine.c.status == "open", quarantine.c.id > qid)).first()
                if again is not None:
                    conn.execute(quarantine.delete().where(quarantine.c.id == again.id))
                    conn.execute(quarantine.update().where(quarantine.c.id == qid).values(
                        violations=again.violations, updated=time.time()))
                    v = cbor2.loads(again.violations)
                    return {"id": qid, "status": "open", "passed": False,
                            "violations": [{"rule": x[0], "field": x[1], "reason": x[2]}
                                           for x in v]}
            conn.execute(quarantine.update().where(quarantine.c.id == qid).values(
                status="retried", updated=time.time()))
        return {"id": qid, "status": "retried", "passed": True}
