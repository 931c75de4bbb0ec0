"""A package's trace across hops (全程监控): a bureau's own log shows its hop only; the
center, which every package passes, has the other one (received, relayed, the
recipient's receipt relayed back). A bureau asks the center for it with a ``log-trace``
package and gets its entries for that package in a ``log-trace-ans``.

The center answers only a party to the package: a node that its log names as the
package's sender, recipient or peer. Anyone else gets the same answer as for a package
the center never saw, so asking tells a stranger nothing. The answer holds log entries
(times, events, nodes, kinds, sizes, states), never a payload.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import cbor2

from exnode.node.base.errors import PackageError
from exnode.node.kernel import exlog
from exnode.node.kernel.api import ApplyContext, KindSpec

TRACE = "log-trace"
TRACE_ANSWER = "log-trace-ans"
MAX_ENTRIES = 200


def parties(peers: list[str]) -> set[str]:
    """The nodes the log names for a package (``peer`` is a node, or ``SRC>DST`` for a
    relayed package)."""
    out: set[str] = set()
    for p in peers:
        out.update(x for x in p.split(">") if x)
    return out


class Tracer:
    """Both ends: the bureau's questions in flight, the center's answers."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def kinds(self) -> list[KindSpec]:
        return [KindSpec(TRACE, self._on_trace, senders="bureau", recipients="center",
                         relay=False),
                KindSpec(TRACE_ANSWER, self._on_answer, senders="center",
                         recipients="bureau", relay=False)]

    def ask(self, pkg_id: str) -> tuple[str, bytes, asyncio.Future[dict[str, Any]]]:
        qid = str(uuid.uuid4())
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[qid] = fut
        return qid, cbor2.dumps({"id": qid, "pkg": pkg_id}), fut

    def forget(self, qid: str) -> None:
        self._waiting.pop(qid, None)

    # --- kinds (state-DB thread, inside the batch's transaction) ---------------------------

    def _on_trace(self, ctx: ApplyContext) -> None:
        try:
            b = cbor2.loads(ctx.payload)
            qid, pkg = str(b["id"])[:64], str(b["pkg"]).strip().lower()[:36]
        except Exception:
            raise PackageError("malformed", "a trace request without an id and a package")\
                from None
        rows = exlog.entries(ctx.conn, pkg, MAX_ENTRIES)
        if ctx.header.src not in parties([r["peer"] for r in rows]):
            rows = []  # not a party: the same answer as for a package never seen here
        ctx.reply(TRACE_ANSWER, cbor2.dumps({"id": qid, "pkg": pkg, "trace": rows}), "")

    def _on_answer(self, ctx: ApplyContext) -> None:
        try:
            b = cbor2.loads(ctx.payload)
            qid = str(b["id"])
            trace = [{f: r.get(f) for f in exlog.TRACE_FIELDS} for r in b["trace"][:MAX_ENTRIES]
                     if isinstance(r, dict)]
        except Exception:
            raise PackageError("malformed", "a trace answer that cannot be read") from None
        fut = self._waiting.get(qid)
        if fut is not None:
            ctx.after_commit(lambda: fut.done() or fut.set_result(
                {"node": ctx.header.src, "trace": trace}))
