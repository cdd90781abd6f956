"""Self-registration and accepting an invitation: the two ways to set a first password.

Registration does not tell who has an account: an address that has one gets the same answer
as a new one (202, a user id, pending confirmation), and its owner is told instead (an
AccountExistsNotice for notify, at most once a day). An unconfirmed registration older than
``identity_pending_registration_days`` no longer holds its address: the next registration
replaces it (the unique e-mail index settles a race between two such registrations).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from pymongo.errors import DuplicateKeyError

from services.identity.core.model import InvitationAccept, RegistrationCreate, normalise_email
from services.identity.service_layer import CONFIRM, INVITE, Identity, weak_password
from shared.contracts import IDENTITY_NOTIFICATIONS, AccountExistsNotice, Role, UserStatus
from shared.events import utcnow
from shared.http import Problem
from shared.store import Document


def proof_invalid() -> Problem:
    return Problem(
        422,
        "registration-proof-invalid",
        "Customer number and serial number do not match",
        "the customer number and the serial number must identify a device of one "
        "organisation; check both on your contract and on the device's label",
    )


async def register(data: RegistrationCreate, identity: Identity) -> str:
    """Register a customer user; the user id to answer with (see the module docstring)."""
    store = identity.store
    email = normalise_email(data.email)
    weak_password(data.password, email)
    orgs = await store.find_orgs({"customer_number": data.customer_number})
    if not orgs or not await store.device_serial_in_org(data.serial, orgs[0]["_id"]):
        raise proof_invalid()
    # Hashed whether or not the address is taken: both answers take the same time.
    password_hash = await identity.passwords.hash(data.password)
    doc: Document = {
        "_id": uuid.uuid4().hex,
        "org_id": orgs[0]["_id"],
        "email": email,
        "name": data.name,
        "language": data.language,
        "role": None,
        "device_ids": [],
        "status": UserStatus.PENDING_CONFIRMATION.value,
        "password_hash": password_hash,
    }
    existing = await store.user_by_email(email)
    if existing is not None and expired(
        existing, identity.settings.identity_pending_registration_days
    ):
        await store.delete_pending(existing)
        existing = None
    if existing is None:
        try:
            await store.insert_user(doc, await identity.link(doc, CONFIRM))
            return str(doc["_id"])
        except DuplicateKeyError:
            existing = await store.user_by_email(email)  # registered meanwhile
    if existing is not None:
        await tell_owner(identity, existing)
    return str(doc["_id"])  # an id nobody has: the answer looks like a new registration's


def expired(user: Document, days: int) -> bool:
    return bool(
        user["status"] == UserStatus.PENDING_CONFIRMATION.value
        and user.get("created_at")
        and user["created_at"] < utcnow() - timedelta(days=days)
    )


async def tell_owner(identity: Identity, user: Document) -> None:
    now = utcnow()
    if not await identity.store.first_notice_of_day(user["_id"], now.date().isoformat()):
        return
    notice = AccountExistsNotice(
        user_id=user["_id"], email=user["email"], language=user["language"], attempted_at=now
    )
    await identity.store.add_events(user, (IDENTITY_NOTIFICATIONS, user["_id"], notice))


def invitation_invalid() -> Problem:
    return Problem(
        400,
        "token-invalid",
        "The invitation is not valid",
        "it is unknown, already used or expired; ask your admin for a new one",
    )


async def accept_invitation(data: InvitationAccept, identity: Identity) -> Document:
    """Set the invitee's password and activate them. The password is checked (and hashed)
    before the link is used up: a weak password gets 422 and the link still works."""
    store = identity.store
    record = await store.live_token(data.token, INVITE)
    user = await store.user(record["user_id"]) if record else None
    if record is None or user is None or user["email"] != record.get("email"):
        raise invitation_invalid()
    weak_password(data.password, user["email"])
    password_hash = await identity.passwords.hash(data.password)
    if await store.consume_token(data.token, INVITE) is None:
        raise invitation_invalid()  # used by a concurrent acceptance
    changes: Document = {"status": UserStatus.ACTIVE.value, "password_hash": password_hash}
    if data.name:
        changes["name"] = data.name
    org_id = user.get("org_id")
    if org_id is None or user.get("role") != Role.ADMIN.value:
        return await identity.update(user, changes)
    async with identity.admins_of(org_id):
        updated = await identity.update(user, changes)
        await store.add_admin(org_id, user["_id"])
    return updated
