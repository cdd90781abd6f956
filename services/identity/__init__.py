"""The identity service: organisations, users, roles, registration, sign-in and signing keys."""
