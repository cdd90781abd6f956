"""Settings of the devices service (``FLEETDESK_DEVICES_*`` besides the shared ones)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.devices.core.replenishment import Policy
from shared.config import ServiceSettings


class ReplenishmentSettings(BaseSettings):
    """When a supply order is raised (``FLEETDESK_DEVICES_*``)."""

    model_config = SettingsConfigDict(env_prefix="FLEETDESK_DEVICES_", extra="ignore")

    low_level_percent: int = Field(
        10, ge=0, le=100, description="Order when a level is at or under this percentage."
    )
    lead_time_days: float = Field(
        5.0, ge=0, description="Delivery lead time: order when the forecast is shorter."
    )
    full_level_percent: int = Field(
        90, ge=1, le=100, description="A confirmed rise to at least this is a new cartridge."
    )
    jump_tolerance_percent: int = Field(
        5, ge=0, le=100, description="A rise of more points than this is a jump (maybe a blip)."
    )
    blip_window_minutes: float = Field(
        120, gt=0, description="A jump that falls back within this window was a shaken cartridge."
    )
    forecast_points: int = Field(
        12, ge=2, le=100, description="Level changes of a cartridge kept for the forecast."
    )
    import_chunk_rows: int = Field(
        500, ge=1, le=5000, description="CSV import: rows per bulk write and progress step."
    )

    def policy(self) -> Policy:
        return Policy(
            low_level=self.low_level_percent,
            lead_time_days=self.lead_time_days,
            full_level=self.full_level_percent,
            jump_tolerance=self.jump_tolerance_percent,
            blip_window=timedelta(minutes=self.blip_window_minutes),
            history_points=self.forecast_points,
        )


class DevicesSettings(ServiceSettings):
    devices_port: int = Field(8002, description="HTTP port of the devices service.")
    replenishment: ReplenishmentSettings = Field(
        default_factory=ReplenishmentSettings,
        description="FLEETDESK_DEVICES_*: thresholds, lead time, blip window, import chunks.",
    )
