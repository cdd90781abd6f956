"""Event contracts and the topic catalogue: the one place that names topics and event types.

Every topic the platform writes or reads is a :class:`Topic` in :data:`CATALOGUE`, with the
event models that may travel on it. The AsyncAPI document (``docs/asyncapi.yaml``) is generated
from this module by ``python -m shared.asyncapi`` and a test fails when it drifts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from shared.events import Event

Language = Literal["fi", "sv", "en"]
Serial = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]
# A counter as the history stores it: a name the database takes as a field name (no `$`, no `.`)
# and a value it takes as a 64-bit integer. A report that broke either could not be written,
# and the worker retried its batch for ever: so both are checked where a reading comes in.
CounterName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
CounterValue = Annotated[int, Field(ge=0, le=10**12)]
MAX_COUNTERS = 20


class Role(StrEnum):
    """Customer roles (exactly five) and the two staff roles."""

    ADMIN = "admin"
    DEVICE_MANAGER = "device_manager"
    STOCK_MANAGER = "stock_manager"
    DEVICE_STOCK_MANAGER = "device_stock_manager"
    KB_VIEWER = "kb_viewer"
    AGENT = "agent"
    TECHNICIAN = "technician"


CUSTOMER_ROLES = frozenset(
    {Role.ADMIN, Role.DEVICE_MANAGER, Role.STOCK_MANAGER, Role.DEVICE_STOCK_MANAGER, Role.KB_VIEWER}
)
STAFF_ROLES = frozenset({Role.AGENT, Role.TECHNICIAN})


class UserStatus(StrEnum):
    PENDING_CONFIRMATION = "pending_confirmation"
    INVITED = "invited"
    ACTIVE = "active"


# --- identity -----------------------------------------------------------------------------


class OrganisationState(Event):
    """Latest state of an organisation (compacted; key = org_id)."""

    event_type = "identity.organisation.state"

    org_id: str = Field(description="Platform id of the organisation.")
    customer_number: str = Field(description="Printed on contracts, orders and invoices.")
    system_id: str = Field(description="The service centre's id of the customer.")
    name: str = Field(description="Display name.")
    country: str = Field(description="ISO 3166-1 alpha-2 country code (public holidays).")
    timezone: str = Field(description="IANA time zone of the organisation.")
    language: Language = Field(description="Default language of the organisation.")
    revision: int = Field(
        ge=1, description="Increases with every change; projections keep the latest."
    )


class UserState(Event):
    """Latest state of a user (compacted; key = user_id). Carries personal data: never log it."""

    event_type = "identity.user.state"

    user_id: str = Field(description="Platform id of the user.")
    org_id: str | None = Field(description="Organisation of a customer user; null for staff.")
    email: str = Field(description="E-mail address (for notifications).")
    name: str = Field(description="Display name.")
    language: Language = Field(description="Language of e-mails to this user.")
    role: Role | None = Field(description="Role, or null until an admin gives one.")
    device_ids: list[str] = Field(description="Devices assigned to a device or stock manager.")
    status: UserStatus = Field(description="pending_confirmation, invited or active.")
    revision: int = Field(ge=1, description="Increases with every change.")


class SigningKey(Event):
    """A public key that verifies access tokens (compacted; key = kid)."""

    event_type = "identity.signing-key"

    kid: str = Field(description="Key id, as in the token header.")
    algorithm: Literal["EdDSA"] = Field(description="JWS algorithm.")
    public_key_pem: str = Field(description="Ed25519 public key, PEM (SubjectPublicKeyInfo).")
    created_at: AwareDatetime = Field(description="When the key was created.")
    retired: bool = Field(False, description="Retired keys no longer verify new sign-ins.")


class ConfirmationRequested(Event):
    """A user must confirm an e-mail address (notify sends the e-mail; key = user_id)."""

    event_type = "identity.confirmation-requested"

    user_id: str = Field(description="User to confirm.")
    email: str = Field(description="Address to confirm.")
    language: Language = Field(description="Language of the e-mail.")
    sealed_token: str = Field(
        description="Single-use confirmation token, sealed to notify's key "
        "(shared.sealing, context 'confirmation'); only notify can open it."
    )
    expires_at: AwareDatetime = Field(description="When the token stops working.")


class InvitationIssued(Event):
    """An admin invited someone (notify sends the e-mail; key = user_id)."""

    event_type = "identity.invitation-issued"

    user_id: str = Field(description="The invited user.")
    org_id: str | None = Field(description="Inviting organisation; null for staff.")
    email: str = Field(description="Address of the invitee.")
    language: Language = Field(description="Language of the e-mail.")
    role: Role = Field(description="Role the invitee will have.")
    sealed_token: str = Field(
        description="Single-use invitation token, sealed to notify's key "
        "(shared.sealing, context 'invitation'); only notify can open it."
    )
    expires_at: AwareDatetime = Field(description="When the token stops working.")


class AccountExistsNotice(Event):
    """Someone tried to register an address that already has an account (key = user_id).

    Registration answers as for a new address (no account enumeration); notify tells the
    owner instead, in their language.
    """

    event_type = "identity.account-exists-notice"

    user_id: str = Field(description="The existing account.")
    email: str = Field(description="Its address.")
    language: Language = Field(description="Language of the e-mail.")
    attempted_at: AwareDatetime = Field(description="When the registration was attempted.")


# --- devices --------------------------------------------------------------------------------


class DeviceLocation(BaseModel):
    """Where a device stands (also what technician routing matches on)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str = Field("", max_length=200, description="Site or building name.")
    address: str = Field("", max_length=200, description="Street address.")
    postal_code: str = Field("", max_length=16, description="Postal code (routing by prefix).")
    city: str = Field("", max_length=100, description="City.")
    region: str = Field("", max_length=100, description="Region (routing by region).")
    floor: str = Field("", max_length=50, description="Floor.")
    room: str = Field("", max_length=100, description="Room or spot.")


