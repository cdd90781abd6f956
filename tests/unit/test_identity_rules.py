"""Identity's pure rules: passwords, tokens, request validation, and the access rules."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from services.identity.core.model import (
    InvitationCreate,
    OrganisationCreate,
    RegistrationCreate,
    StaffInvitation,
    balance_fields,
    decimal_from_units,
    password_problems,
    token_digest,
    units_of,
)
from services.identity.core.signin import Limits, buckets, client_address
from shared.auth import Principal, can_access_org, can_manage_device, can_see_device
from shared.config import Environment, ServiceSettings, refuse_placeholder
from shared.contracts import Role
from shared.sealing import SealingKey, development_public_key


@pytest.mark.parametrize(
    ("password", "email", "ok"),
    [
        ("Correct-horse-42", "maija@example.fi", True),
        ("short1!", None, False),
        ("onlyletterslong", None, False),
        ("1234567890123", None, False),
        ("maija-secret-1", "maija@example.fi", False),
    ],
)
def test_password_policy(password: str, email: str | None, ok: bool) -> None:
    assert (password_problems(password, email) == []) is ok


def test_tokens_are_stored_as_digests() -> None:
    assert token_digest("abc") == token_digest("abc")
    assert token_digest("abc") != token_digest("abd")
    assert "abc" not in token_digest("abc")


def _registration(**change: object) -> dict[str, object]:
    body: dict[str, object] = {
        "email": "maija@example.fi",
        "password": "Correct-horse-42",
        "name": "Maija",
        "customer_number": "C100",
        "serial": "SN-1",
    }
    body.update(change)
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize(
    "change",
    [
        {"email": None},
        {"email": "no-at-sign"},
        {"name": "x" * 121},
        {"serial": "has spaces"},
        {"customer_number": "C" * 33},
        {"language": "de"},
        {"unexpected": "field"},
    ],
)
def test_bad_registration_bodies_are_rejected(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RegistrationCreate.model_validate(_registration(**change))


def test_good_registration_body() -> None:
    assert RegistrationCreate.model_validate(_registration()).language == "fi"


def test_organisations_give_customer_roles_only_and_staff_are_staff() -> None:
    with pytest.raises(ValidationError):
        InvitationCreate(email="a@b.fi", role=Role.AGENT)
    with pytest.raises(ValidationError):
        StaffInvitation(email="a@b.fi", role=Role.ADMIN)
    assert InvitationCreate(email="a@b.fi", role=Role.KB_VIEWER).role is Role.KB_VIEWER


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ValidationError):
        OrganisationCreate(customer_number="C1", system_id="S1", name="X", timezone="Mars/Base")


ADMIN = Principal("u1", "org-a", Role.ADMIN)
MANAGER = Principal("u2", "org-a", Role.DEVICE_MANAGER, frozenset({"d1"}))
STOCK = Principal("u3", "org-a", Role.STOCK_MANAGER, frozenset({"d1"}))
KB = Principal("u4", "org-a", Role.KB_VIEWER)
AGENT = Principal("s1", None, Role.AGENT)
TECH = Principal("s2", None, Role.TECHNICIAN)
NO_ROLE = Principal("u5", "org-a", None)


@pytest.mark.parametrize(
    ("principal", "org", "device", "see", "manage"),
    [
        (ADMIN, "org-a", "d2", True, True),
        (ADMIN, "org-b", "d9", False, False),
        (MANAGER, "org-a", "d1", True, True),
        (MANAGER, "org-a", "d2", False, False),
        (STOCK, "org-a", "d1", True, False),
        (KB, "org-a", "d1", False, False),
        (AGENT, "org-b", "d9", True, True),
        (TECH, "org-a", "d1", False, False),
        (NO_ROLE, "org-a", "d1", False, False),
    ],
)
def test_device_scope(principal: Principal, org: str, device: str, see: bool, manage: bool) -> None:
    assert can_see_device(principal, org, device) is see
    assert can_manage_device(principal, org, device) is manage


def test_organisation_scope() -> None:
    assert can_access_org(ADMIN, "org-a") and not can_access_org(ADMIN, "org-b")
    assert can_access_org(AGENT, "org-b")
    assert not can_access_org(TECH, "org-a") and not can_access_org(NO_ROLE, "org-b")


def test_placeholder_secrets_are_refused_outside_development() -> None:
    refuse_placeholder(Environment.DEVELOPMENT, "x", "changeme")
    with pytest.raises(ValueError, match="x must be set"):
        refuse_placeholder(Environment.PRODUCTION, "x", "changeme")
    refuse_placeholder(Environment.PRODUCTION, "x", "a-real-secret-value")


def test_identity_settings_refuse_the_development_password_in_production(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.identity.config import IdentitySettings

    monkeypatch.setenv("FLEETDESK_ENVIRONMENT", "production")
    monkeypatch.setenv("FLEETDESK_IDENTITY_SIGNING_KEY_PEM", "-----BEGIN PRIVATE KEY-----x")
    monkeypatch.setenv(
        "FLEETDESK_IDENTITY_NOTIFY_SEALING_PUBLIC_KEY", SealingKey.generate().public_key
    )
    with pytest.raises(ValidationError, match="identity_bootstrap_agent_password"):
        IdentitySettings()
    monkeypatch.setenv("FLEETDESK_IDENTITY_BOOTSTRAP_AGENT_PASSWORD", "s3cret-from-vault")
    assert IdentitySettings().environment is Environment.PRODUCTION
    assert isinstance(ServiceSettings().kafka.bootstrap_servers, str)


@pytest.mark.parametrize("key", ["", development_public_key(), "not-a-key"])
def test_identity_refuses_a_missing_or_placeholder_sealing_key_outside_development(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    from services.identity.config import IdentitySettings

    monkeypatch.setenv("FLEETDESK_ENVIRONMENT", "test")
    monkeypatch.setenv("FLEETDESK_IDENTITY_SIGNING_KEY_PEM", "-----BEGIN PRIVATE KEY-----x")
    monkeypatch.setenv("FLEETDESK_IDENTITY_BOOTSTRAP_AGENT_PASSWORD", "s3cret-from-vault")
    monkeypatch.setenv("FLEETDESK_IDENTITY_NOTIFY_SEALING_PUBLIC_KEY", key)
    with pytest.raises(ValidationError, match="sealing"):
        IdentitySettings()


def test_development_seals_to_the_development_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.identity.config import IdentitySettings

    monkeypatch.delenv("FLEETDESK_ENVIRONMENT", raising=False)
    monkeypatch.delenv("FLEETDESK_IDENTITY_NOTIFY_SEALING_PUBLIC_KEY", raising=False)
    assert IdentitySettings().notify_sealing_public_key() == development_public_key()


TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        # An untrusted peer's header is ignored: anyone can write one.
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),
        ("10.1.2.3", "198.51.100.1", "198.51.100.1"),
        # The rightmost untrusted hop: what the client wrote on the left is not believed.
        ("10.1.2.3", "6.6.6.6, 198.51.100.1", "198.51.100.1"),
        ("10.1.2.3", "6.6.6.6, 198.51.100.1, 10.9.9.9", "198.51.100.1"),
        ("127.0.0.1", "2001:db8::1", "2001:db8::1"),
        # Only proxies all the way: the leftmost of them.
        ("10.1.2.3", "10.0.0.7", "10.0.0.7"),
        # A malformed hop ends the walk at the last trusted address.
        ("10.1.2.3", "198.51.100.1, garbage", "10.1.2.3"),
        ("10.1.2.3", "", "10.1.2.3"),
        (None, "198.51.100.1", "unknown"),
    ],
)
def test_client_address_believes_forwarded_for_only_from_trusted_proxies(
    peer: str | None, forwarded: str | None, client: str
) -> None:
    assert client_address(peer, forwarded, TRUSTED) == client


def test_sign_in_buckets_spare_known_clients_the_lockouts_others_can_cause() -> None:
    limits = Limits(account_limit=5, client_limit=20, account_total_limit=100, window_seconds=900)
    now = datetime(2026, 11, 27, 10, 7, 30, tzinfo=UTC)
    unknown = buckets("a@x.fi", "10.0.0.1", limits, now, known_client=False)
    assert [b.limit for b in unknown] == [5, 20, 100]
    known = buckets("a@x.fi", "10.0.0.1", limits, now, known_client=True)
    assert [b.limit for b in known] == [5]  # the pair's own limit always holds
    # Another client, same account: another pair bucket; the account's own bucket is shared.
    other = buckets("a@x.fi", "10.0.0.2", limits, now, known_client=False)
    assert other[0].id != unknown[0].id and other[2].id == unknown[2].id
    # Fixed windows: a block ends with its window (restarts change nothing).
    assert unknown[0].window_start == datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert unknown[0].retry_after(now) == 450
    assert "a@x.fi" not in unknown[0].id and "10.0.0.1" not in unknown[1].id


@pytest.mark.parametrize(
    "amount", ["12.30", "0.01", "1E+3", "123456789012345.6789", "5", "0.000001"]
)
def test_amounts_become_exact_integer_units_and_back(amount: str) -> None:
    units, exponent = units_of(Decimal(amount))
    assert decimal_from_units(units, exponent) == Decimal(amount)
    assert isinstance(units, int)
    assert balance_fields("payment", Decimal(amount), "EUR")["signed_units"] == -units
