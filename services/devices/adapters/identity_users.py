"""The devices service's copy of ``identity.users.state``, and the assignments it reveals.

The copy answers "who is calling, which devices are theirs" (shared.auth). Each newer state of
a user is compared with the copy before it is replaced: devices the user started or stopped
managing get an ``assignment`` entry on their history and their managers in the device state.
The devices are changed first and the copy last, so a crash in between redoes the comparison
on redelivery; a device already as it should be is left alone (recorded once).
"""

from __future__ import annotations

from pymongo.asynchronous.database import AsyncDatabase

from services.devices.core.access import assigned_devices
from services.devices.core.devices import ApplyAssignment, apply_assignment
from services.devices.core.ports import DeviceRepository
from shared.bus import Handler, Message
from shared.contracts import Role, UserState
from shared.events import utcnow
from shared.projections import USERS
from shared.store import Document, upsert_if_newer


def users_handler(db: AsyncDatabase[Document], repo: DeviceRepository) -> Handler:
    async def handle(msg: Message) -> None:
        state = msg.parse(UserState)
        before = await db[USERS].find_one({"_id": state.user_id})
        if before is not None and before.get("revision", 0) >= state.revision:
            return  # re-delivered or out of date
        old_role = Role(before["role"]) if before and before.get("role") else None
        old = assigned_devices(old_role, set(before.get("device_ids", []))) if before else set()
        new = assigned_devices(state.role, set(state.device_ids))
        now = utcnow()
        key = f"user:{state.user_id}:{state.revision}"
        for device_id in sorted(old ^ new):
            await apply_assignment(
                ApplyAssignment(
                    user_id=state.user_id,
                    org_id=state.org_id,
                    device_id=device_id,
                    assigned=device_id in new,
                    role=state.role.value if state.role else None,
                    key=key,
                ),
                repo,
                now,
            )
        await upsert_if_newer(
            db[USERS], state.user_id, state.revision, state.model_dump(mode="json")
        )

    return handle
