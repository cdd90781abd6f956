"""Identity's use cases that share the most: organisations, confirmation, roles and devices.

The HTTP routes are thin; the rules about who may give which role, the last admin and
single-use links live here. Registration, invitations, sign-in and the account view have
modules of their own under ``use_cases``. Failures are raised as problem details.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property

from pymongo.errors import DuplicateKeyError

from services.identity.adapters.keys import Signer
from services.identity.adapters.passwords import Passwords
from services.identity.adapters.store import IdentityStore
from services.identity.adapters.throttle import SigninAttempts
from services.identity.config import IdentitySettings, Network
from services.identity.core.model import (
    DEVICE_HOLDING_ROLES,
    InvitationCreate,
    OrganisationCreate,
    StaffInvitation,
    normalise_email,
    password_problems,
)
from shared.auth import Principal, forbidden, require_org, require_role
from shared.contracts import (
    IDENTITY_NOTIFICATIONS,
    ConfirmationRequested,
    InvitationIssued,
    Role,
    Topic,
    UserStatus,
)
from shared.events import Event
from shared.http import Problem
from shared.sealing import seal
from shared.store import Document, LockBusy

CONFIRM = "confirm"
INVITE = "invite"
# The sealing context of each purpose: a box opens only for what it was sealed for.
SEAL_CONTEXT = {CONFIRM: "confirmation", INVITE: "invitation"}

Sealer = Callable[[str, str], str]  # (secret, context) -> sealed box


def sealer_for(public_key: str) -> Sealer:
    """Seal secrets to notify's public key: only notify can read the tokens it must send."""
    return lambda secret, context: seal(public_key, secret, context=context)


def weak_password(password: str, email: str) -> None:
    problems = password_problems(password, email)
    if problems:
        raise Problem(
            422,
            "weak-password",
            "The password is too weak",
            "the password " + "; ".join(problems),
            errors=[{"field": "password", "reason": p} for p in problems],
        )


def not_found(what: str = "user") -> Problem:
    return Problem(
        404, f"{what}-not-found", f"No such {what}", f"no {what} with this id is visible to you"
    )


def email_taken() -> Problem:
    return Problem(
        409, "email-taken", "E-mail already registered", "this address already has an account"
    )


def concurrent() -> Problem:
    return Problem(409, "concurrent-change", "Changed meanwhile", "read it again and retry")


