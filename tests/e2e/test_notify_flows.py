"""Notify end to end on the platform's own servers: a Finnish newcomer registers, the
confirmation e-mail arrives in Mailpit in Finnish, and its link confirms the account."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import MailServer
from tests.e2e.flows import PASSWORD, Fleet, Platform
from tests.integration.notify_harness import mails, message
from tests.support import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
async def fleet(platform: Platform) -> AsyncIterator[Fleet]:
    async with httpx.AsyncClient(timeout=20) as client:
        yield Fleet(platform, client)


async def test_a_finnish_newcomer_confirms_from_the_e_mail(
    fleet: Fleet, mailpit: MailServer
) -> None:
    org = await fleet.create_org()
    await fleet.add_device(org)
    _user_id, email = await fleet.register(org)  # registers in Finnish

    async def arrived() -> list[dict[str, object]]:
        return [m for m in await mails(mailpit, f'to:"{email}"')]

    (mail,) = await eventually(arrived, timeout=30, what="confirmation e-mail in Mailpit")
    assert mail["Subject"] == "Vahvista Fleetdesk-tunnuksesi"
    body = await message(mailpit, str(mail["ID"]))
    assert "vahvista sähköpostiosoitteesi" in body["Text"]
    link = next(line.strip() for line in body["Text"].splitlines() if "token=" in line)
    assert link.startswith(fleet.url("identity", "/identity/registrations/confirm?token="))
    assert f'href="{link}"' in body["HTML"]

    token = parse_qs(urlsplit(link).query)["token"][0]
    confirmed = await fleet.http.post(
        fleet.url("identity", "/identity/registrations/confirm"), json={"token": token}
    )
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["role"] == "admin"
    assert (await fleet.sign_in(email, PASSWORD)).status_code == 200
