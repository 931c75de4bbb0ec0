"""What the broker (or anyone subscribed to '#') sees: no plaintext, ever."""

from __future__ import annotations

import asyncio
import base64
import os
import threading

import aiomqtt
import cbor2
import zstandard

from exnode.node.tools.cluster import wait_until

SECRETS = [
    "PLAINTEXT-MARKER-7f3a9c",
    "张三 110101199003077734 北京市东城区",
    "unified-credit 91350100M000100Y43",
]


class Sniffer:
    """A plain subscriber on '#' that keeps every byte it sees."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.seen: list[tuple[str, bytes]] = []
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with aiomqtt.Client(self.host, self.port) as c:
            await c.subscribe("#", qos=1)
            self.ready.set()

            async def read() -> None:
                async for m in c.messages:
                    self.seen.append((m.topic.value, bytes(m.payload)))

            t = asyncio.create_task(read())
            await self._stop.wait()
            t.cancel()

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(10)

    def stop(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


def test_no_plaintext_on_the_wire(make_star, own_mosquitto):
    sniffer = Sniffer(own_mosquitto.host, own_mosquitto.port)
    sniffer.start()
    star = make_star(own_mosquitto)
    star.up()
    payloads = [s.encode() * 3 for s in SECRETS]
    # one message per package, batched small messages, and one large chunked package
    star.call("b1", "POST", "/send", {"to": "b2", "resource": "people",
                                      "payloads": [base64.b64encode(p).decode()
                                                   for p in payloads]})
    star.call("b1", "POST", "/send", {"to": "b2", "resource": "people", "batch": True,
                                      "payloads": [base64.b64encode(p).decode()
                                                   for p in payloads * 20]})
    # incompressible, with the secrets inside, so that it must travel in chunks
    big = b"".join(os.urandom(100_000) + s.encode() for s in SECRETS * 15)
    star.call("b2", "POST", "/send", {"to": "center", "resource": "bulk",
                                      "payloads": [base64.b64encode(big).decode()]})
    star.call("b1", "POST", "/ping", {"node": "b2", "timeout": 20})
    wait_until(lambda: star.status("b1")["outbox_pending"] == 0
               and star.status("b2")["outbox_pending"] == 0, 60, what="delivery")
    sniffer.stop()

    topics = {t for t, _ in sniffer.seen}
    assert any(t.endswith("/in/center") for t in topics)
    assert any(t.endswith("/in/b2") for t in topics)
    assert len(sniffer.seen) > 20
    chunks = [p for _t, p in sniffer.seen if p[:1] == b"C"]
    assert chunks, "the 4.5 MB package was not chunked"

    needles = []
    for s in SECRETS:
        for enc in ("utf-8", "utf-16-le"):
            needles.append(s.encode(enc))
        needles.append(base64.b64encode(s.encode()))
    # compressed but unencrypted payloads would also be a leak
    needles.append(zstandard.ZstdCompressor(level=3).compress(payloads[0])[8:40])
    everything = b"".join(p for _t, p in sniffer.seen)
    for n in needles:
        assert n not in everything, f"plaintext {n[:20]!r} visible on the broker"
    # the center received the large package intact
    rows = star.cli("center", "log", "--json", "--resource", "bulk").stdout
    assert '"applied"' in rows


def test_nothing_on_the_wire_confirms_a_guessed_payload(make_star, own_mosquitto, tmp_path):
    """An observer who guesses a payload (a row, a zero-update report, a small request)
    cannot check the guess against anything in clear: no package carries the hash or
    the length of its plaintext outside the sealed part."""
    import hashlib
    import sqlite3

    from exnode.node.kernel import envelope
    from exnode.node.kernel import identity as idn
    from exnode.plugins.builtin.crypto import DefaultSuite

    dbs = {n: tmp_path / f"{n}.db" for n in ("b1", "center", "b2")}
    for p in dbs.values():
        with sqlite3.connect(p) as db:
            db.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
    with sqlite3.connect(dbs["b1"]) as db:
        db.execute("INSERT INTO people VALUES (1, '张三')")
    res = {"database": "db", "table": "people", "key": ["id"], "owner": "b1"}
    sniffer = Sniffer(own_mosquitto.host, own_mosquitto.port)
    sniffer.start()
    star = make_star(own_mosquitto, node_settings={
        "b1": {"databases": {"db": {"url": f"sqlite:///{dbs['b1']}"}},
               "resources": {"people": {**res, "capture": {"strategy": "snapshot",
                                                           "schedule": {"every": "1s"}}}}},
        "center": {"databases": {"db": {"url": f"sqlite:///{dbs['center']}"}},
                   "resources": {"people": {**res, "subscribers": ["b2"]}}},
        "b2": {"databases": {"db": {"url": f"sqlite:///{dbs['b2']}"}},
               "resources": {"people": res}}})
    star.up()

    def kinds_seen() -> set[str]:
        out = set()
        for _t, p in list(sniffer.seen):
            if p.startswith(envelope.MAGIC):
                out.add(envelope.parse(p, 1 << 30).header.kind)
        return out

    wait_until(lambda: {"rows", "zero", "receipt"} <= kinds_seen(), 60, 0.5,
               "rows, a zero-update report and receipts on the wire")
    sniffer.stop()
    suite = DefaultSuite()
    keys = {n: idn.Identity(n, star.dir(n) / "keys").enc_key for n in star.nodes}
    opened = 0
    for _t, wire in sniffer.seen:
        if not wire.startswith(envelope.MAGIC):
            continue
        pkg = envelope.parse(wire, 1 << 30)
        me = pkg.header.rcpt[0]
        plain = envelope.open_payload(pkg, {suite.id: suite}, me, keys[me], 1 << 30)
        opened += 1
        assert hashlib.sha256(plain).digest() not in wire, pkg.header.kind
        clear = cbor2.loads(pkg.header_raw)
        # who, to whom, what kind, which resource, when: nothing about the content
        assert set(clear) <= envelope.HEADER_KEYS and not {"size", "phash"} & set(clear)
    assert opened >= 3
