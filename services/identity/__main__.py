"""``python -m services.identity``: serve the identity API and run its consumers."""

from services.identity.config import IdentitySettings
from services.identity.inject import build_app
from shared.service import serve

if __name__ == "__main__":
    settings = IdentitySettings()
    serve(build_app(settings), settings, settings.identity_port)
