"""Built-in package kinds: ``ping``/``pong`` round trips and ``data`` batches.

``data`` packages carry a CBOR list of opaque messages. Without an adapter for the
resource they are kept in the state DB's ``received`` table, in order, exactly once.
"""

from __future__ import annotations

import time
from typing import Any

import cbor2

from exnode.node.errors import PackageError
from exnode.plugins import hookimpl


def _ping(ctx: Any) -> None:
    ctx.reply("pong", ctx.payload)


def _pong(ctx: Any) -> None:
    try:
        nonce = str(cbor2.loads(ctx.payload)["nonce"])
    except Exception:
        raise PackageError("malformed", "pong payload is not readable") from None
    src = ctx.header.src
    ctx.after_commit(lambda: ctx.node.pong_arrived(nonce, src))


def _data(ctx: Any) -> None:
    from exnode.node.state import received

    try:
        items = cbor2.loads(ctx.payload)
        if not isinstance(items, list) or not all(isinstance(i, bytes) for i in items):
            raise ValueError
    except Exception:
        raise PackageError("malformed", "data payload must be a CBOR list of byte strings") \
            from None
    h = ctx.header
    now = time.time()
    if items:
        ctx.conn.execute(received.insert(), [
            {"pkg_id": h.id, "src": h.src, "resource": h.res, "seq": h.seq, "item": i,
             "payload": item, "received_at": now} for i, item in enumerate(items)])


@hookimpl
def exnode_package_kinds(register) -> None:  # type: ignore[no-untyped-def]
    register("ping", _ping)
    register("pong", _pong)
    register("data", _data, ordered=True)
