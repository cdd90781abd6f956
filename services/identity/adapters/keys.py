"""The token-signing key: loaded from the environment (or generated in development), its public
half published on the compacted signing-keys topic, and access tokens signed with it."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.config import AuthSettings, Environment
from shared.contracts import SigningKey
from shared.events import utcnow


@dataclass(frozen=True)
class Signer:
    kid: str
    private_key: Ed25519PrivateKey
    auth: AuthSettings
    ttl_seconds: int

    @classmethod
    def from_pem(
        cls, pem: str, environment: Environment, auth: AuthSettings, ttl_seconds: int
    ) -> Signer:
        if pem.strip():
            key = serialization.load_pem_private_key(pem.encode(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError("the signing key must be an Ed25519 private key")
        elif environment is Environment.DEVELOPMENT:
            key = Ed25519PrivateKey.generate()  # ephemeral: tokens die with the process
        else:
            raise ValueError("FLEETDESK_IDENTITY_SIGNING_KEY_PEM is required outside development")
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(hashlib.sha256(raw).hexdigest()[:16], key, auth, ttl_seconds)

    def public_key(self) -> SigningKey:
        pem = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return SigningKey(
            kid=self.kid, algorithm="EdDSA", public_key_pem=pem.decode(), created_at=utcnow()
        )

    def issue(self, user_id: str, org_id: str | None, role: str | None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.auth.issuer,
            "aud": self.auth.audience,
            "sub": user_id,
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
            "org": org_id,
            "role": role,
        }
        return jwt.encode(claims, self.private_key, algorithm="EdDSA", headers={"kid": self.kid})


def generate_private_pem() -> str:
    """A new Ed25519 private key as PKCS#8 PEM (for operators and tests)."""
    return (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


if __name__ == "__main__":
    print(generate_private_pem(), end="")
