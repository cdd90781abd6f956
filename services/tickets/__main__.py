"""``python -m services.tickets``: serve the tickets API and run its consumers."""

from services.tickets.config import TicketsSettings
from services.tickets.inject import build_app
from shared.service import serve

if __name__ == "__main__":
    settings = TicketsSettings()
    serve(build_app(settings), settings, settings.tickets_port)
