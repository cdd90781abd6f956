"""Settings of the meters service."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import ServiceSettings


class IngestSettings(BaseSettings):
    """The faust ingestion worker: batching, staleness, the wait for a decision."""

    model_config = SettingsConfigDict(env_prefix="FLEETDESK_METERS_", extra="ignore")

    batch_size: int = Field(
        4000, ge=1, description="Inputs decided before a flush (insert_many + publish) is due."
    )
    flush_interval_ms: int = Field(
        100, ge=5, description="A partial batch is flushed after at most this long."
    )
    insert_batch_size: int = Field(
        1000, ge=1, le=5000, description="Documents per insert_many (FerretDB: modest batches)."
    )
    max_poll_records: int = Field(2000, ge=1, description="Records per poll of the worker.")
    fetch_max_wait_ms: int = Field(
        50, ge=1, description="Longest a fetch waits at the broker for new telemetry."
    )
    hole_grace_seconds: float = Field(
        10.0,
        gt=0,
        description="How long an input past a hole in its partition waits for the hole to be "
        "fetched again before the hole is taken to be in the log itself.",
    )
    commit_interval_seconds: float = Field(
        1.0, gt=0, description="How often faust commits acknowledged offsets."
    )
    stale_after_seconds: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="A device with eMaintenance whose reports stop for longer is stale.",
    )
    stale_check_interval_seconds: float = Field(
        60.0, gt=0, description="How often the worker looks for quiet devices."
    )
    stale_checks_per_round: int = Field(
        1000, ge=1, description="At most this many stale checks are asked per round."
    )
    decision_timeout_seconds: float = Field(
        5.0, gt=0, description="How long a manual submission waits for the owner's decision."
    )
    gc_young_threshold: int = Field(
        200_000,
        ge=700,
        description="Allocations between two collections of Python's youngest generation in "
        "the worker process (with Python's default, 700, the worker spent about a fifth of its "
        "time in the garbage collector at full rate; at 50,000, 16-18 collections of 20-27 ms in "
        "200,000 reports; at 200,000, none: a batch's objects are freed before that many pile "
        "up).",
    )
    decision_retention_seconds: float = Field(
        86400.0,
        gt=0,
        description="Decisions on manual submissions are kept this long (a request waits for "
        "its own for decision_timeout_seconds); older ones are dropped every hour.",
    )
    data_dir: str | None = Field(
        None, description="Directory for faust's data (default: the system temp directory)."
    )


class MetersSettings(ServiceSettings):
    meters_port: int = Field(8003, description="HTTP port of the meters service.")
    ingest: IngestSettings = Field(
        default_factory=IngestSettings, description="FLEETDESK_METERS_*: the ingestion worker."
    )