class DeviceStatus(StrEnum):
    ACTIVE = "active"
    REMOVED = "removed"


class DeviceState(Event):
    """Latest state of a device (compacted; key = device_id).

    Fields after ``model`` have defaults so that older records still parse.
    """

    event_type = "devices.device.state"

    device_id: str = Field(description="Platform id of the device.")
    org_id: str = Field(description="Owning organisation.")
    serial: Serial = Field(description="Manufacturer's serial number.")
    model: str = Field(description="Device model.")
    model_family: str = Field("", description="Model family (technicians' skills match on it).")
    name: str = Field("", description="Customer-chosen name.")
    location: DeviceLocation = Field(
        default_factory=DeviceLocation, description="Where the device stands."
    )
    sla_response_hours: int = Field(
        8, ge=1, description="Contract: SLA response time in business hours."
    )
    calendar_id: str | None = Field(
        None,
        description="Contract: service calendar it follows; null = the organisation's calendar.",
    )
    emaintenance: bool = Field(True, description="eMaintenance remote monitoring is on.")
    auto_replenishment: bool = Field(False, description="Automatic toner replenishment is on.")
    status: DeviceStatus = Field(DeviceStatus.ACTIVE, description="active or removed.")
    removed: bool = Field(False, description="Removed by an agent: no service accepts its data.")
    manager_ids: list[str] = Field(
        default_factory=list,
        description="Users assigned to the device (device/stock managers), as known from identity.",
    )
    revision: int = Field(ge=1, description="Increases with every change.")


class SupplyAction(StrEnum):
    INSTALL_ON_HAND = "install_on_hand"
    SHIPMENT = "shipment"


class SupplyOrderRaised(Event):
    """A consumable runs low: one order per need (key = device_id). Notify tells stock managers."""

    event_type = "devices.supply-order-raised"

    order_id: str = Field(description="Unique id of the order (one per need).")
    device_id: str = Field(description="The device.")
    org_id: str = Field(description="Its organisation.")
    serial: Serial = Field(description="Its serial.")
    consumable: str = Field(description="black, cyan, magenta, yellow, waste_box, drum_...")
    level: int = Field(ge=0, le=100, description="Level in percent when the order was raised.")
    days_to_empty: float | None = Field(description="Forecast, days; null when unknown.")
    action: SupplyAction = Field(
        description="install_on_hand (a unit is in stock) or shipment (one is coming)."
    )
    raised_at: AwareDatetime = Field(description="When the order was raised.")


