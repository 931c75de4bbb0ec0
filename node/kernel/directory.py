"""Who the members are, and the signed global configuration (gconf) that says so.

- A bureau's :class:`Directory` comes from the newest valid gconf it has seen: from the
  retained ``gconf`` topic, or from its cache file while the center is down.
- The center's comes from its member registry; :class:`Gconf` signs and publishes a new
  version whenever the registry changes, and again every ``gconf.refresh_h``.
- :class:`Enrolment` answers enrolment requests at the center.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import cbor2
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine, select

from exnode.node.base.config import NODE_ID_RE, Config
from exnode.node.base.errors import IdentityError, PackageError
from exnode.node.kernel import identity as idn
from exnode.node.kernel import registry
from exnode.node.kernel.state import members, meta
from exnode.node.kernel.topics import Topics

log = structlog.get_logger("exnode")

SEEN_KEY = "gconf_seen_version"


@dataclass
class Directory:
    """Approved, unrevoked members (``members``), revoked ids, and the version and
    expiry of the global configuration they come from."""

    members: dict[str, idn.Member] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    version: int = 0
    expires: float = 0.0

    @property
    def valid(self) -> bool:
        return bool(self.members) and self.expires > time.time()

    def get(self, node_id: str) -> idn.Member | None:
        return self.members.get(node_id) if self.valid else None

    def ids(self) -> list[str]:
        return sorted(self.members)

    def has(self, node_id: str) -> bool:
        return self.get(node_id) is not None


class Members:
    """The node's current :class:`Directory` and how it is kept current."""

    def __init__(self, cfg: Config, identity: idn.Identity, engine: Engine) -> None:
        self.cfg = cfg
        self.identity = identity
        self.engine = engine
        self.is_center = cfg.node.role == "center"
        self.current = Directory()
        # The highest gconf version this bureau has ever taken, kept in the state DB: an
        # older one is refused even after the cache file is lost (no rollback to a time
        # before a revocation).
        self.floor = 0
        # (center) The registry's certificates already checked against the CA, by CA and
        # certificate bytes, with their validity window: the registry is read again
        # every 10 s, and checking a thousand members' signatures each time held the
        # state-DB thread for a tenth of a second. Only the current registry's are kept.
        self._checked: dict[tuple[bytes, bytes], tuple[idn.Member, dt.datetime]] = {}

    def load(self) -> None:
        """Center: from the registry. Bureau: from the cached global configuration."""
        if self.is_center:
            registry.ensure_self(self.engine, self.identity)
            self.from_registry()
            return
        self.load_floor()
        cache = self.cfg.keys_dir / idn.GCONF_CACHE
        if cache.exists():
            try:
                self.apply_gconf(cache.read_bytes(), save=False)
            except IdentityError as e:
                log.warning("gconf_cache_unusable", reason=str(e))

    def load_floor(self) -> None:
        """(bureau) The floor from the state DB: the highest gconf version taken, or the
        one the center named in its answer to enrolment."""
        with self.engine.connect() as conn:
            raw = conn.execute(select(meta.c.value).where(meta.c.key == SEEN_KEY)).scalar()
        self.floor = int(raw.decode()) if raw else 0

    def from_registry(self) -> None:
        """(center, state-DB thread) Approved and revoked members from the registry."""
        ca = self.identity.ca_cert
        assert ca is not None
        # The version and expiry are those of the last published global configuration.
        d = Directory(version=self.current.version,
                      expires=self.current.expires or time.time() + 3600)
        ca_der = ca.public_bytes(serialization.Encoding.DER)
        checked: dict[tuple[bytes, bytes], tuple[idn.Member, dt.datetime]] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(select(members)).mappings():
                if r["status"] == "approved" and r["cert"]:
                    try:
                        d.members[r["id"]] = self._member(bytes(r["cert"]), ca, ca_der,
                                                          checked)
                    except IdentityError as e:
                        log.warning("member_cert_invalid", member=r["id"], reason=str(e))
                elif r["status"] == "revoked":
                    d.revoked.add(r["id"])
        self._checked = checked
        self.current = d

    def _member(self, cert: bytes, ca: x509.Certificate, ca_der: bytes,
                checked: dict[tuple[bytes, bytes], tuple[idn.Member, dt.datetime]]
                ) -> idn.Member:
        """:func:`identity.member_from_cert`, checking the signature and extensions of a
        certificate once and its validity window every time."""
        key = (ca_der, cert)
        hit = self._checked.get(key)
        if hit is None:
            m = idn.member_from_cert(cert, ca)
            hit = (m, x509.load_der_x509_certificate(cert).not_valid_before_utc)
        else:
            now = _utcnow()
            if not (hit[1] <= now <= hit[0].not_after):
                raise IdentityError("member certificate expired or not yet valid")
        checked[key] = hit
        return hit[0]

    def apply_gconf(self, blob: bytes, save: bool = True) -> bool:
        """(bureau, state-DB thread) Take a signed gconf if it is newer; True if taken."""
        ca = self.identity.ca_cert
        if ca is None:
            raise IdentityError("no CA certificate: run 'exnode register TOKEN' first")
        g = idn.verify_gconf(blob, ca)
        if g["version"] < self.floor:
            raise IdentityError(f"global configuration version {g['version']} is older than "
                                f"version {self.floor}, which this node has already taken")
        if g["version"] < self.current.version:
            return False
        d = Directory(version=int(g["version"]), expires=float(g["expires"]),
                      revoked={r["id"] for r in g.get("revoked", [])})
        for m in g.get("members", []):
            try:
                mem = idn.member_from_cert(bytes(m["cert"]), ca)
            except IdentityError as e:
                log.warning("member_cert_invalid", member=m.get("id"), reason=str(e))
                continue
            if mem.id not in d.revoked:
                d.members[mem.id] = mem
        self.current = d
        me = d.members.get(self.identity.node_id)
        cert_path = self.cfg.keys_dir / idn.NODE_CERT
        if me is not None and me.sign_pub.public_bytes_raw() == self.identity.sign_pub \
                and not cert_path.exists():
            cert_path.write_bytes(me.cert_der)
        if save:
            idn.write_private(self.cfg.keys_dir / idn.GCONF_CACHE, blob)
        if d.version > self.floor:
            self.raise_floor(d.version)
        return True

    def raise_floor(self, version: int) -> None:
        """Remember ``version`` as the lowest gconf version this node may take from now."""
        with self.engine.begin() as conn:
            value = str(version).encode()
            if conn.execute(meta.update().where(meta.c.key == SEEN_KEY)
                            .values(value=value)).rowcount == 0:
                conn.execute(meta.insert().values(key=SEEN_KEY, value=value))
        self.floor = version


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


