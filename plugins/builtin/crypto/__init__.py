"""The default crypto suite: HPKE (X25519, HKDF-SHA256, AES-256-GCM) and Ed25519.

The payload is encrypted once under a fresh 256-bit content key with AES-256-GCM; the
content key is sealed to each recipient with HPKE. The package header's hash is the
AEAD's associated data and the HPKE ``info``, so a payload cannot be moved under
another header.
"""

from __future__ import annotations

import os

import cbor2
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from exnode.node.base.errors import PackageError
from exnode.plugins import hookimpl


class DefaultSuite:
    """``x25519-hkdf-sha256-aes256gcm-ed25519``."""

    id = "x25519-hkdf-sha256-aes256gcm-ed25519"

    def __init__(self) -> None:
        self._hpke = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)

    def seal(self, plaintext: bytes, recipients: dict[str, x25519.X25519PublicKey],
             aad: bytes) -> bytes:
        key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(12)
        wrapped = {rid: self._hpke.encrypt(key, pub, info=aad) for rid, pub in recipients.items()}
        ct = AESGCM(key).encrypt(nonce, plaintext, aad)
        return cbor2.dumps({"k": wrapped, "n": nonce, "c": ct})

    def open(self, sealed: bytes, my_id: str, my_key: x25519.X25519PrivateKey,
             aad: bytes) -> bytes:
        try:
            d = cbor2.loads(sealed)
            keys = d["k"]
            if not isinstance(keys, dict):
                raise ValueError
            wrapped, nonce, ct = keys[my_id], d["n"], d["c"]
            if not all(isinstance(x, bytes) for x in (wrapped, nonce, ct)):
                raise ValueError
        except KeyError:
            raise PackageError("misaddressed", "no content key sealed to this node") from None
        except Exception:
            raise PackageError("malformed", "sealed payload is not readable") from None
        try:
            key = self._hpke.decrypt(wrapped, my_key, info=aad)
            return AESGCM(key).decrypt(nonce, ct, aad)
        except (InvalidTag, ValueError):
            raise PackageError("decrypt-failed", "payload does not open with this "
                               "node's key and header") from None

    def sign(self, key: ed25519.Ed25519PrivateKey, data: bytes) -> bytes:
        return key.sign(data)

    def verify(self, pub: ed25519.Ed25519PublicKey, sig: bytes, data: bytes) -> None:
        try:
            pub.verify(sig, data)
        except InvalidSignature:
            raise PackageError("bad-signature", "signature does not match the sender's "
                               "certified key") from None


@hookimpl
def exnode_crypto_suites(register) -> None:  # type: ignore[no-untyped-def]
    register(DefaultSuite())
