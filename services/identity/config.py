"""Settings of the identity service."""

import ipaddress
from typing import ClassVar, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from shared import sealing
from shared.config import Environment, ServiceSettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class IdentitySettings(ServiceSettings):
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = (
        "identity_signing_key_pem",
        "identity_bootstrap_agent_password",
    )

    identity_port: int = Field(8001, description="HTTP port of the identity service.")
    identity_signing_key_pem: SecretStr = Field(
        SecretStr(""),
        description=(
            "Ed25519 private key (PKCS#8 PEM) that signs access tokens. Required outside "
            "development; in development an ephemeral key is generated at start-up."
        ),
    )
    identity_retired_key_ids: str = Field(
        "",
        description="Comma-separated key ids (kid) of earlier signing keys to retire at start-up: "
        "tokens they signed stop being accepted everywhere.",
    )
    identity_token_ttl_seconds: int = Field(
        900, ge=60, le=3600, description="Lifetime of an access token."
    )
    identity_confirmation_ttl_hours: int = Field(
        48, ge=1, le=720, description="Lifetime of confirmation and invitation tokens."
    )
    identity_bootstrap_agent_email: str = Field(
        "agent@fleetdesk.local",
        description="E-mail of the first service-centre agent, created at start-up if missing.",
    )
    identity_bootstrap_agent_password: SecretStr = Field(
        SecretStr("development-only"),
        description="Password of that first agent; a placeholder is refused outside development.",
    )
    identity_signin_account_limit: int = Field(
        5, ge=1, description="Failed sign-ins per account within the window before refusal."
    )
    identity_signin_client_limit: int = Field(
        20, ge=1, description="Failed sign-ins per client address within the window."
    )
    identity_signin_window_seconds: int = Field(
        900, ge=1, description="Window of the sign-in rate limits."
    )
    identity_signin_account_total_limit: int = Field(
        100,
        ge=1,
        description="Failed sign-ins per account from all client addresses together within the "
        "window (NIST SP 800-63B: at most 100); addresses the account signed in from before "
        "are exempt.",
    )
    identity_trusted_proxies: str = Field(
        "",
        description="Comma-separated CIDR list of reverse proxies whose X-Forwarded-For is "
        "believed; the client is the rightmost address not in this list.",
    )
    identity_password_hash_concurrency: int = Field(
        4,
        ge=1,
        le=64,
        description="Password hashes (Argon2id, 64 MiB each) computed at once; more wait.",
    )
    identity_password_hash_queue: int = Field(
        200,
        ge=0,
        description="Sign-ins and registrations that may wait for a hash; beyond that 503.",
    )
    identity_pending_registration_days: int = Field(
        7,
        ge=1,
        le=365,
        description="Days after which an unconfirmed registration expires and frees its address.",
    )
    identity_notify_sealing_public_key: str = Field(
        "",
        description="Notify's X25519 public key (base64url); confirmation and invitation tokens "
        "are sealed to it. Development falls back to shared.sealing's development key, which "
        "is refused elsewhere.",
    )

    @field_validator("identity_trusted_proxies")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        for cidr in filter(None, (c.strip() for c in value.split(","))):
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad entry
        return value

    @model_validator(mode="after")
    def _sealing_key(self) -> Self:
        key = self.notify_sealing_public_key()
        if self.environment is not Environment.DEVELOPMENT and (
            not key or key == sealing.development_public_key()
        ):
            raise ValueError(
                "identity_notify_sealing_public_key must be notify's real key outside development"
            )
        try:
            sealing.seal(key, "probe", context="probe")
        except ValueError as exc:
            raise ValueError(
                "identity_notify_sealing_public_key is not an X25519 public key"
            ) from exc
        return self

    def retired_key_ids(self) -> set[str]:
        return {kid.strip() for kid in self.identity_retired_key_ids.split(",") if kid.strip()}

    def trusted_proxies(self) -> list[Network]:
        return [
            ipaddress.ip_network(c.strip(), strict=False)
            for c in self.identity_trusted_proxies.split(",")
            if c.strip()
        ]

    def notify_sealing_public_key(self) -> str:
        key = self.identity_notify_sealing_public_key.strip()
        if not key and self.environment is Environment.DEVELOPMENT:
            return sealing.development_public_key()
        return key
