"""Setting the console up: `init` makes its certificate (a key type browsers accept),
`console cert` replaces it only when asked, and a console that cannot listen stops the
daemon with one line."""

from __future__ import annotations

import ipaddress
import json
import socket
import stat

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from .test_cli import exnode, ok


def test_init_makes_an_ecdsa_console_certificate(tmp_path):
    ok(exnode("init", "--role", "center", "--id", "center", "--dir", str(tmp_path / "c"),
              cwd=tmp_path))
    cert = tmp_path / "c" / "console" / "cert.pem"
    key = tmp_path / "c" / "console" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    pub = c.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    text = (tmp_path / "c" / "exnode.yaml").read_text()
    assert "console:" in text and "# listen:" in text  # off until the operator says where

    cfg = str(tmp_path / "c" / "exnode.yaml")
    r = exnode("-c", cfg, "console", "cert", cwd=tmp_path)
    assert r.returncode == 2 and "--force" in r.stderr and "Traceback" not in r.stderr
    before = cert.read_bytes()
    out = json.loads(ok(exnode("-c", cfg, "console", "cert", "--force", "--json",
                               cwd=tmp_path)).stdout)
    assert cert.read_bytes() != before and len(out["sha256"].split(":")) == 32


def test_a_console_that_cannot_listen_stops_the_daemon_with_one_line(tmp_path):
    ok(exnode("init", "--role", "center", "--id", "center", "--dir", str(tmp_path / "c"),
              cwd=tmp_path))
    cfg = tmp_path / "c" / "exnode.yaml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg.write_text(cfg.read_text().replace("  # listen: 127.0.0.1:8443",
                                               f"  listen: 127.0.0.1:{port}"))
        r = exnode("-c", str(cfg), "run", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert f"console: cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr
    cfg.write_text(cfg.read_text().replace(f"  listen: 127.0.0.1:{port}", "  listen: nope"))
    r = exnode("-c", str(cfg), "config", "check", cwd=tmp_path)
    assert r.returncode == 2 and "console.listen" in r.stderr


def test_the_daemon_remakes_its_own_certificate_for_a_new_host(tmp_path):
    """The certificate init made names 127.0.0.1 and localhost; with console.listen on
    another address the daemon makes one that names it (an operator's own certificate
    is never touched)."""
    from exnode.node.base.config import load_config
    from exnode.node.base.tlscert import console_cert_paths, covers

    ok(exnode("init", "--role", "center", "--id", "center", "--dir", str(tmp_path / "c"),
              cwd=tmp_path))
    path = tmp_path / "c" / "exnode.yaml"
    path.write_text(path.read_text().replace("  # listen: 127.0.0.1:8443",
                                             "  listen: 127.0.0.2:8443"))
    cfg = load_config(path)
    cert, _key = console_cert_paths(cfg)
    assert not covers(cert, cfg)
    from exnode.node.app.console.server import Console

    Console(cfg, {}).tls()
    assert covers(cert, cfg)
    san = x509.load_pem_x509_certificate(cert.read_bytes()).extensions \
        .get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.2") in san.get_values_for_type(x509.IPAddress)
