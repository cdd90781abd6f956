"""Identity's use cases: each takes a command and its dependencies and enforces the rules.

The HTTP routes are thin; the rules about who may give which role, the last admin, single-use
tokens and sign-in limits live here. Failures are raised as problem details.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pymongo.errors import DuplicateKeyError

from services.identity.adapters.keys import Signer
from services.identity.adapters.store import IdentityStore
from services.identity.config import IdentitySettings
from services.identity.core.model import (
    DEVICE_HOLDING_ROLES,
    AccountEntry,
    AccountView,
    InvitationAccept,
    InvitationCreate,
    OrganisationCreate,
    RegistrationCreate,
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

_hasher = PasswordHasher()  # Argon2id with the library's current recommended parameters
# Verified against when the account does not exist, so timing does not tell which e-mails exist.
_DUMMY_HASH = _hasher.hash("not-a-real-password-0")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(stored: str | None, password: str) -> bool:
    try:
        return await asyncio.to_thread(_hasher.verify, stored or _DUMMY_HASH, password) and bool(
            stored
        )
    except (VerificationError, InvalidHashError):
        return False


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
    store: IdentityStore
    signer: Signer
    settings: IdentitySettings

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

    async def register(self, data: RegistrationCreate) -> Document:
        email = normalise_email(data.email)
        weak_password(data.password, email)
        orgs = await self.store.find_orgs({"customer_number": data.customer_number})
        if not orgs or not await self.store.device_serial_in_org(data.serial, orgs[0]["_id"]):
            raise Problem(
                422,
                "registration-proof-invalid",
                "Customer number and serial number do not match",
                "the customer number and the serial number must identify a device of one "
                "organisation; check both on your contract and on the device's label",
            )
        doc = {
            "_id": uuid.uuid4().hex,
            "org_id": orgs[0]["_id"],
            "email": email,
            "name": data.name,
            "language": data.language,
            "role": None,
            "device_ids": [],
            "status": UserStatus.PENDING_CONFIRMATION.value,
            "password_hash": await hash_password(data.password),
        }
        try:
            return await self.store.insert_user(doc, await self._link(doc, CONFIRM))
        except DuplicateKeyError as exc:
            raise email_taken() from exc

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
            return await self._update(user, changes)
        async with self._admins_of(org_id):
            if not await self.store.admins(org_id):
                changes["role"] = Role.ADMIN.value  # the first confirmed user of an organisation
            updated = await self._update(user, changes)
            if updated.get("role") == Role.ADMIN.value:
                await self.store.add_admin(org_id, user["_id"])
        return updated

    async def _update(self, user: Document, changes: Document) -> Document:
        updated = await self.store.update_user(user, changes)
        if updated is None:
            raise concurrent()
        return updated

    @asynccontextmanager
    async def _admins_of(self, org_id: str) -> AsyncIterator[None]:
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
        link = await self._link({**user, **changes}, purpose)
        updated = await self.store.update_user(user, changes, link)
        if updated is None:
            raise concurrent()
        return updated

    async def _link(self, user: Document, purpose: str) -> tuple[Topic, str, Event]:
        """Supersede the user's links of ``purpose`` and issue one to their current address."""
        await self.store.revoke_tokens(user["_id"], purpose)
        raw, expires_at = await self.store.issue_token(
            user["_id"], purpose, self.token_ttl, email=user["email"]
        )
        common = {
            "user_id": user["_id"],
            "email": user["email"],
            "language": user["language"],
            # Sealed to notify (the only reader); contexts as in shared.contracts.
            "sealed_token": seal(
                self.settings.sealing_notify_public_key,
                raw,
                context="invitation" if purpose == INVITE else "confirmation",
            ),
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
            return await self.store.insert_user(doc, await self._link(doc, INVITE))
        except DuplicateKeyError as exc:
            raise email_taken() from exc

    async def accept_invitation(self, data: InvitationAccept) -> Document:
        record = await self.store.consume_token(data.token, INVITE)
        user = await self.store.user(record["user_id"]) if record else None
        if record is None or user is None or user["email"] != record.get("email"):
            raise Problem(
                400,
                "token-invalid",
                "The invitation is not valid",
                "it is unknown, already used or expired; ask your admin for a new one",
            )
        weak_password(data.password, user["email"])
        changes: Document = {
            "status": UserStatus.ACTIVE.value,
            "password_hash": await hash_password(data.password),
        }
        if data.name:
            changes["name"] = data.name
        org_id = user.get("org_id")
        if org_id is None or user.get("role") != Role.ADMIN.value:
            return await self._update(user, changes)
        async with self._admins_of(org_id):
            updated = await self._update(user, changes)
            await self.store.add_admin(org_id, user["_id"])
        return updated

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
        async with self._admins_of(org_id):
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
            updated = await self._update(user, changes)
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
        return await self._update(user, {"device_ids": checked})

    # --- sign-in ---------------------------------------------------------------------------

    async def sign_in(self, email: str, password: str, client: str) -> tuple[str, Document]:
        email = normalise_email(email)
        window = timedelta(seconds=self.settings.identity_signin_window_seconds)
        keys = {
            f"account:{email}": self.settings.identity_signin_account_limit,
            f"client:{client}": self.settings.identity_signin_client_limit,
        }
        for key, limit in keys.items():
            if await self.store.recent_failures(key, window) >= limit:
                raise Problem(
                    429,
                    "too-many-attempts",
                    "Too many failed sign-ins",
                    "wait a while before trying again",
                    headers={"Retry-After": str(self.settings.identity_signin_window_seconds)},
                )
        user = await self.store.user_by_email(email)
        if (
            not await verify_password(user.get("password_hash") if user else None, password)
            or user is None
        ):
            for key in keys:
                await self.store.record_failure(key, window)
            raise Problem(
                401, "invalid-credentials", "Wrong e-mail or password", "check both and try again"
            )
        if user["status"] != UserStatus.ACTIVE.value:
            raise Problem(
                403,
                "account-not-confirmed",
                "The account is not confirmed",
                "open the link in the confirmation e-mail first, or ask the service centre "
                "to send it again",
            )
        await self.store.clear_failures(f"account:{email}")
        return self.signer.issue(user["_id"], user.get("org_id"), user.get("role")), user

    # --- the agents' account view ----------------------------------------------------------

    async def account(self, principal: Principal, org_id: str) -> AccountView:
        require_role(principal, Role.AGENT)
        org = await self.store.org(org_id)
        if org is None:
            raise not_found("organisation")
        entries = await self.store.account_entries(org["customer_number"])
        balance: dict[str, Decimal] = {}
        for e in entries:
            sign = 1 if e["kind"] == "invoice" else -1
            balance[e["currency"]] = balance.get(e["currency"], Decimal(0)) + sign * Decimal(
                e["amount"]
            )
        return AccountView(
            org_id=org_id,
            customer_number=org["customer_number"],
            balance={k: str(v) for k, v in balance.items()},
            entries=[
                AccountEntry(
                    entry_id=e["_id"],
                    kind=e["kind"],
                    amount=e["amount"],
                    currency=e["currency"],
                    reference=e["reference"],
                    booked_at=e["booked_at"].isoformat()
                    if hasattr(e["booked_at"], "isoformat")
                    else str(e["booked_at"]),
                )
                for e in entries
            ],
        )
