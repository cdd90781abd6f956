"""Sealed boxes: only the recipient's key opens them, in the same context, untampered."""

import pytest

from shared.sealing import DEVELOPMENT_PRIVATE_KEY, SealError, SealingKey, seal


def test_round_trip_and_no_plaintext_in_box() -> None:
    key = SealingKey.generate()
    box = seal(key.public_key, "secret-token-123", context="confirmation")
    assert "secret-token-123" not in box
    assert key.open(box, context="confirmation") == "secret-token-123"
    # A fresh ephemeral key per box: the same secret never seals to the same text.
    assert seal(key.public_key, "secret-token-123", context="confirmation") != box


def test_other_key_other_context_and_tampering_refused() -> None:
    key, other = SealingKey.generate(), SealingKey.generate()
    box = seal(key.public_key, "t", context="confirmation")
    with pytest.raises(SealError):
        other.open(box, context="confirmation")
    with pytest.raises(SealError):
        key.open(box, context="invitation")
    version, kid, body = box.split(".", 2)
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    with pytest.raises(SealError):
        key.open(f"{version}.{kid}.{flipped}", context="confirmation")
    with pytest.raises(SealError):
        key.open("garbage", context="confirmation")


def test_development_key_is_valid() -> None:
    key = SealingKey(DEVELOPMENT_PRIVATE_KEY)
    assert key.open(seal(key.public_key, "x", context="c"), context="c") == "x"
