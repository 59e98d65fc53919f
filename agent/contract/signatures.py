r"""What a signature is, as both halves write and read it: signed documents and the keys behind them.

**Two tiers of keys.** Each robot trusts a few *root keys* (``<root_id>.pub``, PEM
SubjectPublicKeyInfo, Ed25519, in ``agent.model.trusted_keys``). A root key stays offline; it
signs only *release-key certificates* (`ReleaseKeyCertificate`: this public key may sign models
of these channels until then) and *revocation lists* (`RevocationList`). A release key signs
model manifests and announcements, and every such signature carries its certificate, so a new
release key reaches the fleet with the first model it signs and a leaked one is retired by a
revocation list, without touching a robot.

**A signed document** (`SignedDocument`) is a few ASCII header lines, an empty line, then the
body bytes::

    robotpm-signed 1
    purpose manifest
    key fleet-2026-07
    signature <base64 of the 64-byte Ed25519 signature>
    certificate <base64 of the release key's certificate, itself a signed document>

    <body>

The header is read by a strict line parser (fixed field order, ASCII, size caps), never by a
JSON parser, so nothing in the body is parsed before its signature has been checked. The
signature is over ``b"robotpm-signed 1\0" + purpose + b"\0" + body`` (`signing_input`): the
purpose keeps a signature made for one kind of document from being valid for another.

``manifest.sig`` beside a model is a *detached* signed document: its body is empty and the
signature covers the exact bytes of ``manifest.json`` (`DETACHED`). An announcement, a
certificate and a revocation list carry their JSON as the body.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from agent.contract.errors import SignatureFormatError
from agent.contract.topics import check_segment

KEY_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
"""Key ids double as file names (``<key_id>.pub``), so they are kept to these characters."""

PUBLIC_KEY_SUFFIX: Final = ".pub"
"""The file-name suffix of a public key: ``<key_id>.pub``."""

CERTIFICATE_SUFFIX: Final = ".cert"
"""The file-name suffix of a release-key certificate (a signed document): ``<key_id>.cert``."""

REVOCATIONS_FILE: Final = "revocations.signed"
"""A root-signed `RevocationList`, in ``trusted_keys`` or in a bundle."""

SIGNATURE_BYTES: Final = 64
"""An Ed25519 signature's length."""

PUBLIC_KEY_BYTES: Final = 32
"""An Ed25519 public key's raw length."""

MAGIC: Final = b"robotpm-signed 1"
"""The first line of every signed document."""

MAX_HEADER_BYTES: Final = 16 * 1024
"""A header (with its certificate) longer than this is refused before it is decoded."""

WILDCARD_CHANNEL: Final = "*"
"""In a certificate's ``channels``: every channel."""

Purpose = Literal["manifest", "announcement", "release-key", "revocations"]
PURPOSES: Final[tuple[Purpose, ...]] = ("manifest", "announcement", "release-key", "revocations")
ROOT_PURPOSES: Final = frozenset({"release-key", "revocations"})
"""What a root key signs; everything else is signed by a certified release key."""

DETACHED: Final = b""
"""The body of a detached signed document (``manifest.sig``): the signed bytes live beside it."""

_KEY_ID = re.compile(KEY_ID_PATTERN)
_BASE64 = re.compile(rb"^[A-Za-z0-9+/]+={0,2}$")


def signing_input(purpose: str, body: bytes) -> bytes:
    """The exact bytes an Ed25519 signature of `purpose` over `body` covers."""
    return MAGIC + b"\0" + purpose.encode("ascii") + b"\0" + body


@dataclass(frozen=True, slots=True)
class SignedDocument:
    """A body, the purpose it was signed for, the key id that signed it, and that key's certificate.

    Parsing checks the form only; whether the signature holds is for the verifier
    (`agent.models.keys.Keyring`). ``certificate`` is present on documents signed by a
    release key and absent on those signed by a root key.
    """

    purpose: str
    key_id: str
    signature: bytes
    body: bytes
    certificate: SignedDocument | None = None

    def to_bytes(self) -> bytes:
        """The document as written to a file or an MQTT payload."""
        lines = [
            MAGIC,
            b"purpose " + self.purpose.encode("ascii"),
            b"key " + self.key_id.encode("ascii"),
            b"signature " + base64.b64encode(self.signature),
        ]
        if self.certificate is not None:
            lines.append(b"certificate " + base64.b64encode(self.certificate.to_bytes()))
        return b"\n".join(lines) + b"\n\n" + self.body

    @classmethod
    def parse(cls, data: bytes, *, max_bytes: int) -> SignedDocument:
        """Read a signed document; `SignatureFormatError` naming the first thing wrong with its form."""
        return _parse(data, max_bytes=max_bytes, nested=False)


def is_signed_document(data: bytes) -> bool:
    """Whether `data` starts like a signed document (an unsigned announcement is plain JSON)."""
    return data.startswith(MAGIC + b"\n")


