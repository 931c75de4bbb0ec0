"""The bureau side of enrolment: ``exnode register TOKEN``."""

from __future__ import annotations

import asyncio
import hmac
import time
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2
from cryptography import x509

from exnode.node.base.config import Config, _load_with_lines, load_config
from exnode.node.base.errors import ExnodeError, IdentityError, UsageError
from exnode.node.kernel import identity as idn
from exnode.node.kernel.registry import enrol_body
from exnode.node.kernel.topics import Topics


def register_with_token(cfg: Config, cfg_path: Path, token: str,
                        timeout: float = 30.0) -> dict[str, Any]:
    """Send an authenticated enrolment request and store what the center answers."""
    if cfg.node.role != "bureau":
        raise UsageError("register runs on a bureau; the center enrols others")
    tok = idn.parse_token(token)
    if tok["node_id"] != cfg.node.id:
        raise UsageError(f"this token is for node '{tok['node_id']}', but this node is "
                         f"'{cfg.node.id}'")
    idn.generate_node_keys(cfg.keys_dir)
    ident = idn.Identity(cfg.node.id, cfg.keys_dir)
    req = {"id": cfg.node.id, "sign_pub": ident.sign_pub, "enc_pub": ident.enc_pub,
           "ts": int(time.time())}
    req["mac"] = idn.enrol_mac(tok["secret"], enrol_body(req))
    reply = asyncio.run(_exchange(cfg, tok, cbor2.dumps(req), timeout))
    try:
        outer = cbor2.loads(reply)
        body, mac = outer["body"], outer["mac"]
        if not isinstance(body, bytes) or not isinstance(mac, bytes):
            raise ValueError
        if not hmac.compare_digest(idn.enrol_mac(tok["secret"], body), mac):
            raise IdentityError("the answer to enrolment failed authentication")
        ans = cbor2.loads(body)
        ca = x509.load_pem_x509_certificate(bytes(ans["ca"]))
    except IdentityError:
        raise
    except Exception:
        raise IdentityError("the center's answer is not readable") from None
    if idn.fingerprint(ca) != tok["ca_fp"]:
        raise IdentityError("the center's CA certificate does not match the token's "
                            "fingerprint; refusing to trust it")
    (cfg.keys_dir / idn.CA_CERT).write_bytes(bytes(ans["ca"]))
    if ans.get("cert"):
        idn.member_from_cert(bytes(ans["cert"]), ca)
        (cfg.keys_dir / idn.NODE_CERT).write_bytes(bytes(ans["cert"]))
    update_config_file(cfg_path, {("broker", "host"): tok["host"],
                                  ("broker", "port"): tok["port"],
                                  ("broker", "topic_prefix"): tok["prefix"],
                                  ("center", "id"): tok["center_id"],
                                  ("center", "ca_fingerprint"): tok["ca_fp"]})
    load_config(cfg_path)
    return {"node": cfg.node.id, "center": tok["center_id"], "status": ans["status"],
            "ca_fingerprint": tok["ca_fp"]}


async def _exchange(cfg: Config, tok: dict[str, Any], request: bytes, timeout: float) -> bytes:
    from exnode.node.kernel.transport import broker_credentials

    b = cfg.broker
    topics = Topics(tok["prefix"])
    password, tls = broker_credentials(cfg)
    refused = ""
    try:
        async with aiomqtt.Client(tok["host"], tok["port"], username=b.username,
                                  password=password, tls_context=tls,
                                  identifier=f"exn-{cfg.node.id}-enrol",
                                  protocol=aiomqtt.ProtocolVersion.V311, clean_session=True,
                                  timeout=timeout) as client:
            await client.subscribe(topics.enrol_reply(cfg.node.id), qos=1)
            deadline = time.monotonic() + timeout
            attempt_every = 3.0
            async with asyncio.timeout(timeout):
                while True:
                    await client.publish(topics.enrol(cfg.node.id), request, qos=1)
                    try:
                        async with asyncio.timeout(min(attempt_every,
                                                       deadline - time.monotonic())):
                            async for msg in client.messages:
                                if msg.topic.value != topics.enrol_reply(cfg.node.id):
                                    continue
                                payload = bytes(msg.payload)  # type: ignore[arg-type]
                                why = _refusal(payload)
                                if why is None:
                                    return payload
                                # Unauthenticated (anyone could have sent it): a hint,
                                # not the answer. Wait on for an authenticated one.
                                refused = why
                    except TimeoutError:
                        if time.monotonic() >= deadline:
                            raise
    except TimeoutError:
        if refused:
            raise ExnodeError(f"the center refused the enrolment: {refused}") from None
        raise ExnodeError(f"no answer from center '{tok['center_id']}' within {timeout:.0f} s "
                          "(is its daemon running? was the token already used?)") from None
    except aiomqtt.MqttError as e:
        raise ExnodeError(f"cannot reach the broker at {tok['host']}:{tok['port']}: {e}") \
            from None


def _refusal(payload: bytes) -> str | None:
    """The reason of an (unauthenticated) refusal, bounded; None for anything else."""
    try:
        d = cbor2.loads(payload)
    except Exception:
        return None
    if isinstance(d, dict) and "refused" in d and "body" not in d:
        return "".join(c for c in str(d["refused"])[:200] if c.isprintable())
    return None


def update_config_file(path: Path, values: dict[tuple[str, str], Any]) -> None:
    """Set a few ``section.key`` values in the YAML file, keeping its comments."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    for (section, key), value in values.items():
        _data, where = _load_with_lines("\n".join(lines) + "\n", str(path))
        rendered = f"{key}: {value}"
        if (section, key) in where:
            i = where[(section, key)] - 1
            indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
            lines[i] = indent + rendered
        elif (section,) in where:
            i = where[(section,)] - 1
            lines.insert(i + 1, "  " + rendered)
        else:
            lines += ["", f"{section}:", "  " + rendered]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
