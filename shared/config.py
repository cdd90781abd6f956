"""Settings, read from the environment: one pydantic-settings class per adapter.

Every variable is prefixed ``FLEETDESK_``; each class documents its own fields, and the README
lists them. Secrets are refused when they still hold a placeholder outside development.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "development-only"})


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class KafkaSettings(BaseSettings):
    """How a service reaches Kafka and how its consumers retry."""

    model_config = SettingsConfigDict(env_prefix="FLEETDESK_KAFKA_", extra="ignore")

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of Kafka brokers."
    )
    partitions: int = Field(3, ge=1, description="Partitions for topics the platform creates.")
    replication_factor: int = Field(1, ge=1, description="Replication factor for new topics.")
    handler_attempts: int = Field(
        4,
        ge=1,
        le=20,
        description="Attempts of a handler failing with an unrecognised error before "
        "dead-lettering (permanent errors: one; infrastructure errors: without limit).",
    )
    retry_backoff_ms: int = Field(
        100, ge=1, description="First retry delay of a failing handler; doubles per attempt."
    )
    retry_backoff_max_ms: int = Field(2000, ge=1, description="Upper bound of the retry delay.")
    outage_backoff_max_ms: int = Field(
        10000,
        ge=1,
        description="Upper bound of the delay between retries of a partition paused because a "
        "dependency (database, broker) is unavailable.",
    )
    dead_letter_max_value_bytes: int = Field(
        256 * 1024,
        ge=0,
        le=512 * 1024,
        description="Bytes of the original value a dead letter keeps; a longer one is cut "
        "(and cannot be replayed), so that every dead letter fits the broker.",
    )


class MongoSettings(BaseSettings):
    """How a service reaches its MongoDB (or FerretDB) database."""

    model_config = SettingsConfigDict(env_prefix="FLEETDESK_MONGO_", extra="ignore")

    url: SecretStr = Field(
        SecretStr("mongodb://127.0.0.1:27017/"),
        description="MongoDB connection string; may carry credentials, so it is never logged.",
    )
    database_prefix: str = Field(
        "fleetdesk",
        pattern=r"^[A-Za-z0-9_]{1,40}$",
        description="Each service uses the database <prefix>_<service>.",
    )
    outbox_poll_ms: int = Field(
        500, ge=10, description="How often the outbox relay looks for unpublished events."
    )


class HttpSettings(BaseSettings):
    """Where a service's HTTP API listens; the port defaults per service."""

    model_config = SettingsConfigDict(env_prefix="FLEETDESK_HTTP_", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface the HTTP server binds to.")


class AuthSettings(BaseSettings):
    """Token verification shared by every service."""

    model_config = SettingsConfigDict(env_prefix="FLEETDESK_AUTH_", extra="ignore")

    issuer: str = Field("fleetdesk-identity", description="Expected `iss` claim of access tokens.")
    audience: str = Field("fleetdesk", description="Expected `aud` claim of access tokens.")
    leeway_seconds: int = Field(5, ge=0, description="Clock skew tolerated when checking expiry.")
    key_cache_seconds: float = Field(
        60.0,
        ge=0,
        description="How long a verifying key is trusted from memory before it is read again "
        "(a retired key stops verifying within this time).",
    )


class ServiceSettings(BaseSettings):
    """The settings of one service process, combined from the adapter classes."""

    model_config = SettingsConfigDict(env_prefix="FLEETDESK_", extra="ignore")

    environment: Environment = Field(
        Environment.DEVELOPMENT,
        description="development, test or production; placeholders pass only in development.",
    )
    kafka: KafkaSettings = Field(
        default_factory=KafkaSettings, description="FLEETDESK_KAFKA_*: brokers and retries."
    )
    mongo: MongoSettings = Field(
        default_factory=MongoSettings, description="FLEETDESK_MONGO_*: database and outbox."
    )
    http: HttpSettings = Field(
        default_factory=HttpSettings, description="FLEETDESK_HTTP_*: where the API listens."
    )
    auth: AuthSettings = Field(
        default_factory=AuthSettings, description="FLEETDESK_AUTH_*: token verification."
    )
    log_level: str = Field("INFO", description="Log level of the service's JSON logs.")

    # Names of fields (in subclasses) that hold secrets and must not keep a placeholder.
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _no_placeholder_secrets(self) -> Self:
        for name in self.SECRET_FIELDS:
            refuse_placeholder(self.environment, name, getattr(self, name))
        return self


def refuse_placeholder(environment: Environment, name: str, value: SecretStr | str | None) -> None:
    """Raise when a secret still holds a placeholder outside development."""
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if environment is not Environment.DEVELOPMENT and (
        raw is None or raw.strip().lower() in PLACEHOLDER_SECRETS
    ):
        raise ValueError(f"{name} must be set to a real secret outside development")
