"""Steps of end-to-end flows over the public HTTP API and the real Kafka topics."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.contracts import IDENTITY_NOTIFICATIONS
from shared.sealing import SealingKey
from tests.support import eventually, header, read_topic

PASSWORD = "Correct-horse-42"


@dataclass(frozen=True)
class Platform:
    urls: dict[str, str]
    kafka_bootstrap: str
    agent_email: str
    agent_password: str
    logs: Path
    mongo_url: str
    database_prefix: str
    processes: Any  # tests.e2e.conftest.Processes: kill and restart services
    # Notify's sealing key: the tests play notify when they open a token from the topic.
    sealing_private_key: str = ""

    @property
    def signing_key_pem(self) -> str:
        """The key identity signs with right now (a rotation test may change it)."""
        return str(self.processes.env["FLEETDESK_IDENTITY_SIGNING_KEY_PEM"])

    def open_token(self, event: dict[str, Any]) -> str:
        """The raw token of a confirmation or invitation event, opened as notify would."""
        context = "invitation" if "role" in event else "confirmation"  # InvitationIssued
        return SealingKey(self.sealing_private_key).open(event["sealed_token"], context=context)


@dataclass
class Org:
    org_id: str
    customer_number: str
    system_id: str
    device_ids: list[str] = field(default_factory=list)
    serials: list[str] = field(default_factory=list)


@dataclass
class User:
    user_id: str
    email: str
    token: str


def unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(5)}"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def records_with_key(
    bootstrap: str, topic: str, key: str, event_type: str, *, wait_seconds: float = 15.0
) -> list[dict[str, Any]]:
    """Values of the ``event_type`` records on ``topic`` under ``key``, once one exists."""

    async def matching() -> list[dict[str, Any]]:
        return [
            json.loads(r.value)
            for r in await read_topic(bootstrap, topic)
            if r.key == key.encode() and header(r, "event_type") == event_type
        ]

    found: list[dict[str, Any]] = await eventually(matching, timeout=wait_seconds)
    return found


class Fleet:
    """A client of the whole platform, with the steps the flows are made of."""

    def __init__(self, platform: Platform, client: httpx.AsyncClient) -> None:
        self.p = platform
        self.http = client
        self._agent: str | None = None

    def url(self, service: str, path: str) -> str:
        return self.p.urls[service] + path

    async def sign_in(self, email: str, password: str) -> httpx.Response:
        return await self.http.post(
            self.url("identity", "/identity/token"), data={"username": email, "password": password}
        )

    async def token(self, email: str, password: str = PASSWORD) -> str:
        response = await self.sign_in(email, password)
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    async def agent(self) -> str:
        if self._agent is None:
            self._agent = await self.token(self.p.agent_email, self.p.agent_password)
        return self._agent

    async def create_org(self) -> Org:
        body = {"customer_number": unique("C"), "system_id": unique("S"), "name": "Oy Testi Ab"}
        response = await self.http.post(
            self.url("identity", "/identity/organisations"),
            json=body,
            headers=auth(await self.agent()),
        )
        assert response.status_code == 201, response.text
        return Org(response.json()["org_id"], body["customer_number"], body["system_id"])

    async def add_device(self, org: Org) -> str:
        """Add a device once the devices service has learnt of the organisation (bounded)."""
        serial = unique("SN")
        body = {"org_id": org.org_id, "serial": serial, "model": "bizhub C300i"}
        deadline = time.monotonic() + 30
        while True:
            response = await self.http.post(
                self.url("devices", "/devices"), json=body, headers=auth(await self.agent())
            )
            if response.status_code == 201 or time.monotonic() > deadline:
                break
            # 422: the organisation is not projected yet; 401: right after start-up (or a key
            # rotation) devices may not have read the signing key yet.
            assert response.status_code in (401, 422), response.text
            await asyncio.sleep(0.2)
        assert response.status_code == 201, response.text
        org.device_ids.append(response.json()["device_id"])
        org.serials.append(serial)
        return str(response.json()["device_id"])

    async def register(
        self, org: Org, email: str | None = None, serial: str | None = None
    ) -> tuple[str, str]:
        """Register with the org's first serial (once identity knows it): (user_id, email)."""
        email = email or f"{unique('u')}@customer.example.com"
        body = {
            "email": email,
            "password": PASSWORD,
            "name": "Maija Meikäläinen",
            "language": "fi",
            "customer_number": org.customer_number,
            "serial": serial or org.serials[0],
        }
        deadline = time.monotonic() + 15
        while True:
            response = await self.http.post(
                self.url("identity", "/identity/registrations"), json=body
            )
            if response.status_code == 202 or time.monotonic() > deadline:
                break
            assert response.status_code == 422, response.text  # device not projected yet
            await asyncio.sleep(0.2)
        assert response.status_code == 202, response.text
        return str(response.json()["user_id"]), email

    async def notification(self, user_id: str, event_type: str) -> dict[str, Any]:
        """The latest notification event of ``event_type`` for ``user_id`` on Kafka."""
        records = await records_with_key(
            self.p.kafka_bootstrap, IDENTITY_NOTIFICATIONS.name, user_id, event_type
        )
        return records[-1]

    async def confirm(self, user_id: str) -> httpx.Response:
        event = await self.notification(user_id, "identity.confirmation-requested")
        return await self.http.post(
            self.url("identity", "/identity/registrations/confirm"),
            json={"token": self.p.open_token(event)},
        )

    async def admin(self, org: Org) -> User:
        """The organisation's first confirmed user, who becomes its admin."""
        user_id, email = await self.register(org)
        response = await self.confirm(user_id)
        assert response.status_code == 200, response.text
        assert response.json()["role"] == "admin"
        return User(user_id, email, await self.token(email))

    async def invite(
        self, org: Org, admin: User, role: str, device_ids: list[str] | None = None
    ) -> User:
        email = f"{unique('i')}@customer.example.com"
        deadline = time.monotonic() + 30
        while True:
            response = await self.http.post(
                self.url("identity", f"/identity/organisations/{org.org_id}/invitations"),
                json={
                    "email": email,
                    "role": role,
                    "device_ids": device_ids or [],
                    "language": "sv",
                },
                headers=auth(admin.token),
            )
            # 422 unknown-devices: identity has not read a just-added device's state yet.
            lagging = response.status_code == 422 and "unknown-devices" in response.text
            if not lagging or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert response.status_code == 201, response.text
        user_id = response.json()["user_id"]
        event = await self.notification(user_id, "identity.invitation-issued")
        accepted = await self.http.post(
            self.url("identity", "/identity/invitations/accept"),
            json={"token": self.p.open_token(event), "password": PASSWORD},
        )
        assert accepted.status_code == 200, accepted.text
        return User(user_id, email, await self.token(email))
