"""``python -m services.meters``: serve the meters API, run its consumers and the faust
ingestion worker (started in the lifespan, on the same event loop; `/ready` reflects it)."""

from services.meters.config import MetersSettings
from services.meters.inject import build_app
from shared.service import serve

if __name__ == "__main__":
    settings = MetersSettings()
    serve(build_app(settings), settings, settings.meters_port)