def _parse(data: bytes, *, max_bytes: int, nested: bool) -> SignedDocument:
    if len(data) > max_bytes:
        raise SignatureFormatError(f"signed document of {len(data)} bytes is over the cap of {max_bytes}")
    if not is_signed_document(data):
        raise SignatureFormatError(f"not a signed document (first line is not {MAGIC.decode()!r})")
    end = data.find(b"\n\n", 0, MAX_HEADER_BYTES + 2)
    if end < 0:
        raise SignatureFormatError(f"no end of header within {MAX_HEADER_BYTES} bytes")
    header, body = data[:end].split(b"\n"), data[end + 2 :]
    fields: dict[str, bytes] = {}
    expected = ["purpose", "key", "signature", "certificate"]
    for line in header[1:]:
        name, sep, value = line.partition(b" ")
        field = name.decode("ascii", errors="replace")
        if not sep or not value or field not in expected:
            raise SignatureFormatError(f"unexpected header line {line[:40]!r}")
        expected = expected[expected.index(field) + 1 :]  # fixed order, each at most once
        fields[field] = value
    for required in ("purpose", "key", "signature"):
        if required not in fields:
            raise SignatureFormatError(f"header lacks {required!r}")
    purpose = fields["purpose"].decode("ascii", errors="replace")
    if purpose not in PURPOSES:
        raise SignatureFormatError(f"unknown purpose {purpose!r}")
    key_id = fields["key"].decode("ascii", errors="replace")
    if not _KEY_ID.match(key_id):
        raise SignatureFormatError(f"key id {key_id[:40]!r} does not match {KEY_ID_PATTERN}")
    signature = _b64(fields["signature"], "signature")
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureFormatError(f"signature is {len(signature)} bytes, not {SIGNATURE_BYTES}")
    certificate = None
    if "certificate" in fields:
        if nested:
            raise SignatureFormatError("a certificate may not carry a certificate")
        certificate = _parse(_b64(fields["certificate"], "certificate"), max_bytes=max_bytes, nested=True)
        if certificate.purpose != "release-key":
            raise SignatureFormatError(f"the certificate is a {certificate.purpose!r} document")
    return SignedDocument(purpose, key_id, signature, body, certificate)


def _b64(value: bytes, what: str) -> bytes:
    if not _BASE64.match(value):
        raise SignatureFormatError(f"{what} is not base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureFormatError(f"{what} is not base64") from None


class _Signed(BaseModel):
    # defer_build: built on first use, so an agent without trusted keys pays no memory for these.
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class ReleaseKeyCertificate(_Signed):
    """The body of a root-signed ``release-key`` document: a key that may sign models, where, until when."""

    schema_version: Literal[1] = 1
    key_id: str = Field(pattern=KEY_ID_PATTERN)
    public_key: str = Field(description="The raw 32-byte Ed25519 public key, base64.")
    channels: tuple[str, ...] = Field(
        min_length=1,
        description=f"Channels it may sign models and announcements for; {WILDCARD_CHANNEL!r}: all.",
    )
    issued: AwareDatetime
    expires: AwareDatetime

    @field_validator("public_key")
    @classmethod
    def _raw_key(cls, value: str) -> str:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("public_key is not base64") from None
        if len(raw) != PUBLIC_KEY_BYTES:
            raise ValueError(f"public_key is {len(raw)} bytes, not {PUBLIC_KEY_BYTES}")
        return value

    @field_validator("channels")
    @classmethod
    def _channel_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(c if c == WILDCARD_CHANNEL else check_segment(c, "certificate channel") for c in value)

    @property
    def raw_public_key(self) -> bytes:
        """The public key's 32 bytes."""
        return base64.b64decode(self.public_key)

    def allows(self, channel: str) -> bool:
        """Whether this key may sign for `channel`."""
        return WILDCARD_CHANNEL in self.channels or channel in self.channels

    def expired(self, now: datetime) -> bool:
        """Whether the certificate is no longer valid at `now` (time-zone aware)."""
        return self.expires <= now

    def to_json(self) -> bytes:
        """The body as signed."""
        return self.model_dump_json().encode()


class RevocationList(_Signed):
    """The body of a root-signed ``revocations`` document: release keys no longer trusted.

    ``version`` only goes up: an agent keeps the newest list it has verified, so an old
    list (revoking less) cannot be replayed to it.
    """

    schema_version: Literal[1] = 1
    version: int = Field(ge=1)
    revoked_keys: tuple[str, ...] = ()
    issued: AwareDatetime

    def to_json(self) -> bytes:
        """The body as signed."""
        return self.model_dump_json().encode()


__all__ = [
    "CERTIFICATE_SUFFIX",
    "DETACHED",
    "KEY_ID_PATTERN",
    "MAGIC",
    "PUBLIC_KEY_SUFFIX",
    "PURPOSES",
    "REVOCATIONS_FILE",
    "ROOT_PURPOSES",
    "SIGNATURE_BYTES",
    "WILDCARD_CHANNEL",
    "Purpose",
    "ReleaseKeyCertificate",
    "RevocationList",
    "SignedDocument",
    "is_signed_document",
    "signing_input",
]
