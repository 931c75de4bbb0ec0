"""The web console's TLS certificate: an operator's own (``console.cert``/``key``), or a
self-signed ECDSA P-256 one that exnode makes for the host the console listens on (a key
type every browser accepts; the CA's Ed25519 keys are not)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING

from exnode.node.base.files import write_private

if TYPE_CHECKING:
    from exnode.node.base.config import Config


def console_cert_paths(cfg: Config) -> tuple[Path, Path]:
    c = cfg.console
    cert = cfg.data_dir / (c.cert or "console/cert.pem")
    key = cfg.data_dir / (c.key or "console/key.pem")
    return cert, key


def _host(cfg: Config) -> str:
    listen = cfg.console.listen or "127.0.0.1:8443"
    return listen.rsplit(":", 1)[0].strip("[]")


def make_console_cert(cfg: Config, cert: Path, key: Path, days: int = 825) -> str:
    """Write a self-signed certificate and its key (0600) for the console's host and
    localhost; returns the certificate's SHA-256 fingerprint (hex, with colons)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    host = _host(cfg)
    names: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        ip = ipaddress.ip_address(host)
        if str(ip) not in ("127.0.0.1", "0.0.0.0", "::"):
            names.append(x509.IPAddress(ip))
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    k = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                            f"exnode console {cfg.node.id}"[:64])])
    now = dt.datetime.now(dt.UTC)
    crt = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
           .public_key(k.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - dt.timedelta(minutes=5))
           .not_valid_after(now + dt.timedelta(days=days))
           .add_extension(x509.SubjectAlternativeName(names), critical=False)
           .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
           .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                          critical=False)
           .sign(k, hashes.SHA256()))
    cert.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(key, k.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    cert.write_bytes(crt.public_bytes(serialization.Encoding.PEM))
    return fingerprint(cert)


def covers(cert: Path, cfg: Config) -> bool:
    """Whether ``cert`` names the host the console listens on (a wildcard listen address
    is served under the names the certificate has)."""
    from cryptography import x509

    host = _host(cfg)
    if host in ("0.0.0.0", "::", ""):
        return True
    try:
        c = x509.load_pem_x509_certificate(cert.read_bytes())
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    try:
        return ipaddress.ip_address(host) in san.get_values_for_type(x509.IPAddress)
    except ValueError:
        return host in san.get_values_for_type(x509.DNSName)


def fingerprint(cert: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    c = x509.load_pem_x509_certificate(cert.read_bytes())
    return c.fingerprint(hashes.SHA256()).hex(":")
