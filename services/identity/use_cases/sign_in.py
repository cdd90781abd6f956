"""Sign-in: the password form in, an access token out, throttled as ``core.signin`` says."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.identity.adapters.throttle import SigninAttempts
from services.identity.config import IdentitySettings
from services.identity.core.model import normalise_email
from services.identity.core.signin import Bucket, Limits, buckets, known_client_key
from services.identity.service_layer import Identity
from shared.contracts import UserStatus
from shared.events import utcnow
from shared.http import Problem
from shared.store import Document


@dataclass(frozen=True)
class SignIn:
    email: str
    password: str
    client: str  # the caller's address (see core.signin.client_address)


def limits(settings: IdentitySettings) -> Limits:
    return Limits(
        account_limit=settings.identity_signin_account_limit,
        client_limit=settings.identity_signin_client_limit,
        account_total_limit=settings.identity_signin_account_total_limit,
        window_seconds=settings.identity_signin_window_seconds,
    )


def too_many(retry_after: int) -> Problem:
    return Problem(
        429,
        "too-many-attempts",
        "Too many failed sign-ins",
        "wait a while before trying again",
        headers={"Retry-After": str(retry_after)},
    )


def invalid_credentials() -> Problem:
    return Problem(
        401, "invalid-credentials", "Wrong e-mail or password", "check both and try again"
    )


async def reserve_all(attempts: SigninAttempts, wanted: list[Bucket], now: datetime) -> list[str]:
    """A slot in every bucket, or none at all and 429."""
    slots: list[str] = []
    for bucket in wanted:
        slot = await attempts.reserve(bucket)
        if slot is None:
            for taken in slots:
                await attempts.release(taken)
            raise too_many(bucket.retry_after(now))
        slots.append(slot)
    return slots


async def sign_in(cmd: SignIn, identity: Identity) -> tuple[str, Document]:
    """An access token for the user, or 401 / 403 / 429 problem details."""
    email = normalise_email(cmd.email)
    attempts, now = identity.attempts, utcnow()
    known_key = known_client_key(email, cmd.client)
    known = await attempts.is_known(known_key, now)
    wanted = buckets(email, cmd.client, limits(identity.settings), now, known_client=known)
    slots = await reserve_all(attempts, wanted, now)  # counted as failures until proven right
    try:
        user = await identity.store.user_by_email(email)
        stored = user.get("password_hash") if user else None
        right = await identity.passwords.verify(stored, cmd.password) and user is not None
    except BaseException:
        for slot in slots:  # not checked (busy, cancelled, database down): not a failure
            await attempts.release(slot)
        raise
    if not right or user is None:
        await attempts.prune(now)
        raise invalid_credentials()
    for slot in slots:
        await attempts.release(slot)
    if user["status"] != UserStatus.ACTIVE.value:
        raise Problem(
            403,
            "account-not-confirmed",
            "The account is not confirmed",
            "open the link in the confirmation e-mail first, or ask the service centre "
            "to send it again",
        )
    await attempts.clear(wanted[0])  # the pair's failures
    await attempts.remember(known_key, now)
    return identity.signer.issue(user["_id"], user.get("org_id"), user.get("role")), user
