"""The broker binds each client to one identity, and exnode uses it so (issue 8, must-have
10, with the enrolment parts of 9 and 11).

Every star here runs on a Mosquitto of the test's own, started from a configuration
shipped in packaging/mosquitto/ with only the port and the paths replaced: the
dynamic-security one (TLS, accounts managed by the center) for most tests, the
password-file one for its client-id binding.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import pwd
import shutil
import subprocess
import uuid
from pathlib import Path

import aiomqtt
import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exnode.node.base.config import load_config
from exnode.node.base.errors import ExnodeError
from exnode.node.kernel import identity as idn
from exnode.node.kernel.enrol import register_with_token
from exnode.node.kernel.transport import client_id
from exnode.node.tools.broker import free_port
from exnode.node.tools.cluster import wait_until

from ..conftest import Broker
from ..helpers import craft, db_rows

SHIPPED = Path(__file__).resolve().parents[2] / "packaging" / "mosquitto"
CENTER_PW = "center-broker-password-for-tests"


def shipped_conf(name: str, dest: Path, subs: dict[str, str]) -> Path:
    """The shipped file ``name`` with each line in ``subs`` replaced (each must be there,
    so a change to the shipped file cannot silently leave the test on other settings)."""
    lines = (SHIPPED / name).read_text().splitlines()
    for old, new in subs.items():
        assert lines.count(old) == 1, f"{name} no longer has the line {old!r}"
        lines[lines.index(old)] = new
    conf = dest / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _tls(dest: Path) -> None:
    """A CA and a broker certificate for 'localhost', as an operator would have."""
    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (dest / "ca.pem").write_bytes(ca.public_bytes(pem))
    (dest / "broker.pem").write_bytes(cert.public_bytes(pem))
    (dest / "broker.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _give_to_mosquitto(path: Path) -> None:
    """Mosquitto started as root runs as the mosquitto user: let it read and write."""
    if os.geteuid() != 0:
        return
    try:
        u = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    for p in [path, *path.rglob("*")]:
        os.chown(p, u.pw_uid, u.pw_gid)


@pytest.fixture
def dynsec_broker():
    if shutil.which("mosquitto_ctrl") is None:
        pytest.fail("mosquitto_ctrl is not installed (apt-get install mosquitto-clients)")
    d = Path(f"/tmp/exn-broker-{uuid.uuid4().hex[:8]}")
    d.mkdir(mode=0o700)
    _tls(d)
    subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(d / "dynsec.json"), "center",
                    CENTER_PW], check=True, capture_output=True, timeout=30)
    port = free_port()
    conf = shipped_conf("exnode-dynsec.conf", d, {
        "listener 8883": f"listener {port} 127.0.0.1",
        "cafile /etc/mosquitto/certs/exnode-ca.pem": f"cafile {d}/ca.pem",
        "certfile /etc/mosquitto/certs/exnode-broker.pem": f"certfile {d}/broker.pem",
        "keyfile /etc/mosquitto/certs/exnode-broker.key": f"keyfile {d}/broker.key",
        "plugin_opt_config_file /var/lib/mosquitto/dynamic-security.json":
            f"plugin_opt_config_file {d}/dynsec.json",
        "#persistence_location /var/lib/mosquitto/": f"persistence_location {d}/",
    })
    _give_to_mosquitto(d)
    b = Broker("localhost", port, conf=conf)
    b.start()
    b.dir = d
    yield b
    b.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def star(make_star, dynsec_broker):
    """A center (broker.dynsec) and two bureaus over TLS, the bureaus enrolled through
    accounts the center created."""
    d = dynsec_broker.dir
    (d / "center.password").write_text(CENTER_PW + "\n")
    s = make_star(dynsec_broker, bureaus=("b1", "b2"),
                  settings={"broker": {"tls": {"ca": str(d / "ca.pem")}}},
                  node_settings={"center": {"broker": {
                      "dynsec": True, "username": "center",
                      "password_file": str(d / "center.password")}}})
    s.up()
    return s


def _login(star, node: str) -> tuple[str, str]:
    cfg = load_config(star.config_path(node))
    assert cfg.broker.username == node and cfg.broker.password_file
    return node, cfg.resolve(cfg.broker.password_file).read_text().strip()


def _ctx_for(star):
    import ssl

    cfg = load_config(star.config_path("center"))
    return ssl.create_default_context(cafile=str(cfg.resolve(cfg.broker.tls.ca)))


def _connect(star, user: str, password: str, cid: str, **kw) -> aiomqtt.Client:
    return aiomqtt.Client(star.host, star.port, username=user, password=password,
                          identifier=cid, tls_context=_ctx_for(star),
                          protocol=aiomqtt.ProtocolVersion.V5, timeout=10, **kw)


def _refused(star, user: str, password: str, cid: str) -> str:
    async def go() -> str:
        try:
            async with _connect(star, user, password, cid):
                return "connected"
        except aiomqtt.MqttError as e:
            return str(e)

    return asyncio.run(go())


def _count(star, node: str, event: str) -> int:
    return (star.dir(node) / "daemon.log").read_text().count(f'"event": "{event}"')


# --- one identity per client --------------------------------------------------------------

def test_a_member_cannot_take_over_another_members_client_id(star):
    user, pw = _login(star, "b1")
    b2_id = client_id("b2", star.prefix)
    before = _count(star, "b2", "broker_connected"), _count(star, "b2", "broker_disconnected")
    # b1's own login, b2's client id: refused by the broker, b2 is not pushed off
    assert "Not authorized" in _refused(star, user, pw, b2_id)
    # b1 under its own id: allowed (so it was the id that was refused, not the login)
    assert _refused(star, user, pw, client_id("b1", star.prefix)) == "connected"
    star.wait_connected("b1")  # pushed off by its own login just now; back again
    assert star.call("b1", "POST", "/ping", {"node": "b2", "timeout": 20})["rtt_ms"] > 0
    assert (_count(star, "b2", "broker_connected"),
            _count(star, "b2", "broker_disconnected")) == before, "b2 lost its connection"
    # and nobody gets in without a login
    assert "Not authorized" in _refused(star, None, None, b2_id)
    # 'register' logs in under the node's client id too: not while its daemon runs
    r = star.cli("b2", "register", "exn1.anything")
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    assert "daemon of this node is running" in r.stderr


def test_invite_with_dynsec_needs_the_running_center(tmp_path):
    from exnode.node.tools.cluster import exnode_cmd

    subprocess.run([*exnode_cmd(), "init", "--role", "center", "--id", "center", "--dir",
                    str(tmp_path)], check=True, capture_output=True, timeout=60)
    cfg = tmp_path / "exnode.yaml"
    cfg.write_text(cfg.read_text().replace("  protocol: auto", "  protocol: auto\n"
                                           "  dynsec: true"))
    r = subprocess.run([*exnode_cmd(), "-c", str(cfg), "nodes", "invite", "b5"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    assert "daemon must be running" in r.stderr


def test_password_file_configuration_binds_the_client_id_to_the_user(tmp_path):
    """The password-file variant (exnode.conf): use_username_as_clientid. b1 asking for
    b2's client id gets its own; b2's persistent session and its queue stay."""
    d = Path(f"/tmp/exn-broker-{uuid.uuid4().hex[:8]}")
    d.mkdir(mode=0o700)
    try:
        _tls(d)
        pw = d / "exnode.passwd"
        pw.touch()
        for user in ("center", "b1", "b2"):
            subprocess.run(["mosquitto_passwd", "-b", str(pw), user, f"pw-{user}"],
                           check=True, capture_output=True, timeout=30)
        shutil.copy(SHIPPED / "exnode.acl", d / "exnode.acl")
        port = free_port()
        conf = shipped_conf("exnode.conf", d, {
            "listener 8883": f"listener {port} 127.0.0.1",
            "cafile /etc/mosquitto/certs/exnode-ca.pem": f"cafile {d}/ca.pem",
            "certfile /etc/mosquitto/certs/exnode-broker.pem": f"certfile {d}/broker.pem",
            "keyfile /etc/mosquitto/certs/exnode-broker.key": f"keyfile {d}/broker.key",
            "password_file /etc/mosquitto/exnode.passwd": f"password_file {pw}",
            "acl_file /etc/mosquitto/exnode.acl": f"acl_file {d}/exnode.acl",
            "#persistence_location /var/lib/mosquitto/": f"persistence_location {d}/",
        })
        _give_to_mosquitto(d)
        broker = Broker("localhost", port, conf=conf)
        broker.start()
        import ssl

        ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        def client(user: str, cid: str, clean: bool) -> aiomqtt.Client:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 300
            return aiomqtt.Client("localhost", port, username=user, password=f"pw-{user}",
                                  identifier=cid, tls_context=ctx, clean_start=clean,
                                  properties=props, protocol=aiomqtt.ProtocolVersion.V5,
                                  timeout=10)

        inbox = "exn/v1/in/b2"

        async def go() -> list[bytes]:
            async with client("b2", "exn-b2", True) as c:  # b2's session, subscribed
                await c.subscribe(inbox, qos=1)
            async with client("center", "exn-center", True) as c:  # queued while away
                await c.publish(inbox, b"queued for b2", qos=1)
            async with client("b1", "exn-b2", True):  # b1 asks for b2's id, clean
                pass
            got = []
            async with client("b2", "exn-b2", False) as c:
                async with asyncio.timeout(10):
                    async for m in c.messages:
                        got.append(bytes(m.payload))
                        break
            return got

        try:
            assert asyncio.run(go()) == [b"queued for b2"]
        finally:
            broker.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- revocation takes the broker account away ------------------------------------------------

def test_revoke_drops_the_connection_and_the_account(star):
    user, pw = _login(star, "b2")
    r = star.cli("center", "nodes", "revoke", "b2", "--json")
    assert r.returncode == 0, r.stderr
    # when the command returns, the account is gone and b2's live connection with it
    wait_until(lambda: not star.status("b2")["broker"]["connected"], 10, 0.1,
               "b2 to be disconnected")
    assert _count(star, "b2", "broker_disconnected") >= 1
    assert "Not authorized" in _refused(star, user, pw, client_id("b2", star.prefix))
    # b2 keeps trying and stays out; b1 is not affected
    assert star.call("b1", "POST", "/ping", {"node": "center", "timeout": 20})["rtt_ms"] > 0
    assert not star.status("b2")["broker"]["connected"]


# --- retained messages on an inbox ----------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_retained_message_on_the_center_inbox_is_not_taken_again(make_star, dynsec_broker,
                                                                   protocol):
    d = dynsec_broker.dir
    (d / "center.password").write_text(CENTER_PW + "\n")
    star = make_star(dynsec_broker, bureaus=("b1",),
                     settings={"broker": {"tls": {"ca": str(d / "ca.pem")}}},
                     node_settings={"center": {"broker": {
                         "dynsec": True, "username": "center", "protocol": protocol,
                         "password_file": str(d / "center.password")}}})
    star.up()
    star.stop("b1")  # its login is used below, under its own client id
    user, pw = _login(star, "b1")
    left = craft(star, src="b1", to="center", resource="left", seq=1)

    def rows(pkg) -> int:
        return len(db_rows(star, "center", "SELECT id FROM exchange_log WHERE pkg_id=? AND "
                           "event IN ('applied', 'duplicate', 'refused')", (pkg.header.id,)))

    async def publish(pkg, retain: bool) -> None:
        async with _connect(star, user, pw, client_id("b1", star.prefix)) as c:
            await c.publish(star.topics.inbox("center"), pkg.wire, qos=1, retain=retain)

    # a member leaves a package retained on the center's inbox; it arrives once, live
    asyncio.run(publish(left, True))
    wait_until(lambda: rows(left) == 1, 20, 0.1, "the center to take the package once")
    # the center comes back (it subscribes again): the retained copy is not taken again
    for seq in (1, 2):
        star.stop("center")
        star.start("center")
        # a package sent after the center subscribed: once it is in, a retained copy
        # (handed over at subscribe, before it) would be in too
        marker = craft(star, src="b1", to="center", resource="marker", seq=seq)
        asyncio.run(publish(marker, False))
        wait_until(lambda m=marker: rows(m) >= 1, 20, 0.1, "the marker package")
    assert rows(left) == 1, "the retained package was delivered again"
    if protocol == "3.1.1":  # no retain handling: it came, flagged retained, and was dropped
        assert star.status("center")["counters"]["retained_dropped"] >= 1


# --- enrolment ------------------------------------------------------------------------------------

def _invite(star, node: str) -> tuple[str, bytes]:
    ans = star.call("center", "POST", "/nodes/invite", {"node": node, "ttl_s": 600})
    ca = idn.Identity("center", star.dir("center") / "keys").ca_cert
    secret = bytes.fromhex(ans["secret"])
    token = idn.make_token(center_id="center", host=star.host, port=star.port,
                           ca_fp=idn.fingerprint(ca), node_id=node, secret=secret,
                           expires=2_000_000_000, prefix=star.prefix,
                           broker_password=ans["broker_password"])
    return token, secret


def _add_bureau(star, node: str) -> None:
    """A bureau as 'exnode init' writes it (comments and all), with the broker's CA."""
    from exnode.node.base.config import render_config

    ccfg = load_config(star.config_path("center"))
    tls = "  # tls:\n  #   ca: /etc/exnode/broker-ca.pem\n"
    text = render_config("bureau", node, "127.0.0.1", 1883)
    assert tls in text
    star.dir(node).mkdir(parents=True)
    star.config_path(node).write_text(text.replace(
        tls, f"  tls:\n    ca: {ccfg.resolve(ccfg.broker.tls.ca)}\n"))
    idn.generate_node_keys(star.dir(node) / "keys")


