"""Node keys, the center's CA, member certificates, enrolment tokens and the signed
global configuration."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import stat
import time
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exnode.node.base.errors import IdentityError
from exnode.node.kernel import identity as idn

from ...fuzz_values import VALUES


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def loose_umask():
    """Run with umask 000, so that only the code's own modes protect the files."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def ca(tmp_path):
    keys = tmp_path / "center-keys"
    idn.generate_node_keys(keys)
    cert = idn.create_ca(keys, "center")
    return keys, idn.Identity("center", keys), cert


def new_keys() -> tuple[bytes, bytes]:
    return (idn.raw_public(ed25519.Ed25519PrivateKey.generate().public_key()),
            idn.raw_public(x25519.X25519PrivateKey.generate().public_key()))


# --- node keys ----------------------------------------------------------------------------

def test_node_keys_are_private(tmp_path, loose_umask):
    keys = tmp_path / "data" / "keys"
    idn.generate_node_keys(keys)
    assert mode(keys) == 0o700
    assert sorted(p.name for p in keys.iterdir()) == ["enc.key", "sign.key"]
    for p in keys.iterdir():
        assert mode(p) == 0o600, p
    ident = idn.Identity("b1", keys)
    assert len(ident.sign_pub) == 32 and len(ident.enc_pub) == 32
    sig = ident.sign(b"hello")
    ident.sign_key.public_key().verify(sig, b"hello")


def test_existing_keys_are_kept_and_folder_tightened(tmp_path, loose_umask):
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    idn.generate_node_keys(keys)
    before = {p.name: p.read_bytes() for p in keys.iterdir()}
    os.chmod(keys, 0o755)
    idn.generate_node_keys(keys)
    assert {p.name: p.read_bytes() for p in keys.iterdir()} == before
    assert mode(keys) == 0o700


def test_write_private_replaces_a_loose_file(tmp_path, loose_umask):
    p = tmp_path / "secret.key"
    p.write_bytes(b"old")
    os.chmod(p, 0o644)
    idn.write_private(p, b"new")
    assert p.read_bytes() == b"new"
    assert mode(p) == 0o600


def test_missing_or_bad_key_is_identity_error(tmp_path):
    with pytest.raises(IdentityError, match="key missing"):
        idn.Identity("b1", tmp_path / "nokeys")
    keys = tmp_path / "keys"
    idn.generate_node_keys(keys)
    (keys / "sign.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n")
    with pytest.raises(IdentityError, match="not a usable private key"):
        idn.Identity("b1", keys)


# --- CA and member certificates ---------------------------------------------------------------

def test_create_ca(ca, loose_umask):
    keys, ident, cert = ca
    assert mode(keys / "ca.key") == 0o600
    assert ident.ca_cert == cert
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is True
    cert.verify_directly_issued_by(cert)
    assert len(idn.fingerprint(cert)) == 64
    assert idn.fingerprint(cert) == idn.fingerprint(
        x509.load_pem_x509_certificate((keys / "ca.crt").read_bytes()))


def test_issue_and_read_member_certificate(ca):
    _keys, ident, cert = ca
    sign_pub, enc_pub = new_keys()
    der = idn.issue_cert(ident.ca_key(), cert, "bureau-7", "bureau", sign_pub, enc_pub)
    m = idn.member_from_cert(der, cert)
    assert m.id == "bureau-7"
    assert m.role == "bureau"
    assert idn.raw_public(m.sign_pub) == sign_pub
    assert idn.raw_public(m.enc_pub) == enc_pub
    assert m.cert_der == der
    assert m.serial == x509.load_der_x509_certificate(der).serial_number
    days = (m.not_after - dt.datetime.now(dt.UTC)).days
    assert 820 <= days <= 825