Db = Callable[..., Awaitable[Any]]
Publish = Callable[[str, bytes, bool], Awaitable[bool]]


class Gconf:
    """Receiving (bureau) and publishing (center) the global configuration."""

    def __init__(self, cfg: Config, members_: Members, db: Db, publish: Publish,
                 topics: Topics, on_change: Callable[[], None]) -> None:
        self.cfg = cfg
        self.members = members_
        self.db = db
        self.publish_raw = publish
        self.topics = topics
        self.on_change = on_change
        self.blob: bytes | None = None
        self.last_error = ""

    async def received(self, blob: bytes) -> None:
        """A message on the gconf topic (bureau)."""
        if self.members.is_center or not blob:
            return
        try:
            changed = await self.db(self.members.apply_gconf, blob)
        except IdentityError as e:
            log.warning("gconf_refused", reason=str(e))
            return
        if changed:
            log.info("gconf_loaded", version=self.members.current.version,
                     members=self.members.current.ids())
            self.on_change()

    async def publish(self) -> int:
        """Center: sign and publish (retained) a new global configuration version."""
        m = self.members
        await self.db(m.from_registry)
        blob, g = await self.db(registry.build_gconf, m.engine, m.identity,
                                self.cfg.gconf.validity_h * 3600,
                                {"host": self.cfg.broker.host, "port": self.cfg.broker.port})
        self.blob = blob
        m.current.version = g["version"]
        m.current.expires = float(g["expires"])
        if not await self.publish_raw(self.topics.gconf, blob, True):
            self.last_error = "gconf publish failed (not connected)"
        log.info("gconf_published", version=g["version"], members=len(g["members"]),
                 revoked=len(g["revoked"]))
        return int(g["version"])

    async def periodic(self) -> None:
        """Center: republish when the registry changed (or nothing was published yet).
        Bureau: say so when the cached gconf has expired."""
        m = self.members
        if m.is_center:
            before = set(m.current.members), set(m.current.revoked)
            await self.db(m.from_registry)
            after = set(m.current.members), set(m.current.revoked)
            if before != after or self.blob is None:
                await self.publish()
        elif m.current.members and not m.current.valid:
            log.error("gconf_expired", version=m.current.version)


