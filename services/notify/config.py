"""Settings of the notify service: SMTP, sealing key, links, fan-out, retries, digest, stream."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import Field, SecretStr, model_validator

from shared.config import Environment, ServiceSettings
from shared.sealing import DEVELOPMENT_PRIVATE_KEY


class NotifySettings(ServiceSettings):
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("notify_sealing_private_key",)

    notify_port: int = Field(8005, description="HTTP port of the notify service.")

    # SMTP
    notify_smtp_host: str = Field("127.0.0.1", description="SMTP server host.")
    notify_smtp_port: int = Field(1025, ge=1, le=65535, description="SMTP server port.")
    notify_smtp_starttls: bool = Field(False, description="Upgrade the connection with STARTTLS.")
    notify_smtp_tls: bool = Field(False, description="Connect with implicit TLS (port 465).")
    notify_smtp_username: str = Field("", description="SMTP user name; empty = no AUTH.")
    notify_smtp_password: SecretStr = Field(SecretStr(""), description="SMTP password (secret).")
    notify_smtp_timeout_seconds: float = Field(
        30.0, gt=0, description="Timeout of one SMTP command."
    )
    notify_smtp_connections: int = Field(
        8, ge=1, le=64, description="SMTP connections kept open: the bound of concurrent sends."
    )
    notify_mail_from: str = Field(
        "Fleetdesk <no-reply@fleetdesk.local>", description="From: of every message."
    )
    notify_message_id_domain: str = Field(
        "fleetdesk.local", description="Domain part of the derived Message-IDs."
    )

    # who and where
    notify_agents_address: str = Field(
        "service-centre@fleetdesk.local",
        description="The service-centre agents' shared address (SLA, anomalies, stale devices).",
    )
    notify_agents_language: str = Field(
        "en", pattern="^(fi|sv|en)$", description="Language of e-mails to the shared address."
    )
    notify_portal_url: str = Field(
        "http://127.0.0.1:8001",
        description="Base URL of the portal: confirmation and invitation links start with it.",
    )
    notify_sealing_private_key: SecretStr = Field(
        SecretStr(DEVELOPMENT_PRIVATE_KEY),
        description="Notify's X25519 private key (base64url) that opens sealed tokens; "
        "`python -m shared.sealing` prints a new one. The development key is refused elsewhere.",
    )

    # delivery
    notify_send_attempts: int = Field(
        4, ge=1, le=20, description="Attempts of one send on temporary SMTP failures."
    )
    notify_retry_backoff_ms: int = Field(
        200, ge=1, description="First delay between attempts; doubles per attempt."
    )
    notify_retry_backoff_max_ms: int = Field(5000, ge=1, description="Upper bound of the delay.")
    notify_lease_seconds: float = Field(
        120.0,
        gt=0,
        description="A delivery left pending or retrying this long (its sender crashed, or the "
        "server kept failing) is taken over and sent again by the recovery sweep.",
    )
    notify_max_claims: int = Field(
        5, ge=1, description="Send rounds (each with its attempts) before a delivery fails."
    )
    notify_sweep_seconds: float = Field(
        30.0, gt=0, description="How often the recovery sweep and the digest flush run."
    )

    # digest and stream
    notify_digest_window_seconds: int = Field(
        300, ge=1, description="SLA escalations to one recipient within this window: one e-mail."
    )
    notify_stream_buffer: int = Field(
        2000, ge=10, description="Recent events kept for `Last-Event-ID` resumption."
    )
    notify_consumer_group_suffix: str = Field(
        "",
        pattern=r"^[A-Za-z0-9._-]{0,40}$",
        description="Appended to consumer group names (isolated deployments on one Kafka).",
    )

    @model_validator(mode="after")
    def _no_development_key(self) -> Self:
        key = self.notify_sealing_private_key.get_secret_value()
        if self.environment is not Environment.DEVELOPMENT and key == DEVELOPMENT_PRIVATE_KEY:
            raise ValueError(
                "notify_sealing_private_key must be set outside development "
                "(the development key is public)"
            )
        return self
