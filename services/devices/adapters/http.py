"""HTTP routes of the devices service: thin edges that build a command and call the core.

Scope (see :mod:`services.devices.core.access`): a device the caller may not see is a 404,
a visible one the caller may not act on a 403, always as RFC 9457 problem details.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import AwareDatetime, BaseModel

from services.devices.adapters.store import (
    MongoDevices,
    MongoImports,
    MongoLevels,
    MongoStock,
    MongoSupplyOrders,
)
from services.devices.core import access
from services.devices.core.access import Action, Decision, ListScope
from services.devices.core.devices import (
    ConcurrentChange,
    DeviceNotFound,
    NotAllowed,
    RegisterDevice,
    RemoveDevice,
    ReplenishmentOff,
    UnknownOrganisation,
    UpdateContract,
    UpdateLocation,
    UpdateStock,
    register_device,
    remove_device,
    update_contract,
    update_location,
    update_stock,
)
from services.devices.core.importing import BadFile, ImportDevices, import_devices, parse_csv
from services.devices.core.model import (
    Contract,
    Device,
    DeviceCreate,
    DevicePublic,
    HistoryEntry,
    Location,
    StockPublic,
    StockUpdate,
)
from services.devices.core.ports import SerialTaken
from shared.auth import CurrentPrincipal, Principal, forbidden
from shared.contracts import SupplyAction
from shared.events import utcnow
from shared.http import Problem
from shared.logging import get_logger

log = get_logger(__name__)
router = APIRouter(tags=["devices"])
IMPORT_MAX_BYTES = 16 * 1024 * 1024


@dataclass
class DevicesHttp:
    """What the routes use, built by ``inject``."""

    devices: MongoDevices
    stock: MongoStock
    orders: MongoSupplyOrders
    levels: MongoLevels
    imports: MongoImports
    import_chunk: int
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def _deps(request: Request) -> DevicesHttp:
    deps: DevicesHttp = request.app.state.devices
    return deps


def _not_found() -> Problem:
    return Problem(
        404, "device-not-found", "No such device", "no device with this id is visible to you"
    )


def _translate(exc: Exception) -> Problem:
    if isinstance(exc, DeviceNotFound):
        return _not_found()
    if isinstance(exc, NotAllowed):
        return forbidden("your role does not allow this on this device")
    if isinstance(exc, ConcurrentChange):
        return Problem(
            409, "concurrent-change", "The device changed meanwhile", "read it again and retry"
        )
    if isinstance(exc, ReplenishmentOff):
        return Problem(
            409,
            "replenishment-off",
            "Automatic replenishment is off",
            "stock is kept only for devices with automatic toner replenishment",
        )
    raise exc


async def _authorised(request: Request, caller: Principal, device_id: str, act: Action) -> Device:
    device = await _deps(request).devices.get(device_id)
    if device is None or (device.removed and not caller.is_agent):
        raise _not_found()
    decision = access.decide(caller, act, device.org_id, device_id)
    if decision is Decision.NOT_FOUND:
        raise _not_found()
    if decision is Decision.FORBIDDEN:
        raise forbidden("your role does not allow this on this device")
    return device


def _require_agent(caller: Principal) -> None:
    if not access.is_agent(caller):
        raise forbidden("only the service centre's agents may do this")


# --- import (before /devices/{device_id}/... so that "import" is never taken for an id) -----


class ImportAccepted(BaseModel):
    import_id: str
    total: int
    status_url: str


class ImportRowError(BaseModel):
    line: int
    reason: str
    serial: str | None


class ImportReport(BaseModel):
    import_id: str
    status: str
    total: int
    processed: int
    imported: int
    failed: int
    errors: list[ImportRowError]
    started_at: AwareDatetime
    finished_at: AwareDatetime | None


@router.post(
    "/devices/import",
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra={
        "requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}, "required": True}
    },
)
async def import_csv(principal: CurrentPrincipal, request: Request) -> ImportAccepted:
    """Register devices from a CSV file (agents). Answers 202 at once; the import runs in the
    background and ``GET /devices/import/{import_id}`` reports its progress and row errors."""
    _require_agent(principal)
    raw = await request.body()
    if len(raw) > IMPORT_MAX_BYTES:
        raise Problem(413, "payload-too-large", "The file is too large")
    try:
        rows = list(parse_csv(raw.decode("utf-8-sig")))
    except UnicodeDecodeError as exc:
        raise Problem(422, "bad-csv", "Not a UTF-8 CSV file", "decode as UTF-8 failed") from exc
    except BadFile as exc:
        raise Problem(422, "bad-csv", "Not a device CSV file", str(exc)) from exc
    deps = _deps(request)
    import_id = uuid.uuid4().hex
    await deps.imports.start(import_id, len(rows), principal.user_id)
    command = ImportDevices(import_id, rows, principal.user_id, deps.import_chunk)

    async def run() -> None:
        try:
            await import_devices(command, deps.devices, deps.imports, utcnow())
        except Exception as exc:
            log.error("import failed", import_id=import_id, error=repr(exc))
            await deps.imports.failed(import_id, type(exc).__name__)

    task = asyncio.create_task(run())
    deps.tasks.add(task)
    task.add_done_callback(deps.tasks.discard)
    return ImportAccepted(
        import_id=import_id, total=len(rows), status_url=f"/devices/import/{import_id}"
    )


@router.get("/devices/import/{import_id}")
async def import_report(
    import_id: str, principal: CurrentPrincipal, request: Request
) -> ImportReport:
    _require_agent(principal)
    doc = await _deps(request).imports.get(import_id)
    if doc is None:
        raise Problem(404, "import-not-found", "No such import")
    return ImportReport(import_id=doc["_id"], **{k: v for k, v in doc.items() if k != "_id"})


# --- devices ------------------------------------------------------------------------------


@router.post("/devices", status_code=status.HTTP_201_CREATED)
async def create_device(
    body: DeviceCreate, principal: CurrentPrincipal, request: Request
) -> DevicePublic:
    _require_agent(principal)
    try:
        device = await register_device(
            RegisterDevice(body, principal.user_id), _deps(request).devices, utcnow()
        )
    except UnknownOrganisation as exc:
        raise Problem(
            422, "unknown-organisation", "Unknown organisation", "no organisation has this id"
        ) from exc
    except SerialTaken as exc:
        raise Problem(
            409,
            "serial-taken",
            "Serial number already registered",
            "a device with this serial exists",
        ) from exc
    return DevicePublic.of(device)


@router.get("/devices")
async def list_devices(
    principal: CurrentPrincipal,
    request: Request,
    org_id: Annotated[str | None, Query(max_length=64)] = None,
    serial: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[DevicePublic]:
    """The devices the caller may see, by serial; agents may filter by organisation."""
    scope = access.list_scope(principal)
    query: dict[str, Any] = {"serial": serial} if serial else {}
    if scope is ListScope.NONE:
        raise forbidden("your role does not allow this")
    if scope is ListScope.ALL:
        if org_id:
            query["org_id"] = org_id
    else:
        if org_id and org_id != principal.org_id:
            raise forbidden("this organisation is not yours")
        query["org_id"] = principal.org_id
        if scope is ListScope.ASSIGNED:
            query["_id"] = {"$in": sorted(principal.device_ids)}
    devices = await _deps(request).devices.find(query, limit)
    return [DevicePublic.of(d) for d in devices if access.can_see(principal, d.org_id, d.device_id)]


@router.get("/devices/{device_id}")
async def get_device(device_id: str, principal: CurrentPrincipal, request: Request) -> DevicePublic:
    device = await _authorised(request, principal, device_id, Action.VIEW)
    if device.removed:
        raise _not_found()
    return DevicePublic.of(device)


@router.put("/devices/{device_id}/location")
async def put_location(
    device_id: str, body: Location, principal: CurrentPrincipal, request: Request
) -> DevicePublic:
    try:
        device = await update_location(
            UpdateLocation(device_id, body, principal), _deps(request).devices, utcnow()
        )
    except Exception as exc:
        raise _translate(exc) from exc
    return DevicePublic.of(device)


@router.put("/devices/{device_id}/contract")
async def put_contract(
    device_id: str, body: Contract, principal: CurrentPrincipal, request: Request
) -> DevicePublic:
    """The device's service contract and monitoring switches (agents)."""
    try:
        device = await update_contract(
            UpdateContract(device_id, body, principal), _deps(request).devices, utcnow()
        )
    except Exception as exc:
        raise _translate(exc) from exc
    return DevicePublic.of(device)


