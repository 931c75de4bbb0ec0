"""Capture at the data's owner: a capture cycle per resource on its schedule, and the
resumable initial load.

- Changes go out as ``rows`` packages (bureau: to the center; center: to the
  subscribers); a cycle that finds nothing sends a signed zero-update report
  (零更新上报), so silence is visible.
- The capture checkpoint commits in the same state-DB transaction as the outbox insert:
  capture is exactly once. An initial load commits its progress the same way, so a killed
  load resumes where it stopped; capture waits while it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import cbor2
import structlog
from sqlalchemy import select

from exnode.adapters.rowcodec import encode_batch
from exnode.node.base.config import parse_duration
from exnode.node.base.errors import ExnodeError, UsageError
from exnode.node.kernel.api import ServiceAPI
from exnode.policies.changes import Change, ChangeBatch
from exnode.policies.schedule import Schedule, zero_interval

from . import capture as cap
from .apply import Applier
from .quality import Quality
from .resources import ZERO, Resources
from .rowlog import send_rows
from .tables import sync_jobs

log = structlog.get_logger("exnode.sync")


class Capturer:
    """The capture loops and initial loads of one node."""

    def __init__(self, api: ServiceAPI, res: Resources, quality: Quality,
                 applier: Applier) -> None:
        self.api = api
        self.res = res
        self.quality = quality
        self.applier = applier
        self._strategies: dict[str, Any] = {}
        self.last_cycle: dict[str, float] = {}
        self._last_zero: dict[str, float] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        res.on_reset.append(self._forget)

    def _forget(self, rid: str) -> None:
        st = self._strategies.pop(rid, None)
        close = getattr(st, "close", None)
        if close is not None:
            close()

    def close(self) -> None:
        for rid in list(self._strategies):
            self._forget(rid)

    def strategy(self, rid: str) -> Any:
        st = self._strategies.get(rid)
        if st is None:
            spec = self.res.spec(rid)
            assert spec.capture is not None
            st = cap.make_capture(rid, spec, self.res.adapter(rid),
                                  cap.SqlCaptureState(self.api.state, create_tables=False),
                                  engine=self.res.engine(spec.database),
                                  applied_hashes=self.applier.applied_hash_lookup(rid))
            self._strategies[rid] = st
        return st

    def _zero_due(self, rid: str, now: float) -> bool:
        """A cycle found nothing: is a zero-update report due (rate-limited, so that an
        idle resource does not fill the exchange logs)?"""
        spec = self.res.spec(rid)
        assert spec.capture is not None
        every = zero_interval(parse_duration(spec.freshness) if spec.freshness else None,
                              parse_duration(spec.capture.zero_every)
                              if spec.capture.zero_every else None)
        last = self._last_zero.get(rid)
        if last is not None and now - last < every:
            return False
        self._last_zero[rid] = now
        return True

    def capture_cycle(self, rid: str) -> int | None:
        """One capture cycle (state-DB thread). Returns the number of changes sent, or
        None when the cycle could not run yet (it is tried again shortly)."""
        if rid in self.res.errors:
            self.res.errors.pop(rid)  # try again: the operator may have fixed it
            self.res.reset(rid)
        spec = self.res.spec(rid)
        assert spec.capture is not None
        if self.api.is_center:
            if not self.api.directory.valid():
                return None  # subscribers that are not members get theirs held
        elif any(not self.api.directory.has(d) for d in self.res.destinations(rid)):
            return None  # not enrolled yet, or the global configuration has not arrived
        if self._initial_running(rid):
            return None  # the initial load sends every row; capture goes on after it
        try:
            st = self.strategy(rid)
            batch: ChangeBatch = st.capture(spec.capture.chunk_rows)
        except ExnodeError as e:
            self.res.stop(rid, str(e))
            return 0
        dests = self.res.destinations(rid)
        now = time.time()
        with self.api.state.begin() as conn:
            try:
                good, _bad = self.quality.check(conn, rid, batch.changes, "owner", self.api.node_id,
                                                None)
            except ExnodeError as e:
                self.res.stop(rid, str(e))
                return 0
            batch = ChangeBatch(rid, good, checkpoint=batch.checkpoint)
            data = encode_batch(batch, self.res.adapter(rid).fields) if batch.changes else b""
            zero = not batch.changes and self._zero_due(rid, now)
            for dest in dests:
                if batch.changes and self.api.is_center:  # held for a non-member
                    self.applier.forwards.send(conn, dest, rid, data, len(batch.changes))
                elif batch.changes:
                    send_rows(self.api, conn, dest, rid, data, len(batch.changes))
                elif zero and (not self.api.is_center or self.api.directory.has(dest)):
                    self.api.enqueue(conn, dest, ZERO, rid,
                                     cbor2.dumps({"checked": now}))
            st.commit(batch.checkpoint, conn)
            self.applier.record_fresh(conn, rid, self.api.node_id, now, changed=bool(batch.changes),
                               rows=len(batch.changes))
        self.last_cycle[rid] = now
        return len(batch.changes)

    async def run_capture(self, rid: str) -> None:
        """The capture loop of one resource, on its schedule."""
        spec = self.res.spec(rid)
        assert spec.capture is not None
        sched = Schedule.from_spec(spec.capture.schedule)
        wake = self._wakeups.setdefault(rid, asyncio.Event())
        next_at = time.time()
        while True:
            delay = max(0.0, next_at - time.time())
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), timeout=delay)
            except TimeoutError:
                pass
            try:
                n = await self.api.db(self.capture_cycle, rid)
            except Exception as e:
                self.res.stop(rid, f"{type(e).__name__}: {e}")
                n = 0
            if n is None:
                next_at = time.time() + 1.0
                continue
            if n:
                self.api.wake_outbox()
            await self._backpressure()
            if n >= spec.capture.chunk_rows:
                next_at = time.time()  # more is waiting: go on at once
            elif sched.is_continuous:
                next_at = time.time() + await self._wait_trigger(rid)
            else:
                next_at = sched.next_run(time.time())

    async def _wait_trigger(self, rid: str) -> float:
        """Continuous trigger capture on PostgreSQL sleeps until NOTIFY (else briefly)."""
        st = self._strategies.get(rid)
        if st is not None and hasattr(st, "wait"):
            await asyncio.get_running_loop().run_in_executor(None, st.wait, 1.0)
            return 0.0
        return 0.2

    async def _backpressure(self, limit: int = 256) -> None:
        """Keep the outbox (and so disk and memory) bounded while capture outruns delivery."""
        while True:
            depth = await self.api.db(self.api.outbox_depth)
            if depth < limit:
                return
            await asyncio.sleep(0.2)

    def wake(self, rid: str) -> None:
        ev = self._wakeups.get(rid)
        if ev is not None:
            ev.set()

    def start_initial(self, rid: str, restart: bool = False,
                      node: str | None = None) -> dict[str, Any]:
        """Start (or find running) the initial load of ``rid``; with ``node``, a repair:
        the same load, sent to that one node only."""
        spec = self.res.spec(rid)
        kind = "initial"
        if node is not None:
            # the center repairs a subscriber (whatever the direction: it forwards what
            # it accepted); a bureau repairs the center's copy of what it sends
            targets = sorted(set(self.res.destinations(rid)) | (
                set(self.res.subscribers(rid)) if self.api.is_center else set()))
            if node not in targets:
                raise UsageError(f"'{node}' does not get resource '{rid}' from this node "
                                 f"(it gets: {', '.join(targets) or '-'})")
            if not self.api.directory.has(node):
                raise UsageError(f"'{node}' is not an approved member")
            kind = f"repair:{node}"
        elif not self.res.destinations(rid):
            raise UsageError(f"resource '{rid}' has nowhere to send from this node "
                             f"(direction {spec.direction})")
        self.res.adapter(rid)
        now = time.time()
        with self.api.state.begin() as conn:
            job = conn.execute(select(sync_jobs).where(sync_jobs.c.resource == rid,
                                                       sync_jobs.c.kind == kind)) \
                .mappings().first()
            if job is not None and job["status"] == "running" and not restart:
                return dict(job)
            if job is not None:
                conn.execute(sync_jobs.delete().where(sync_jobs.c.resource == rid,
                                                      sync_jobs.c.kind == kind))
            conn.execute(sync_jobs.insert().values(
                resource=rid, kind=kind, status="running", after_key=None, rows=0,
                total=None, started=now, updated=now, error=None))
            job = conn.execute(select(sync_jobs).where(sync_jobs.c.resource == rid,
                                                       sync_jobs.c.kind == kind)) \
                .mappings().one()
        return dict(job)

    def _initial_running(self, rid: str) -> bool:
        with self.api.state.connect() as conn:
            return conn.execute(select(sync_jobs.c.status).where(
                sync_jobs.c.resource == rid, sync_jobs.c.kind == "initial")).scalar() \
                == "running"

    def initial_chunk(self, rid: str, chunk_rows: int,
                      kind: str = "initial") -> tuple[int, bool]:
        """Send the next chunk of an initial load; progress is committed with the outbox
        insert, so a killed load resumes where it stopped."""
        ad = self.res.adapter(rid)
        with self.api.state.begin() as conn:
            job = conn.execute(select(sync_jobs).where(sync_jobs.c.resource == rid,
                                                       sync_jobs.c.kind == kind)) \
                .mappings().one()
            after = tuple(cbor2.loads(job["after_key"])) if job["after_key"] else None
            total = job["total"]
            if total is None:
                total = ad.count()
                conn.execute(sync_jobs.update().where(sync_jobs.c.resource == rid,
                                                      sync_jobs.c.kind == kind)
                             .values(total=total))
            it: Iterator[list[dict[str, Any]]] = ad.read_chunks(chunk_rows, after)
            rows = next(it, [])
            close = getattr(it, "close", None)
            if close:
                close()
            if not rows:
                conn.execute(sync_jobs.update().where(sync_jobs.c.resource == rid,
                                                      sync_jobs.c.kind == kind)
                             .values(status="done", updated=time.time()))
                return 0, True
            batch = ChangeBatch(rid, [Change("upsert", tuple(r[k] for k in ad.key), r)
                                      for r in rows], initial=True)
            good, _bad = self.quality.check(conn, rid, batch.changes, "owner", self.api.node_id,
                                            None)
            data = encode_batch(ChangeBatch(rid, good, initial=True), ad.fields)
            dests = [kind[len("repair:"):]] if kind.startswith("repair:") \
                else self.res.destinations(rid)
            for dest in dests:
                if self.api.is_center and not self.api.directory.has(dest):
                    continue  # not a member now: its initial load is run again for it
                send_rows(self.api, conn, dest, rid, data, len(good), extra={"initial": True})
            spec = self.res.spec(rid)
            if (kind == "initial" and spec.capture is not None
                    and spec.capture.strategy == "snapshot"):
                # What was sent is the snapshot now: the next capture pass sends only
                # what changed since, not every row again.
                cap.SqlCaptureState(self.api.state, create_tables=False).apply_hashes(
                    rid, [(cap.encode_key(c.key), ad.row_hash(c.row)) for c in good
                          if c.row is not None], conn)
            last = batch.changes[-1].key
            conn.execute(sync_jobs.update().where(sync_jobs.c.resource == rid,
                                                  sync_jobs.c.kind == kind)
                         .values(after_key=cbor2.dumps(list(last)),
                                 rows=sync_jobs.c.rows + len(rows), updated=time.time()))
        return len(rows), len(rows) < chunk_rows

    async def run_initial(self, rid: str, kind: str = "initial") -> None:
        spec = self.res.spec(rid)
        chunk = spec.capture.chunk_rows if spec.capture else 5000
        try:
            while True:
                await self._backpressure(64)
                n, done = await self.api.db(self.initial_chunk, rid, chunk, kind)
                if n:
                    self.api.wake_outbox()
                if done:
                    if n:  # mark done on the next (empty) read
                        await self.api.db(self.initial_chunk, rid, chunk, kind)
                    log.info("initial_load_done", resource=rid, job=kind)
                    return
        except ExnodeError as e:
            await self.api.db(self._job_error, rid, str(e), kind)
            self.res.stop(rid, str(e))

    def _job_error(self, rid: str, err: str, kind: str = "initial") -> None:
        with self.api.state.begin() as conn:
            conn.execute(sync_jobs.update().where(sync_jobs.c.resource == rid,
                                                  sync_jobs.c.kind == kind)
                         .values(status="failed", error=err[:500], updated=time.time()))

    def jobs(self) -> list[dict[str, Any]]:
        with self.api.state.connect() as conn:
            return [{k: v for k, v in dict(r).items() if k != "after_key"}
                    for r in conn.execute(select(sync_jobs)).mappings()]
