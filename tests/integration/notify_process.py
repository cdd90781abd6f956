"""``python -m tests.integration.notify_process``: notify on the topics named by
``FLEETDESK_TEST_NOTIFY_TOPICS`` (JSON), so a test can kill and restart it as a process."""

from __future__ import annotations

import json
import os

from services.notify.config import NotifySettings
from services.notify.inject import build_app
from shared.service import serve

if __name__ == "__main__":
    settings = NotifySettings()
    topics = json.loads(os.environ["FLEETDESK_TEST_NOTIFY_TOPICS"])
    serve(build_app(settings, topics=topics), settings, settings.notify_port)
