"""Devices as the domain sees them: no Kafka, MongoDB or FastAPI here."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.contracts import Serial

Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]


class Location(BaseModel):
    model_config = ConfigDict(extra="forbid")

    site: Text = Field("", description="Site or building name.")
    address: Text = Field("", description="Street address.")
    floor: Text = Field("", description="Floor.")
    room: Text = Field("", description="Room or spot.")


class DeviceCreate(BaseModel):
    """What an agent enters to add a device to an organisation's fleet."""

    model_config = ConfigDict(extra="forbid")

    org_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    serial: Serial
    model: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    name: Text = ""
    location: Location = Field(default_factory=Location)
    sla_response_hours: int = Field(8, ge=1, le=240, description="SLA response, business hours.")
    emaintenance: bool = Field(True, description="Remote monitoring is on.")
    auto_replenishment: bool = Field(False, description="Automatic toner replenishment is on.")


class DevicePublic(BaseModel):
    device_id: str
    org_id: str
    serial: str
    model: str
    name: str
    location: Location
    sla_response_hours: int
    emaintenance: bool
    auto_replenishment: bool
