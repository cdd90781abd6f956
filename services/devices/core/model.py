"""Devices as the domain sees them: no Kafka, MongoDB or FastAPI here."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from shared.contracts import DeviceLocation, DeviceState, DeviceStatus, Serial

Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]
Consumable = Annotated[
    str,
    StringConstraints(pattern=r"^(black|cyan|magenta|yellow|waste_box|drum(_[a-z]{1,20})?)$"),
]
Location = DeviceLocation


class Contract(BaseModel):
    """The service contract of a device (agents change it)."""

    model_config = ConfigDict(extra="forbid")

    sla_response_hours: int = Field(8, ge=1, le=240, description="SLA response, business hours.")
    calendar_id: str | None = Field(
        None, max_length=64, description="Service calendar; null = the organisation's."
    )
    emaintenance: bool = Field(True, description="Remote monitoring is on.")
    auto_replenishment: bool = Field(False, description="Automatic toner replenishment is on.")


class DeviceCreate(BaseModel):
    """What an agent enters to add a device to an organisation's fleet."""

    model_config = ConfigDict(extra="forbid")

    org_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    serial: Serial
    model: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    model_family: Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)] = ""
    name: Text = ""
    location: Location = Field(default_factory=Location)
    sla_response_hours: int = Field(8, ge=1, le=240, description="SLA response, business hours.")
    calendar_id: str | None = Field(None, max_length=64, description="Service calendar.")
    emaintenance: bool = Field(True, description="Remote monitoring is on.")
    auto_replenishment: bool = Field(False, description="Automatic toner replenishment is on.")


class StockLevels(BaseModel):
    """Stock kept for a device with automatic replenishment (stock managers maintain it)."""

    model_config = ConfigDict(extra="forbid")

    delivery_instructions: Annotated[str, StringConstraints(max_length=1000)] = ""
    on_hand: dict[Consumable, Annotated[int, Field(ge=0, le=10000)]] = Field(default_factory=dict)


class StockUpdate(StockLevels):
    name: Text | None = Field(None, description="Customer-chosen device name (optional).")


class StockPublic(StockLevels):
    device_id: str
    set_at: AwareDatetime | None = Field(description="When a stock manager last set the stock.")
    used_since: dict[str, int] = Field(
        description="Units installed from stock since then (already taken off on_hand)."
    )


class HistoryEntry(BaseModel):
    """One change of a device: what, who and when (the audit trail)."""

    at: AwareDatetime
    by: str | None = Field(description="User id; null for the system (eMaintenance, identity).")
    action: str = Field(description="created, location, contract, stock, removed, assignment ...")
    changes: dict[str, Any] = Field(default_factory=dict)
    revision: int | None = Field(None, description="Device revision after the change.")
    key: str | None = Field(None, description="Idempotency key of system changes.")


class Device(BaseModel):
    """A device of an organisation's fleet: the aggregate the service owns."""

    device_id: str
    org_id: str
    serial: str
    model: str
    model_family: str = ""
    name: str = ""
    location: Location = Field(default_factory=Location)
    sla_response_hours: int = 8
    calendar_id: str | None = None
    emaintenance: bool = True
    auto_replenishment: bool = False
    status: DeviceStatus = DeviceStatus.ACTIVE
    removed: bool = False
    manager_ids: list[str] = Field(default_factory=list)
    stock: StockLevels = Field(default_factory=StockLevels)
    stock_set_at: datetime | None = None
    revision: int = 1

    def state(self) -> DeviceState:
        """The device's state event (compacted ``devices.devices.state``): every field."""
        return DeviceState(
            device_id=self.device_id,
            org_id=self.org_id,
            serial=self.serial,
            model=self.model,
            model_family=self.model_family,
            name=self.name,
            location=self.location,
            sla_response_hours=self.sla_response_hours,
            calendar_id=self.calendar_id,
            emaintenance=self.emaintenance,
            auto_replenishment=self.auto_replenishment,
            status=self.status,
            removed=self.removed,
            manager_ids=sorted(self.manager_ids),
            revision=self.revision,
        )


class DevicePublic(BaseModel):
    device_id: str
    org_id: str
    serial: str
    model: str
    model_family: str
    name: str
    location: Location
    sla_response_hours: int
    calendar_id: str | None
    emaintenance: bool
    auto_replenishment: bool
    status: DeviceStatus
    manager_ids: list[str]
    revision: int

    @classmethod
    def of(cls, device: Device) -> DevicePublic:
        return cls.model_validate(device.model_dump(include=set(cls.model_fields)))
