"""Kafka client settings, principals and the ACLs derived from the catalogue (no broker)."""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from shared.config import (
    Environment,
    KafkaSettings,
    SaslMechanism,
    SecurityProtocol,
    ServiceSettings,
    faust_broker_credentials,
    min_insync_replicas,
)
from shared.contracts import ALL_SERVICES, CATALOGUE, DEAD_LETTER, Topic
from shared.kafka_security import (
    Acl,
    Operation,
    PatternType,
    ResourceType,
    derive_acls,
    kafka_client_environment,
    outside_producers,
    principal_passwords,
    scram_upsertion,
)


@pytest.fixture(autouse=True)
def no_kafka_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from the arguments alone (the harness sets the super user's in the session)."""
    for name in list(os.environ):
        if name.startswith("FLEETDESK_KAFKA_") or name == "FLEETDESK_ENVIRONMENT":
            monkeypatch.delenv(name)


@pytest.mark.parametrize(("factor", "expected"), [(1, 1), (2, 1), (3, 2), (4, 3), (5, 4)])
def test_min_insync_replicas_follows_the_replication_factor(factor: int, expected: int) -> None:
    assert min_insync_replicas(factor) == expected


def sasl(protocol: SecurityProtocol = SecurityProtocol.SASL_PLAINTEXT) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers="broker:9093",
        security_protocol=protocol,
        sasl_mechanism=SaslMechanism.SCRAM_SHA_512,
        sasl_username="meters",
        sasl_password=SecretStr("s3cret-password"),
    )


def test_plaintext_client_options_carry_no_credentials() -> None:
    options = KafkaSettings(
        bootstrap_servers="a:9092,b:9092", security_protocol=SecurityProtocol.PLAINTEXT
    ).client_options()
    assert options == {"bootstrap_servers": "a:9092,b:9092", "security_protocol": "PLAINTEXT"}


def test_sasl_client_options_and_the_password_stays_out_of_reprs() -> None:
    settings = sasl()
    options = settings.client_options()
    assert options == {
        "bootstrap_servers": "broker:9093",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "meters",
        "sasl_plain_password": "s3cret-password",
    }
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())


def test_sasl_without_credentials_is_refused() -> None:
    with pytest.raises(ValidationError, match="SASL_USERNAME"):
        KafkaSettings(security_protocol=SecurityProtocol.SASL_SSL, sasl_username="meters")


def test_tls_gives_a_verifying_ssl_context(tmp_path: Path) -> None:
    options = sasl(SecurityProtocol.SASL_SSL).client_options()
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    with pytest.raises(ValidationError, match="CERTFILE"):
        KafkaSettings(security_protocol=SecurityProtocol.SSL, ssl_certfile=str(tmp_path / "c"))


def test_environment_variables_configure_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in kafka_client_environment(sasl()).items():
        monkeypatch.setenv(name, value)
    assert KafkaSettings().client_options() == sasl().client_options()


def test_faust_broker_credentials_match_the_client_options() -> None:
    from faust.auth import SASLCredentials, SSLCredentials

    creds = faust_broker_credentials(sasl())
    assert isinstance(creds, SASLCredentials)
    assert (creds.username, creds.password) == ("meters", "s3cret-password")
    assert creds.mechanism.value == "SCRAM-SHA-512" and creds.protocol.value == "SASL_PLAINTEXT"
    tls = faust_broker_credentials(sasl(SecurityProtocol.SASL_SSL))
    assert isinstance(tls, SASLCredentials) and tls.protocol.value == "SASL_SSL"
    only_tls = faust_broker_credentials(KafkaSettings(security_protocol=SecurityProtocol.SSL))
    assert isinstance(only_tls, SSLCredentials)
    assert faust_broker_credentials(KafkaSettings()) is None  # PLAINTEXT


def test_principal_passwords_have_development_defaults_only_in_development() -> None:
    dev = principal_passwords(Environment.DEVELOPMENT, {})
    assert set(dev) == {"admin", *ALL_SERVICES, "billing", "emaintenance"}
    assert len({p.get_secret_value() for p in dev.values()}) == len(dev)
    with pytest.raises(ValueError, match="FLEETDESK_KAFKA_ADMIN_PASSWORD"):
        principal_passwords(Environment.PRODUCTION, {})
    given = {f"FLEETDESK_KAFKA_{n.upper()}_PASSWORD": f"pw-{n}-0123456789" for n in dev}
    prod = principal_passwords(Environment.PRODUCTION, given)
    assert prod["billing"].get_secret_value() == "pw-billing-0123456789"


