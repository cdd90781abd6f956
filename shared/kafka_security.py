"""Kafka principals and ACLs derived from the topic catalogue, applied with the Admin API.

One principal per service (``identity``, ``devices``, ...) and one per outside producer
(``billing``, ``emaintenance``); a super user (``admin``) administers the cluster. What each
principal may do follows from :data:`shared.contracts.CATALOGUE`:

* WRITE + DESCRIBE on every topic it is a writer of, READ + DESCRIBE on every topic it reads;
* a service: ALL on topics prefixed ``<service>.`` (its own and its internal topics, e.g. faust
  changelogs ``meters.*``), READ + DESCRIBE on consumer groups prefixed ``<service>.``, WRITE +
  DESCRIBE on transactional ids prefixed ``<service>.``; the dead-letter topic lists every
  service as a writer;
* an outside producer: WRITE + DESCRIBE on its own external topic and nothing else.

``python -m shared.kafka_security setup`` (credentials of the super user in
``FLEETDESK_KAFKA_*``, the principals' passwords in ``FLEETDESK_KAFKA_<NAME>_PASSWORD``) sets
the principals' SCRAM credentials, creates the catalogue's topics and brings the ACLs of the
managed principals to exactly the derived set (missing ones created, stale ones deleted). It is
idempotent; ``deploy/local`` and the test harness run it at every start.

aiokafka's admin client has no ACL or SCRAM calls, and Kafka 4 no longer accepts the old
CreateAcls versions aiokafka knows, so the requests below are the flexible versions of the
Kafka protocol built on aiokafka's own protocol types and sent over its authenticated client.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import secrets
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    CompactArray,
    CompactBytes,
    CompactString,
    Int8,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)
from pydantic import SecretStr

from shared.config import (
    DEVELOPMENT_DEFAULT_PREFIX,
    Environment,
    KafkaSettings,
    SaslMechanism,
    refuse_placeholder,
)
from shared.contracts import ALL_SERVICES, CATALOGUE, Topic

ADMIN = "admin"
"""The super user (``super.users``): administers topics, ACLs and credentials; the broker's own
identity on the local broker too."""


def outside_producers(catalogue: Iterable[Topic] = CATALOGUE) -> tuple[str, ...]:
    """Principals that are not services: the writers of external topics."""
    names = {w for t in catalogue for w in (*t.writers, *t.readers)} - set(ALL_SERVICES)
    return tuple(sorted(names))


def principals(catalogue: Iterable[Topic] = CATALOGUE) -> tuple[str, ...]:
    """Every managed principal: the five services, then the outside producers."""
    return (*ALL_SERVICES, *outside_producers(catalogue))


# --- ACLs, derived ----------------------------------------------------------------------------


class ResourceType(IntEnum):
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5


class PatternType(IntEnum):
    ANY = 1
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    DESCRIBE_CONFIGS = 10


class Permission(IntEnum):
    ANY = 1
    DENY = 2
    ALLOW = 3


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW rule for ``User:<principal>`` from any host."""

    principal: str
    resource_type: ResourceType
    resource_name: str
    pattern: PatternType
    operation: Operation

    @property
    def kafka_principal(self) -> str:
        return f"User:{self.principal}"

    def __str__(self) -> str:
        return (
            f"{self.kafka_principal} {self.operation.name} {self.resource_type.name} "
            f"{self.pattern.name} {self.resource_name}"
        )


def derive_acls(catalogue: Iterable[Topic] = CATALOGUE) -> frozenset[Acl]:
    """The complete set of ACLs the managed principals must have (and no more)."""
    topics = tuple(catalogue)
    acls: set[Acl] = set()

    def topic(principal: str, name: str, *ops: Operation) -> None:
        for op in ops:
            acls.add(Acl(principal, ResourceType.TOPIC, name, PatternType.LITERAL, op))

    for t in topics:
        for writer in t.writers:
            topic(writer, t.name, Operation.WRITE, Operation.DESCRIBE)
        for reader in t.readers:
            topic(reader, t.name, Operation.READ, Operation.DESCRIBE)
    for service in ALL_SERVICES:
        prefix = f"{service}."
        acls.add(Acl(service, ResourceType.TOPIC, prefix, PatternType.PREFIXED, Operation.ALL))
        for op in (Operation.READ, Operation.DESCRIBE):
            acls.add(Acl(service, ResourceType.GROUP, prefix, PatternType.PREFIXED, op))
        for op in (Operation.WRITE, Operation.DESCRIBE):
            acls.add(Acl(service, ResourceType.TRANSACTIONAL_ID, prefix, PatternType.PREFIXED, op))
    return frozenset(acls)


