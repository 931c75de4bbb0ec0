"""Identity and trust: node keys, the center's small CA, enrolment tokens and the
signed global configuration that tells every node who the members are.

A node has two keys: Ed25519 for signing and X25519 for receiving sealed payloads.
The center's CA issues each approved member an X.509 certificate over its Ed25519 key
that also carries its X25519 key in a private extension, so one certificate binds both.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from exnode.node.base.errors import IdentityError
from exnode.node.base.files import write_private as write_private

# 2.25.<uuid> is an OID anyone may mint; this one names "exnode X25519 encryption key".
ENC_KEY_OID = x509.ObjectIdentifier("2.25.216853204788146498407917377418934915071")
ROLE_OID = x509.ObjectIdentifier("2.25.216853204788146498407917377418934915072")

SIGN_KEY = "sign.key"
ENC_KEY = "enc.key"
NODE_CERT = "node.crt"
CA_KEY = "ca.key"
CA_CERT = "ca.crt"
GCONF_CACHE = "gconf.cbor"


def _pem_private(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def raw_public(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER encoding, hex."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def generate_node_keys(keys_dir: Path) -> None:
    """Create this node's signing and encryption keys (0600) unless they exist."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    if not (keys_dir / SIGN_KEY).exists():
        write_private(keys_dir / SIGN_KEY, _pem_private(ed25519.Ed25519PrivateKey.generate()))
    if not (keys_dir / ENC_KEY).exists():
        write_private(keys_dir / ENC_KEY, _pem_private(x25519.X25519PrivateKey.generate()))


def _load_private(path: Path) -> Any:
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise IdentityError(f"{path}: key missing (run 'exnode init')") from None
    except ValueError as e:
        raise IdentityError(f"{path}: not a usable private key: {e}") from None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(cn: str, ou: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou)])


def create_ca(keys_dir: Path, center_id: str, days: int = 3650) -> x509.Certificate:
    """Create the center's CA key and self-signed certificate."""
    key = ed25519.Ed25519PrivateKey.generate()
    write_private(keys_dir / CA_KEY, _pem_private(key))
    name = _name(f"exnode CA {center_id}", "ca")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, None))
    (keys_dir / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def issue_cert(ca_key: ed25519.Ed25519PrivateKey, ca_cert: x509.Certificate, node_id: str,
               role: str, sign_pub: bytes, enc_pub: bytes, days: int = 825) -> bytes:
    """Issue a member certificate (DER) binding node id, role and both public keys."""
    cert = (x509.CertificateBuilder().subject_name(_name(node_id, role))
            .issuer_name(ca_cert.subject)
            .public_key(ed25519.Ed25519PublicKey.from_public_bytes(sign_pub))
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.UnrecognizedExtension(ENC_KEY_OID, enc_pub), critical=False)
            .add_extension(x509.UnrecognizedExtension(ROLE_OID, role.encode()), critical=False)
            .sign(ca_key, None))
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class Member:
    """A node as the CA certified it."""

    id: str
    role: str
    sign_pub: ed25519.Ed25519PublicKey
    enc_pub: x25519.X25519PublicKey
    serial: int
    cert_der: bytes
    not_after: dt.datetime


def member_from_cert(cert_der: bytes, ca_cert: x509.Certificate) -> Member:
    """Check a member certificate against the CA and read its keys."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise IdentityError(f"member certificate not issued by this CA: {e}") from None
    now = _now()
    if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
        raise IdentityError("member certificate expired or not yet valid")
    try:
        enc = cert.extensions.get_extension_for_oid(ENC_KEY_OID).value.value
        role = cert.extensions.get_extension_for_oid(ROLE_OID).value.value.decode()
    except x509.ExtensionNotFound:
        raise IdentityError("member certificate lacks exnode key extensions") from None
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    pub = cert.public_key()
    if not isinstance(pub, ed25519.Ed25519PublicKey):
        raise IdentityError("member certificate key is not Ed25519")
    return Member(id=str(cn), role=role, sign_pub=pub,
                  enc_pub=x25519.X25519PublicKey.from_public_bytes(enc),
                  serial=cert.serial_number, cert_der=cert_der,
                  not_after=cert.not_valid_after_utc)


class Identity:
    """This node's own keys, and the CA certificate it trusts."""

    def __init__(self, node_id: str, keys_dir: Path) -> None:
        self.node_id = node_id
        self.keys_dir = keys_dir
        self.sign_key: ed25519.Ed25519PrivateKey = _load_private(keys_dir / SIGN_KEY)
        self.enc_key: x25519.X25519PrivateKey = _load_private(keys_dir / ENC_KEY)
        self.sign_pub = raw_public(self.sign_key.public_key())
        self.enc_pub = raw_public(self.enc_key.public_key())

    @property
    def ca_cert(self) -> x509.Certificate | None:
        p = self.keys_dir / CA_CERT
        return x509.load_pem_x509_certificate(p.read_bytes()) if p.exists() else None

    def ca_key(self) -> ed25519.Ed25519PrivateKey:
        return _load_private(self.keys_dir / CA_KEY)

    def sign(self, data: bytes) -> bytes:
        return self.sign_key.sign(data)


# --- enrolment tokens -------------------------------------------------------------

TOKEN_PREFIX = "exn1."


NODE_ID = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# A DNS name (labels of letters, digits and '-') or an IPv4/IPv6 literal: nothing that
# could mean more than a host when it is written into the configuration file.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST = rf"^(?=.{{1,253}}$)({_LABEL}\.)*{_LABEL}\.?$"
IPV6 = r"^[0-9A-Fa-f:.]{2,45}$"


