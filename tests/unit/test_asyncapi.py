"""The checked-in AsyncAPI document matches the event models (no drift)."""

from shared import asyncapi
from shared.contracts import CATALOGUE


def test_checked_in_document_matches_the_models() -> None:
    assert asyncapi.DOCUMENT.read_text() == asyncapi.render(), "run `make asyncapi`"


def test_every_topic_and_event_is_documented() -> None:
    document = asyncapi.build()
    assert set(document["channels"]) == {t.name for t in CATALOGUE}
    documented = {m["name"] for m in document["components"]["messages"].values()}
    assert documented == {e.event_type for t in CATALOGUE for e in t.events}
