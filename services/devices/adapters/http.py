"""HTTP routes of the devices service: thin edges over the store and the access rules."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from pymongo.errors import DuplicateKeyError

from services.devices.adapters.store import DeviceStore, public
from services.devices.core.model import DeviceCreate, DevicePublic, Location
from shared.auth import (
    CurrentPrincipal,
    Principal,
    can_manage_device,
    can_see_device,
    forbidden,
    require_role,
)
from shared.contracts import Role
from shared.http import Problem
from shared.store import Document

router = APIRouter(tags=["devices"])


def _store(request: Request) -> DeviceStore:
    store: DeviceStore = request.app.state.store
    return store


def _not_found() -> Problem:
    return Problem(
        404, "device-not-found", "No such device", "no device with this id is visible to you"
    )


async def _visible(request: Request, principal: Principal, device_id: str) -> Document:
    doc = await _store(request).get(device_id)
    if doc is None or not can_see_device(principal, doc["org_id"], device_id):
        raise _not_found()
    return doc


@router.post("/devices", status_code=status.HTTP_201_CREATED)
async def create_device(
    body: DeviceCreate, principal: CurrentPrincipal, request: Request
) -> DevicePublic:
    require_role(principal, Role.AGENT)
    store = _store(request)
    if not await store.organisation_known(body.org_id):
        raise Problem(
            422, "unknown-organisation", "Unknown organisation", "no organisation has this id"
        )
    try:
        doc = await store.create(body)
    except DuplicateKeyError as exc:
        raise Problem(
            409,
            "serial-taken",
            "Serial number already registered",
            "a device with this serial exists",
        ) from exc
    request.app.state.runtime.relay.nudge()
    return public(doc)


@router.get("/devices")
async def list_devices(
    principal: CurrentPrincipal,
    request: Request,
    org_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[DevicePublic]:
    query: dict[str, Any] = {}
    if principal.is_agent:
        if org_id:
            query["org_id"] = org_id
    elif principal.is_customer and principal.org_id:
        if org_id and org_id != principal.org_id:
            raise forbidden("this organisation is not yours")
        query["org_id"] = principal.org_id
        if principal.role is not Role.ADMIN:
            query["_id"] = {"$in": sorted(principal.device_ids)}
    else:
        raise forbidden("your role does not allow this")
    if principal.role is Role.KB_VIEWER:
        raise forbidden("your role does not allow this")
    docs = await _store(request).list(query, limit)
    return [public(d) for d in docs if can_see_device(principal, d["org_id"], d["_id"])]


@router.get("/devices/{device_id}")
async def get_device(device_id: str, principal: CurrentPrincipal, request: Request) -> DevicePublic:
    return public(await _visible(request, principal, device_id))


@router.put("/devices/{device_id}/location")
async def update_location(
    device_id: str, body: Location, principal: CurrentPrincipal, request: Request
) -> DevicePublic:
    doc = await _visible(request, principal, device_id)
    if not can_manage_device(principal, doc["org_id"], device_id):
        raise forbidden("only admins and the device's managers update its location")
    new = await _store(request).set_location(doc, body)
    if new is None:
        raise Problem(
            409, "concurrent-change", "The device changed meanwhile", "read it again and retry"
        )
    request.app.state.runtime.relay.nudge()
    return public(new)


@router.delete("/devices/{device_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_device(device_id: str, principal: CurrentPrincipal, request: Request) -> Response:
    require_role(principal, Role.AGENT)
    doc = await _store(request).get(device_id)
    if doc is None:
        raise _not_found()
    if await _store(request).update(doc, {"removed": True}) is None:
        raise Problem(
            409, "concurrent-change", "The device changed meanwhile", "read it again and retry"
        )
    request.app.state.runtime.relay.nudge()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
