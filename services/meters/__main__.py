"""``python -m services.meters``: serve the meters API and run its consumers."""

from services.meters.config import MetersSettings
from services.meters.inject import build_app
from shared.service import serve

if __name__ == "__main__":
    settings = MetersSettings()
    serve(build_app(settings), settings, settings.meters_port)