def test_a_token_works_once_and_is_kept_nowhere(star):
    import json

    _add_bureau(star, "b3")
    r = star.cli("center", "nodes", "invite", "b3", "--json")
    assert r.returncode == 0, r.stderr
    token = json.loads(r.stdout)["token"]
    secret = idn.parse_token(token)["secret"]
    cfg_path = star.config_path("b3")
    res = register_with_token(load_config(cfg_path), cfg_path, token, timeout=20)
    assert res["status"] == "pending"
    # the same token again (its secret, its broker login): refused
    with pytest.raises(ExnodeError, match="no valid invitation"):
        register_with_token(load_config(cfg_path), cfg_path, token, timeout=5)
    # neither side keeps the secret: not the center's state DB, not a file of b3
    assert db_rows(star, "center", "SELECT count(*) FROM invites WHERE node_id='b3'") == [(0,)]
    for f in star.dir("b3").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert secret not in data and secret.hex().encode() not in data \
                and token.encode() not in data, f"{f} holds the token's secret"
    # the YAML file has the broker login and the center's address; its comments stay
    cfg = load_config(cfg_path)
    assert (cfg.broker.username, cfg.broker.host, cfg.broker.port) == ("b3", star.host,
                                                                        star.port)
    assert cfg.center.ca_fingerprint == idn.parse_token(token)["ca_fp"]
    assert cfg.broker.topic_prefix == star.prefix
    assert "# keys/, state.db and the control socket live here" in cfg_path.read_text()
    # rejection deletes the broker account
    user, pw = _login(star, "b3")
    assert star.cli("center", "nodes", "reject", "b3").returncode == 0
    assert "Not authorized" in _refused(star, user, pw, client_id("b3", star.prefix))


