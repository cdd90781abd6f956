"""Settings of the tickets service."""

from pydantic import Field

from services.tickets.core.model import CalendarSpec
from shared.config import ServiceSettings


class TicketsSettings(ServiceSettings):
    tickets_port: int = Field(8004, description="HTTP port of the tickets service.")
    tickets_sla_warning_share: float = Field(
        0.8, gt=0, lt=1, description="Share of the SLA response time at which a warning fires."
    )
    tickets_sla_hour_seconds: float = Field(
        3600.0,
        gt=0,
        description="Length of one contract hour in seconds (shorten only in tests and demos).",
    )
    tickets_offer_seconds: float = Field(
        900.0, gt=0, description="A technician's time to accept or decline before re-routing."
    )
    tickets_timer_batch: int = Field(
        500, ge=1, le=5000, description="Most escalations recorded and published in one round."
    )
    tickets_default_calendar: CalendarSpec = Field(
        default_factory=CalendarSpec,
        description="Calendar of organisations without their own (JSON): Finland, "
        "Europe/Helsinki, Mon-Fri 08:00-16:00.",
    )