class DeviceRemovalRequested(Event):
    """A command: remove a device (key = device_id). Tickets sends it when an agent resolves a
    device-removal ticket; devices removes the device (once: a removed or unknown device is a
    no-op) and records who asked and why on the device's history."""

    event_type = "devices.device-removal-requested"

    device_id: str = Field(description="The device to remove.")
    org_id: str = Field(description="Its organisation (checked against the device's).")
    ticket_id: str = Field(description="The ticket that asked for the removal.")
    requested_by: str = Field(description="User id of the agent who resolved the ticket.")
    reason: str = Field("", max_length=1000, description="Why (the ticket's resolution note).")


# --- meters ---------------------------------------------------------------------------------


class ReadingSource(StrEnum):
    MANUAL = "manual"
    PHONED_IN = "phoned_in"
    EMAINTENANCE = "emaintenance"


class ReadingAccepted(Event):
    """An accepted meter reading (key = device_id)."""

    event_type = "meters.reading-accepted"

    reading_id: str = Field(description="Unique id of the reading.")
    device_id: str = Field(description="The device.")
    org_id: str = Field(description="Its organisation.")
    source: ReadingSource = Field(description="manual, phoned_in or emaintenance.")
    counters: dict[str, int] = Field(description="Counter values by name.")
    read_at: AwareDatetime = Field(description="When the counters were read.")
    submitted_by: str | None = Field(None, description="User id for manual and phoned-in ones.")


class ReadingAnomaly(Event):
    """An automatic reading refused because a counter went down (key = device_id)."""

    event_type = "meters.reading-anomaly"

    device_id: str = Field(description="The device.")
    org_id: str = Field(description="Its organisation.")
    serial: Serial = Field(description="Its serial.")
    counters: dict[str, list[int]] = Field(
        description="Each counter that went down: [previous accepted value, reported value]."
    )
    read_at: AwareDatetime = Field(description="When the device sent the report.")


class DeviceFaultReported(Event):
    """Error codes in a device's telemetry (key = device_id); tickets opens one fault ticket."""

    event_type = "meters.device-fault-reported"

    device_id: str = Field(description="The device.")
    org_id: str = Field(description="Its organisation.")
    serial: Serial = Field(description="Its serial.")
    error_codes: list[str] = Field(description="Error codes, as reported.")
    reported_at: AwareDatetime = Field(description="When the device sent the report.")


class DeviceStale(Event):
    """A device's automatic readings stopped for longer than allowed (key = device_id)."""

    event_type = "meters.device-stale"

    device_id: str = Field(description="The device.")
    org_id: str = Field(description="Its organisation.")
    serial: Serial = Field(description="Its serial.")
    last_seen_at: AwareDatetime = Field(description="Last report received.")
    recovered: bool = Field(
        False, description="False: the device went quiet; true: its reports are back."
    )


class ReadingSubmitted(Event):
    """A manual or phoned-in reading, routed to the owner of the device's partition (key =
    serial, the telemetry's key, so one writer decides both). Internal to meters."""

    event_type = "meters.reading-submitted"

    command_id: str = Field(description="Unique id; becomes the reading id when accepted.")
    device_id: str = Field(description="The device.")
    serial: Serial = Field(description="Its serial (the partition key).")
    source: ReadingSource = Field(description="manual or phoned_in.")
    counters: dict[CounterName, CounterValue] = Field(
        max_length=MAX_COUNTERS, description="Counter values."
    )
    submitted_by: str = Field(description="User id of the submitter.")
    submitted_at: AwareDatetime = Field(description="When it was submitted (its reading time).")
    reason: str | None = Field(None, description="Why an agent entered it (phoned in).")


class StaleCheck(Event):
    """Ask the partition owner whether a device has gone quiet (key = serial). Internal."""

    event_type = "meters.stale-check"

    serial: Serial = Field(description="The device's serial.")
    checked_at: AwareDatetime = Field(description="When the timer asked.")


# --- tickets --------------------------------------------------------------------------------


class TicketCategory(StrEnum):
    FAULT = "fault"
    SUPPLIES = "supplies"
    METER_PROBLEM = "meter_problem"
    DEVICE_REMOVAL = "device_removal"
    OTHER = "other"


