"""Settings of the meters service."""

from pydantic import Field

from shared.config import ServiceSettings


class MetersSettings(ServiceSettings):
    meters_port: int = Field(8003, description="HTTP port of the meters service.")