def test_a_service_refuses_a_development_kafka_password_outside_development(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = kafka_client_environment(sasl())
    env["FLEETDESK_KAFKA_SASL_PASSWORD"] = "development-only-meters"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FLEETDESK_ENVIRONMENT", "test")
    with pytest.raises(ValidationError, match="FLEETDESK_KAFKA_SASL_PASSWORD"):
        ServiceSettings()
    monkeypatch.setenv("FLEETDESK_ENVIRONMENT", "development")
    assert ServiceSettings().kafka.uses_sasl


def topic_acls(principal: str) -> dict[str, set[Operation]]:
    out: dict[str, set[Operation]] = {}
    for acl in derive_acls():
        if acl.principal == principal and acl.resource_type is ResourceType.TOPIC:
            out.setdefault(acl.resource_name, set()).add(acl.operation)
    return out


def test_outside_producers_may_only_write_their_own_topic() -> None:
    assert outside_producers() == ("billing", "emaintenance")
    assert topic_acls("billing") == {
        "billing.account-events": {Operation.WRITE, Operation.DESCRIBE}
    }
    assert topic_acls("emaintenance") == {
        "emaintenance.telemetry": {Operation.WRITE, Operation.DESCRIBE}
    }
    outsiders = {a for a in derive_acls() if a.principal in ("billing", "emaintenance")}
    assert all(a.resource_type is ResourceType.TOPIC for a in outsiders)


def test_service_acls_follow_writers_and_readers() -> None:
    for service in ALL_SERVICES:
        acls = topic_acls(service)
        for topic in CATALOGUE:
            ops = acls.get(topic.name, set())
            assert (Operation.WRITE in ops) == (service in topic.writers), (service, topic.name)
            assert (Operation.READ in ops) == (service in topic.readers), (service, topic.name)
        assert acls[f"{service}."] == {Operation.ALL}
        assert Operation.WRITE in acls[DEAD_LETTER.name]
        groups = {
            (a.resource_name, a.pattern, a.operation)
            for a in derive_acls()
            if a.principal == service and a.resource_type is ResourceType.GROUP
        }
        assert groups == {
            (f"{service}.", PatternType.PREFIXED, Operation.READ),
            (f"{service}.", PatternType.PREFIXED, Operation.DESCRIBE),
        }


def test_no_prefix_acl_of_a_service_covers_another_services_topics() -> None:
    for acl in derive_acls():
        if acl.pattern is PatternType.PREFIXED:
            assert acl.resource_name == f"{acl.principal}."


def test_a_new_topic_in_the_catalogue_gets_its_acls() -> None:
    extra = Topic("tickets.timers", "x", "ticket_id", (), writers=("tickets",), readers=("notify",))
    acls = derive_acls((*CATALOGUE, extra))
    assert (
        Acl("notify", ResourceType.TOPIC, "tickets.timers", PatternType.LITERAL, Operation.READ)
        in acls
    )
    assert not any(a.resource_name == "tickets.timers" and a.principal == "meters" for a in acls)


def test_scram_credential_is_rfc5802_salted_password() -> None:
    name, mechanism, iterations, _salt, salted, _ = scram_upsertion(
        "identity", "pencil", SaslMechanism.SCRAM_SHA_256, salt=b"salt"
    )
    assert (name, mechanism, iterations) == ("identity", 1, 4096)
    # Hi() of RFC 5802 is PBKDF2 with HMAC; recompute the first block by hand.
    u = hmac.new(b"pencil", b"salt" + b"\x00\x00\x00\x01", hashlib.sha256).digest()
    result = bytearray(u)
    for _ in range(iterations - 1):
        u = hmac.new(b"pencil", u, hashlib.sha256).digest()
        result = bytearray(x ^ y for x, y in zip(result, u, strict=True))
    assert salted == bytes(result)