class TicketStatus(StrEnum):
    NEW = "new"
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    WAITING_FOR_CUSTOMER = "waiting_for_customer"
    RESOLVED = "resolved"
    CLOSED = "closed"


class TicketCreated(Event):
    """A ticket was filed (key = ticket_id)."""

    event_type = "tickets.ticket-created"

    ticket_id: str = Field(description="The ticket.")
    org_id: str = Field(description="Its organisation.")
    device_id: str | None = Field(description="The device it concerns.")
    created_by: str | None = Field(description="User id; null when opened automatically.")
    category: TicketCategory = Field(description="fault, supplies, meter_problem, ...")
    status: TicketStatus = Field(description="Status at creation.")
    clock_starts_at: AwareDatetime = Field(
        description="When the SLA clock starts (the next opening when filed out of hours)."
    )
    due_at: AwareDatetime = Field(description="Response deadline.")
    out_of_hours: bool = Field(description="Filed outside business hours.")


class TicketStatusChanged(Event):
    """A ticket's status changed (key = ticket_id)."""

    event_type = "tickets.ticket-status-changed"

    ticket_id: str = Field(description="The ticket.")
    org_id: str = Field(description="Its organisation.")
    device_id: str | None = Field(description="The device it concerns.")
    created_by: str | None = Field(description="Who filed the ticket.")
    old_status: TicketStatus = Field(description="Before.")
    new_status: TicketStatus = Field(description="After.")
    changed_by: str | None = Field(description="User id of who changed it.")


class TicketAssigned(Event):
    """A ticket was routed to a technician (key = ticket_id)."""

    event_type = "tickets.ticket-assigned"

    ticket_id: str = Field(description="The ticket.")
    org_id: str = Field(description="Its organisation.")
    device_id: str | None = Field(description="The device it concerns.")
    technician_id: str = Field(description="User id of the technician.")
    reason: str = Field(description="Why this technician (routing decision).")


class SlaKind(StrEnum):
    WARNING = "warning"
    BREACH = "breach"


class SlaEscalation(Event):
    """An SLA warning or breach, published exactly once per ticket, kind and deadline."""

    event_type = "tickets.sla-escalation"

    ticket_id: str = Field(description="The ticket.")
    org_id: str = Field(description="Its organisation.")
    device_id: str | None = Field(description="The device it concerns.")
    kind: SlaKind = Field(description="warning or breach.")
    due_at: AwareDatetime = Field(description="The response deadline.")
    fired_at: AwareDatetime = Field(description="When the timer fired.")


class TicketTimersSet(Event):
    """The timers one ticket asks its partition's owner to watch (internal; key = ticket_id).

    Written with every change of a ticket's SLA or pending offer; the tickets instance that owns
    the key's partition keeps the latest version in its timer heap. Null = no such timer.
    """

    event_type = "tickets.timers-set"

    ticket_id: str = Field(description="The ticket.")
    org_id: str = Field(description="Its organisation.")
    device_id: str | None = Field(description="The device it concerns.")
    version: int = Field(ge=1, description="The ticket's revision; older settings are ignored.")
    warn_at: AwareDatetime | None = Field(None, description="When the SLA warning is due.")
    due_at: AwareDatetime | None = Field(None, description="When the SLA breach is due.")
    offer_id: str | None = Field(None, description="The pending offer to a technician.")
    offer_expires_at: AwareDatetime | None = Field(
        None, description="When that offer lapses and the ticket routes to the next technician."
    )


# --- from outside ---------------------------------------------------------------------------


class AccountEventKind(StrEnum):
    INVOICE = "invoice"
    PAYMENT = "payment"
    CREDIT = "credit"


