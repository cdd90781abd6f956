"""``python -m services.devices``: serve the devices API and run its consumers."""

from services.devices.config import DevicesSettings
from services.devices.inject import build_app
from shared.service import serve

if __name__ == "__main__":
    settings = DevicesSettings()
    serve(build_app(settings), settings, settings.devices_port)
