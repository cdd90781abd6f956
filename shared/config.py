"""Settings, read from the environment: one pydantic-settings class per adapter.

Every variable is prefixed ``FLEETDESK_``; each class documents its own fields, and the README
lists them. Secrets are refused when they still hold a placeholder outside development.
"""

from __future__ import annotations

import ssl
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "development-only"})
# Development defaults (e.g. the local broker's passwords) start with this; refused elsewhere.
DEVELOPMENT_DEFAULT_PREFIX = "development-only"


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"
    SSL = "SSL"


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


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

    # --- client security: one principal per process (see the README's principals table) ---
    security_protocol: SecurityProtocol = Field(
        SecurityProtocol.PLAINTEXT,
        description="PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL.",
    )
    sasl_mechanism: SaslMechanism = Field(
        SaslMechanism.SCRAM_SHA_512,
        description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a SASL_* protocol).",
    )
    sasl_username: str | None = Field(None, description="SASL user name: the principal.")
    sasl_password: SecretStr | None = Field(
        None, description="SASL password of the principal (secret: never logged)."
    )
    ssl_cafile: str | None = Field(
        None, description="CA bundle (PEM) that signed the brokers' certificates (SSL, SASL_SSL)."
    )
    ssl_certfile: str | None = Field(
        None, description="Client certificate (PEM) for mutual TLS (SSL, SASL_SSL)."
    )
    ssl_keyfile: str | None = Field(
        None, description="Private key (PEM) of the client certificate."
    )

    @model_validator(mode="after")
    def _credentials_complete(self) -> Self:
        if self.uses_sasl and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                f"FLEETDESK_KAFKA_SASL_USERNAME and _PASSWORD are required with "
                f"{self.security_protocol.value}"
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("FLEETDESK_KAFKA_SSL_CERTFILE and _KEYFILE go together")
        return self

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in (
            SecurityProtocol.SASL_PLAINTEXT,
            SecurityProtocol.SASL_SSL,
        )

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A TLS context that verifies the brokers (and presents a client certificate if set)."""
        if not self.uses_tls:
            return None
        from aiokafka.helpers import create_ssl_context

        context: ssl.SSLContext = create_ssl_context(
            cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
        )
        return context

    def client_options(self) -> dict[str, Any]:
        """The keyword arguments every aiokafka client of the platform is built with.

        Producers, consumers, admin clients and probes all take their brokers and security from
        here: ``AIOKafkaProducer(**settings.client_options(), acks="all", ...)``.
        """
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol.value,
        }
        if self.uses_sasl:
            assert self.sasl_password is not None  # checked by the validator
            options["sasl_mechanism"] = self.sasl_mechanism.value
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        return options

    def as_principal(self, username: str, password: SecretStr | str) -> KafkaSettings:
        """The same brokers and transport, authenticated as another principal (SASL)."""
        secret = password if isinstance(password, SecretStr) else SecretStr(password)
        protocol = self.security_protocol
        if not self.uses_sasl:
            protocol = (
                SecurityProtocol.SASL_SSL if self.uses_tls else SecurityProtocol.SASL_PLAINTEXT
            )
        return self.model_copy(
            update={
                "security_protocol": protocol,
                "sasl_username": username,
                "sasl_password": secret,
            }
        )


def faust_broker_credentials(settings: KafkaSettings) -> CredentialsT | None:
    """The same security as :meth:`KafkaSettings.client_options`, as faust's
    ``broker_credentials`` (``faust.App(..., broker_credentials=faust_broker_credentials(s))``).
    None means PLAINTEXT."""
    from faust.auth import SASLCredentials, SSLCredentials

    context = settings.ssl_context()
    if settings.uses_sasl:
        assert settings.sasl_password is not None
        return SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value(),
            mechanism=settings.sasl_mechanism.value,
            ssl_context=context,
        )
    if context is not None:
        return SSLCredentials(context)
    return None


def min_insync_replicas(replication_factor: int) -> int:
    """``min.insync.replicas`` of the topics the platform creates: one replica may be down
    while ``acks=all`` writes go on (2 of 3; factor - 1 above), 1 below a factor of 3."""
    return replication_factor - 1 if replication_factor >= 3 else 1


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
        if self.kafka.uses_sasl:
            refuse_placeholder(
                self.environment, "FLEETDESK_KAFKA_SASL_PASSWORD", self.kafka.sasl_password
            )
        return self


def refuse_placeholder(environment: Environment, name: str, value: SecretStr | str | None) -> None:
    """Raise when a secret still holds a placeholder outside development."""
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if environment is not Environment.DEVELOPMENT and (
        raw is None
        or raw.strip().lower() in PLACEHOLDER_SECRETS
        or raw.strip().lower().startswith(DEVELOPMENT_DEFAULT_PREFIX)
    ):
        raise ValueError(f"{name} must be set to a real secret outside development")