class AccountEvent(Event):
    """An invoice, payment or credit from the billing system (key = customer number)."""

    event_type = "billing.account-event"

    entry_id: str = Field(min_length=1, max_length=64, description="Billing's unique id.")
    customer_number: str = Field(min_length=1, max_length=32, description="Customer number.")
    kind: AccountEventKind = Field(description="invoice, payment or credit.")
    amount: Decimal = Field(description="Amount in the currency, positive.", gt=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code.")
    reference: str = Field(max_length=64, description="Invoice or payment reference.")
    booked_at: AwareDatetime = Field(description="When billing booked it.")


class TelemetryReport(Event):
    """One report of an eMaintenance agent (key = serial). Written by the devices themselves."""

    event_type = "emaintenance.telemetry"

    serial: Serial = Field(description="Serial number of the reporting device.")
    sent_at: AwareDatetime = Field(description="When the device sent the report, with offset.")
    counters: dict[CounterName, CounterValue] = Field(
        default_factory=dict,
        max_length=MAX_COUNTERS,
        description="Meter counters by name (lower case letters, digits and _; at most 10^12).",
    )
    supplies: dict[str, Annotated[int, Field(ge=0, le=100)]] = Field(
        default_factory=dict, description="Consumable levels in percent."
    )
    errors: list[str] = Field(default_factory=list, description="Error codes.")


# --- platform -------------------------------------------------------------------------------


class RecordHeader(BaseModel):
    """A Kafka record header as consumed."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Header name.")
    value_b64: str = Field(description="Header value bytes, base64.")


class DeadLetter(Event):
    """A message a consumer could not process, parked with the reason (key = original topic).

    It keeps the original record (key, value and headers, as bytes in base64) so that an
    operator can replay it (``python -m shared.deadletters``), within bounds that make every
    letter fit the broker: a longer value is cut and ``truncated`` is set.
    """

    event_type = "fleetdesk.dead-letter"

    original_topic: str = Field(description="Topic the message came from.")
    partition: int = Field(description="Its partition.")
    offset: int = Field(description="Its offset.")
    key: str | None = Field(description="Its key, as text.")
    event_id: str = Field(description="Its event id (derived for envelope-less records).")
    consumer_group: str = Field(description="Consumer group that gave up.")
    error: str = Field(description="Why it failed (exception type and message).")
    attempts: int = Field(description="How many times the handler was tried.")
    value: str = Field(
        description="The original value, as UTF-8 text (invalid bytes replaced); only its first "
        "16 KiB, for reading (value_b64 holds the bytes)."
    )
    failed_at: datetime = Field(description="When the consumer gave up.")
    failure: str = Field(
        "unknown",
        description="permanent (the input can never succeed: dead-lettered at once) or unknown "
        "(an unrecognised error that persisted through every attempt).",
    )
    value_b64: str | None = Field(
        None,
        description="The original value's bytes, base64, up to the bound (256 KiB by default); "
        "null when the record had no value or the letter predates this field.",
    )
    value_size: int | None = Field(
        None, description="Size of the original value in bytes (null: no value)."
    )
    truncated: bool = Field(
        False,
        description="True when the value, key or headers were cut to fit; such a letter cannot "
        "be replayed.",
    )
    key_b64: str | None = Field(None, description="The original key's bytes, base64.")
    headers: list[RecordHeader] = Field(
        default_factory=list, description="The original headers, in order."
    )
    record_kept: bool = Field(
        False,
        description="True when the letter holds the original key, value and headers byte for "
        "byte, so that it can be replayed (false for cut letters and for earlier ones).",
    )


# --- the catalogue --------------------------------------------------------------------------


@dataclass(frozen=True)
class Topic:
    name: str
    description: str
    key: str
    events: tuple[type[Event], ...]
    compacted: bool = False
    external: bool = False
    writers: tuple[str, ...] = ()
    """Principals allowed to write (services, or outside systems such as ``billing``)."""
    readers: tuple[str, ...] = ()
    """Services that consume it (each in consumer groups named ``<service>.<purpose>``)."""


ALL_SERVICES = ("identity", "devices", "meters", "tickets", "notify")

ORGANISATIONS = Topic(
    "identity.organisations.state",
    "Latest state of every organisation; projections of other services are built from it.",
    "org_id",
    (OrganisationState,),
    compacted=True,
    writers=("identity",),
    readers=("devices", "meters", "tickets", "notify"),
)
USERS = Topic(
    "identity.users.state",
    "Latest state of every user: role, assigned devices, language, e-mail, status.",
    "user_id",
    (UserState,),
    compacted=True,
    writers=("identity",),
    readers=("devices", "meters", "tickets", "notify"),
)
SIGNING_KEYS = Topic(
    "identity.signing-keys",
    "Public keys that verify access tokens, by key id, so keys can rotate.",
    "kid",
    (SigningKey,),
    compacted=True,
    writers=("identity",),
    readers=ALL_SERVICES,
)
IDENTITY_NOTIFICATIONS = Topic(
    "identity.notifications",
    "Things identity asks notify to tell a person: confirmations and invitations.",
    "user_id",
    (ConfirmationRequested, InvitationIssued, AccountExistsNotice),
    writers=("identity",),
    readers=("notify",),
)
DEVICES = Topic(
    "devices.devices.state",
    "Latest state of every device (serial, model, organisation, location, contract, status).",
    "device_id",
    (DeviceState,),
    compacted=True,
    writers=("devices",),
    readers=ALL_SERVICES,
)
DEVICE_EVENTS = Topic(
    "devices.events",
    "Things that happened to devices that people must hear of: supply orders.",
    "device_id",
    (SupplyOrderRaised,),
    writers=("devices",),
    readers=("notify",),
)
DEVICE_COMMANDS = Topic(
    "devices.commands",
    "Commands to the devices service from other services: removals asked for by resolved "
    "device-removal tickets. Keyed by device: one consumer applies a device's commands in order.",
    "device_id",
    (DeviceRemovalRequested,),
    writers=("devices", "tickets"),
    readers=("devices",),
)
METER_EVENTS = Topic(
    "meters.events",
    "Accepted readings, refused (anomalous) readings, faults reported in telemetry, stale devices.",
    "device_id",
    (ReadingAccepted, ReadingAnomaly, DeviceFaultReported, DeviceStale),
    writers=("meters",),
    readers=("tickets", "notify"),
)
METER_COMMANDS = Topic(
    "meters.commands",
    "Meters' own commands, keyed and partitioned like the telemetry, so that the one owner of "
    "a device's partition decides manual and automatic readings alike.",
    "serial",
    (ReadingSubmitted, StaleCheck),
    writers=("meters",),
    readers=("meters",),
)
TICKET_EVENTS = Topic(
    "tickets.events",
    "Ticket lifecycle: created, status changes, assignments, SLA warnings and breaches.",
    "ticket_id",
    (TicketCreated, TicketStatusChanged, TicketAssigned, SlaEscalation),
    writers=("tickets",),
    readers=("notify",),
)
TICKET_TIMERS = Topic(
    "tickets.timers",
    "Internal: each ticket's SLA and offer timers, keyed by ticket so one instance owns each.",
    "ticket_id",
    (TicketTimersSet,),
    writers=("tickets",),
    readers=("tickets",),
)
BILLING_ACCOUNT_EVENTS = Topic(
    "billing.account-events",
    "Invoices, payments and credits of organisations, written by the billing system.",
    "customer_number",
    (AccountEvent,),
    external=True,
    writers=("billing",),
    readers=("identity",),
)
TELEMETRY = Topic(
    "emaintenance.telemetry",
    "Reports of the devices' eMaintenance agents: counters, supplies and error codes.",
    "serial",
    (TelemetryReport,),
    external=True,
    writers=("emaintenance",),
    readers=("devices", "meters"),
)
DEAD_LETTER = Topic(
    "fleetdesk.dead-letter",
    "Messages a consumer gave up on, with the reason and where they came from.",
    "original topic",
    (DeadLetter,),
    writers=ALL_SERVICES,
    readers=(),
)

CATALOGUE: tuple[Topic, ...] = (
    ORGANISATIONS,
    USERS,
    SIGNING_KEYS,
    IDENTITY_NOTIFICATIONS,
    DEVICES,
    DEVICE_EVENTS,
    DEVICE_COMMANDS,
    METER_EVENTS,
    METER_COMMANDS,
    TICKET_EVENTS,
    TICKET_TIMERS,
    BILLING_ACCOUNT_EVENTS,
    TELEMETRY,
    DEAD_LETTER,
)


def topic_named(name: str) -> Topic:
    for topic in CATALOGUE:
        if topic.name == name:
            return topic
    raise KeyError(name)
