"""Two-tier signing keys for tests: a root key the agents trust, and release keys it certified.

`fleet_keys` makes a root key pair, a release key pair with its certificate beside the private
key (so ``sign_model_dir(d, keys.private)`` just works), and the agent's ``trusted_keys``
directory holding the root's public key only.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from trainer.signing import certify_release_key, generate_key_pair

ONE_YEAR = timedelta(days=365)


@dataclass(frozen=True)
class FleetKeys:
    """A root key, one certified release key, and the agents' trusted-keys directory."""

    root_private: Path
    root_id: str
    private: Path
    key_id: str
    certificate: Path
    trusted: Path


def fleet_keys(
    directory: Path,
    *,
    key_id: str = "fleet",
    root_id: str = "root",
    channels: Sequence[str] = ("*",),
) -> FleetKeys:
    """Make the keys of a fleet under `directory` (see the module docstring)."""
    root_private, root_public = generate_key_pair(root_id, directory / "offline")
    private, certificate = release_key(directory, root_private, key_id, channels=channels)
    trusted = directory / "trusted"
    trusted.mkdir(parents=True)
    shutil.copy(root_public, trusted / root_public.name)
    return FleetKeys(root_private, root_id, private, key_id, certificate, trusted)


def release_key(
    directory: Path,
    root_private: Path,
    key_id: str,
    *,
    channels: Sequence[str] = ("*",),
    expires: datetime | None = None,
) -> tuple[Path, Path]:
    """Another release key under `directory`/release, certified by `root_private`: (private key, cert)."""
    private, public = generate_key_pair(key_id, directory / "release")
    certificate = certify_release_key(
        root_private,
        public,
        channels=channels,
        expires=expires or datetime.now(timezone.utc) + ONE_YEAR,
    )
    return private, certificate
