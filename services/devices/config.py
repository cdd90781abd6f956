"""Settings of the devices service."""

from pydantic import Field

from shared.config import ServiceSettings


class DevicesSettings(ServiceSettings):
    devices_port: int = Field(8002, description="HTTP port of the devices service.")