@router.delete("/devices/{device_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_device(device_id: str, principal: CurrentPrincipal, request: Request) -> Response:
    """Remove a device (agents): its state says ``removed`` and every service stops taking
    data for it."""
    _require_agent(principal)
    try:
        await remove_device(RemoveDevice(device_id, principal), _deps(request).devices, utcnow())
    except Exception as exc:
        raise _translate(exc) from exc
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _stock_view(request: Request, device: Device) -> StockPublic:
    used = await _deps(request).stock.used_since(device)
    on_hand = {c: max(0, n - used.get(c, 0)) for c, n in device.stock.on_hand.items()}
    return StockPublic(
        device_id=device.device_id,
        delivery_instructions=device.stock.delivery_instructions,
        on_hand=on_hand,
        set_at=device.stock_set_at,
        used_since=used,
    )


@router.get("/devices/{device_id}/stock")
async def get_stock(device_id: str, principal: CurrentPrincipal, request: Request) -> StockPublic:
    device = await _authorised(request, principal, device_id, Action.STOCK_READ)
    return await _stock_view(request, device)


@router.put("/devices/{device_id}/stock")
async def put_stock(
    device_id: str, body: StockUpdate, principal: CurrentPrincipal, request: Request
) -> StockPublic:
    """Delivery instructions and units on hand (the device's stock managers)."""
    try:
        device = await update_stock(
            UpdateStock(device_id, body, principal), _deps(request).devices, utcnow()
        )
    except Exception as exc:
        raise _translate(exc) from exc
    return await _stock_view(request, device)


class SupplyOrderPublic(BaseModel):
    order_id: str
    consumable: str
    level: int
    days_to_empty: float | None
    action: SupplyAction
    raised_at: datetime
    status: str
    closed_at: datetime | None


@router.get("/devices/{device_id}/supply-orders")
async def list_supply_orders(
    device_id: str, principal: CurrentPrincipal, request: Request
) -> list[SupplyOrderPublic]:
    await _authorised(request, principal, device_id, Action.STOCK_READ)
    orders = await _deps(request).orders.of_device(device_id)
    return [SupplyOrderPublic.model_validate(o) for o in orders]


class LevelPoint(BaseModel):
    at: datetime
    levels: dict[str, int]


@router.get("/devices/{device_id}/supplies")
async def supply_levels(
    device_id: str,
    principal: CurrentPrincipal,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[LevelPoint]:
    """The level history (changes only, coalesced per telemetry batch), oldest first."""
    await _authorised(request, principal, device_id, Action.STOCK_READ)
    docs = await _deps(request).levels.history(device_id, limit)
    return [LevelPoint(at=d["at"], levels=d["levels"]) for d in docs]


@router.get("/devices/{device_id}/history")
async def device_history(
    device_id: str, principal: CurrentPrincipal, request: Request
) -> list[HistoryEntry]:
    """Every change of the device with who and when (admins of its organisation, agents)."""
    await _authorised(request, principal, device_id, Action.HISTORY)
    entries = await _deps(request).devices.history(device_id)
    if entries is None:
        raise _not_found()
    return entries