class RateLimit:
    """A few attempts per key and minute (a token bucket per key), in bounded memory:
    at most ``max_keys`` keys, the least recently seen forgotten first."""

    def __init__(self, per_minute: int = 5, max_keys: int = 4096) -> None:
        self.burst = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return ok

    def __len__(self) -> int:
        return len(self._buckets)


class Enrolment:
    """The center's side of enrolment: check a request, answer it (authenticated with
    the token's secret), publish the gconf when a member was approved.

    Requests are rate-limited per node id (:class:`RateLimit`, 5 a minute): the excess
    is dropped unread and counted (``enrol_dropped``), never logged one by one. So is a
    request on a topic that names no valid node id."""

    def __init__(self, members_: Members, gconf: Gconf, db: Db, publish: Publish,
                 topics: Topics, log_event: Callable[[str, str, str, str], None],
                 counters: dict[str, int] | None = None,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.members = members_
        self.gconf = gconf
        self.db = db
        self.publish = publish
        self.topics = topics
        self.log_event = log_event
        self.counters: dict[str, int] = counters if counters is not None else {}
        self.on_change = on_change
        self.limit = RateLimit()

    def _drop(self, why: str) -> None:
        n = self.counters["enrol_dropped"] = self.counters.get("enrol_dropped", 0) + 1
        if n in (1, 10, 100) or n % 1000 == 0:
            log.warning("enrol_dropped", reason=why, dropped=n)

    async def received(self, topic: str, payload: bytes) -> None:
        if not self.members.is_center or topic.endswith("/reply"):
            return
        node_id = topic.rsplit("/", 1)[-1]
        if topic != self.topics.enrol(node_id) or not NODE_ID_RE.match(node_id):
            self._drop("not an enrolment topic of a valid node id")
            return
        if not self.limit.allow(node_id):
            self._drop("rate limit (5 requests a minute per node id)")
            return
        m = self.members
        try:
            req = cbor2.loads(payload)
            if not isinstance(req, dict) or req.get("id") != node_id:
                raise IdentityError("enrolment request does not match its topic")
            reply, secret = await self.db(registry.handle_enrol, m.engine, m.identity, req)
        except (IdentityError, PackageError, ValueError, KeyError, TypeError,
                cbor2.CBORDecodeError) as e:
            log.warning("enrol_refused", node=node_id, reason=str(e))
            await self.db(self.log_event, "enrol", node_id, "refused", str(e))
            # Say so at once (unauthenticated: we may not share a secret with the asker),
            # so that the bureau does not wait out its timeout.
            with contextlib.suppress(Exception):
                await self.publish(self.topics.enrol_reply(node_id),
                                   cbor2.dumps({"refused": str(e)[:200]}), False)
            return
        reply["ts"] = time.time()
        body = cbor2.dumps(reply, canonical=True)
        msg = cbor2.dumps({"body": body, "mac": idn.enrol_mac(secret, body)})
        del secret  # the registry has forgotten it too
        await self.db(self.log_event, "enrol", node_id, reply["status"], "")
        log.info("enrol_request", node=node_id, status=reply["status"])
        await self.publish(self.topics.enrol_reply(node_id), msg, False)
        if reply["status"] == "approved":
            await self.gconf.publish()
        self.on_change()
