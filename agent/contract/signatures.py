"""What a model signature is, as both halves write and read it.

A signed model directory holds ``manifest.sig``: the raw 64-byte Ed25519 signature
over the exact bytes of ``manifest.json``, whose ``signing_key_id`` names the key.
Public keys are files ``<key_id>.pub`` (PEM, SubjectPublicKeyInfo).
"""

from __future__ import annotations

from typing import Final

KEY_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
"""Key ids double as file names (``<key_id>.pub``), so they are kept to these characters."""

PUBLIC_KEY_SUFFIX: Final = ".pub"
"""The file-name suffix of a public key: ``<key_id>.pub``."""

SIGNATURE_BYTES: Final = 64
"""An Ed25519 signature's length."""
