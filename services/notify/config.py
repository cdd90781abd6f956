"""Settings of the notify service."""

from pydantic import Field

from shared.config import ServiceSettings


class NotifySettings(ServiceSettings):
    notify_port: int = Field(8005, description="HTTP port of the notify service.")
