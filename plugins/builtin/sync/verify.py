"""``exnode sync verify``: compare the copies of a resource across its owner, the center
and the subscribers by row count, an order-independent checksum and 256 bucket
checksums, then list the keys that differ in the buckets that differ.

Two kinds of difference are expected, and told apart from the others:

- Quarantined rows. A key with an open quarantine entry, on either side of a
  comparison, did not go through on purpose (a rule failed, or the database could not
  store the row exactly): such keys are counted as ``quarantined`` (with the list), not
  as differences, and do not make the copies "differ".
- Cleaning. The owner's cleaning steps (``quality.clean``) change values before they
  are sent, so the owner's rows are hashed as cleaned: its source says ``'  张三  '``,
  the shared copy ``'张三'``, and they agree. Cleaning steps of the center's own
  rules are not known to the owner: rows they changed show as ``different``.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import cbor2
from sqlalchemy import select

from exnode.adapters.sql import row_hash
from exnode.node.base.errors import ExnodeError, PackageError
from exnode.node.kernel.api import ApplyContext, ServiceAPI

from .resources import VERIFY_REQ, VERIFY_RES, Resources, key_text
from .tables import freshness, quarantine

VERIFY_MAX_KEYS = 100_000  # keys listed per verify answer


class Verifier:
    def __init__(self, api: ServiceAPI, res: Resources) -> None:
        self.api = api
        self.res = res
        self._verify_waits: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        self._cleaners: dict[str, Any] = {}

    def verify_peers(self, rid: str) -> list[str]:
        """Whose copies `sync verify` compares with this node's: at the center the owner
        (or every node that sent the resource) and the subscribers; at a bureau, the
        center."""
        spec = self.res.spec(rid)
        if not self.api.is_center:
            return [self.api.center_id]
        peers: list[str] = []
        if spec.owner:
            peers.append(spec.owner)
        else:
            with self.api.state.connect() as conn:
                peers += [n for (n,) in conn.execute(select(freshness.c.node).where(
                    freshness.c.resource == rid)) if n != self.api.node_id]
        peers += self.res.subscribers(rid)
        return [p for p in dict.fromkeys(peers) if p != self.api.node_id]

    def summary(self, rid: str, buckets: set[int] | None = None) -> dict[str, Any]:
        """Row count, order-independent checksum and 256 bucket checksums of this node's
        copy over the resource's configured fields; with ``buckets``, the (key, hash) of
        every row in those buckets."""
        ad = self.res.adapter(rid)
        fields = ad.fields
        sums = [0] * 256
        total = count = 0
        keys: list[list[Any]] = []
        clean = self._owner_cleaning(rid)
        for chunk in ad.read_chunks(5000):
            if clean is not None:
                clean.check(chunk)  # cleans the rows in place, as capture does
            for row in chunk:
                key = ad.key_of(row)
                h = int.from_bytes(row_hash(row, fields, ad.naive_tz), "big")
                b = _bucket(key)
                sums[b] = (sums[b] + h) % (1 << 128)
                total = (total + h) % (1 << 128)
                count += 1
                if buckets is not None and b in buckets and len(keys) < VERIFY_MAX_KEYS:
                    keys.append([key_text(key), h.to_bytes(16, "big")])
        out: dict[str, Any] = {"count": count, "checksum": total.to_bytes(16, "big").hex(),
                               "buckets": [x.to_bytes(16, "big") for x in sums]}
        if buckets is not None:
            out["keys"] = keys
            out["quarantined"] = sorted(k for k in self.quarantined(rid)
                                        if _bucket_of_text(k) in buckets)
        return out

    def quarantined(self, rid: str) -> set[str]:
        """Keys (key_text) with an open quarantine entry of ``rid`` on this node."""
        with self.api.state.connect() as conn:
            return set(conn.execute(select(quarantine.c.key).where(
                quarantine.c.status == "open", quarantine.c.resource == rid)).scalars())

    def _owner_cleaning(self, rid: str) -> Any:
        """The owner's cleaning steps alone (no rules) as a rule set, where this node
        captures ``rid`` and its rules clean; else None."""
        spec = self.res.spec(rid)
        steps = (spec.quality or {}).get("clean")
        if spec.capture is None or not steps:
            return None
        if rid not in self._cleaners:
            from exnode.policies.quality import RuleSpecError, compile_ruleset

            try:
                self._cleaners[rid] = compile_ruleset(
                    {"resource": rid, "clean": steps},
                    registry=self.api.plugins.quality_registry(),
                    base_dir=self.api.config.base_dir)
            except RuleSpecError as e:
                raise ExnodeError(f"rules of resource '{rid}': {e}") from None
        return self._cleaners[rid]

    def on_verify_request(self, ctx: ApplyContext) -> None:
        """Answer a verify request off the DB thread: a checksum of a large table takes
        a while, and packages keep flowing meanwhile.

        The fields hashed are the resource's configured ones, whatever the request names
        (a hash of one chosen field would be a dictionary oracle for it). A bureau
        answers only the center (the kernel accepts the kind from nobody else); the
        center gives a bureau counts and checksums but never the keys of its rows."""
        try:
            req = cbor2.loads(ctx.payload)
            req_id = str(req["req"])
            buckets = set(req["buckets"]) if req.get("buckets") is not None else None
            if buckets is not None and not all(isinstance(b, int) for b in buckets):
                raise ValueError
        except Exception:
            raise PackageError("malformed", "verify request is not readable") from None
        rid, src, api = ctx.header.res, ctx.header.src, self.api
        self.res.spec(rid)
        if buckets is not None and api.is_center:
            raise PackageError("not-allowed", "the center lists the keys of its copy only to "
                               "its own operator: run 'exnode sync verify' at the center")

        async def answer() -> None:
            try:
                await api.db(self.res.adapter, rid)  # opened on the state-DB thread
                res = await asyncio.get_running_loop().run_in_executor(
                    None, self.summary, rid, buckets)
            except ExnodeError as e:
                res = {"error": str(e)}
            res["req"] = req_id
            await api.send(src, VERIFY_RES, rid, cbor2.dumps(res))

        ctx.after_commit(lambda: api.spawn(answer(), "verify answer"))

    def on_verify_result(self, ctx: ApplyContext) -> None:
        try:
            res = cbor2.loads(ctx.payload)
            req_id = str(res["req"])
        except Exception:
            raise PackageError("malformed", "verify result is not readable") from None
        fut = self._verify_waits.get((req_id, ctx.header.src))
        if fut is not None:
            ctx.after_commit(lambda: fut.done() or fut.set_result(res))

    async def _ask(self, peer: str, rid: str, buckets: list[int] | None,
                   timeout: float) -> dict[str, Any]:
        req_id = uuid.uuid4().hex
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._verify_waits[(req_id, peer)] = fut
        try:
            await self.api.send(peer, VERIFY_REQ, rid, cbor2.dumps(
                {"req": req_id, "buckets": buckets}))
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return {"error": f"no answer within {timeout:.0f} s"}
        finally:
            self._verify_waits.pop((req_id, peer), None)

    async def verify(self, rid: str, timeout: float = 120.0) -> dict[str, Any]:
        """Compare this node's copy of ``rid`` with its peers' and list differing keys."""
        loop = asyncio.get_running_loop()
        ad = await self.api.db(self.res.adapter, rid)
        fields = ad.fields
        mine = await loop.run_in_executor(None, self.summary, rid, None)
        peers = await self.api.db(self.verify_peers, rid)
        answers = await asyncio.gather(*(self._ask(p, rid, None, timeout)
                                         for p in peers))
        held = await loop.run_in_executor(None, self.quarantined, rid)
        report = {"resource": rid, "fields": fields, "quarantined": len(held),
                  "nodes": [{"node": self.api.node_id, "count": mine["count"],
                             "checksum": mine["checksum"], "same": True,
                             "quarantined": len(held)}]}
        ok = True
        for peer, ans in zip(peers, answers, strict=True):
            if "error" in ans:
                report["nodes"].append({"node": peer, "error": ans["error"], "same": False})
                ok = False
                continue
            same = ans["checksum"] == mine["checksum"] and ans["count"] == mine["count"]
            entry: dict[str, Any] = {"node": peer, "count": ans["count"],
                                     "checksum": ans["checksum"], "same": same}
            if not same and not self.api.is_center:
                ok = False  # only the center's operator sees which keys differ
                entry["differences_at"] = peer
            elif not same:
                diff = [b for b in range(256) if ans["buckets"][b] != mine["buckets"][b]]
                theirs = await self._ask(peer, rid, diff, timeout)
                ours = await loop.run_in_executor(None, self.summary, rid, set(diff))
                aside = set(ours["quarantined"]) | set(theirs.get("quarantined") or [])
                d = entry["differences"] = _key_diff(
                    dict((k, h) for k, h in ours["keys"]),
                    dict((k, h) for k, h in theirs.get("keys", [])), aside)
                entry["quarantined"] = d["counts"]["quarantined"]
                if "error" in theirs or any(d["counts"][w] for w in
                                            ("missing_there", "extra_there", "different")):
                    ok = False  # differences beyond the quarantined rows
                else:
                    entry["explained"] = "quarantined rows only"
            report["nodes"].append(entry)
        report["ok"] = ok
        return report


def _bucket(key: tuple[Any, ...]) -> int:
    return _bucket_of_text(key_text(key))


def _bucket_of_text(text: str) -> int:
    return hashlib.sha256(text.encode()).digest()[0]


def _key_diff(ours: dict[str, bytes], theirs: dict[str, bytes],
              quarantined: set[str] | None = None, limit: int = 100) -> dict[str, Any]:
    """Keys only here, only there, and with different rows (at most ``limit`` each);
    differing keys in ``quarantined`` (an open quarantine entry on either side) are
    listed apart, as ``quarantined``, and are not differences."""
    aside = quarantined or set()
    only_here = sorted(k for k in ours if k not in theirs and k not in aside)
    only_there = sorted(k for k in theirs if k not in ours and k not in aside)
    changed = sorted(k for k in ours if k in theirs and ours[k] != theirs[k]
                     and k not in aside)
    held = sorted(k for k in aside if ours.get(k) != theirs.get(k))
    return {"missing_there": only_here[:limit], "extra_there": only_there[:limit],
            "different": changed[:limit], "quarantined": held[:limit],
            "counts": {"missing_there": len(only_here), "extra_there": len(only_there),
                       "different": len(changed), "quarantined": len(held)}}
