"""make bench-core: bureau -> center -> bureau throughput beside a raw MQTT anchor.

In one run, through one Mosquitto of our own (TCP_NODELAY, no persistence):
- anchor: a plain aiomqtt publisher and a plain aiomqtt subscriber (separate
  processes), QoS 1, the same payloads;
- exnode: b1 -> center -> b2, each a separate ``exnode run`` process with its own
  SQLite state DB; everything sealed, signed, logged, applied exactly once and
  receipted. The clock stops when b2 has applied the last message.

1 KiB messages are batched into packages by the node (``delivery.batch_bytes``);
1 MiB payloads travel one package each and are random, so they do not compress.
Prints figures, ratios, and finally one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiomqtt
from benchlib import start_mosquitto

from exnode.node.tools.cluster import LocalStar

NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


# --- anchor: plain aiomqtt -----------------------------------------------------------------

def _subscriber(port: int, topic: str, n: int, ready: mp.Event, out: mp.Queue) -> None:
    async def run() -> None:
        async with aiomqtt.Client("127.0.0.1", port, socket_options=NODELAY,
                                  identifier=f"raw-sub-{uuid.uuid4().hex[:6]}") as c:
            await c.subscribe(topic, qos=1)
            ready.set()
            got = 0
            nbytes = 0
            async for m in c.messages:
                got += 1
                nbytes += len(m.payload)  # type: ignore[arg-type]
                if got == n:
                    break
            out.put((time.time(), nbytes))

    asyncio.run(run())


async def _publish(port: int, topic: str, payloads: list[bytes], window: int) -> float:
    async with aiomqtt.Client("127.0.0.1", port, socket_options=NODELAY,
                              max_inflight_messages=window,
                              identifier=f"raw-pub-{uuid.uuid4().hex[:6]}") as c:
        t0 = time.time()
        for i in range(0, len(payloads), window):
            await asyncio.gather(*(c.publish(topic, p, qos=1) for p in payloads[i:i + window]))
        return t0


def raw_rate(port: int, payloads: list[bytes]) -> dict[str, float]:
    topic = f"bench/raw/{uuid.uuid4().hex[:6]}"
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    sub = ctx.Process(target=_subscriber, args=(port, topic, len(payloads), ready, out))
    sub.start()
    ready.wait(20)
    t0 = asyncio.run(_publish(port, topic, payloads, 256))
    t1, nbytes = out.get(timeout=600)
    sub.join(10)
    secs = t1 - t0
    return {"seconds": secs, "msgs_per_s": len(payloads) / secs,
            "mib_per_s": nbytes / secs / 2**20}


# --- exnode: b1 -> center -> b2 --------------------------------------------------------------

def _applied(star: LocalStar, resource: str) -> int:
    db = sqlite3.connect(star.dir("b2") / "state.db", timeout=30)
    try:
        return db.execute("SELECT count(*) FROM received WHERE resource=?",
                          (resource,)).fetchone()[0]
    finally:
        db.close()


def exnode_rate(star: LocalStar, n: int, size: int, batch: bool, random: bool) -> dict:
    resource = f"bench.{size}.{uuid.uuid4().hex[:4]}"
    t0 = time.time()
    step = 5000 if size <= 4096 else 16
    for i in range(0, n, step):
        star.call("b1", "POST", "/send", {"to": "b2", "resource": resource, "batch": batch,
                                          "count": min(step, n - i), "size": size,
                                          "random": random, "start": i}, timeout=600)
    while (got := _applied(star, resource)) < n:
        time.sleep(0.01)
    t1 = time.time()
    db = sqlite3.connect(star.dir("b2") / "state.db", timeout=30)
    packages = db.execute("SELECT count(DISTINCT pkg_id) FROM received WHERE resource=?",
                          (resource,)).fetchone()[0]
    db.close()
    secs = t1 - t0
    return {"seconds": secs, "msgs_per_s": got / secs, "mib_per_s": got * size / secs / 2**20,
            "packages": packages, "packages_per_s": packages / secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=20_000, help="number of 1 KiB messages")
    ap.add_argument("--large", type=int, default=150, help="number of 1 MiB payloads")
    args = ap.parse_args()
    if shutil.which("mosquitto") is None:
        raise SystemExit("bench: mosquitto is not installed")
    root = Path(tempfile.mkdtemp(prefix="exn-bench-", dir="/tmp"))
    broker, port = start_mosquitto(root)
    star = LocalStar(root / "star", "127.0.0.1", port, bureaus=("b1", "b2"),
                     settings={"log": {"level": "warning"},
                               "broker": {"session_expiry_s": 300}})
    results: dict[str, dict] = {}
    try:
        star.up()
        star.call("b1", "POST", "/ping", {"node": "b2"})  # warm up every path
        small = [f"raw:{i}:".encode().ljust(1024, b".") for i in range(args.small)]
        large = [os.urandom(2**20) for _ in range(args.large)]
        for name, payloads, n, size, batch, rnd in (
                ("1KiB", small, args.small, 1024, True, False),
                ("1MiB", large, args.large, 2**20, False, True)):
            raw = raw_rate(port, payloads)
            exn = exnode_rate(star, n, size, batch, rnd)
            ratio_msgs = exn["msgs_per_s"] / raw["msgs_per_s"]
            results[name] = {"raw": raw, "exnode": exn, "ratio": ratio_msgs}
            print(f"{name:>5} payloads, {n} messages")
            print(f"   raw aiomqtt pub->sub : {raw['msgs_per_s']:>10.0f} msg/s "
                  f"{raw['mib_per_s']:>8.1f} MiB/s")
            print(f"   exnode b1->center->b2: {exn['msgs_per_s']:>10.0f} msg/s "
                  f"{exn['mib_per_s']:>8.1f} MiB/s  ({exn['packages']} packages, "
                  f"{exn['packages_per_s']:.0f} packages/s)")
            print(f"   ratio exnode/raw     : {ratio_msgs:.2f}")
    finally:
        star.close()
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    line = {"bench": "core", "cpus": os.cpu_count(),
            "small_msgs": args.small, "large_msgs": args.large}
    for name, r in results.items():
        line[f"raw_{name}_msgs_per_s"] = round(r["raw"]["msgs_per_s"], 1)
        line[f"raw_{name}_mib_per_s"] = round(r["raw"]["mib_per_s"], 2)
        line[f"exnode_{name}_msgs_per_s"] = round(r["exnode"]["msgs_per_s"], 1)
        line[f"exnode_{name}_mib_per_s"] = round(r["exnode"]["mib_per_s"], 2)
        line[f"exnode_{name}_packages_per_s"] = round(r["exnode"]["packages_per_s"], 1)
        line[f"ratio_{name}"] = round(r["ratio"], 3)
    print(json.dumps(line))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
