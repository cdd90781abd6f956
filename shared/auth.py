"""Who is calling, and what they may do: offline token verification and the access rules.

Identity signs short-lived access tokens with an Ed25519 key and publishes the public key on
the compacted ``identity.signing-keys`` topic; every service keeps those keys in its own
database (``shared.projections.signing_keys``) and verifies tokens without calling identity.
The token names the user; the current role, organisation and assigned devices come from the
service's projection of ``identity.users.state`` (so a demotion takes effect at once), falling
back to the token's claims where the service has no projection yet.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from pymongo.asynchronous.database import AsyncDatabase

from shared.config import AuthSettings
from shared.contracts import CUSTOMER_ROLES, Role, UserStatus
from shared.http import Problem
from shared.projections import SIGNING_KEYS, USERS
from shared.store import Document

DEVICE_ROLES = frozenset({Role.DEVICE_MANAGER, Role.DEVICE_STOCK_MANAGER})
STOCK_ROLES = frozenset({Role.STOCK_MANAGER, Role.DEVICE_STOCK_MANAGER})


@dataclass(frozen=True)
class Principal:
    """The caller, as far as access decisions go."""

    user_id: str
    org_id: str | None
    role: Role | None
    device_ids: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_agent(self) -> bool:
        return self.role is Role.AGENT

    @property
    def is_staff(self) -> bool:
        return self.role in (Role.AGENT, Role.TECHNICIAN)

    @property
    def is_customer(self) -> bool:
        return self.role in CUSTOMER_ROLES


def unauthenticated(detail: str) -> Problem:
    return Problem(
        401,
        "unauthenticated",
        "Authentication required",
        detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


def forbidden(detail: str) -> Problem:
    return Problem(403, "forbidden", "Not allowed", detail)


class TokenVerifier:
    """Verifies access tokens against the public keys in the service's own database."""

    def __init__(self, db: AsyncDatabase[Document], settings: AuthSettings) -> None:
        self._db = db
        self._settings = settings
        self._keys: dict[str, tuple[Ed25519PublicKey, float]] = {}

    async def _key(self, kid: str) -> Ed25519PublicKey:
        cached = self._keys.get(kid)
        if cached is not None and time.monotonic() - cached[1] < self._settings.key_cache_seconds:
            return cached[0]
        doc = await self._db[SIGNING_KEYS].find_one({"_id": kid})
        if doc is None or doc.get("retired"):
            self._keys.pop(kid, None)
            raise unauthenticated("the token's signing key is unknown or retired")
        key = serialization.load_pem_public_key(doc["public_key_pem"].encode())
        if not isinstance(key, Ed25519PublicKey):
            raise unauthenticated("the token's signing key is not Ed25519")
        self._keys[kid] = (key, time.monotonic())
        return key

    async def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise unauthenticated("the token is malformed") from exc
        kid = header.get("kid")
        if not isinstance(kid, str) or header.get("alg") != "EdDSA":
            raise unauthenticated("the token is malformed")
        key = await self._key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["EdDSA"],
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway_seconds,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise unauthenticated("the token has expired") from exc
        except jwt.PyJWTError as exc:
            raise unauthenticated("the token is not valid") from exc
        return claims


PrincipalResolver = Callable[[dict[str, Any]], Awaitable[Principal]]


def projection_resolver(db: AsyncDatabase[Document]) -> PrincipalResolver:
    """Current role and devices from the service's projection of the users state topic."""

    async def resolve(claims: dict[str, Any]) -> Principal:
        doc = await db[USERS].find_one({"_id": claims["sub"]})
        if doc is None:
            return principal_from_claims(claims)
        if doc.get("status") != UserStatus.ACTIVE:
            raise unauthenticated("the account is not active")
        role = Role(doc["role"]) if doc.get("role") else None
        return Principal(doc["_id"], doc.get("org_id"), role, frozenset(doc.get("device_ids", [])))

    return resolve


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    role = claims.get("role")
    return Principal(
        user_id=str(claims["sub"]),
        org_id=claims.get("org"),
        role=Role(role) if role else None,
        device_ids=frozenset(claims.get("devices", [])),
    )


_bearer = OAuth2PasswordBearer(tokenUrl="/identity/token", auto_error=False)


async def current_principal(
    request: Request, token: Annotated[str | None, Depends(_bearer)]
) -> Principal:
    """FastAPI dependency: needs ``app.state.verifier`` and ``app.state.resolve_principal``."""
    if not token:
        raise unauthenticated("a bearer token is required")
    claims = await request.app.state.verifier.verify(token)
    principal: Principal = await request.app.state.resolve_principal(claims)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


# --- the rules ----------------------------------------------------------------------------


def require_role(principal: Principal, *roles: Role) -> None:
    if principal.role not in roles:
        raise forbidden("your role does not allow this")


def can_access_org(principal: Principal, org_id: str) -> bool:
    """Agents see every organisation; a customer user only their own."""
    if principal.is_agent:
        return True
    return principal.is_customer and principal.org_id == org_id


def require_org(principal: Principal, org_id: str) -> None:
    if not can_access_org(principal, org_id):
        raise forbidden("this organisation is not yours")


def can_see_device(principal: Principal, org_id: str, device_id: str) -> bool:
    """Admins see all their organisation's devices; managers only those assigned to them."""
    if principal.is_agent:
        return True
    if principal.org_id != org_id or principal.role is None:
        return False
    if principal.role is Role.ADMIN:
        return True
    if principal.role in DEVICE_ROLES | STOCK_ROLES:
        return device_id in principal.device_ids
    return False


def can_manage_device(principal: Principal, org_id: str, device_id: str) -> bool:
    """Tickets, readings, locations: admins and the device's device managers (and agents)."""
    if principal.is_agent:
        return True
    if principal.org_id != org_id:
        return False
    if principal.role is Role.ADMIN:
        return True
    return principal.role in DEVICE_ROLES and device_id in principal.device_ids