def test_the_enrolment_answer_carries_the_gconf_floor(star, tmp_path):
    old = (star.dir("b1") / "keys" / idn.GCONF_CACHE).read_bytes()
    old_version = idn.verify_gconf(old, idn.Identity("center", star.dir("center") / "keys")
                                   .ca_cert)["version"]
    newer = star.call("center", "POST", "/gconf/publish", {})["version"]
    assert newer > old_version
    _add_bureau(star, "b3")
    token, _ = _invite(star, "b3")
    res = register_with_token(load_config(star.config_path("b3")), star.config_path("b3"),
                              token, timeout=20)
    assert res["gconf_floor"] >= newer
    star.cli("center", "nodes", "approve", "b3", check=True)
    # someone leaves the old gconf (validly signed, unexpired) retained for b3's first look
    async def retain_old() -> None:
        async with _connect(star, "center", CENTER_PW, "exn-test-attacker") as c:
            await c.publish(star.topics.gconf, old, qos=1, retain=True)

    asyncio.run(retain_old())
    star.bureaus = (*star.bureaus, "b3")
    star.start("b3", wait=False)
    wait_until(lambda: "gconf_refused" in (star.dir("b3") / "daemon.log").read_text(), 30,
               0.2, "b3 to refuse the old gconf")
    assert f"version {old_version} is older than version" in \
        (star.dir("b3") / "daemon.log").read_text()
    assert star.status("b3")["gconf"]["version"] != old_version


