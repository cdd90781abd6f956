"""Settings of the identity service."""

from typing import ClassVar

from pydantic import Field, SecretStr

from shared.config import ServiceSettings
from shared.sealing import development_public_key


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

    sealing_notify_public_key: str = Field(
        default_factory=development_public_key,
        validation_alias="FLEETDESK_SEALING_NOTIFY_PUBLIC_KEY",
        description="Notify's X25519 public key (base64url): confirmation and invitation "
        "tokens are sealed to it.",
    )

    def retired_key_ids(self) -> set[str]:
        return {kid.strip() for kid in self.identity_retired_key_ids.split(",") if kid.strip()}
