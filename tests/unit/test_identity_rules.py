"""Identity's pure rules: passwords, tokens, request validation, and the access rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.identity.core.model import (
    InvitationCreate,
    OrganisationCreate,
    RegistrationCreate,
    StaffInvitation,
    password_problems,
    token_digest,
)
from shared.auth import Principal, can_access_org, can_manage_device, can_see_device
from shared.config import Environment, ServiceSettings, refuse_placeholder
from shared.contracts import Role


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
    with pytest.raises(ValidationError, match="identity_bootstrap_agent_password"):
        IdentitySettings()
    monkeypatch.setenv("FLEETDESK_IDENTITY_BOOTSTRAP_AGENT_PASSWORD", "s3cret-from-vault")
    assert IdentitySettings().environment is Environment.PRODUCTION
    assert isinstance(ServiceSettings().kafka.bootstrap_servers, str)
