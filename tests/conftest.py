"""The test harness: one Kafka broker and one MongoDB-wire server per session, and settings.

Where the servers come from, in order: servers named by ``FLEETDESK_TEST_KAFKA_BOOTSTRAP``
and ``FLEETDESK_TEST_MONGO_URL``; else containers, when a Docker engine answers; else the
local processes of ``deploy/local/infra.py`` (a Kafka broker and FerretDB). The mail server
(Mailpit) is a session fixture of its own (``mailpit``), started only for tests that send mail.
Tests isolate themselves by unique topics, consumer groups, database prefixes and addresses,
never by wiping state.

Kafka security: the local broker runs with SASL and ACLs, with random passwords made for the
session. Test code is the super user: the harness puts its credentials in ``FLEETDESK_KAFKA_*``
for the session, so ``KafkaSettings(bootstrap_servers=...)`` and the helpers of
``tests/support.py`` connect as ``admin`` (ad-hoc topics, reading any topic).
``infra.kafka_principals`` holds each service's and outside producer's own settings (empty
when the servers run without security: named servers without SASL, or containers).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import SecretStr

from shared.config import KafkaSettings, MongoSettings, SaslMechanism, SecurityProtocol
from tests.support import kafka_environment

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Infra:
    kafka_bootstrap: str
    mongo_url: str
    kafka_admin: KafkaSettings
    """The super user's client settings (test code's own)."""
    kafka_principals: Mapping[str, KafkaSettings] = field(default_factory=dict)
    """Each principal's client settings (services, outside producers); empty without SASL."""

    @property
    def kafka_secured(self) -> bool:
        return bool(self.kafka_principals)


def _docker_answers(timeout: float = 5.0) -> bool:
    try:
        result = subprocess.run(
            ["docker", "info"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except (FileNotFoundError, PermissionError, subprocess.TimeoutExpired, OSError):
        return False
    return result.returncode == 0


def _local_infra_module() -> ModuleType:
    """``deploy/local/infra.py`` imported by path (``deploy`` is not a package)."""
    name = "fleetdesk_local_infra"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "deploy" / "local" / "infra.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses looks the module up in sys.modules while the class body is executed.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _containers() -> Iterator[Infra]:
    try:  # testcontainers >= 4.14 moved the modules; the old paths warn
        from testcontainers.community.kafka import KafkaContainer
        from testcontainers.community.mongodb import MongoDbContainer
    except ImportError:
        from testcontainers.kafka import KafkaContainer
        from testcontainers.mongodb import MongoDbContainer

    kafka = KafkaContainer("confluentinc/cp-kafka:7.6.1").with_kraft()
    mongo = MongoDbContainer("mongo:7")
    kafka.start()
    try:
        mongo.start()
        try:
            bootstrap = kafka.get_bootstrap_server()
            admin = KafkaSettings(
                bootstrap_servers=bootstrap, security_protocol=SecurityProtocol.PLAINTEXT
            )
            yield Infra(bootstrap, mongo.get_connection_url(), admin)
        finally:
            mongo.stop()
    finally:
        kafka.stop()


def _local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    module = _local_infra_module()
    run_dir = tmp_path_factory.mktemp("local-infra")
    kafka_port = module.free_port()
    mongo_port = module.free_port()
    while mongo_port == kafka_port:
        mongo_port = module.free_port()
    from shared.kafka_security import principals, random_passwords

    passwords = {n: p.get_secret_value() for n, p in random_passwords().items()}
    local = module.LocalInfra(
        run_dir, kafka_port, mongo_port, kafka_passwords=passwords, durable=False
    )
    try:
        local.start()  # SCRAM users, the catalogue's topics and the ACLs included
        yield Infra(
            local.kafka_bootstrap,
            local.mongo_url,
            local.kafka_admin(),
            {name: local.kafka_settings_of(name) for name in principals()},
        )
    finally:
        local.stop()


def _named(kafka: str, mongo: str) -> Infra:
    """Servers named by the environment; security as ``FLEETDESK_KAFKA_*`` say (the super user),
    the principals' passwords from ``FLEETDESK_KAFKA_<NAME>_PASSWORD``."""
    from shared.kafka_security import password_variable, principals

    admin = KafkaSettings(bootstrap_servers=kafka)
    found: dict[str, KafkaSettings] = {}
    if admin.uses_sasl:
        for name in principals():
            password = os.environ.get(password_variable(name))
            if password:
                found[name] = admin.as_principal(name, SecretStr(password)).model_copy(
                    update={"sasl_mechanism": SaslMechanism.SCRAM_SHA_512}
                )
    return Infra(kafka, mongo, admin, found)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fetch (download, build) the local servers before the first test, when they will be used.

    On a fresh machine that takes minutes (Kafka's jars, FerretDB's Go build), which must not
    count against the first test's timeout.
    """
    if os.environ.get("FLEETDESK_TEST_KAFKA_BOOTSTRAP") and os.environ.get(
        "FLEETDESK_TEST_MONGO_URL"
    ):
        return
    if not any("infra" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    if _docker_answers():
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        _local_infra_module().fetch()


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    kafka = os.environ.get("FLEETDESK_TEST_KAFKA_BOOTSTRAP")
    mongo = os.environ.get("FLEETDESK_TEST_MONGO_URL")
    source = (
        iter([_named(kafka, mongo)])
        if kafka and mongo
        else _containers()
        if _docker_answers()
        else _local(tmp_path_factory)
    )
    for found in source:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in kafka_environment(found.kafka_admin).items():
                patch.setenv(name, value)
            yield found


@dataclass(frozen=True)
class MailServer:
    """Where tests send mail (SMTP) and read what was delivered (Mailpit's HTTP API)."""

    smtp_host: str
    smtp_port: int
    api_url: str


@pytest.fixture(scope="session")
def mailpit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailServer]:
    """A Mailpit for the session: ``FLEETDESK_TEST_SMTP_HOST``/``_PORT``/``_API`` name one that
    already runs; else the local process of ``deploy/local/infra.py`` on free ports."""
    host = os.environ.get("FLEETDESK_TEST_SMTP_HOST")
    port = os.environ.get("FLEETDESK_TEST_SMTP_PORT")
    api = os.environ.get("FLEETDESK_TEST_SMTP_API")
    if host and port and api:
        yield MailServer(host, int(port), api.rstrip("/"))
        return
    module = _local_infra_module()
    smtp_port = module.free_port()
    http_port = module.free_port()
    while http_port == smtp_port:
        http_port = module.free_port()
    local = module.LocalMailpit(tmp_path_factory.mktemp("mailpit"), smtp_port, http_port)
    try:
        local.start()
        yield MailServer("127.0.0.1", smtp_port, local.api_url)
    finally:
        local.stop()


@pytest.fixture
def kafka_settings(infra: Infra) -> KafkaSettings:
    return infra.kafka_admin.model_copy(
        update={"handler_attempts": 3, "retry_backoff_ms": 20, "retry_backoff_max_ms": 100}
    )


@pytest.fixture
def mongo_settings(infra: Infra) -> MongoSettings:
    # A database prefix of its own per test: isolation without wiping anything.
    return MongoSettings(url=infra.mongo_url, database_prefix="t" + secrets.token_hex(4))
