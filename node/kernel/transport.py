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
import os
import secrets
import socket
import ssl
from collections.abc import Awaitable, Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import aiomqtt
import structlog
from paho.mqtt.reasoncodes import ReasonCode

from exnode.node.base.config import Config
from exnode.node.base.errors import ConfigError

CONNECT_TIMEOUT_S = 10.0  # no CONNACK by then: try again
OPERATION_TIMEOUT_S = 30.0  # subscribe, publish

log = structlog.get_logger("exnode")

# Small packets (receipts, acks) must not wait for Nagle's algorithm.
NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


def broker_credentials(cfg: Config) -> tuple[str | None, ssl.SSLContext | None]:
    """The broker password (from its file) and TLS context that the config asks for;
    a ``ConfigError`` naming the setting and the file when one cannot be read."""
    b = cfg.broker

    def readable(setting: str, value: str) -> Path:
        path = cfg.resolve(value)
        try:
            with path.open("rb"):
                pass
        except OSError as e:
            raise ConfigError(f"{cfg.source}: {setting}: cannot read {path}: "
                              f"{e.strerror}") from None
        return path

    password = None
    if b.password_file:
        password = readable("broker.password_file", b.password_file).read_text().strip()
    tls = None
    if b.tls is not None:
        ca = readable("broker.tls.ca", b.tls.ca)
        cert = readable("broker.tls.cert", b.tls.cert) if b.tls.cert else None
        key = readable("broker.tls.key", b.tls.key) if b.tls.key else None
        try:
            tls = ssl.create_default_context(cafile=str(ca))
            if cert is not None:
                tls.load_cert_chain(str(cert), str(key) if key else None)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise ConfigError(f"{cfg.source}: broker.tls: the certificate files are not "
                              f"usable ({ca}{', ' + str(cert) if cert else ''}): "
                              f"{getattr(e, 'reason', None) or e}") from None
        if b.tls.insecure:
            tls.check_hostname = False
    return password, tls


_BAD_LOGIN = {4, 134}        # MQTT 3.1.1 / 5: bad user name or password
_NOT_AUTHORIZED = {5, 135}   # not authorized (Mosquitto's answer to a bad password in 5)


def connect_error(e: BaseException, cfg: Config) -> str:
    """Why a connection to the broker failed, in one line with the settings to look at:
    'connection refused by the broker: bad user name or password (broker.username /
    broker.password_file)', 'the broker closed the connection during the handshake: does
    the broker expect TLS? set broker.tls.ca', 'broker unreachable: ...'."""
    b = cfg.broker
    where = f"{b.host}:{b.port}"
    rc = getattr(e, "rc", None)
    code = getattr(rc, "value", rc)
    if code in _BAD_LOGIN or code in _NOT_AUTHORIZED:
        who = f"user '{b.username}'" if b.username else "no user name set"
        why = "bad user name or password" if code in _BAD_LOGIN else \
            "not authorized (a bad user name or password, or a user the broker refuses)"
        hint = ("; with broker.dynsec the center deletes a revoked node's account: was "
                "this node revoked?" if cfg.node.role == "bureau" and b.username else "")
        return (f"connection refused by the broker: {why} ({who}; broker.username / "
                f"broker.password_file){hint}")
    if isinstance(code, int):
        return f"connection refused by the broker: {rc} (code {code})"
    text = str(e)
    low = text.lower()
    if "certificate verify failed" in low:
        if "hostname" in low or "ip address mismatch" in low:
            return (f"the broker's certificate does not name '{b.host}' (broker.host; "
                    f"broker.tls.insecure skips this check): {text}")
        return (f"the broker's certificate is not trusted by broker.tls.ca: {text}")
    if "wrong version number" in low or "record layer failure" in low \
            or ("ssl" in low and b.tls is not None):
        return (f"TLS handshake with {where} failed: is it a TLS listener? (broker.tls, "
                f"broker.port): {text}")
    if "connection refused" in low:
        return (f"broker unreachable: nothing listens on {where} (is the broker running? "
                "broker.host / broker.port)")
    if "name or service not known" in low or "nodename nor servname" in low \
            or "temporary failure in name resolution" in low:
        return f"broker unreachable: cannot resolve broker.host '{b.host}' ({text})"
    if "timed out" in low or "reset by peer" in low or "broken pipe" in low \
            or "unexpected eof" in low or "disconnected" in low:
        if b.tls is None:
            return ("the broker closed the connection during the handshake: does the "
                    f"broker expect TLS? set broker.tls.ca ({where}: {text})")
        return (f"the broker at {where} closed the connection or did not answer the "
                f"handshake ({text})")
    if "no route to host" in low or "network is unreachable" in low:
        return f"broker unreachable: {where}: {text}"
    return f"broker {where}: {text}"


