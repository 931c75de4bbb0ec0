"""One broker connection, and nothing above it.

:class:`Transport` keeps an MQTT session up (MQTT 5, or 3.1.1 where the broker speaks
only that), subscribes to the topics it is given, puts every message it receives on
:attr:`Transport.inbound` and publishes bytes. It knows no packages, receipts or
members; the kernel composes it with the outbox and the inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
import structlog

from exnode.node.base.config import Config
from exnode.node.base.errors import ConfigError

log = structlog.get_logger("exnode")

# Small packets (receipts, acks) must not wait for Nagle's algorithm.
NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


def broker_credentials(cfg: Config) -> tuple[str | None, ssl.SSLContext | None]:
    """The broker password (from its file) and TLS context that the config asks for."""
    b = cfg.broker
    try:
        password = cfg.resolve(b.password_file).read_text().strip() if b.password_file else None
        tls = None
        if b.tls is not None:
            tls = ssl.create_default_context(cafile=str(cfg.resolve(b.tls.ca)))
            if b.tls.cert:
                tls.load_cert_chain(str(cfg.resolve(b.tls.cert)),
                                    str(cfg.resolve(b.tls.key)) if b.tls.key else None)
            if b.tls.insecure:
                tls.check_hostname = False
    except OSError as e:
        raise ConfigError(f"{cfg.source}: broker credentials: {e.strerror}: "
                          f"{e.filename}") from None
    except ValueError as e:  # ssl.SSLError is an OSError; bad PEM data is a ValueError
        raise ConfigError(f"{cfg.source}: broker TLS files: {e}") from None
    return password, tls


def client_id(node_id: str, sign_pub: bytes) -> str:
    """A stable MQTT client id, unique per node identity (so persistent sessions of two
    nodes that share a name never collide)."""
    return f"exn-{node_id}-{hashlib.sha256(sign_pub).hexdigest()[:8]}"


class Transport:
    """A persistent MQTT session with reconnects, like an aiomqtt ``Client`` that
    never gives up. ``on_connect`` runs after every (re)connect and subscribe."""

    def __init__(self, cfg: Config, identifier: str, subscriptions: list[str],
                 on_connect: Callable[[], Awaitable[None]], max_inflight: int,
                 queue_bytes: int = 48 << 20) -> None:
        self.cfg = cfg
        self.identifier = identifier
        self.subscriptions = subscriptions
        self.on_connect = on_connect
        self.max_inflight = max_inflight
        # Received and not yet taken: bounded in bytes, so that a flood (which nobody has
        # authenticated yet) costs bounded memory. What does not fit is dropped; a
        # sender whose package is dropped sends it again, as for any loss.
        self.inbound: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.queue_bytes = queue_bytes
        self.queued = 0
        self.dropped = 0
        self.connected = asyncio.Event()
        self.protocol = ""
        self.last_error = ""
        self._client: aiomqtt.Client | None = None

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> bool:
        """Publish with QoS 1; False when there is no connection or it dropped."""
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(topic, payload, qos=1, retain=retain)
            return True
        except aiomqtt.MqttError as e:
            self.last_error = f"publish failed: {e}"
            return False

    async def publish_frames(self, topic: str, frames: list[bytes]) -> bool:
        """Publish the frames of one package in order (QoS 1 keeps call order)."""
        client = self._client
        if client is None:
            return False
        try:
            for fr in frames:
                await client.publish(topic, fr, qos=1)
            return True
        except aiomqtt.MqttError as e:
            self.last_error = f"publish failed: {e}"
            return False

    def _queue(self, msg: aiomqtt.Message) -> None:
        payload = msg.payload if isinstance(msg.payload, (bytes, bytearray)) else b""
        if self.queued + len(payload) > self.queue_bytes:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("inbound_dropped", dropped=self.dropped,
                            reason="receive queue full")
            return
        self.queued += len(payload)
        self.inbound.put_nowait((msg.topic.value, bytes(payload)))

    async def get(self) -> tuple[str, bytes]:
        """The next message received: (topic, payload)."""
        item = await self.inbound.get()
        self.queued -= len(item[1])
        return item

    def get_nowait(self) -> tuple[str, bytes] | None:
        if self.inbound.empty():
            return None
        item = self.inbound.get_nowait()
        self.queued -= len(item[1])
        return item

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe and receive until ``stop`` is set; reconnect with backoff."""
        b = self.cfg.broker
        versions = {"5": [aiomqtt.ProtocolVersion.V5], "3.1.1": [aiomqtt.ProtocolVersion.V311],
                    "auto": [aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311]}[b.protocol]
        attempt = 0
        backoff = 0.5
        password, tls = broker_credentials(self.cfg)
        while not stop.is_set():
            if len(versions) > 1:
                versions = await self._probe(versions, password, tls)
                if len(versions) > 1:
                    # Inconclusive (broker down, or it dropped the probe): ask again later
                    # rather than try a 5 connect with properties that may never be answered.
                    log.warning("broker_unreachable", host=b.host, port=b.port,
                                reason=self.last_error)
                    await sleep_or_stop(stop, backoff)
                    backoff = min(backoff * 2, 15.0)
                    continue
            proto = versions[attempt % len(versions)]
            kwargs: dict[str, Any] = {}
            if proto == aiomqtt.ProtocolVersion.V5:
                from paho.mqtt.packettypes import PacketTypes
                from paho.mqtt.properties import Properties

                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = b.session_expiry_s
                kwargs.update(clean_start=False, properties=props)
            else:
                kwargs.update(clean_session=False)
            try:
                async with aiomqtt.Client(
                    b.host, b.port, identifier=self.identifier, protocol=proto,
                    username=b.username, password=password, keepalive=b.keepalive,
                    tls_context=tls, max_inflight_messages=self.max_inflight,
                    socket_options=NODELAY, timeout=30, **kwargs,
                ) as client:
                    self._client = client
                    self.protocol = "5" if proto == aiomqtt.ProtocolVersion.V5 else "3.1.1"
                    versions = [proto]
                    attempt = 0
                    backoff = 0.5
                    await client.subscribe([(t, 1) for t in self.subscriptions])
                    self.connected.set()
                    log.info("broker_connected", host=b.host, port=b.port,
                             protocol=self.protocol)
                    await self.on_connect()
                    async for msg in client.messages:
                        self._queue(msg)
            except (aiomqtt.MqttError, OSError) as e:
                was = self.connected.is_set()
                self.connected.clear()
                self._client = None
                self.last_error = f"broker: {e}"
                if was:
                    log.warning("broker_disconnected", reason=str(e))
                else:
                    log.warning("broker_unreachable", host=b.host, port=b.port, reason=str(e))
                attempt += 1
                await sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 15.0)
            finally:
                self.connected.clear()
                self._client = None

    async def _probe(self, versions: list[Any], password: str | None,
                     tls: ssl.SSLContext | None) -> list[Any]:
        """'auto': ask the broker with a plain MQTT 5 connect whether it speaks 5 (some
        brokers, amqtt among them, never answer a 5 connect that carries properties)."""
        b = self.cfg.broker
        try:
            async with aiomqtt.Client(b.host, b.port, protocol=aiomqtt.ProtocolVersion.V5,
                                      identifier=self.identifier + "-probe",
                                      username=b.username, password=password,
                                      tls_context=tls, timeout=5):
                return [aiomqtt.ProtocolVersion.V5]
        except aiomqtt.MqttCodeError as e:
            if getattr(e, "rc", None) in (1, 132):  # unacceptable / unsupported version
                return [aiomqtt.ProtocolVersion.V311]
            self.last_error = f"broker: {e}"
            return versions
        except aiomqtt.MqttError as e:
            self.last_error = f"broker: {e}"
            return versions


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)

