"""What the broker (or anyone subscribed to '#') sees: no plaintext, ever."""

from __future__ import annotations

import asyncio
import base64
import os
import threading

import aiomqtt
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