def client_id(node_id: str, topic_prefix: str) -> str:
    """The one MQTT client id of a node: the daemon and ``exnode register`` both use it,
    and it stays the same across restarts (the persistent session lives under it).

    It is public by design (the center derives it when it creates the node's broker
    account); what protects a session is the broker binding the id to one user
    (dynamic security's ``clientid``, or ``use_username_as_clientid``). The prefix is in
    it so that networks sharing one broker never share a session."""
    return f"exn-{node_id}-{hashlib.sha256(topic_prefix.encode()).hexdigest()[:8]}"


class _CountedQueue(asyncio.Queue):  # type: ignore[type-arg]
    """aiomqtt's queue of received messages, counted in the transport's bytes: paho
    reads the socket as fast as the event loop lets it, so this is where a flood would
    pile up first."""

    def __init__(self, transport: Transport) -> None:
        super().__init__()
        self.transport = transport

    def put_nowait(self, item: aiomqtt.Message) -> None:
        if self.transport._arrived(_size(item.payload)):
            super().put_nowait(item)

    def get_nowait(self) -> aiomqtt.Message:
        item = super().get_nowait()
        self.transport.queued -= _size(item.payload)
        return item


def _size(payload: Any) -> int:
    return len(payload) if isinstance(payload, (bytes, bytearray)) else 0


class _Login:
    """The broker password, and the one that replaces it (``<password_file>.next``,
    written when the center sends a new one: node/kernel/login.py). Refused with one,
    the transport tries the other at once; the new one, once it worked, becomes the
    password file."""

    _REFUSED = {4, 5, 134, 135}  # MQTT 3.1.1 / 5: bad user name or password, not authorized

    def __init__(self, cfg: Config, password: str | None) -> None:
        from exnode.node.kernel.login import next_password_file

        self.cfg = cfg
        self.password = password
        self.next = next_password_file(cfg)
        self.trying_next = False

    def refused(self, e: BaseException) -> bool:
        """After a failed connect: whether to try the other password now."""
        rc = getattr(e, "rc", None)
        code = getattr(rc, "value", rc)
        if code not in self._REFUSED or self.next is None:
            return False
        if self.trying_next:  # the new one did not work either: back to the file's
            self.trying_next = False
            self.password, _tls = broker_credentials(self.cfg)
            return False
        try:
            new = self.next.read_text().strip()
        except OSError:
            return False
        if not new or new == self.password:
            return False
        self.password, self.trying_next = new, True
        return True

    def worked(self) -> None:
        if self.trying_next and self.next is not None and self.cfg.broker.password_file:
            with contextlib.suppress(OSError):
                os.replace(self.next, self.cfg.resolve(self.cfg.broker.password_file))
                log.info("broker_login_replaced")
        self.trying_next = False