class TokenBody(BaseModel):
    """An enrolment token's fields, checked one by one (types exact, no coercion):
    they go into the bureau's configuration file and its broker login."""

    model_config = ConfigDict(extra="forbid", strict=True)
    c: str = Field(pattern=NODE_ID)                       # the center's id
    h: str = Field(max_length=253)                        # broker host
    p: int = Field(ge=1, le=65535)                        # broker port
    f: str = Field(pattern=r"^[0-9a-f]{64}$")             # the center CA's SHA-256
    n: str = Field(pattern=NODE_ID)                       # the node it is for
    s: bytes = Field(min_length=32, max_length=32)        # the enrolment secret
    e: int = Field(ge=0, lt=1 << 40)                      # expiry (Unix time)
    t: str = Field("exn/v1", max_length=200,
                   pattern=r"^[A-Za-z0-9_\-/]+[A-Za-z0-9_\-]$")  # topic prefix
    w: str | None = Field(None, min_length=16, max_length=128,
                          pattern=r"^[A-Za-z0-9_\-]+$")  # broker password (broker.dynsec)

    @field_validator("h")
    @classmethod
    def _host(cls, v: str) -> str:
        import ipaddress
        import re

        if re.fullmatch(HOST, v):
            return v
        if re.fullmatch(IPV6, v):
            try:
                ipaddress.IPv6Address(v)
                return v
            except ValueError:
                pass
        raise ValueError("not a host name or IP address")


def check_token(d: Any) -> TokenBody:
    """A token's fields, validated; a bad one is a one-line :class:`IdentityError`."""
    try:
        return TokenBody.model_validate(d)
    except ValidationError as e:
        err = e.errors()[0]
        where = {"c": "center id", "h": "broker host", "p": "broker port",
                 "f": "CA fingerprint", "n": "node id", "s": "secret", "e": "expiry",
                 "t": "topic prefix", "w": "broker password"}.get(
            str(err["loc"][0]) if err["loc"] else "", "fields")
        raise IdentityError(f"enrolment token is not valid: {where}: {err['msg']}") from None


def make_token(*, center_id: str, host: str, port: int, ca_fp: str, node_id: str,
               secret: bytes, expires: int, prefix: str = "exn/v1",
               broker_password: str | None = None) -> str:
    """A one-time enrolment token: where the center is, whom to trust, a secret and,
    where the center manages broker accounts, the node's broker password."""
    fields: dict[str, Any] = {"c": center_id, "h": host, "p": port, "f": ca_fp,
                              "n": node_id, "s": secret, "e": expires, "t": prefix}
    if broker_password is not None:
        fields["w"] = broker_password
    check_token(fields)  # never issue a token that parse_token refuses
    body = cbor2.dumps(fields, canonical=True)
    # A short checksum, so that a token damaged in copying is told apart from a valid one.
    body += hashlib.sha256(body).digest()[:4]
    return TOKEN_PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=")


def parse_token(token: str) -> dict[str, Any]:
    token = token.strip()
    if not token.startswith(TOKEN_PREFIX):
        raise IdentityError("not an exnode enrolment token (it should start with 'exn1.')")
    b64 = token[len(TOKEN_PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
        body, check = raw[:-4], raw[-4:]
        if len(raw) < 8 or hashlib.sha256(body).digest()[:4] != check:
            raise ValueError("checksum")
        d = cbor2.loads(body)
    except Exception:
        raise IdentityError("enrolment token is damaged (copy it again in full)") from None
    t = check_token(d)
    out = {"center_id": t.c, "host": t.h, "port": t.p, "ca_fp": t.f, "node_id": t.n,
           "secret": t.s, "expires": t.e, "prefix": t.t, "broker_password": t.w}
    if out["expires"] < time.time():
        raise IdentityError("enrolment token has expired (ask the center for a new one)")
    return out


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def enrol_mac(secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, body, hashlib.sha256).digest()


# --- signed global configuration -----------------------------------------------------

def sign_gconf(ca_key: ed25519.Ed25519PrivateKey, gconf: dict[str, Any]) -> bytes:
    body = cbor2.dumps(gconf, canonical=True)
    return cbor2.dumps([body, ca_key.sign(body)])


class _GMember(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    role: str = "bureau"
    cert: bytes


class _GRevoked(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    serial: str = ""


class GconfBody(BaseModel):
    """The signed global configuration, as a typed model: a CA-signed body with wrong
    types is refused as damaged, never half-used."""

    model_config = ConfigDict(extra="ignore", strict=True)
    v: int = 1
    version: int = Field(ge=1, lt=1 << 62)
    issued: int = 0
    expires: int | float = 0  # none: expired
    center: str = ""
    broker: dict[str, Any] = Field(default_factory=dict)
    members: list[_GMember] = Field(default_factory=list, max_length=100_000)
    revoked: list[_GRevoked] = Field(default_factory=list, max_length=100_000)


def verify_gconf(blob: bytes, ca_cert: x509.Certificate) -> dict[str, Any]:
    """Check the CA's signature, the body's types and the expiry; return the global
    configuration."""
    try:
        body, sig = cbor2.loads(blob)
        if not isinstance(body, bytes) or not isinstance(sig, bytes):
            raise ValueError("not [body, signature]")
        pub = ca_cert.public_key()
        assert isinstance(pub, ed25519.Ed25519PublicKey)
        pub.verify(sig, body)
        g = GconfBody.model_validate(cbor2.loads(body)).model_dump(exclude_unset=True)
    except InvalidSignature:
        raise IdentityError("global configuration signature is invalid") from None
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise IdentityError(f"global configuration is damaged: {where}: {err['msg']}") \
            from None
    except Exception as e:
        raise IdentityError(f"global configuration is damaged: {type(e).__name__}") from None
    if g.get("expires", 0) < time.time():
        raise IdentityError("global configuration has expired")
    return g
