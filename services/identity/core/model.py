"""Identity's commands, views and rules: plain Python, no Kafka, MongoDB or FastAPI."""

from __future__ import annotations

import hashlib
import secrets
from decimal import Decimal
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    field_validator,
)

from shared.contracts import CUSTOMER_ROLES, STAFF_ROLES, Language, Role, Serial, UserStatus

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=120)]
Reference = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=32, pattern=r"^[A-Za-z0-9-]+$"
    ),
]
Password = Annotated[str, StringConstraints(max_length=256)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=64)]

MIN_PASSWORD_LENGTH = 10


def _one_of(allowed: frozenset[Role], message: str) -> AfterValidator:
    def check(role: Role) -> Role:
        if role not in allowed:
            raise ValueError(message)
        return role

    return AfterValidator(check)


CustomerRole = Annotated[
    Role, _one_of(CUSTOMER_ROLES, "only customer roles can be given by an organisation")
]
StaffRole = Annotated[Role, _one_of(STAFF_ROLES, "staff are agents or technicians")]


def password_problems(password: str, email: str | None = None) -> list[str]:
    """Why a password is too weak (empty when it is acceptable)."""
    problems = []
    if len(password) < MIN_PASSWORD_LENGTH:
        problems.append(f"must be at least {MIN_PASSWORD_LENGTH} characters long")
    if not any(c.isalpha() for c in password) or not any(not c.isalpha() for c in password):
        problems.append("must mix letters with digits or symbols")
    if email and email.split("@")[0].lower() in password.lower() and len(email.split("@")[0]) >= 3:
        problems.append("must not contain the e-mail address")
    return problems


def new_secret_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """Tokens are stored only as digests: a database leak does not leak usable tokens."""
    return hashlib.sha256(token.encode()).hexdigest()


def units_of(amount: Decimal) -> tuple[int, int]:
    """An exact decimal as (integer units, decimal exponent): 12.30 -> (1230, -2)."""
    sign, digits, exponent = amount.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError("not a finite amount")
    units = int("".join(map(str, digits)) or "0")
    return (-units if sign else units), exponent


def decimal_from_units(units: int, exponent: int) -> Decimal:
    return Decimal(units).scaleb(exponent)


def balance_fields(kind: str, amount: Decimal, currency: str) -> dict[str, object]:
    """What an account entry carries so that the database can sum it exactly: invoices add,
    payments and credits subtract."""
    units, exponent = units_of(amount)
    return {
        "signed_units": units if kind == "invoice" else -units,
        "balance_key": f"{currency}:{exponent}",
    }


def normalise_email(email: str) -> str:
    return email.strip().lower()


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=512)


class OrganisationCreate(Strict):
    customer_number: Reference
    system_id: Reference
    name: Name
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] = "FI"
    timezone: Annotated[str, StringConstraints(max_length=64)] = "Europe/Helsinki"
    language: Language = "fi"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("unknown IANA time zone") from exc
        return value


class OrganisationPublic(BaseModel):
    org_id: str
    customer_number: str
    system_id: str
    name: str
    country: str
    timezone: str
    language: Language


class RegistrationCreate(Strict):
    """Self-registration: the customer number and a device serial prove the relationship."""

    email: EmailStr = Field(description="Required: without an e-mail address nobody registers.")
    password: Password
    name: Name
    language: Language = "fi"
    customer_number: Reference
    serial: Serial


class RegistrationAccepted(BaseModel):
    user_id: str
    status: UserStatus
    detail: str


class TokenBody(Strict):
    token: Annotated[str, StringConstraints(min_length=10, max_length=200)]


class InvitationAccept(Strict):
    token: Annotated[str, StringConstraints(min_length=10, max_length=200)]
    password: Password
    name: Name | None = None


class InvitationCreate(Strict):
    email: EmailStr
    role: CustomerRole
    name: Name = "Invited user"
    language: Language = "fi"
    device_ids: list[Id] = Field(default_factory=list, max_length=1000)


class StaffInvitation(Strict):
    """An agent invites a colleague: another agent or a field technician."""

    email: EmailStr
    role: StaffRole
    name: Name = "Service centre"
    language: Language = "fi"


class RoleChange(Strict):
    role: CustomerRole


class DeviceAssignment(Strict):
    device_ids: list[Id] = Field(max_length=1000)


class EmailChange(Strict):
    email: EmailStr


class UserPublic(BaseModel):
    user_id: str
    org_id: str | None
    email: str
    name: str
    language: Language
    role: Role | None
    device_ids: list[str]
    status: UserStatus


class AccountEntry(BaseModel):
    entry_id: str
    kind: str
    amount: str
    currency: str
    reference: str
    booked_at: str


class AccountView(BaseModel):
    org_id: str
    customer_number: str
    balance: dict[str, str] = Field(description="Invoiced minus paid and credited, per currency.")
    entries: list[AccountEntry]


DEVICE_HOLDING_ROLES = frozenset(
    {Role.DEVICE_MANAGER, Role.STOCK_MANAGER, Role.DEVICE_STOCK_MANAGER}
)
