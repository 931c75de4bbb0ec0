"""The ledger's detached signature, ``FILE.sig``: a JSON document that names the node,
the month, the format, the file's size and SHA-256, signed with the node's Ed25519 key
(through ``ServiceAPI.sign``, purpose ``ledger``), with the node's public key and its
member certificate so that any member can check it offline against the center's CA.

    {"v": 1, "type": "exnode-ledger-signature", "node": "center", "month": "2026-11",
     "format": "pdf", "file": "ledger-2026-11.pdf", "size": 12345, "sha256": "…",
     "signed_at": 1796054400.0, "algorithm": "Ed25519", "purpose": "ledger",
     "public_key": "<base64>", "cert": "<base64 DER>|null", "signature": "<base64>"}

What is signed is ``claims_bytes(doc)``: the canonical JSON (sorted keys, no spaces) of
the claims (v, type, node, month, format, file, size, sha256, signed_at) behind the
kernel's service-signature prefix; changing any claim, or one byte of the file, fails."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

from exnode.node.base.errors import ExnodeError
from exnode.node.kernel.api import Signer, service_signed_message

PURPOSE = "ledger"
TYPE = "exnode-ledger-signature"
CLAIMS = ("v", "type", "node", "month", "format", "file", "size", "sha256", "signed_at")


class NotVerified(ExnodeError):
    """The signature does not verify (exit 1, one line)."""


def claims_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps({k: doc.get(k) for k in CLAIMS}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def make_sig(data: bytes, *, node: str, month: str, fmt: str, file: str, signed_at: float,
             sign: Callable[[str, bytes], bytes], signer: Signer) -> dict[str, Any]:
    """The signature document of ``data`` (a rendered ledger)."""
    doc: dict[str, Any] = {"v": 1, "type": TYPE, "node": node, "month": month, "format": fmt,
                           "file": file, "size": len(data),
                           "sha256": hashlib.sha256(data).hexdigest(),
                           "signed_at": round(signed_at, 3)}
    sig = sign(PURPOSE, claims_bytes(doc))
    doc.update({"algorithm": signer.algorithm, "purpose": PURPOSE,
                "public_key": base64.b64encode(signer.public_key).decode(),
                "cert": base64.b64encode(signer.cert).decode() if signer.cert else None,
                "signature": base64.b64encode(sig).decode()})
    return doc


def sig_text(doc: dict[str, Any]) -> str:
    return json.dumps(doc, ensure_ascii=False, indent=1) + "\n"


def load_sig(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        raise NotVerified("the signature file is not JSON") from None
    if not isinstance(doc, dict) or doc.get("type") != TYPE or doc.get("v") != 1:
        raise NotVerified("the signature file is not an exnode ledger signature")
    for k in ("node", "month", "sha256", "signature", "public_key"):
        if not isinstance(doc.get(k), str):
            raise NotVerified(f"the signature file has no '{k}'")
    if doc.get("algorithm") != "Ed25519":
        raise NotVerified(f"unknown signature algorithm {doc.get('algorithm')!r}")
    return doc


def _b64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except ValueError:
        raise NotVerified(f"{what} is not base64") from None


def cert_key(doc: dict[str, Any], ca_pem: bytes) -> bytes:
    """The raw public key of the certificate in ``doc``, after checking that the CA
    issued it to the signing node and that it was valid when the ledger was signed."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    if not doc.get("cert"):
        raise NotVerified(f"the signature carries no certificate of {doc['node']}, and "
                          "this node has no key of its own to check it with")
    try:
        cert = x509.load_der_x509_certificate(_b64(doc["cert"], "the certificate"))
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
    except NotVerified:
        raise
    except Exception:
        raise NotVerified("the certificate in the signature is not issued by this "
                          "deployment's CA") from None
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cn or cn[0].value != doc["node"]:
        raise NotVerified(f"the certificate in the signature is not {doc['node']}'s")
    when = dt.datetime.fromtimestamp(float(doc.get("signed_at") or 0), dt.UTC)
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise NotVerified("the certificate was not valid when the ledger was signed")
    return cert.public_key().public_bytes(serialization.Encoding.Raw,
                                          serialization.PublicFormat.Raw)


def verify(data: bytes, doc: dict[str, Any], public_key: bytes) -> None:
    """Return when ``doc`` signs ``data`` under ``public_key``; else :class:`NotVerified`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if hashlib.sha256(data).hexdigest() != doc["sha256"] or len(data) != doc.get("size"):
        raise NotVerified("the file is not the one signed (its SHA-256 differs: changed or "
                          "cut)")
    try:
        pub = ed25519.Ed25519PublicKey.from_public_bytes(public_key)
        pub.verify(_b64(doc["signature"], "the signature"),
                   service_signed_message(PURPOSE, claims_bytes(doc)))
    except (InvalidSignature, ValueError):
        raise NotVerified(f"the signature is not {doc['node']}'s (or its claims were "
                          "changed)") from None