class Transport:
    """A persistent MQTT session with reconnects, like an aiomqtt ``Client`` that
    never gives up. ``on_connect`` runs after every (re)connect and subscribe.

    ``live_only`` are subscribed topics (inboxes) on which a retained message is never
    wanted: under MQTT 5 they are subscribed with retain handling 2 (the broker sends no
    retained message on subscribe), and any message that still comes with the retain
    flag (MQTT 3.1.1 brokers) is dropped and counted in :attr:`retained_dropped`."""

    def __init__(self, cfg: Config, identifier: str, subscriptions: list[str],
                 on_connect: Callable[[], Awaitable[None]], max_inflight: int,
                 queue_bytes: int = 8 << 20, live_only: Collection[str] = ()) -> None:
        self.cfg = cfg
        self.identifier = identifier
        self.subscriptions = subscriptions
        self.live_only = frozenset(live_only)
        self.retained_dropped = 0
        self.on_connect = on_connect
        self.max_inflight = max_inflight
        # Received and not yet taken: bounded in bytes, so that a flood (which nobody has
        # authenticated yet) costs bounded memory. What does not fit is dropped; a
        # sender whose package is dropped sends it again, as for any loss.
        self.inbound: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.queue_bytes = queue_bytes
        self.queued = 0
        self._paused: tuple[Any, int, Any, Any] | None = None
        self.paused_count = 0
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

    async def publish_frames(self, topic: str, frames: Iterable[bytes]) -> bool:
        """Publish the frames of one package in order (QoS 1 keeps call order). The
        frames are made one at a time, as they go: a large package is never held twice."""
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

    def _arrived(self, n: int) -> bool:
        """A message of ``n`` bytes was read: count it, pause reading when the queues are
        full; False (dropped) only if pausing could not hold it."""
        if self.queued + n > 2 * self.queue_bytes:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("inbound_dropped", dropped=self.dropped,
                            reason="receive queue full")
            return False
        self.queued += n
        if self.queued > self.queue_bytes:
            self._pause()
        return True

    def _queue(self, msg: aiomqtt.Message) -> None:
        payload = msg.payload if isinstance(msg.payload, (bytes, bytearray)) else b""
        self.queued += len(payload)  # taken from the client's queue: still ours
        self.inbound.put_nowait((msg.topic.value, bytes(payload)))

    def _taken(self, item: tuple[str, bytes]) -> None:
        self.queued -= len(item[1])
        if self._paused is not None and self.queued <= self.queue_bytes // 2:
            self._resume()

    async def get(self) -> tuple[str, bytes]:
        """The next message received: (topic, payload)."""
        item = await self.inbound.get()
        self._taken(item)
        return item

    def get_nowait(self) -> tuple[str, bytes] | None:
        if self.inbound.empty():
            return None
        item = self.inbound.get_nowait()
        self._taken(item)
        return item

    # --- back-pressure: stop reading the socket while the queue is full ----------------------
    # What paho has read it has acknowledged, so dropping it would cost the sender a
    # retransmission. Instead the socket is not read until we have caught up: TCP then
    # holds the sender (the broker, which queues for the session). asyncio gives no way
    # to pause a reader it did not create, so the callback aiomqtt registered is taken
    # off the selector and put back; where that is not possible, the queue drops beyond
    # twice its bound instead.

    def _pause(self) -> None:
        if self._paused is not None or self._client is None:
            return
        try:
            fd = self._client._client.socket().fileno()
            loop = asyncio.get_running_loop()
            handle = loop._selector.get_key(fd).data[0]  # type: ignore[attr-defined]
            callback, args = handle._callback, handle._args
        except Exception as e:
            log.warning("pause_failed", error=repr(e))
            return
        loop.remove_reader(fd)
        self._paused = (self._client, fd, callback, args)
        self.paused_count += 1

    def _resume(self) -> None:
        paused, self._paused = self._paused, None
        if paused is None:
            return
        client, fd, callback, args = paused
        if client is self._client:  # not for a connection that is gone
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().add_reader(fd, callback, *args)

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe and receive until ``stop`` is set; reconnect with backoff."""
        b = self.cfg.broker
        versions = {"5": [aiomqtt.ProtocolVersion.V5], "3.1.1": [aiomqtt.ProtocolVersion.V311],
                    "auto": [aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311]}[b.protocol]
        attempt = 0
        backoff = 0.5
        password, tls = broker_credentials(self.cfg)
        login = _Login(self.cfg, password)
        while not stop.is_set():
            password = login.password
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
                    socket_options=NODELAY, timeout=CONNECT_TIMEOUT_S,
                    queue_type=lambda maxsize: _CountedQueue(self), **kwargs,
                ) as client:
                    # a connect that got no answer is tried again after 10 s; a publish
                    # of a large chunk under load may take longer
                    client.timeout = OPERATION_TIMEOUT_S
                    self._client = client
                    self._paused = None
                    self.protocol = "5" if proto == aiomqtt.ProtocolVersion.V5 else "3.1.1"
                    versions = [proto]
                    attempt = 0
                    backoff = 0.5
                    await client.subscribe(self._subscribe_list(proto))
                    self.connected.set()
                    log.info("broker_connected", host=b.host, port=b.port,
                             protocol=self.protocol)
                    login.worked()
                    await self.on_connect()
                    async for msg in client.messages:
                        if msg.retain and msg.topic.value in self.live_only:
                            self._retained(msg.topic.value)
                            continue
                        self._queue(msg)
            except (aiomqtt.MqttError, OSError) as e:
                was = self.connected.is_set()
                self.connected.clear()
                self._client = None
                self.last_error = connect_error(e, self.cfg)
                if was:
                    log.warning("broker_disconnected", reason=str(e))
                else:
                    log.warning("broker_unreachable", host=b.host, port=b.port, reason=str(e))
                attempt += 1
                if login.refused(e):
                    continue  # the other password at once (see _Login)
                await sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 15.0)
            finally:
                self.connected.clear()
                self._client = None

    def _subscribe_list(self, proto: Any) -> list[tuple[str, Any]]:
        if proto != aiomqtt.ProtocolVersion.V5:
            return [(t, 1) for t in self.subscriptions]
        from paho.mqtt.subscribeoptions import SubscribeOptions

        return [(t, SubscribeOptions(qos=1, retainHandling=2 if t in self.live_only else 0))
                for t in self.subscriptions]

    def _retained(self, topic: str) -> None:
        """A retained message on an inbox: anyone allowed to write there could have left
        it to be delivered again at every subscribe. Dropped, counted, logged sparingly."""
        self.retained_dropped += 1
        n = self.retained_dropped
        if n in (1, 10, 100) or n % 1000 == 0:
            log.warning("retained_dropped", topic=topic[:200], dropped=n)

    async def _probe(self, versions: list[Any], password: str | None,
                     tls: ssl.SSLContext | None) -> list[Any]:
        """'auto': ask the broker with a plain MQTT 5 connect whether it speaks 5 (some
        brokers, amqtt among them, never answer a 5 connect that carries properties).

        The probe is anonymous, under a throwaway client id: with the node's own id and
        login it would take over (and, clean, wipe) the node's persistent session where
        the broker binds the client id to the user. A refusal in MQTT 5's own terms (a
        reason code of 128 or more, such as 'not authorized') is an answer in MQTT 5."""
        b = self.cfg.broker
        try:
            async with aiomqtt.Client(b.host, b.port, protocol=aiomqtt.ProtocolVersion.V5,
                                      identifier=f"exn-probe-{secrets.token_hex(6)}",
                                      tls_context=tls, timeout=5):
                return [aiomqtt.ProtocolVersion.V5]
        except aiomqtt.MqttCodeError as e:
            rc = getattr(e, "rc", None)
            if rc in (1, 132):  # unacceptable / unsupported version
                return [aiomqtt.ProtocolVersion.V311]
            if isinstance(rc, ReasonCode) and rc.value >= 128:
                return [aiomqtt.ProtocolVersion.V5]
            self.last_error = connect_error(e, self.cfg)
            return versions
        except aiomqtt.MqttError as e:
            self.last_error = connect_error(e, self.cfg)
            return versions


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)

