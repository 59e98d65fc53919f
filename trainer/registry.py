"""The model registry on disk: ``<root>/<name>/<version>/`` plus a champion pointer.

Each version directory holds ``model.onnx``, ``manifest.json``, ``metrics.json``
and the report; it is written into a temporary sibling and renamed into place, so
a partial run never leaves a version behind. ``<root>/<name>/registry.json``
records the champion and the history of promotions (for `rollback`).

A challenger is promoted only through `Registry.promote` with the gate: it must
beat the champion on the same held-out data (`gate_metric`, computed by the
caller on one evaluation set for both).
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent.contract.errors import ManifestError
from agent.contract.manifest import MANIFEST_FILE, MODEL_FILE, ModelManifest, file_sha256
from trainer.atomicfile import write_file_atomically
from trainer.errors import GateError, RegistryError, TrainerError

INDEX_FILE = "registry.json"
METRICS_FILE = "metrics.json"


def write_directory_atomically(target: Path, files: Mapping[str, bytes]) -> Path:
    """Write `files` (relative path → bytes) as directory `target`, replacing it in one rename.

    Files are fsynced before the rename; an existing `target` is moved aside first
    and removed afterwards, so readers see either the old or the new directory.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the agent may run as another user
        for relative, data in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        old: Path | None = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.rename(target, old)
        os.rename(staging, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def verified_manifest(directory: Path, error: type[TrainerError] = RegistryError) -> ModelManifest:
    """The manifest of a model directory, once its ``model.onnx`` matches the sha256 and length in it.

    Raises `error` naming the file when the manifest cannot be read or does not describe the
    model beside it (so nothing signs, publishes or promotes a model its manifest does not vouch for).
    """
    try:
        manifest = ModelManifest.read(directory)
    except ManifestError as exc:
        raise error(str(exc)) from exc
    try:
        digest, length = file_sha256(directory / MODEL_FILE)
    except OSError as exc:
        raise error(f"{directory / MODEL_FILE}: cannot read: {exc.strerror}") from exc
    if (digest, length) != (manifest.sha256, manifest.length):
        raise error(f"{directory / MODEL_FILE}: sha256/length differ from the manifest")
    return manifest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One registered version, as `list` shows it."""

    version: int
    path: Path
    created: str
    metrics: dict[str, float]
    champion: bool


class Registry:
    """Versions of one model name under a registry root."""

    def __init__(self, root: Path, name: str) -> None:
        self._root = root
        self._name = name

    @property
    def directory(self) -> Path:
        """``<root>/<name>``."""
        return self._root / self._name

    def versions(self) -> builtins.list[int]:
        """Registered versions, ascending."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.is_dir() and p.name.isdigit())

    def next_version(self) -> int:
        """One more than the highest registered version (versions are monotonic)."""
        existing = self.versions()
        return (existing[-1] + 1) if existing else 1

    def path(self, version: int) -> Path:
        """Directory of one version."""
        return self.directory / str(version)

    def write(self, version: int, files: Mapping[str, bytes]) -> Path:
        """Write a new version directory atomically; refuses to overwrite an existing version."""
        target = self.path(version)
        if target.exists():
            raise RegistryError(f"{target}: version {version} already exists; versions are never overwritten")
        return write_directory_atomically(target, files)

    def manifest(self, version: int) -> ModelManifest:
        """The manifest of a version, verified against its model file's sha256 and length."""
        path = self.path(version)
        if not path.is_dir():
            raise RegistryError(f"{self._name}: no version {version} in {self.directory}")
        return verified_manifest(path)

    def metrics(self, version: int) -> dict[str, Any]:
        """The stored ``metrics.json`` of a version."""
        try:
            data = json.loads((self.path(version) / METRICS_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{self.path(version) / METRICS_FILE}: {exc}") from exc
        return dict(data)

    def index(self) -> dict[str, Any]:
        """The champion pointer and promotion history."""
        path = self.directory / INDEX_FILE
        if not path.exists():
            return {"champion": None, "history": []}
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{path}: unreadable registry index: {exc}") from exc

    @property
    def champion(self) -> int | None:
        """The promoted version, or None."""
        value = self.index().get("champion")
        return int(value) if value is not None else None

    def list(self) -> builtins.list[VersionInfo]:
        """Every version with its headline metrics."""
        champion = self.champion
        infos = []
        for version in self.versions():
            try:
                stored = self.metrics(version)
            except RegistryError:
                stored = {}
            manifest_path = self.path(version) / MANIFEST_FILE
            created = ""
            if manifest_path.exists():
                created = str(json.loads(manifest_path.read_text(encoding="utf-8")).get("created", ""))
            infos.append(
                VersionInfo(
                    version, self.path(version), created, dict(stored.get("metrics", {})), version == champion
                )
            )
        return infos

    def promote(
        self,
        version: int,
        *,
        gate_metric: str | None = None,
        challenger_score: float | None = None,
        champion_score: float | None = None,
        higher_is_better: bool = True,
        force: bool = False,
    ) -> None:
        """Make `version` the champion, through the gate unless `force`.

        The gate compares `challenger_score` and `champion_score`, which the caller
        measured on the same held-out data; without a champion the gate passes.
        """
        self.manifest(version)  # exists and is intact
        current = self.champion
        if current == version:
            return
        if not force and current is not None:
            if challenger_score is None or champion_score is None:
                raise GateError(
                    f"promoting over champion v{current} needs both scores on the same held-out data"
                )
            better = (
                challenger_score > champion_score if higher_is_better else challenger_score < champion_score
            )
            if not better:
                raise GateError(
                    f"challenger v{version} {gate_metric}={challenger_score:.4g} does not beat champion "
                    f"v{current} {gate_metric}={champion_score:.4g}"
                )
        index = self.index()
        index["history"].append(
            {
                "version": version,
                "previous": current,
                "at": datetime.now(timezone.utc).isoformat(),
                "gate": {"metric": gate_metric, "challenger": challenger_score, "champion": champion_score},
                "forced": force,
            }
        )
        index["champion"] = version
        self._write_index(index)

    def rollback(self) -> int:
        """Return the champion pointer to the previous champion; returns the new champion."""
        index = self.index()
        current = index.get("champion")
        if current is None:
            raise RegistryError(f"{self._name}: no champion to roll back")
        stack: list[int] = []
        for entry in index["history"]:
            if entry.get("rollback"):
                if stack:
                    stack.pop()
            else:
                stack.append(int(entry["version"]))
        if len(stack) < 2:
            raise RegistryError(f"{self._name}: champion v{current} has no previous champion to roll back to")
        previous = stack[-2]
        index["history"].append(
            {
                "version": previous,
                "previous": current,
                "at": datetime.now(timezone.utc).isoformat(),
                "rollback": True,
            }
        )
        index["champion"] = previous
        self._write_index(index)
        return previous

    def _write_index(self, index: dict[str, Any]) -> None:
        write_file_atomically(self.directory / INDEX_FILE, (json.dumps(index, indent=2) + "\n").encode())