def test_certificate_of_another_ca_is_refused(ca, tmp_path):
    _keys, _ident, cert = ca
    sign_pub, enc_pub = new_keys()
    for other_name in ("elsewhere", "center"):  # another name, and the same name
        other_keys = tmp_path / f"other-{other_name}"
        other_keys.mkdir()
        other = idn.create_ca(other_keys, other_name)
        der = idn.issue_cert(idn._load_private(other_keys / "ca.key"), other, "b1", "bureau",
                             sign_pub, enc_pub)
        with pytest.raises(IdentityError, match="not issued by this CA"):
            idn.member_from_cert(der, cert)
        assert idn.member_from_cert(der, other).id == "b1"


def test_garbage_certificate_is_refused(ca):
    _keys, _ident, cert = ca
    with pytest.raises(IdentityError):
        idn.member_from_cert(b"\x30\x03\x02\x01\x01", cert)
    with pytest.raises(IdentityError):
        idn.member_from_cert(b"", cert)


def _hand_made(ident: idn.Identity, ca_cert: x509.Certificate, before: dt.datetime,
               after: dt.datetime, extensions: bool = True) -> bytes:
    sign_pub, enc_pub = new_keys()
    b = (x509.CertificateBuilder().subject_name(idn._name("b1", "bureau"))
         .issuer_name(ca_cert.subject)
         .public_key(ed25519.Ed25519PublicKey.from_public_bytes(sign_pub))
         .serial_number(x509.random_serial_number())
         .not_valid_before(before).not_valid_after(after))
    if extensions:
        b = (b.add_extension(x509.UnrecognizedExtension(idn.ENC_KEY_OID, enc_pub), False)
             .add_extension(x509.UnrecognizedExtension(idn.ROLE_OID, b"bureau"), False))
    return b.sign(ident.ca_key(), None).public_bytes(serialization.Encoding.DER)


def test_expired_or_future_certificate_is_refused(ca):
    _keys, ident, cert = ca
    now = dt.datetime.now(dt.UTC)
    old = _hand_made(ident, cert, now - dt.timedelta(days=30), now - dt.timedelta(days=1))
    with pytest.raises(IdentityError, match="expired"):
        idn.member_from_cert(old, cert)
    future = _hand_made(ident, cert, now + dt.timedelta(days=1), now + dt.timedelta(days=30))
    with pytest.raises(IdentityError, match="not yet valid"):
        idn.member_from_cert(future, cert)


def test_certificate_without_exnode_extensions_is_refused(ca):
    _keys, ident, cert = ca
    now = dt.datetime.now(dt.UTC)
    der = _hand_made(ident, cert, now - dt.timedelta(days=1), now + dt.timedelta(days=1),
                     extensions=False)
    with pytest.raises(IdentityError, match="lacks exnode key extensions"):
        idn.member_from_cert(der, cert)


# --- enrolment tokens ---------------------------------------------------------------------

def token(**kw) -> str:
    args = {"center_id": "center", "host": "mq.example.org", "port": 8883, "ca_fp": "ab" * 32,
            "node_id": "b1", "secret": bytes(range(32)), "expires": int(time.time()) + 3600,
            "prefix": "gov/exn"}
    args.update(kw)
    return idn.make_token(**args)


def test_token_round_trip():
    t = token()
    assert t.startswith("exn1.")
    assert "=" not in t and "\n" not in t
    got = idn.parse_token(f"  {t}\n")
    assert got == {"center_id": "center", "host": "mq.example.org", "port": 8883,
                   "ca_fp": "ab" * 32, "node_id": "b1", "secret": bytes(range(32)),
                   "expires": got["expires"], "prefix": "gov/exn", "broker_password": None}
    assert got["expires"] > time.time()
    pw = "Aa0_-" * 6
    assert idn.parse_token(token(broker_password=pw))["broker_password"] == pw


