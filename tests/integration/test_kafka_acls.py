"""Kafka security against the real broker: SASL principals and the ACLs derived from the
catalogue (``shared.kafka_security``), as the test harness sets them up for the session.

Writes that must succeed go into a transaction that is aborted: the platform's consumers read
``read_committed`` and never see them. Reads are proven by committing an offset of the topic
in a group of the principal's own prefix (the broker checks READ on topic and group).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)
from pydantic import SecretStr

from services.identity.billing_simulator import simulate
from shared.config import KafkaSettings, SecurityProtocol, min_insync_replicas
from shared.contracts import (
    ALL_SERVICES,
    BILLING_ACCOUNT_EVENTS,
    CATALOGUE,
    DEAD_LETTER,
    TELEMETRY,
    TelemetryReport,
)
from shared.events import utcnow
from shared.kafka_security import derive_acls, describe_acls, principals
from tests.conftest import Infra
from tests.support import read_topic

pytestmark = pytest.mark.integration

OUTSIDERS = ("billing", "emaintenance")
IDENTITY_AND_DEVICES = [t.name for t in CATALOGUE if t.name.startswith(("identity.", "devices."))]


@pytest.fixture
def kafka_principals(infra: Infra) -> Mapping[str, KafkaSettings]:
    if not infra.kafka_secured:
        pytest.skip("these servers run without SASL and ACLs")
    return infra.kafka_principals


async def write(settings: KafkaSettings, *topics: str, abort: bool = False) -> None:
    """Produce one record to each topic as ``settings``' principal (in an aborted transaction
    of the principal's own transactional-id prefix when ``abort``)."""
    txn = f"{settings.sasl_username}.acl-test-{uuid.uuid4().hex[:8]}" if abort else None
    producer = AIOKafkaProducer(
        **settings.client_options(),
        enable_idempotence=True,
        acks="all",
        transactional_id=txn,
        request_timeout_ms=10000,
    )
    try:
        await producer.start()
        if abort:
            await producer.begin_transaction()
        for topic in topics:
            await producer.send_and_wait(topic, b'{"acl": "probe"}', key=b"acl-probe")
        if abort:
            await producer.abort_transaction()
    finally:
        await producer.stop()


async def commit_read(settings: KafkaSettings, topic: str, group: str | None = None) -> None:
    """Commit offset 0 of ``topic`` in a fresh group: allowed only with READ on both."""
    group = group or f"{settings.sasl_username}.acl-test-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(
        **settings.client_options(), group_id=group, enable_auto_commit=False
    )
    try:
        await consumer.start()
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.commit({tp: 0})
    finally:
        await consumer.stop()


@pytest.mark.parametrize("outsider", OUTSIDERS)
async def test_outside_producers_cannot_write_identity_or_devices_topics(
    kafka_principals: Mapping[str, KafkaSettings], outsider: str
) -> None:
    assert len(IDENTITY_AND_DEVICES) >= 5
    for topic in IDENTITY_AND_DEVICES:
        with pytest.raises(TopicAuthorizationFailedError):
            await write(kafka_principals[outsider], topic)


