"""Settings of the tickets service."""

from pydantic import Field

from shared.config import ServiceSettings


class TicketsSettings(ServiceSettings):
    tickets_port: int = Field(8004, description="HTTP port of the tickets service.")