def test_truncated_token_is_damaged():
    t = token()
    for cut in (6, 10, len(t) // 2, len(t) - 30, len(t) - 1):
        with pytest.raises(IdentityError, match="damaged"):
            idn.parse_token(t[:cut])


@pytest.mark.parametrize("bad", ["exn1.", "exn1.!!!!", "exn1." + "A" * 40,
                                 "exn1." + base64.urlsafe_b64encode(b"\xa1ax\x01").decode(),
                                 "exn1." + base64.urlsafe_b64encode(
                                     cbor2.dumps([1, 2, 3])).decode()])
def test_garbage_token_is_damaged(bad):
    with pytest.raises(IdentityError, match="damaged"):
        idn.parse_token(bad)


def test_token_with_one_character_changed_is_refused():
    # Tokens are copied by hand between organisations: a changed character must be
    # caught as damage here, not turn into a different secret, host or fingerprint.
    t = token()
    body = t[len("exn1."):]
    original = idn.parse_token(t)
    undetected = []
    for i, ch in enumerate(body):
        repl = "B" if ch != "B" else "C"
        changed = "exn1." + body[:i] + repl + body[i + 1:]
        try:
            got = idn.parse_token(changed)
        except IdentityError:
            continue
        if got != original:
            undetected.append(i)
    assert not undetected, (f"{len(undetected)} of {len(body)} single-character changes "
                            "were accepted as a different token")


@pytest.mark.parametrize("bad", ["exn2." + "A" * 20, "EXN1.abc", "hello", "",
                                 "https://center/enrol?t=exn1.abc"])
def test_wrong_prefix(bad):
    with pytest.raises(IdentityError, match=r"not an exnode enrolment token.*exn1"):
        idn.parse_token(bad)


def test_expired_token():
    with pytest.raises(IdentityError, match=r"expired.*new one"):
        idn.parse_token(token(expires=int(time.time()) - 1))


def _forged(fields: dict) -> str:
    """A token with a valid checksum around any fields (as a forger would make one)."""
    body = cbor2.dumps(fields, canonical=True)
    return "exn1." + base64.urlsafe_b64encode(
        body + hashlib.sha256(body).digest()[:4]).decode().rstrip("=")


GOOD = {"c": "center", "h": "mq.example.org", "p": 8883, "f": "ab" * 32, "n": "b1",
        "s": bytes(range(32)), "e": 2 << 32, "t": "exn/v1"}


@pytest.mark.parametrize("field,value,what", [
    # each of these would go into the bureau's YAML file or its broker login
    ("h", "evil\nbroker:\n  tls: null", "broker host"),
    ("h", "host: x", "broker host"),
    ("h", "a" * 300, "broker host"),
    ("p", 0, "broker port"), ("p", 70000, "broker port"), ("p", "8883", "broker port"),
    ("f", "AB" * 32, "CA fingerprint"), ("f", "ab" * 31, "CA fingerprint"),
    ("n", "B1", "node id"), ("n", "b1\n", "node id"), ("c", "../center", "center id"),
    ("s", b"short", "secret"), ("s", "x" * 32, "secret"),
    ("t", "exn/v1/#", "topic prefix"), ("t", "exn/v1/", "topic prefix"),
    ("w", "pw with space and more", "broker password"), ("w", "short", "broker password"),
    ("e", "never", "expiry"),
])
def test_token_fields_are_validated(field, value, what):
    assert idn.parse_token(_forged(GOOD))["host"] == "mq.example.org"
    with pytest.raises(IdentityError, match=f"not valid: {what}"):
        idn.parse_token(_forged({**GOOD, field: value}))


def test_token_with_an_unknown_field_is_refused():
    with pytest.raises(IdentityError, match="not valid"):
        idn.parse_token(_forged({**GOOD, "x": 1}))


def test_no_token_is_issued_that_would_be_refused():
    with pytest.raises(IdentityError, match="broker host"):
        token(host="bad host")


# --- signed global configuration ----------------------------------------------------------

def gconf(**kw) -> dict:
    g = {"v": 1, "version": 3, "issued": int(time.time()), "expires": int(time.time()) + 600,
         "center": "center", "members": [{"id": "b1", "role": "bureau", "cert": b"x"}],
         "revoked": []}
    g.update(kw)
    return g


def test_gconf_round_trip(ca):
    _keys, ident, cert = ca
    g = gconf()
    assert idn.verify_gconf(idn.sign_gconf(ident.ca_key(), g), cert) == g


def test_tampered_gconf_is_refused(ca):
    _keys, ident, cert = ca
    blob = idn.sign_gconf(ident.ca_key(), gconf())
    body, sig = cbor2.loads(blob)
    g = cbor2.loads(body)
    g["members"].append({"id": "mallory", "role": "bureau", "cert": b"y"})
    forged = cbor2.dumps([cbor2.dumps(g, canonical=True), sig])
    with pytest.raises(IdentityError, match="signature is invalid"):
        idn.verify_gconf(forged, cert)
    flipped = bytearray(body)
    flipped[len(flipped) // 2] ^= 0x01
    with pytest.raises(IdentityError, match="signature is invalid"):
        idn.verify_gconf(cbor2.dumps([bytes(flipped), sig]), cert)


def test_gconf_from_another_ca_is_refused(ca, tmp_path):
    _keys, _ident, cert = ca
    other_keys = tmp_path / "other"
    other_keys.mkdir()
    idn.create_ca(other_keys, "center")
    blob = idn.sign_gconf(idn._load_private(other_keys / "ca.key"), gconf())
    with pytest.raises(IdentityError, match="signature is invalid"):
        idn.verify_gconf(blob, cert)


def test_expired_gconf_is_refused(ca):
    _keys, ident, cert = ca
    blob = idn.sign_gconf(ident.ca_key(), gconf(expires=int(time.time()) - 1))
    with pytest.raises(IdentityError, match="expired"):
        idn.verify_gconf(blob, cert)
    blob = idn.sign_gconf(ident.ca_key(), {"v": 1, "version": 1})
    with pytest.raises(IdentityError, match="expired"):
        idn.verify_gconf(blob, cert)


@pytest.mark.parametrize("blob", [b"", b"\xff", cbor2.dumps([b"x"]), cbor2.dumps({"a": 1}),
                                  cbor2.dumps([b"x", b"y", b"z"])])
def test_damaged_gconf_is_refused(ca, blob):
    _keys, _ident, cert = ca
    with pytest.raises(IdentityError):
        idn.verify_gconf(blob, cert)


@pytest.mark.parametrize("fields", [
    {"version": "7"}, {"version": 0}, {"version": 2 ** 70}, {"members": {"b1": b"x"}},
    {"members": [{"id": "B1!", "cert": b"x"}]}, {"members": [{"id": "b1", "cert": 12}]},
    {"members": [["b1", b"x"]]}, {"revoked": [{"id": 5}]}, {"expires": "tomorrow"},
    {"broker": ["h", 1]},
], ids=lambda f: ",".join(f))
def test_a_signed_gconf_with_wrong_types_is_damaged(ca, fields):
    """The CA's signature says who wrote it, not that it is well formed: a body with
    wrong types is refused as damaged, with one line and no other exception."""
    _keys, ident, cert = ca
    with pytest.raises(IdentityError, match="global configuration is damaged") as ei:
        idn.verify_gconf(idn.sign_gconf(ident.ca_key(), gconf(**fields)), cert)
    assert "\n" not in str(ei.value)


@settings(max_examples=150, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["v", "version", "issued", "expires", "center",
                                        "broker", "members", "revoked", "x"]), VALUES,
                       max_size=8))
def test_fuzzed_signed_gconf_bodies_raise_only_identity_errors(ca, fields):
    _keys, ident, cert = ca
    try:
        idn.verify_gconf(idn.sign_gconf(ident.ca_key(), gconf(**fields)), cert)
    except IdentityError as e:
        assert "\n" not in str(e)
