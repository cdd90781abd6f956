"""The notify service: e-mail notifications to the right people, in their language."""
