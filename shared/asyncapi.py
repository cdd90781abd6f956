"""Generate the AsyncAPI document of every topic and event from the catalogue.

``python -m shared.asyncapi`` writes ``docs/asyncapi.yaml``; ``--check`` exits non-zero when
the checked-in document differs from what the models say (the drift test runs the same check).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from shared.contracts import CATALOGUE
from shared.events import Envelope

DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "asyncapi.yaml"


def _message_name(event_type: str) -> str:
    return event_type.replace(".", "_").replace("-", "_")


def build() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    header_schema = Envelope.model_json_schema()
    for topic in CATALOGUE:
        channel_messages = {}
        for event in topic.events:
            name = _message_name(event.event_type)
            schema = event.model_json_schema(ref_template="#/components/schemas/{model}")
            for def_name, definition in schema.pop("$defs", {}).items():
                schemas[def_name] = definition
            schemas[event.__name__] = schema
            messages[name] = {
                "name": event.event_type,
                "title": event.__name__,
                "summary": (event.__doc__ or "").strip().splitlines()[0],
                "contentType": "application/json",
                "headers": (
                    {"$ref": "#/components/schemas/Envelope"}
                    if not topic.external
                    else {"type": "object", "description": "No envelope: written outside."}
                ),
                "payload": {"$ref": f"#/components/schemas/{event.__name__}"},
                "x-event-version": event.event_version,
            }
            channel_messages[name] = {"$ref": f"#/components/messages/{name}"}
        channels[topic.name] = {
            "address": topic.name,
            "description": topic.description,
            "messages": channel_messages,
            "x-key": topic.key,
            "x-cleanup-policy": "compact" if topic.compacted else "delete",
            "x-external": topic.external,
        }
        operations[f"publish_{topic.name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{topic.name}"},
        }
    schemas["Envelope"] = header_schema
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Fleetdesk events",
            "version": "1.0.0",
            "description": "Topics and event contracts, generated from shared/contracts.py.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }


def render() -> str:
    return yaml.safe_dump(build(), sort_keys=False, allow_unicode=True, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the document drifted")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOCUMENT.exists() or DOCUMENT.read_text() != text:
            print(f"{DOCUMENT} is out of date: run `make asyncapi`", file=sys.stderr)
            return 1
        return 0
    DOCUMENT.parent.mkdir(parents=True, exist_ok=True)
    DOCUMENT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