# --- credentials ------------------------------------------------------------------------------


def password_variable(principal: str) -> str:
    return f"FLEETDESK_KAFKA_{principal.upper().replace('-', '_')}_PASSWORD"


def development_password(principal: str) -> str:
    return f"{DEVELOPMENT_DEFAULT_PREFIX}-{principal}"


def principal_passwords(
    environment: Environment,
    environ: Mapping[str, str] | None = None,
    names: Iterable[str] | None = None,
) -> dict[str, SecretStr]:
    """The password of each principal (and ``admin``) from ``FLEETDESK_KAFKA_<NAME>_PASSWORD``.

    A missing one falls back to a development default, which is refused outside development.
    """
    env = os.environ if environ is None else environ
    out: dict[str, SecretStr] = {}
    for name in (ADMIN, *(principals() if names is None else names)):
        variable = password_variable(name)
        value = SecretStr(env.get(variable) or development_password(name))
        refuse_placeholder(environment, variable, value)
        out[name] = value
    return out


def random_passwords(names: Iterable[str] | None = None) -> dict[str, SecretStr]:
    """Fresh random passwords for ``admin`` and every principal (a test session's)."""
    return {
        name: SecretStr(secrets.token_urlsafe(24))
        for name in (ADMIN, *(principals() if names is None else names))
    }


def kafka_client_environment(settings: KafkaSettings) -> dict[str, str]:
    """The ``FLEETDESK_KAFKA_*`` variables that make a child process connect as ``settings``
    do (brokers, protocol, principal, TLS files): how each service gets its own principal."""
    env = {
        "FLEETDESK_KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "FLEETDESK_KAFKA_SECURITY_PROTOCOL": settings.security_protocol.value,
        "FLEETDESK_KAFKA_SASL_MECHANISM": settings.sasl_mechanism.value,
    }
    if settings.uses_sasl:
        assert settings.sasl_username is not None and settings.sasl_password is not None
        env["FLEETDESK_KAFKA_SASL_USERNAME"] = settings.sasl_username
        env["FLEETDESK_KAFKA_SASL_PASSWORD"] = settings.sasl_password.get_secret_value()
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, name)
        if value:
            env[f"FLEETDESK_KAFKA_{name.upper()}"] = value
    return env


# --- the protocol requests aiokafka lacks (flexible versions, as Kafka 4 requires) ----------


