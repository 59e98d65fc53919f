"""The model announcement: what the trainer publishes, retained, on ``robotpm/v1/models/<channel>``.

An announcement names one model version and where its bundle is: a plain
(uncompressed) tar of the version directory holding exactly ``model.onnx``,
``manifest.json`` and, when signed, ``manifest.sig`` as regular files at the top
level. ``sha256`` and ``length`` are those of the tar file, so the agent checks the
download while it streams, before it unpacks anything. The announcement is not
trusted beyond that: the model's own signature and golden test are checked by the
agent's model store as for any other model.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from agent.contract.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE
from agent.contract.signatures import REVOCATIONS_FILE
from agent.contract.topics import check_segment

ANNOUNCEMENT_SCHEMA_VERSION: Final = 1
BUNDLE_MEMBERS: Final = frozenset({MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE, REVOCATIONS_FILE})
"""The only names a bundle may hold; ``model.onnx`` and ``manifest.json`` are required, and
``revocations.signed`` (a root-signed revocation list) spreads revocations with the models."""
REQUIRED_MEMBERS: Final = frozenset({MODEL_FILE, MANIFEST_FILE})

MAX_MANIFEST_BYTES: Final = 1024 * 1024
"""A manifest larger than this is refused before it is read in full (the bundled one is ~40 KB)."""
MAX_SIGNED_DOCUMENT_BYTES: Final = 64 * 1024
"""A signature file, certificate, revocation list or announcement larger than this is refused unread."""
BUNDLE_OVERHEAD_BYTES: Final = MAX_MANIFEST_BYTES + 2 * MAX_SIGNED_DOCUMENT_BYTES + 16 * 1024
"""What a bundle may hold beside ``model.onnx``: manifest, signature, revocations, tar headers.
A bundle is never larger than the model cap plus this."""


class ModelAnnouncement(BaseModel):
    """One model version offered to the agents following a channel."""

    # defer_build: built on the first announcement, so an agent following no channel pays nothing.
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    schema_version: Literal[1] = ANNOUNCEMENT_SCHEMA_VERSION
    model_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: int = Field(ge=1, description="The manifest's version; agents ignore versions they have.")
    channel: str = Field(description="The channel it is announced on, e.g. 'stable'.")
    url: str = Field(
        min_length=1,
        max_length=2048,
        description="Absolute URL of the bundle (an uncompressed tar); agents accept https:// only "
        "unless allow_http is set.",
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Of the bundle file, hex.")
    length: int = Field(ge=1, description="Of the bundle file, in bytes.")
    published_at: AwareDatetime

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        return check_segment(value, "model channel")

    @property
    def label(self) -> str:
        """``<model_id>@<version>``, for logs."""
        return f"{self.model_id}@{self.version}"

    def to_json(self) -> bytes:
        """The payload as published."""
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, payload: bytes | str) -> ModelAnnouncement:
        """Parse a payload; raises pydantic's ``ValidationError`` when it is not one."""
        return cls.model_validate_json(payload)


def bundle_name(model_id: str, version: int) -> str:
    """The file name the trainer gives a bundle: ``<model_id>-v<version>.tar``."""
    return f"{model_id}-v{version}.tar"


__all__ = [
    "ANNOUNCEMENT_SCHEMA_VERSION",
    "BUNDLE_MEMBERS",
    "BUNDLE_OVERHEAD_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_SIGNED_DOCUMENT_BYTES",
    "REQUIRED_MEMBERS",
    "ModelAnnouncement",
    "bundle_name",
]
