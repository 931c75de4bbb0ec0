"""The bureau side of enrolment: ``exnode register TOKEN``."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import time
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2
import yaml
from cryptography import x509

from exnode.node.base.config import Config, load_config, parse_config
from exnode.node.base.errors import ConfigError, ExnodeError, IdentityError, UsageError
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
    login = (cfg.node.id, tok["broker_password"]) if tok["broker_password"] else None
    reply = asyncio.run(_exchange(cfg, tok, cbor2.dumps(req), timeout, login))
    try:
        outer = cbor2.loads(reply)
        body, mac = outer["body"], outer["mac"]
        if not isinstance(body, bytes) or not isinstance(mac, bytes):
            raise ValueError
        if not hmac.compare_digest(idn.enrol_mac(tok["secret"], body), mac):
            raise IdentityError("the answer to enrolment failed authentication")
        ans = cbor2.loads(body)
        ca = x509.load_pem_x509_certificate(bytes(ans["ca"]))
        floor = ans.get("gconf_floor", 0)
        if not isinstance(floor, int) or isinstance(floor, bool) or not 0 <= floor < 1 << 62:
            raise ValueError("gconf_floor")
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
    store_floor(cfg, ident, floor)
    values: dict[tuple[str, str], Any] = {
        ("broker", "host"): tok["host"], ("broker", "port"): tok["port"],
        ("broker", "topic_prefix"): tok["prefix"], ("center", "id"): tok["center_id"],
        ("center", "ca_fingerprint"): tok["ca_fp"]}
    if tok["broker_password"]:
        # The broker account the center made for this node (broker.dynsec): from now on
        # the node logs in with it. The token's enrolment secret is not kept anywhere.
        pw_file = cfg_path.parent / "broker.password"
        idn.write_private(pw_file, tok["broker_password"].encode() + b"\n")
        values[("broker", "username")] = cfg.node.id
        values[("broker", "password_file")] = pw_file.name
    update_config_file(cfg_path, values)
    load_config(cfg_path)
    return {"node": cfg.node.id, "center": tok["center_id"], "status": ans["status"],
            "ca_fingerprint": tok["ca_fp"], "gconf_floor": floor}


def store_floor(cfg: Config, ident: idn.Identity, floor: int) -> None:
    """Keep the center's newest gconf version as this node's floor (state DB): from its
    very first gconf on, the node refuses an older one."""
    from exnode.node.kernel.directory import Members
    from exnode.node.kernel.state import open_state

    if floor <= 0:
        return
    eng = open_state(cfg.state_url)
    try:
        m = Members(cfg, ident, eng)
        m.load_floor()
        if floor > m.floor:
            m.raise_floor(floor)
    finally:
        eng.dispose()


async def _exchange(cfg: Config, tok: dict[str, Any], request: bytes, timeout: float,
                    login: tuple[str, str] | None = None) -> bytes:
    from exnode.node.kernel.transport import broker_credentials, client_id

    b = cfg.broker
    topics = Topics(tok["prefix"])
    password, tls = broker_credentials(cfg)
    username = b.username
    if login is not None:
        username, password = login
    refused = ""
    try:
        # The node's one client id (the broker may bind it to this user); clean, as no
        # session of this node exists before it is enrolled.
        async with aiomqtt.Client(tok["host"], tok["port"], username=username,
                                  password=password, tls_context=tls,
                                  identifier=client_id(cfg.node.id, tok["prefix"]),
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
    """Set a few ``section.key`` values in the YAML file, keeping everything else (its
    comments too, even one after a value that changes).

    Each value is rendered by the YAML library (quoted where it must be) and put exactly
    where the old value was, found from the parser's positions; a missing key goes
    under its section, a missing section at the end. The result must read back with
    every value as given, or the file is left alone and the error names what to set."""
    name = str(path)
    text = path.read_text(encoding="utf-8")
    for (section, key), value in values.items():
        text = _set_value(text, name, section, key, value)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    for (section, key), value in values.items():
        got = (data.get(section) or {}).get(key) if isinstance(data, dict) else None
        if got != value or type(got) is not type(value):
            raise ConfigError(f"{name}: could not set {section}.{key} in this file; set it "
                              "by hand and run 'exnode config check'")
    parse_config(text, name)  # still a valid configuration
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    with contextlib.suppress(OSError):
        os.chmod(tmp, path.stat().st_mode & 0o7777)
    os.replace(tmp, path)


def _scalar(value: Any) -> str:
    """One YAML scalar, as the YAML library writes it (quoted when it must be)."""
    out = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1 << 20)
    out = out.removesuffix("\n").removesuffix("\n...")
    if "\n" in out:
        raise ConfigError(f"a configuration value does not fit on one line: {value!r}")
    return out


def _set_value(text: str, name: str, section: str, key: str, value: Any) -> str:
    rendered = _scalar(value)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{name}: the file must be a YAML mapping")
    for knode, vnode in root.value:
        if not (isinstance(knode, yaml.ScalarNode) and knode.value == section):
            continue
        if isinstance(vnode, yaml.MappingNode) and not vnode.flow_style:
            for k2, v2 in vnode.value:
                if isinstance(k2, yaml.ScalarNode) and k2.value == key:
                    if not isinstance(v2, yaml.ScalarNode):
                        break
                    start, end = v2.start_mark.index, v2.end_mark.index
                    if start == end:  # an empty value ('key:'): keep a space after ':'
                        rendered = " " + rendered if text[start - 1:start] == ":" else rendered
                    return text[:start] + rendered + text[end:]
            else:
                indent = " " * vnode.value[0][0].start_mark.column
                return _insert_after_line(text, knode.end_mark.index,
                                          f"{indent}{key}: {rendered}")
            break
        if isinstance(vnode, yaml.ScalarNode) and vnode.tag.endswith(":null") \
                and vnode.start_mark.index == vnode.end_mark.index:
            # 'section:' with nothing (or only comments) under it
            return _insert_after_line(text, knode.end_mark.index, f"  {key}: {rendered}")
        raise ConfigError(f"{name}:{knode.start_mark.line + 1}: cannot set {section}.{key} "
                          "here (not a block of settings); set it by hand")
    if text and not text.endswith("\n"):
        text += "\n"
    return text + f"\n{section}:\n  {key}: {rendered}\n"


def _insert_after_line(text: str, index: int, line: str) -> str:
    """``line`` as a new line after the one that holds ``index``."""
    eol = text.find("\n", index)
    if eol < 0:
        return text + "\n" + line + "\n"
    return text[:eol + 1] + line + "\n" + text[eol + 1:]