@dataclass
class Identity:
    """The dependencies of identity's use cases, and the use cases that share helpers."""

    store: IdentityStore
    signer: Signer
    settings: IdentitySettings
    passwords: Passwords
    attempts: SigninAttempts
    seal: Sealer

    @cached_property
    def trusted_proxies(self) -> list[Network]:
        return self.settings.trusted_proxies()

    @property
    def token_ttl(self) -> timedelta:
        return timedelta(hours=self.settings.identity_confirmation_ttl_hours)

    # --- organisations ---------------------------------------------------------------------

    async def create_organisation(self, principal: Principal, data: OrganisationCreate) -> Document:
        require_role(principal, Role.AGENT)
        try:
            return await self.store.create_org(data.model_dump())
        except DuplicateKeyError as exc:
            raise Problem(
                409,
                "organisation-exists",
                "Organisation already exists",
                "the customer number or system ID is already in use",
            ) from exc

    async def visible_user(self, principal: Principal, user_id: str) -> Document:
        """A user the caller may manage: agents any, an admin those of their organisation."""
        doc = await self.store.user(user_id)
        if doc is None or (not principal.is_agent and doc.get("org_id") != principal.org_id):
            raise not_found()
        return doc

    # --- registration and confirmation -----------------------------------------------------

    async def confirm(self, token: str) -> Document:
        record = await self.store.consume_token(token, CONFIRM)
        if record is None:
            raise Problem(
                400,
                "token-invalid",
                "The confirmation link is not valid",
                "it is unknown, already used or expired; ask the service centre to send a new one",
            )
        user = await self.store.user(record["user_id"])
        if user is None or user["email"] != record.get("email"):
            raise Problem(
                400, "token-invalid", "The confirmation link is not valid", "it was superseded"
            )
        changes: Document = {"status": UserStatus.ACTIVE.value}
        org_id = user.get("org_id")
        if org_id is None:
            return await self.update(user, changes)
        async with self.admins_of(org_id):
            if not await self.store.admins(org_id):
                changes["role"] = Role.ADMIN.value  # the first confirmed user of an organisation
            updated = await self.update(user, changes)
            if updated.get("role") == Role.ADMIN.value:
                await self.store.add_admin(org_id, user["_id"])
        return updated

    async def update(self, user: Document, changes: Document) -> Document:
        updated = await self.store.update_user(user, changes)
        if updated is None:
            raise concurrent()
        return updated

    @asynccontextmanager
    async def admins_of(self, org_id: str) -> AsyncIterator[None]:
        """Hold the organisation's admin set: its checks and changes happen one at a time."""
        try:
            async with self.store.admins_lock(org_id):
                yield
        except LockBusy as exc:
            raise concurrent() from exc

    async def resend_confirmation(self, principal: Principal, user_id: str) -> Document:
        require_role(principal, Role.AGENT)
        user = await self.visible_user(principal, user_id)
        if user["status"] != UserStatus.PENDING_CONFIRMATION.value:
            raise Problem(
                409,
                "already-confirmed",
                "Nothing to confirm",
                "this user has no pending confirmation",
            )
        return await self._request_confirmation(user, {})

    async def change_email(self, principal: Principal, user_id: str, email: str) -> Document:
        require_role(principal, Role.AGENT)
        user = await self.visible_user(principal, user_id)
        email = normalise_email(email)
        if user.get("org_id") is None:
            raise forbidden("staff accounts are managed elsewhere")
        changes: Document = {"email": email}
        if user["status"] != UserStatus.INVITED.value:
            changes["status"] = UserStatus.PENDING_CONFIRMATION.value
        try:
            return await self._request_confirmation(user, changes)
        except DuplicateKeyError as exc:
            raise email_taken() from exc

    async def _request_confirmation(self, user: Document, changes: Document) -> Document:
        """Send a fresh link (older ones stop working) together with the user's new state.

        An invitee confirms by accepting the invitation, so they get a new invitation instead.
        """
        purpose = INVITE if user["status"] == UserStatus.INVITED.value else CONFIRM
        link = await self.link({**user, **changes}, purpose)
        updated = await self.store.update_user(user, changes, link)
        if updated is None:
            raise concurrent()
        return updated

    async def link(self, user: Document, purpose: str) -> tuple[Topic, str, Event]:
        """Supersede the user's links of ``purpose`` and issue one to their current address."""
        await self.store.revoke_tokens(user["_id"], purpose)
        raw, expires_at = await self.store.issue_token(
            user["_id"], purpose, self.token_ttl, email=user["email"]
        )
        common = {
            "user_id": user["_id"],
            "email": user["email"],
            "language": user["language"],
            "sealed_token": self.seal(raw, SEAL_CONTEXT[purpose]),
            "expires_at": expires_at,
        }
        event: Event = (
            InvitationIssued(org_id=user["org_id"], role=user["role"], **common)
            if purpose == INVITE
            else ConfirmationRequested(**common)
        )
        return IDENTITY_NOTIFICATIONS, user["_id"], event

    # --- invitations -----------------------------------------------------------------------

    async def invite(self, principal: Principal, org_id: str, data: InvitationCreate) -> Document:
        require_org(principal, org_id)
        require_role(principal, Role.ADMIN)
        org = await self.store.org(org_id)
        if org is None:
            raise not_found("organisation")
        device_ids = await self._checked_devices(org_id, data.role, data.device_ids)
        return await self._create_invited(org_id, data, device_ids)

    async def invite_staff(self, principal: Principal, data: StaffInvitation) -> Document:
        require_role(principal, Role.AGENT)
        return await self._create_invited(None, data, [])

    async def _create_invited(
        self, org_id: str | None, data: InvitationCreate | StaffInvitation, device_ids: list[str]
    ) -> Document:
        user_id = uuid.uuid4().hex
        email = normalise_email(data.email)
        doc = {
            "_id": user_id,
            "org_id": org_id,
            "email": email,
            "name": data.name,
            "language": data.language,
            "role": data.role.value,
            "device_ids": device_ids,
            "status": UserStatus.INVITED.value,
            "password_hash": None,
        }
        try:
            return await self.store.insert_user(doc, await self.link(doc, INVITE))
        except DuplicateKeyError as exc:
            raise email_taken() from exc

    # --- roles and devices -----------------------------------------------------------------

    async def _checked_devices(
        self, org_id: str, role: Role | None, device_ids: list[str]
    ) -> list[str]:
        wanted = sorted(set(device_ids))
        if wanted and role not in DEVICE_HOLDING_ROLES:
            raise Problem(
                422,
                "devices-need-manager-role",
                "Devices can only be assigned to managers",
                "give the user a device or stock manager role first",
            )
        known = await self.store.devices_in_org(wanted, org_id)
        unknown = [d for d in wanted if d not in known]
        if unknown:
            raise Problem(
                422,
                "unknown-devices",
                "Unknown devices",
                "these devices are not devices of the organisation",
                device_ids=unknown,
            )
        return wanted

    async def change_role(self, principal: Principal, user_id: str, role: Role) -> Document:
        require_role(principal, Role.ADMIN)  # admins, and nobody else, give roles
        org_id = (await self.visible_user(principal, user_id))["org_id"]
        async with self.admins_of(org_id):
            # Read again under the lock: a concurrent change may have demoted either side.
            actor = await self.store.user(principal.user_id)
            if actor is None or actor.get("role") != Role.ADMIN.value:
                raise forbidden("your role does not allow this")
            user = await self.visible_user(principal, user_id)
            admins = await self.store.admins(org_id)
            demoting = user_id in admins and role is not Role.ADMIN
            if demoting and not [a for a in admins if a != user_id]:
                raise Problem(
                    409,
                    "last-admin",
                    "An organisation keeps at least one admin",
                    "make another user admin before changing this one's role",
                )
            changes: Document = {"role": role.value}
            if role not in DEVICE_HOLDING_ROLES:
                changes["device_ids"] = []
            updated = await self.update(user, changes)
            if demoting:
                await self.store.remove_admin(org_id, user_id)
            elif role is Role.ADMIN and updated["status"] == UserStatus.ACTIVE.value:
                await self.store.add_admin(org_id, user_id)
        return updated

    async def assign_devices(
        self, principal: Principal, user_id: str, device_ids: list[str]
    ) -> Document:
        require_role(principal, Role.ADMIN)
        user = await self.visible_user(principal, user_id)
        role = Role(user["role"]) if user.get("role") else None
        checked = await self._checked_devices(user["org_id"], role, device_ids)
        return await self.update(user, {"device_ids": checked})
