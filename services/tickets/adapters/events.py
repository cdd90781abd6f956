"""Consumers of the tickets service: fault tickets from the meters service's events."""

from __future__ import annotations

from collections.abc import Callable

from services.tickets import handlers
from services.tickets.core.model import DeviceInfo
from shared.bus import Handler, Message, Subscription
from shared.contracts import METER_EVENTS, DeviceFaultReported
from shared.logging import get_logger

log = get_logger(__name__)

FAULTS_GROUP = "tickets.faults"


def faults_subscription(deps: handlers.Deps, nudge: Callable[[], None]) -> Subscription:
    return Subscription(
        group=FAULTS_GROUP, handlers={METER_EVENTS.name: fault_handler(deps, nudge)}
    )


def fault_handler(deps: handlers.Deps, nudge: Callable[[], None]) -> Handler:
    async def handle(msg: Message) -> None:
        if msg.event_type != DeviceFaultReported.event_type:
            return  # readings, anomalies, stale devices: not ours
        fault = msg.parse(DeviceFaultReported)
        device = await deps.store.device(fault.device_id)
        if device is None:
            # Not projected yet: the event says enough; the contract defaults apply.
            device = DeviceInfo(device_id=fault.device_id, org_id=fault.org_id)
        if device.removed:
            return
        ticket = await handlers.open_fault_ticket(device, fault.error_codes, deps)
        if ticket is not None:
            log.info("fault ticket opened", ticket_id=ticket.ticket_id, device_id=device.device_id)
            nudge()

    return handle
