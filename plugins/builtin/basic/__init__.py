"""The basic service: ``ping``/``pong`` round trips and ``data`` batches.

``data`` packages carry a CBOR list of opaque messages. Without an adapter for the
resource they are kept in the state DB's ``received`` table, in order, exactly once.
It brings the ``/ping``, ``/send`` and ``/flush`` control routes and the ``exnode ping``
and ``exnode send`` commands.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from pathlib import Path
from typing import Any

import cbor2
import click
from sqlalchemy import BigInteger, Column, Float, Integer, LargeBinary, MetaData, String, Table

from exnode.node.base.errors import PackageError, UsageError
from exnode.node.kernel.api import (
    ApplyContext,
    CommandContext,
    ControlRequest,
    KindSpec,
    Router,
    ServiceAPI,
    StateTables,
)
from exnode.plugins import hookimpl

metadata = MetaData()

received = Table(
    "received", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pkg_id", String(36), nullable=False, index=True),
    Column("src", String(64), nullable=False),
    Column("resource", String(128), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("item", Integer, nullable=False),
    Column("received_at", Float, nullable=False),
    Column("payload", LargeBinary, nullable=False),
)

TABLES = StateTables("basic", metadata, Path(__file__).parent / "migrations")


class BasicService:
    """Per node: the round trips in flight."""

    def __init__(self, api: ServiceAPI) -> None:
        self.api = api
        self._pings: dict[str, tuple[float, asyncio.Future[float]]] = {}

    # --- kinds ----------------------------------------------------------------------------

    @hookimpl
    def exnode_package_kinds(self, register: Any) -> None:
        register(KindSpec("ping", self._ping))
        register(KindSpec("pong", self._pong))
        register(KindSpec("data", self._data, ordered=True))

    def _ping(self, ctx: ApplyContext) -> None:
        ctx.reply("pong", ctx.payload)

    def _pong(self, ctx: ApplyContext) -> None:
        try:
            nonce = str(cbor2.loads(ctx.payload)["nonce"])
        except Exception:
            raise PackageError("malformed", "pong payload is not readable") from None
        waiting = self._pings.get(nonce)
        if waiting is None:
            return
        started, fut = waiting
        rtt = (time.perf_counter() - started) * 1000
        self.api.record_rtt(ctx.conn, ctx.header.src, rtt)
        ctx.after_commit(lambda: fut.done() or fut.set_result(rtt))

    def _data(self, ctx: ApplyContext) -> None:
        try:
            items = cbor2.loads(ctx.payload)
            if not isinstance(items, list) or not all(isinstance(i, bytes) for i in items):
                raise ValueError
        except Exception:
            raise PackageError("malformed", "data payload must be a CBOR list of byte "
                               "strings") from None
        h = ctx.header
        now = time.time()
        if items:
            ctx.conn.execute(received.insert(), [
                {"pkg_id": h.id, "src": h.src, "resource": h.res, "seq": h.seq, "item": i,
                 "payload": item, "received_at": now} for i, item in enumerate(items)])

    # --- round trips ------------------------------------------------------------------------

    async def ping(self, dest: str, timeout: float = 30.0) -> float:
        """A signed round trip to ``dest`` (through the center); returns milliseconds."""
        nonce = os.urandom(8).hex()
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pings[nonce] = (time.perf_counter(), fut)
        try:
            await self.api.send(dest, "ping", "", cbor2.dumps({"nonce": nonce,
                                                               "t": time.time()}))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pings.pop(nonce, None)

    # --- control routes -------------------------------------------------------------------

    @hookimpl
    def exnode_control_routes(self, router: Router) -> None:
        router.post("/ping", self._ping_route)
        router.post("/send", self._send_route)
        router.post("/flush", self._flush_route)

    async def _ping_route(self, req: ControlRequest) -> Any:
        node, timeout = req.arg("node"), req.arg("timeout", float, 30.0)
        try:
            rtt = await self.ping(node, timeout)
        except TimeoutError:
            raise TimeoutError(f"no answer from {node} within {timeout:g} s") from None
        return {"node": node, "rtt_ms": round(rtt, 2)}

    async def _send_route(self, req: ControlRequest) -> Any:
        dest, resource = req.arg("to"), req.arg("resource", str, "default")
        if "payloads" in req.body:
            try:
                payloads = [base64.b64decode(p, validate=True) for p in req.body["payloads"]]
            except (TypeError, ValueError):
                raise UsageError("bad request: payloads must be base64 strings") from None
        else:
            payloads = synthetic(resource, req.arg("count", int), req.arg("size", int, 1024),
                                 req.arg("random", bool, False), req.arg("start", int, 0))
        if req.arg("batch", bool, False):
            for p in payloads:
                await self.api.submit(dest, resource, p)
            await self.api.flush()
            return {"queued": len(payloads)}
        ids = await self.api.send_many([(dest, "data", resource, cbor2.dumps([p]))
                                        for p in payloads])
        return {"queued": len(ids), "ids": ids}

    async def _flush_route(self, _req: ControlRequest) -> Any:
        await self.api.flush()
        return {"ok": True}


def synthetic(resource: str, count: int, size: int, random: bool = False,
              start: int = 0) -> list[bytes]:
    """Load-test payloads made in the daemon: ``resource:i:`` padded to ``size`` bytes
    (or followed by random bytes, which do not compress)."""
    if not 0 < count <= 10_000_000 or not 0 <= size <= 256 * 1024 * 1024:
        raise UsageError("count must be 1..10,000,000 and size 0..256 MiB")
    out = []
    noise = os.urandom(size + 64) if random else b""
    for i in range(start, start + count):
        head = f"{resource}:{i}:".encode()
        n = max(0, size - len(head))
        # a different window of one random block each time: cheap, and still incompressible
        tail = noise[i % 64:i % 64 + n] if random else b"." * n
        out.append(head + tail)
    return out


# --- module hooks -------------------------------------------------------------------------

@hookimpl
def exnode_state_tables(register: Any) -> None:
    register(TABLES)


@hookimpl
def exnode_services(api: ServiceAPI) -> BasicService:
    return BasicService(api)


@hookimpl
def exnode_cli_commands(cli: click.Group) -> None:
    cli.add_command(ping_cmd)
    cli.add_command(send_cmd)


@click.command("ping")
@click.argument("node")
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 1000))
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(0.1, 3600))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def ping_cmd(obj: CommandContext, node: str, count: int, timeout: float,
             as_json: bool) -> None:
    """A signed round trip to NODE through the center; prints the time."""
    me = obj.config().node.id
    rtts = []
    for _ in range(count):
        r = obj.call("POST", "/ping", {"node": node, "timeout": timeout}, timeout=timeout + 5)
        rtts.append(r["rtt_ms"])
        if not as_json:
            click.echo(f"{me} -> {node} -> {me}: {r['rtt_ms']:.1f} ms")
    if as_json:
        obj.show({"node": node, "rtt_ms": rtts}, True, "")


@click.command("send")
@click.option("--to", "dest", required=True, help="Recipient node id.")
@click.option("--resource", default="default", show_default=True)
@click.option("--file", "file", type=click.File("rb"), help="Send this file's bytes "
              "('-' for stdin).")
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Send this many packages (synthetic payloads unless --file).")
@click.option("--size", default=1024, show_default=True, type=click.IntRange(0, 64 << 20),
              help="Synthetic payload size in bytes.")
@click.option("--batch", is_flag=True, help="Pack small messages into shared packages.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def send_cmd(obj: CommandContext, dest: str, resource: str, file: Any, count: int, size: int,
             batch: bool, as_json: bool) -> None:
    """Queue data packages for another node (for tests and scripts)."""
    queued = 0
    if file is None:  # synthetic payloads, made by the daemon itself
        for i in range(0, count, 10_000):
            r = obj.call("POST", "/send", {"to": dest, "resource": resource, "batch": batch,
                                           "count": min(10_000, count - i), "size": size,
                                           "start": i}, timeout=600)
            queued += r["queued"]
    else:
        data = base64.b64encode(file.read()).decode()
        for i in range(0, count, 100):
            r = obj.call("POST", "/send", {"to": dest, "resource": resource, "batch": batch,
                                           "payloads": [data] * min(100, count - i)},
                         timeout=600)
            queued += r["queued"]
    obj.show({"queued": queued, "to": dest, "resource": resource}, as_json,
             f"queued {queued} message(s) for {dest} ({resource})")