def test_an_enrolment_flood_from_one_id_is_rate_limited(star):
    # b9 is invited (so its account exists) and floods its own enrolment topic
    ans_pw = star.call("center", "POST", "/nodes/invite",
                       {"node": "b9", "ttl_s": 600})["broker_password"]

    async def flood() -> None:
        async with _connect(star, "b9", ans_pw, client_id("b9", star.prefix)) as c:
            for i in range(20):
                await c.publish(star.topics.enrol("b9"), cbor2.dumps({"id": "b9", "n": i}),
                                qos=1)

    asyncio.run(flood())
    wait_until(lambda: star.status("center")["counters"].get("enrol_dropped") == 15, 20, 0.1,
               "15 of 20 requests dropped")
    logged = db_rows(star, "center", "SELECT count(*) FROM exchange_log WHERE event='enrol' "
                     "AND peer='b9'")
    assert logged == [(5,)]
    log = (star.dir("center") / "daemon.log").read_text()
    assert log.count('"event": "enrol_dropped"') <= 2  # counted, not logged one by one
    assert star.status("center")["broker"]["connected"]


# --- the token's broker password is replaced once the member is approved --------------------

def test_the_tokens_broker_password_stops_working_once_the_member_is_approved(star):
    _add_bureau(star, "b3")
    token = json.loads(star.cli("center", "nodes", "invite", "b3", "--json",
                                check=True).stdout)["token"]
    token_pw = idn.parse_token(token)["broker_password"]
    cfg_path = star.config_path("b3")
    register_with_token(load_config(cfg_path), cfg_path, token, timeout=20)
    star.cli("center", "nodes", "approve", "b3", check=True)
    star.bureaus = (*star.bureaus, "b3")
    star.start("b3")
    # the center sends a new password, b3 keeps it, the broker takes it, b3 logs in again
    wait_until(lambda: _count(star, "b3", "broker_login_replaced") >= 1, 60, 0.2,
               "b3 to log in with its new broker password")
    pw = _login(star, "b3")[1]
    assert pw != token_pw
    assert not (star.dir("b3") / "broker.password.next").exists()
    assert "Not authorized" in _refused(star, "b3", token_pw, client_id("b3", star.prefix))
    star.wait_connected("b3")
    assert star.call("b3", "POST", "/ping", {"node": "b1", "timeout": 20})["rtt_ms"] > 0
    # it is done once: a restart of both keeps the new password working
    star.stop("center")
    star.start("center")
    star.stop("b3")
    star.start("b3")
    assert star.call("b3", "POST", "/ping", {"node": "center", "timeout": 20})["rtt_ms"] > 0
    assert _login(star, "b3")[1] == pw