async def test_outside_producers_write_their_own_topic_and_nothing_else(
    kafka_principals: Mapping[str, KafkaSettings], infra: Infra
) -> None:
    billing, emaintenance = kafka_principals["billing"], kafka_principals["emaintenance"]
    customer = f"ACL{uuid.uuid4().hex[:8]}"
    sent = await simulate(billing, customer, count=2, seed=5)
    serial = f"ACL-{uuid.uuid4().hex[:10]}"
    report = TelemetryReport(serial=serial, sent_at=utcnow(), counters={"total": 1})
    producer = AIOKafkaProducer(**emaintenance.client_options(), enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(
            TELEMETRY.name, report.model_dump_json().encode(), key=serial.encode()
        )
    finally:
        await producer.stop()
    # Both landed (read as the super user).
    billed = [r for r in await read_topic(infra.kafka_admin, BILLING_ACCOUNT_EVENTS.name)]
    assert sum(r.key == customer.encode() for r in billed) == len(sent)
    reports = await read_topic(infra.kafka_admin, TELEMETRY.name)
    assert any(r.key == serial.encode() for r in reports)
    # Not each other's topic, not the dead-letter topic, and no reading at all.
    for settings, topics in (
        (billing, (TELEMETRY.name, DEAD_LETTER.name)),
        (emaintenance, (BILLING_ACCOUNT_EVENTS.name, DEAD_LETTER.name)),
    ):
        for topic in topics:
            with pytest.raises(TopicAuthorizationFailedError):
                await write(settings, topic)
    with pytest.raises(GroupAuthorizationFailedError):
        await commit_read(billing, BILLING_ACCOUNT_EVENTS.name, "billing.reader")


@pytest.mark.parametrize("service", ALL_SERVICES)
async def test_each_service_writes_its_topics_and_reads_the_ones_it_reads(
    kafka_principals: Mapping[str, KafkaSettings], service: str
) -> None:
    settings = kafka_principals[service]
    writes = [t.name for t in CATALOGUE if service in t.writers]
    reads = [t.name for t in CATALOGUE if service in t.readers]
    assert DEAD_LETTER.name in writes
    await write(settings, *writes, abort=True)
    await asyncio.gather(*(commit_read(settings, topic) for topic in reads))


@pytest.mark.parametrize("service", ALL_SERVICES)
async def test_a_service_cannot_write_others_topics_nor_read_what_it_does_not_consume(
    kafka_principals: Mapping[str, KafkaSettings], service: str
) -> None:
    settings = kafka_principals[service]
    others = [t for t in CATALOGUE if service not in t.writers]
    assert any(t.compacted for t in others)  # another service's state topic among them
    for topic in others:
        with pytest.raises(TopicAuthorizationFailedError):
            await write(settings, topic.name)
    unread = [
        t.name
        for t in CATALOGUE
        if service not in t.readers and not t.name.startswith(f"{service}.")
    ]
    for topic in unread:
        with pytest.raises(TopicAuthorizationFailedError):
            await commit_read(settings, topic)
    # Consumer groups only under the service's own prefix.
    other = next(s for s in ALL_SERVICES if s != service)
    readable = next(t.name for t in CATALOGUE if service in t.readers)
    with pytest.raises(GroupAuthorizationFailedError):
        await commit_read(settings, readable, f"{other}.projections")


async def test_a_client_without_valid_credentials_is_refused(
    kafka_principals: Mapping[str, KafkaSettings], infra: Infra
) -> None:
    identity = kafka_principals["identity"]
    anonymous = KafkaSettings(
        bootstrap_servers=infra.kafka_bootstrap, security_protocol=SecurityProtocol.PLAINTEXT
    )
    wrong_password = identity.model_copy(update={"sasl_password": SecretStr("not-the-password")})
    for settings in (anonymous, wrong_password):
        admin = AIOKafkaAdminClient(**settings.client_options(), request_timeout_ms=5000)
        try:
            with pytest.raises(KafkaConnectionError):
                await admin.start()
        finally:
            await admin.close()
    # The same broker answers the right credentials.
    admin = AIOKafkaAdminClient(**identity.client_options())
    await admin.start()
    try:
        assert (await admin.describe_cluster())["brokers"]
    finally:
        await admin.close()


async def test_the_broker_holds_exactly_the_derived_acls(
    kafka_principals: Mapping[str, KafkaSettings], infra: Infra
) -> None:
    managed = set(principals())
    on_broker = {a for a in await describe_acls(infra.kafka_admin) if a.principal in managed}
    assert on_broker == derive_acls()


async def test_platform_topics_carry_min_insync_replicas(infra: Infra) -> None:
    """Set on each topic (not the broker default), from the replication factor."""
    admin = AIOKafkaAdminClient(**infra.kafka_admin.client_options())
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t.name) for t in CATALOGUE]
        )
    finally:
        await admin.close()
    expected = str(min_insync_replicas(infra.kafka_admin.replication_factor))
    seen: dict[str, tuple[str, int]] = {}
    for response in responses:
        for _err, _msg, _type, name, entries in response.resources:
            for entry in entries:
                if entry[0] == "min.insync.replicas":
                    seen[name] = (entry[1], entry[3])
    dynamic_topic_config = 1
    assert seen == {t.name: (expected, dynamic_topic_config) for t in CATALOGUE}
