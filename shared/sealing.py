"""Sealed boxes: secrets (confirmation and invitation tokens) that only one service can open.

A sender seals to the recipient's X25519 public key; only the holder of the private key opens
it. Each box uses a fresh ephemeral key pair: the shared secret from X25519 goes through
HKDF-SHA256 (bound to both public keys and a context string) into a ChaCha20-Poly1305 key. This
is the construction of libsodium's ``crypto_box_seal`` and of HPKE's base mode, built from the
``cryptography`` package (already a dependency through PyJWT) rather than adding libsodium.

The text form is ``v1.<recipient key id>.<base64url(ephemeral public key | ciphertext)>``; the
key id lets the recipient rotate keys and say which one a box was sealed to.

Command: ``python -m shared.sealing`` prints a new private key and its public key (base64).
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = "v1"
_RAW = serialization.Encoding.Raw
_NONCE = b"\x00" * 12  # safe: every box has its own key (fresh ephemeral key pair)

# Development-only key pair, so that `make run` works without configuration. The settings that
# carry a sealing key refuse this one outside development (see `refuse_placeholder`).
DEVELOPMENT_PRIVATE_KEY = "cGxhY2Vob2xkZXItZGV2ZWxvcG1lbnQtb25seS1rZXk"


class SealError(ValueError):
    """A box that is malformed, sealed to another key, or tampered with."""


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(_RAW, serialization.PublicFormat.Raw)


def key_id(public_key: str) -> str:
    """A short stable id of a public key (first 8 bytes of its SHA-256, base64url)."""
    return _b64e(hashlib.sha256(_b64d(public_key)).digest()[:8])


def _key(shared: bytes, ephemeral: bytes, recipient: bytes, context: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral + recipient,
        info=b"fleetdesk-seal-v1:" + context.encode(),
    ).derive(shared)


class SealingKey:
    """The recipient's private key; opens boxes sealed to its public key."""

    def __init__(self, private_key_b64: str) -> None:
        try:
            raw = _b64d(private_key_b64.strip())
            self._private = X25519PrivateKey.from_private_bytes(raw)
        except ValueError as exc:
            raise ValueError("a sealing key is 32 bytes, base64url-encoded") from exc
        self.public_key = _b64e(_raw(self._private.public_key()))
        self.key_id = key_id(self.public_key)

    @classmethod
    def generate(cls) -> SealingKey:
        return cls(_b64e(X25519PrivateKey.generate().private_bytes_raw()))

    def private_key_b64(self) -> str:
        return _b64e(self._private.private_bytes_raw())

    def open(self, box: str, *, context: str) -> str:
        """The plaintext of a box sealed to this key with the same context, or SealError."""
        try:
            version, kid, body = box.split(".", 2)
            data = _b64d(body)
        except ValueError as exc:
            raise SealError("not a sealed box") from exc
        if version != VERSION:
            raise SealError(f"unknown sealed box version {version!r}")
        if kid != self.key_id:
            raise SealError(f"sealed to key {kid}, not to this key ({self.key_id})")
        if len(data) < 32 + 16:
            raise SealError("sealed box too short")
        ephemeral, ciphertext = data[:32], data[32:]
        shared = self._private.exchange(X25519PublicKey.from_public_bytes(ephemeral))
        key = _key(shared, ephemeral, _b64d(self.public_key), context)
        try:
            return ChaCha20Poly1305(key).decrypt(_NONCE, ciphertext, None).decode()
        except InvalidTag as exc:
            raise SealError("sealed box does not open (tampered, or another context)") from exc


def seal(public_key_b64: str, plaintext: str, *, context: str) -> str:
    """Seal ``plaintext`` so that only the holder of the matching private key can read it.

    ``context`` names what the secret is for (e.g. ``"confirmation"``); a box opens only with
    the same context, so a box cannot be replayed as another kind of secret.
    """
    recipient_raw = _b64d(public_key_b64.strip())
    recipient = X25519PublicKey.from_public_bytes(recipient_raw)
    ephemeral_private = X25519PrivateKey.generate()
    ephemeral = _raw(ephemeral_private.public_key())
    key = _key(ephemeral_private.exchange(recipient), ephemeral, recipient_raw, context)
    ciphertext = ChaCha20Poly1305(key).encrypt(_NONCE, plaintext.encode(), None)
    return f"{VERSION}.{key_id(public_key_b64)}.{_b64e(ephemeral + ciphertext)}"


def development_public_key() -> str:
    return SealingKey(DEVELOPMENT_PRIVATE_KEY).public_key


if __name__ == "__main__":
    new = SealingKey.generate()
    print(f"FLEETDESK_NOTIFY_SEALING_PRIVATE_KEY={new.private_key_b64()}")
    print(f"FLEETDESK_IDENTITY_NOTIFY_SEALING_PUBLIC_KEY={new.public_key}")