class _CreateAclsResponse_v2(Response):  # type: ignore[misc]
    API_KEY = 30
    API_VERSION = 2
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            CompactArray(
                ("error_code", Int16),
                ("error_message", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _CreateAclsResponse_v3(Response):  # type: ignore[misc]
    API_KEY = 30
    API_VERSION = 3
    SCHEMA = _CreateAclsResponse_v2.SCHEMA


_ACL_CREATION = CompactArray(
    ("resource_type", Int8),
    ("resource_name", CompactString("utf-8")),
    ("resource_pattern_type", Int8),
    ("principal", CompactString("utf-8")),
    ("host", CompactString("utf-8")),
    ("operation", Int8),
    ("permission_type", Int8),
    ("tags", TaggedFields),
)


class _CreateAclsRequest_v2(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 30
    API_VERSION = 2
    RESPONSE_TYPE = _CreateAclsResponse_v2
    SCHEMA = Schema(("creations", _ACL_CREATION), ("tags", TaggedFields))


class _CreateAclsRequest_v3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 30
    API_VERSION = 3
    RESPONSE_TYPE = _CreateAclsResponse_v3
    SCHEMA = _CreateAclsRequest_v2.SCHEMA


def _acl_row(a: Acl) -> tuple[Any, ...]:
    """One ACL as CreateAcls creations and DeleteAcls filters both encode it (exact match)."""
    return (
        int(a.resource_type),
        a.resource_name,
        int(a.pattern),
        a.kafka_principal,
        "*",
        int(a.operation),
        int(Permission.ALLOW),
        {},
    )


class _CreateAcls(Request[_CreateAclsRequest_v2 | _CreateAclsRequest_v3]):  # type: ignore[misc]
    API_KEY = 30

    def __init__(self, acls: Iterable[Acl]) -> None:
        self._rows: list[tuple[Any, ...]] = [_acl_row(a) for a in acls]

    def build(self, request_struct_class: Any) -> Any:
        return request_struct_class(self._rows, {})


_FILTER = (
    ("resource_type_filter", Int8),
    ("resource_name_filter", CompactString("utf-8")),
    ("pattern_type_filter", Int8),
    ("principal_filter", CompactString("utf-8")),
    ("host_filter", CompactString("utf-8")),
    ("operation", Int8),
    ("permission_type", Int8),
)


class _DescribeAclsResponse_v2(Response):  # type: ignore[misc]
    API_KEY = 29
    API_VERSION = 2
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("error_message", CompactString("utf-8")),
        (
            "resources",
            CompactArray(
                ("resource_type", Int8),
                ("resource_name", CompactString("utf-8")),
                ("pattern_type", Int8),
                (
                    "acls",
                    CompactArray(
                        ("principal", CompactString("utf-8")),
                        ("host", CompactString("utf-8")),
                        ("operation", Int8),
                        ("permission_type", Int8),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _DescribeAclsResponse_v3(Response):  # type: ignore[misc]
    API_KEY = 29
    API_VERSION = 3
    SCHEMA = _DescribeAclsResponse_v2.SCHEMA


class _DescribeAclsRequest_v2(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 29
    API_VERSION = 2
    RESPONSE_TYPE = _DescribeAclsResponse_v2
    SCHEMA = Schema(*_FILTER, ("tags", TaggedFields))


class _DescribeAclsRequest_v3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 29
    API_VERSION = 3
    RESPONSE_TYPE = _DescribeAclsResponse_v3
    SCHEMA = _DescribeAclsRequest_v2.SCHEMA


def _filter_of(principal: str | None) -> tuple[Any, ...]:
    """A filter matching every ALLOW/DENY ACL of ``principal`` (or of anyone when None)."""
    return (
        1,  # resource type ANY
        None,
        int(PatternType.ANY),
        f"User:{principal}" if principal is not None else None,
        None,
        int(Operation.ANY),
        int(Permission.ANY),
    )


class _DescribeAcls(Request[_DescribeAclsRequest_v2 | _DescribeAclsRequest_v3]):  # type: ignore[misc]
    API_KEY = 29

    def __init__(self, principal: str | None) -> None:
        self._filter = _filter_of(principal)

    def build(self, request_struct_class: Any) -> Any:
        return request_struct_class(*self._filter, {})


class _DeleteAclsResponse_v2(Response):  # type: ignore[misc]
    API_KEY = 31
    API_VERSION = 2
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "filter_results",
            CompactArray(
                ("error_code", Int16),
                ("error_message", CompactString("utf-8")),
                (
                    "matching_acls",
                    CompactArray(
                        ("error_code", Int16),
                        ("error_message", CompactString("utf-8")),
                        ("resource_type", Int8),
                        ("resource_name", CompactString("utf-8")),
                        ("pattern_type", Int8),
                        ("principal", CompactString("utf-8")),
                        ("host", CompactString("utf-8")),
                        ("operation", Int8),
                        ("permission_type", Int8),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _DeleteAclsResponse_v3(Response):  # type: ignore[misc]
    API_KEY = 31
    API_VERSION = 3
    SCHEMA = _DeleteAclsResponse_v2.SCHEMA


class _DeleteAclsRequest_v2(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 31
    API_VERSION = 2
    RESPONSE_TYPE = _DeleteAclsResponse_v2
    SCHEMA = Schema(
        ("filters", CompactArray(*_FILTER, ("tags", TaggedFields))), ("tags", TaggedFields)
    )


class _DeleteAclsRequest_v3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 31
    API_VERSION = 3
    RESPONSE_TYPE = _DeleteAclsResponse_v3
    SCHEMA = _DeleteAclsRequest_v2.SCHEMA


class _DeleteAcls(Request[_DeleteAclsRequest_v2 | _DeleteAclsRequest_v3]):  # type: ignore[misc]
    API_KEY = 31

    def __init__(self, acls: Iterable[Acl]) -> None:
        self._rows: list[tuple[Any, ...]] = [_acl_row(a) for a in acls]

    def build(self, request_struct_class: Any) -> Any:
        return request_struct_class(self._rows, {})


class _AlterUserScramCredentialsResponse_v0(Response):  # type: ignore[misc]
    API_KEY = 51
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            CompactArray(
                ("user", CompactString("utf-8")),
                ("error_code", Int16),
                ("error_message", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _AlterUserScramCredentialsRequest_v0(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 51
    API_VERSION = 0
    RESPONSE_TYPE = _AlterUserScramCredentialsResponse_v0
    SCHEMA = Schema(
        (
            "deletions",
            CompactArray(
                ("name", CompactString("utf-8")), ("mechanism", Int8), ("tags", TaggedFields)
            ),
        ),
        (
            "upsertions",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("mechanism", Int8),
                ("iterations", Int32),
                ("salt", CompactBytes),
                ("salted_password", CompactBytes),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


SCRAM_ITERATIONS = 4096
_SCRAM = {SaslMechanism.SCRAM_SHA_256: (1, "sha256"), SaslMechanism.SCRAM_SHA_512: (2, "sha512")}


def scram_upsertion(
    name: str, password: str, mechanism: SaslMechanism, salt: bytes | None = None
) -> tuple[Any, ...]:
    """One upsertion: the salted password ``Hi(password, salt, i)`` of RFC 5802 (PBKDF2-HMAC)."""
    code, digest = _SCRAM[mechanism]
    salt = salt or secrets.token_bytes(32)
    salted = hashlib.pbkdf2_hmac(digest, password.encode(), salt, SCRAM_ITERATIONS)
    return (name, code, SCRAM_ITERATIONS, salt, salted, {})


class _AlterUserScramCredentials(Request[_AlterUserScramCredentialsRequest_v0]):  # type: ignore[misc]
    API_KEY = 51

    def __init__(self, upsertions: list[tuple[Any, ...]]) -> None:
        self._upsertions = upsertions

    def build(self, request_struct_class: Any) -> Any:
        return request_struct_class([], self._upsertions, {})


class KafkaSecurityError(RuntimeError):
    """The broker refused an ACL or credential change."""


# --- the calls ----------------------------------------------------------------------------


async def _send(admin: AIOKafkaAdminClient, request: Request[Any]) -> Any:
    return await admin._send_request(request)


async def upsert_scram_users(
    admin_settings: KafkaSettings, passwords: Mapping[str, SecretStr]
) -> None:
    """Create or update the SCRAM-SHA-256 and -512 credentials of each principal (idempotent:
    the password of the environment wins, so a changed one takes effect at the next start)."""
    admin = AIOKafkaAdminClient(**admin_settings.client_options())
    await admin.start()
    try:
        # One request per mechanism: a user may be altered only once per request.
        for mechanism in _SCRAM:
            upsertions = [
                scram_upsertion(name, password.get_secret_value(), mechanism)
                for name, password in passwords.items()
            ]
            response = await _send(admin, _AlterUserScramCredentials(upsertions))
            failed = [(user, code, msg) for user, code, msg, _ in response.results if code != 0]
            if failed:
                raise KafkaSecurityError(f"SCRAM credentials refused: {failed}")
    finally:
        await admin.close()


async def describe_acls(admin_settings: KafkaSettings, principal: str | None = None) -> set[Acl]:
    """The ALLOW ACLs on the broker (of ``principal``, or of everyone)."""
    admin = AIOKafkaAdminClient(**admin_settings.client_options())
    await admin.start()
    try:
        response = await _send(admin, _DescribeAcls(principal))
    finally:
        await admin.close()
    if response.error_code != 0:
        raise KafkaSecurityError(f"DescribeAcls: {response.error_code} {response.error_message}")
    found: set[Acl] = set()
    for rtype, rname, pattern, rows, _ in response.resources:
        for kprincipal, _host, op, permission, _tags in rows:
            if permission != Permission.ALLOW or not kprincipal.startswith("User:"):
                continue
            try:
                found.add(
                    Acl(
                        kprincipal.removeprefix("User:"),
                        ResourceType(rtype),
                        rname,
                        PatternType(pattern),
                        Operation(op),
                    )
                )
            except ValueError:  # a kind of rule this module never writes: leave it alone
                continue
    return found


async def apply_acls(
    admin_settings: KafkaSettings,
    desired: frozenset[Acl] | None = None,
    managed: Iterable[str] | None = None,
    *,
    wait_seconds: float = 30.0,
) -> tuple[int, int]:
    """Make the ACLs of the ``managed`` principals exactly ``desired``; (created, deleted)."""
    desired = derive_acls() if desired is None else desired
    managed_set = set(principals() if managed is None else managed)
    existing = {a for a in await describe_acls(admin_settings) if a.principal in managed_set}
    missing = sorted(desired - existing)
    stale = sorted(existing - desired)
    if not missing and not stale:
        return 0, 0
    admin = AIOKafkaAdminClient(**admin_settings.client_options())
    await admin.start()
    try:
        if missing:
            created = await _send(admin, _CreateAcls(missing))
            failed = [(str(a), r[0], r[1]) for a, r in zip(missing, created.results, strict=True)]
            failed = [f for f in failed if f[1] != 0]
            if failed:
                raise KafkaSecurityError(f"CreateAcls refused: {failed}")
        if stale:
            deleted = await _send(admin, _DeleteAcls(stale))
            failures = [r for r in deleted.filter_results if r[0] != 0]
            if failures:
                raise KafkaSecurityError(f"DeleteAcls refused: {failures}")
    finally:
        await admin.close()
    # The authorizer applies the change from the metadata log a moment later: wait for it, so
    # that a service started next is not refused.
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while True:
        now = {a for a in await describe_acls(admin_settings) if a.principal in managed_set}
        if now == desired:
            return len(missing), len(stale)
        if asyncio.get_running_loop().time() > deadline:
            raise KafkaSecurityError(f"ACLs not in effect after {wait_seconds}s")
        await asyncio.sleep(0.1)


async def setup_cluster(
    admin_settings: KafkaSettings,
    passwords: Mapping[str, SecretStr],
    *,
    topics: tuple[Topic, ...] = CATALOGUE,
) -> None:
    """Principals' credentials, the catalogue's topics and the derived ACLs (idempotent).

    The topics are created here, by the super user, before any service starts (services may
    only create topics under their own prefix).
    """
    from shared.bus import ensure_topics

    users = {n: p for n, p in passwords.items() if n != ADMIN}
    if users:
        await upsert_scram_users(admin_settings, users)
    await ensure_topics(admin_settings, topics)
    await apply_acls(admin_settings, derive_acls(topics), principals(topics))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["setup", "acls"])
    args = parser.parse_args(argv)
    if args.command == "acls":
        for acl in sorted(derive_acls()):
            print(acl)
        return 0
    environment = Environment(os.environ.get("FLEETDESK_ENVIRONMENT", "development"))
    settings = KafkaSettings()
    passwords = principal_passwords(environment)
    passwords.pop(ADMIN)  # the super user's own credential is the broker's, not managed here
    asyncio.run(setup_cluster(settings, passwords))
    print("kafka principals, topics and ACLs in place", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
