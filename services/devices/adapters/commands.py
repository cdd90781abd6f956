"""The ``devices.commands`` consumer (group ``devices.commands``): what other services ask of
the devices service. Today one command: remove a device (from a resolved device-removal ticket).

The removal goes through the same use case as ``DELETE /devices/{id}``, as the agent named in
the command, so the device's history says who removed it and which ticket asked. Idempotent: a
re-delivered command (or one for an unknown device) finds nothing to remove and is logged; a
malformed or unknown command, or one whose organisation is not the device's, is dead-lettered.
"""

from __future__ import annotations

from prometheus_client import Counter

from services.devices.core.devices import (
    DeviceNotFound,
    OrganisationMismatch,
    RemoveDevice,
    remove_device,
)
from services.devices.core.ports import DeviceRepository
from shared.auth import Principal
from shared.bus import Handler, Message, PermanentError, Subscription
from shared.contracts import DEVICE_COMMANDS, DeviceRemovalRequested, Role
from shared.events import utcnow
from shared.logging import get_logger

log = get_logger(__name__)

GROUP = "devices.commands"

COMMANDS = Counter(
    "fleetdesk_devices_commands_total",
    "Commands on devices.commands handled by the devices service, by outcome.",
    ["outcome"],
)


def commands_subscription(repo: DeviceRepository) -> Subscription:
    return Subscription(group=GROUP, handlers={DEVICE_COMMANDS.name: commands_handler(repo)})


def commands_handler(repo: DeviceRepository) -> Handler:
    async def handle(msg: Message) -> None:
        if msg.event_type != DeviceRemovalRequested.event_type:
            raise PermanentError(f"unknown command type {msg.event_type!r} on {msg.topic}")
        command = msg.parse(DeviceRemovalRequested)
        # The command's writer checked that an agent resolved the ticket; the topic's ACLs let
        # only tickets and devices write it. The agent acts here as on DELETE /devices/{id}.
        agent = Principal(user_id=command.requested_by, org_id=None, role=Role.AGENT)
        cmd = RemoveDevice(
            command.device_id,
            agent,
            org_id=command.org_id,
            ticket_id=command.ticket_id,
            reason=command.reason,
            key=msg.event_id,
        )
        try:
            await remove_device(cmd, repo, utcnow())
        except DeviceNotFound:
            COMMANDS.labels("noop").inc()
            log.info(
                "removal requested for an unknown or already removed device: nothing to do",
                device_id=command.device_id,
                ticket_id=command.ticket_id,
            )
            return
        except OrganisationMismatch as exc:
            COMMANDS.labels("refused").inc()
            raise PermanentError(str(exc)) from exc
        COMMANDS.labels("removed").inc()
        log.info(
            "device removed on request",
            device_id=command.device_id,
            ticket_id=command.ticket_id,
            requested_by=command.requested_by,
        )

    return handle
