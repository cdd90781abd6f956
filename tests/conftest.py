"""The test harness: one Kafka broker and one MongoDB-wire server per session, and settings.

Where the servers come from, in order: servers named by ``FLEETDESK_TEST_KAFKA_BOOTSTRAP``
and ``FLEETDESK_TEST_MONGO_URL``; else containers, when a Docker engine answers; else the
local processes of ``deploy/local/infra.py`` (a Kafka broker and FerretDB). The mail server
(Mailpit) is a session fixture of its own (``mailpit``), started only for tests that send mail.
Tests isolate themselves by unique topics, consumer groups, database prefixes and addresses,
never by wiping state.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from shared.config import KafkaSettings, MongoSettings

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Infra:
    kafka_bootstrap: str
    mongo_url: str


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
            yield Infra(kafka.get_bootstrap_server(), mongo.get_connection_url())
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
    local = module.LocalInfra(run_dir, kafka_port, mongo_port)
    try:
        local.start()
        yield Infra(local.kafka_bootstrap, local.mongo_url)
    finally:
        local.stop()


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    kafka = os.environ.get("FLEETDESK_TEST_KAFKA_BOOTSTRAP")
    mongo = os.environ.get("FLEETDESK_TEST_MONGO_URL")
    if kafka and mongo:
        yield Infra(kafka, mongo)
    elif _docker_answers():
        yield from _containers()
    else:
        yield from _local(tmp_path_factory)


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
    return KafkaSettings(
        bootstrap_servers=infra.kafka_bootstrap,
        handler_attempts=3,
        retry_backoff_ms=20,
        retry_backoff_max_ms=100,
    )


@pytest.fixture
def mongo_settings(infra: Infra) -> MongoSettings:
    # A database prefix of its own per test: isolation without wiping anything.
    return MongoSettings(url=infra.mongo_url, database_prefix="t" + secrets.token_hex(4))
