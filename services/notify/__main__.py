"""``python -m services.notify``: serve the notify API and run its consumers."""

from services.notify.config import NotifySettings
from services.notify.inject import build_app
from shared.service import serve

if __name__ == "__main__":
    settings = NotifySettings()
    serve(build_app(settings), settings, settings.notify_port)
