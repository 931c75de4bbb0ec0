"""Test helpers: craft packages as an attacker or a captured sender would, publish raw
MQTT messages, read a node's state DB."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2

from exnode.node.kernel import envelope
from exnode.node.kernel import identity as idn
from exnode.node.kernel.framing import frames
from exnode.node.tools.cluster import LocalStar
from exnode.plugins.builtin.crypto import DefaultSuite

SUITE = DefaultSuite()


def init_bureau(where: Path, node_id: str = "b1", **sections: Any) -> Path:
    """A bureau's config and keys, made by ``exnode init``, with ``sections`` (top-level
    settings) written into its YAML file. Returns the config file's path."""
    import os
    import subprocess
    import sys

    import yaml

    env = {k: v for k, v in os.environ.items() if not k.startswith("EXNODE_")}
    r = subprocess.run([sys.executable, "-m", "exnode.node", "init", "--role", "bureau",
                        "--id", node_id, "--dir", str(where)], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    path = where / "exnode.yaml"
    if sections:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        cfg.update(sections)
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def members(star: LocalStar, node: str = "b1") -> dict[str, idn.Member]:
    """The approved members as ``node`` knows them (from its cached global config)."""
    keys = star.dir(node) / "keys"
    ca = idn.x509.load_pem_x509_certificate((keys / idn.CA_CERT).read_bytes())
    g = idn.verify_gconf((keys / idn.GCONF_CACHE).read_bytes(), ca)
    return {m["id"]: idn.member_from_cert(m["cert"], ca) for m in g["members"]}


def identity(star: LocalStar, node: str) -> idn.Identity:
    return idn.Identity(node, star.dir(node) / "keys")


def craft(star: LocalStar, *, src: str, to: str, kind: str = "data", resource: str = "t",
          seq: int = 1, payload: bytes | None = None, signer: Any = None, ttl_s: int = 3600,
          items: list[bytes] | None = None, rcpt_key_of: str | None = None) -> envelope.Package:
    """A package claiming to come from ``src``; signed with ``src``'s real key unless
    ``signer`` (another private key) is given."""
    ms = members(star)
    key = signer if signer is not None else identity(star, src).sign_key
    if payload is None:
        payload = cbor2.dumps(items if items is not None else [b"crafted"])
    return envelope.build(suite=SUITE, sign_key=key, src=src, kind=kind,
                          rcpt={to: ms[rcpt_key_of or to].enc_pub}, resource=resource, seq=seq,
                          payload=payload, ttl_s=ttl_s)


def publish_raw(host: str, port: int, topic: str, messages: list[bytes]) -> None:
    async def go() -> None:
        async with aiomqtt.Client(host, port, protocol=aiomqtt.ProtocolVersion.V311) as c:
            for m in messages:
                await c.publish(topic, m, qos=1)

    asyncio.run(go())


def publish_package(star: LocalStar, topic: str, wire: bytes, pkg_id: str | None = None,
                    signer: str | None = None) -> None:
    """Publish a package as its sender would: chunked above 1,900,000 bytes, the chunk
    claim signed by ``signer`` (default: the package's source)."""
    if len(wire) <= 1_900_000:  # a whole package is its own frame
        publish_raw(star.host, star.port, topic, [wire])
        return
    if pkg_id is None or signer is None:
        h = envelope.parse(wire, 1 << 31).header
        pkg_id = pkg_id or h.id
        signer = signer or h.src

    def sign(message: bytes) -> tuple[str, bytes]:
        assert signer is not None
        return signer, identity(star, signer).sign(message)

    publish_raw(star.host, star.port, topic, list(frames(pkg_id, wire, 1_900_000, sign)))


def db_rows(star: LocalStar, node: str, sql: str, args: tuple = ()) -> list[tuple]:
    db = sqlite3.connect(Path(star.dir(node)) / "state.db", timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def refusals(star: LocalStar, node: str) -> list[tuple[str, str, str]]:
    """(pkg_id, peer, reason) of every refusal in ``node``'s exchange log."""
    return [tuple(r) for r in db_rows(star, node, "SELECT pkg_id, peer, reason FROM "
                                      "exchange_log WHERE status='refused' ORDER BY id")]
