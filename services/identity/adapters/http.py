"""Identity's HTTP routes (prefix ``/identity``): validate, call a use case, shape the answer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.security import OAuth2PasswordRequestForm

from services.identity.adapters.store import ORG_FIELDS, user_state
from services.identity.core.model import (
    AccountView,
    DeviceAssignment,
    EmailChange,
    InvitationAccept,
    InvitationCreate,
    OrganisationCreate,
    OrganisationPublic,
    RegistrationAccepted,
    RegistrationCreate,
    RoleChange,
    StaffInvitation,
    TokenBody,
    UserPublic,
)
from services.identity.core.signin import client_address
from services.identity.service_layer import Identity, not_found
from services.identity.use_cases.account import account_view
from services.identity.use_cases.registration import accept_invitation as accept
from services.identity.use_cases.registration import register as register_user
from services.identity.use_cases.sign_in import SignIn, sign_in
from shared.auth import CurrentPrincipal, forbidden, require_org, require_role
from shared.contracts import Role, UserStatus
from shared.http import Problem
from shared.store import Document

router = APIRouter(prefix="/identity", tags=["identity"])


def _identity(request: Request) -> Identity:
    identity: Identity = request.app.state.identity
    return identity


IdentityDep = Annotated[Identity, Depends(_identity)]


def user_public(doc: Document) -> UserPublic:
    return UserPublic.model_validate(user_state(doc).model_dump(exclude={"revision"}))


def org_public(doc: Document) -> OrganisationPublic:
    return OrganisationPublic(org_id=doc["_id"], **{f: doc[f] for f in ORG_FIELDS})


def _published(request: Request) -> None:
    request.app.state.runtime.relay.nudge()


# --- organisations (agents) ------------------------------------------------------------------


@router.post("/organisations", status_code=status.HTTP_201_CREATED)
async def create_organisation(
    body: OrganisationCreate, principal: CurrentPrincipal, identity: IdentityDep, request: Request
) -> OrganisationPublic:
    doc = await identity.create_organisation(principal, body)
    _published(request)
    return org_public(doc)


@router.get("/organisations")
async def find_organisations(
    principal: CurrentPrincipal,
    identity: IdentityDep,
    customer_number: Annotated[str | None, Query(max_length=32)] = None,
    system_id: Annotated[str | None, Query(max_length=32)] = None,
) -> list[OrganisationPublic]:
    require_role(principal, Role.AGENT)
    query: dict[str, Any] = {}
    if customer_number:
        query["customer_number"] = customer_number
    if system_id:
        query["system_id"] = system_id
    if not query:
        raise Problem(
            400, "search-term-required", "Give a customer number or a system ID", "both are empty"
        )
    return [org_public(d) for d in await identity.store.find_orgs(query)]


@router.get("/organisations/{org_id}/users")
async def organisation_users(
    org_id: str, principal: CurrentPrincipal, identity: IdentityDep
) -> list[UserPublic]:
    require_org(principal, org_id)
    if not principal.is_agent:
        require_role(principal, Role.ADMIN)
    if await identity.store.org(org_id) is None:
        raise not_found("organisation")
    return [user_public(d) for d in await identity.store.users_of_org(org_id)]


@router.get("/organisations/{org_id}/account")
async def organisation_account(
    org_id: str, principal: CurrentPrincipal, identity: IdentityDep
) -> AccountView:
    return await account_view(principal, org_id, identity.store)


@router.post("/organisations/{org_id}/invitations", status_code=status.HTTP_201_CREATED)
async def invite(
    org_id: str,
    body: InvitationCreate,
    principal: CurrentPrincipal,
    identity: IdentityDep,
    request: Request,
) -> UserPublic:
    doc = await identity.invite(principal, org_id, body)
    _published(request)
    return user_public(doc)


@router.post("/staff", status_code=status.HTTP_201_CREATED)
async def invite_staff(
    body: StaffInvitation, principal: CurrentPrincipal, identity: IdentityDep, request: Request
) -> UserPublic:
    doc = await identity.invite_staff(principal, body)
    _published(request)
    return user_public(doc)


# --- registration, confirmation, invitations (anonymous) -------------------------------------


@router.post("/registrations", status_code=status.HTTP_202_ACCEPTED)
async def register(
    body: RegistrationCreate, identity: IdentityDep, request: Request
) -> RegistrationAccepted:
    user_id = await register_user(body, identity)
    _published(request)
    return RegistrationAccepted(
        user_id=user_id,
        status=UserStatus.PENDING_CONFIRMATION,
        detail="a confirmation e-mail is on its way; open its link to activate the account",
    )


@router.post("/registrations/confirm")
async def confirm(body: TokenBody, identity: IdentityDep, request: Request) -> UserPublic:
    doc = await identity.confirm(body.token)
    _published(request)
    return user_public(doc)


@router.post("/invitations/accept")
async def accept_invitation(
    body: InvitationAccept, identity: IdentityDep, request: Request
) -> UserPublic:
    doc = await accept(body, identity)
    _published(request)
    return user_public(doc)


# --- sign-in and the caller ------------------------------------------------------------------


@router.post("/token")
async def token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], identity: IdentityDep, request: Request
) -> dict[str, Any]:
    if len(form.username) > 320 or len(form.password) > 256:
        raise Problem(422, "validation-error", "The request is not valid", "field too long")
    client = client_address(
        request.client.host if request.client else None,
        request.headers.get("x-forwarded-for"),
        identity.trusted_proxies,
    )
    access_token, _user = await sign_in(SignIn(form.username, form.password, client), identity)
    return {
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": identity.signer.ttl_seconds,
    }


@router.get("/me")
async def me(principal: CurrentPrincipal, identity: IdentityDep) -> UserPublic:
    doc = await identity.store.user(principal.user_id)
    if doc is None:
        raise not_found()
    return user_public(doc)


# --- roles, devices, e-mail ------------------------------------------------------------------


@router.put("/users/{user_id}/role")
async def change_role(
    user_id: str,
    body: RoleChange,
    principal: CurrentPrincipal,
    identity: IdentityDep,
    request: Request,
) -> UserPublic:
    doc = await identity.change_role(principal, user_id, body.role)
    _published(request)
    return user_public(doc)


@router.put("/users/{user_id}/devices")
async def assign_devices(
    user_id: str,
    body: DeviceAssignment,
    principal: CurrentPrincipal,
    identity: IdentityDep,
    request: Request,
) -> UserPublic:
    doc = await identity.assign_devices(principal, user_id, body.device_ids)
    _published(request)
    return user_public(doc)


@router.put("/users/{user_id}/email")
async def change_email(
    user_id: str,
    body: EmailChange,
    principal: CurrentPrincipal,
    identity: IdentityDep,
    request: Request,
) -> UserPublic:
    doc = await identity.change_email(principal, user_id, str(body.email))
    _published(request)
    return user_public(doc)


@router.post("/users/{user_id}/confirmation", status_code=status.HTTP_202_ACCEPTED)
async def resend_confirmation(
    user_id: str, principal: CurrentPrincipal, identity: IdentityDep, request: Request
) -> UserPublic:
    if not principal.is_agent:
        raise forbidden("only the service centre re-sends confirmations")
    doc = await identity.resend_confirmation(principal, user_id)
    _published(request)
    return user_public(doc)
