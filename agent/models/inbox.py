"""A technician's inbox: signed bundles from a directory (a USB stick), with the checks of a download.

``agent.model.inbox`` names a directory. Each ``*.tar`` in it is a bundle as
``robotpm-train publish`` writes them; each is installed through the same
`agent.models.install.BundleInstaller` as a download (unpacked and verified in staging,
renamed into the store only then), so an inbox can install nothing that a download could
not. A ``revocations.signed`` there is taken in like one in a bundle. The inbox is read, never
written (the stick may be read-only): a file is looked at again only when its size or
modification time changes. The model watcher thread scans it (`Inbox.scan`) on each wake.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.contract.announcement import MAX_SIGNED_DOCUMENT_BYTES
from agent.contract.signatures import REVOCATIONS_FILE
from agent.errors import FetchRefusedError, ModelError
from agent.models.install import BundleInstaller
from agent.models.store import stamps_of
from agent.models.verify import ModelVerifier
from agent.ownfiles import not_regular, read_own

log = structlog.get_logger("robotpm.model")

BUNDLE_SUFFIX = ".tar"


@dataclass(frozen=True, slots=True)
class InboxResult:
    """What became of one inbox file: ``installed``, ``refused`` or ``failed`` (retried when it changes)."""

    path: Path
    outcome: str
    detail: str


class Inbox:
    """One inbox directory; see the module docstring."""

    def __init__(self, directory: Path, installer: BundleInstaller, verifier: ModelVerifier) -> None:
        self._directory = directory
        self._installer = installer
        self._verifier = verifier
        self._seen: dict[str, tuple[int, int]] = {}

    @property
    def directory(self) -> Path:
        """The inbox directory."""
        return self._directory

    def signature(self) -> tuple[tuple[str, int, int, int], ...]:
        """(name, inode, size, mtime) of each inbox file: changes when one is added or changed."""
        return stamps_of(self._directory, lambda e: (e.name,) if _relevant(e.name) else ())

    def scan(self) -> list[InboxResult]:
        """Take in every new or changed file of the inbox; never raises for what a file holds."""
        results: list[InboxResult] = []
        listing = self.signature()
        names = {name for name, _, _, _ in listing}
        for name, _, size, mtime in listing:
            if self._seen.get(name) == (size, mtime):
                continue
            self._seen[name] = (size, mtime)
            path = self._directory / name
            kind = not_regular(path)  # a FIFO would block the read of a bundle, a device never end it
            if kind is not None:
                result = InboxResult(path, "refused", f"not a regular file but a {kind}")
            elif name == REVOCATIONS_FILE:
                result = self._revocations(path)
            else:
                result = self._bundle(path)
            level = log.info if result.outcome == "installed" else log.warning
            level("model_inbox", path=str(path), outcome=result.outcome, detail=result.detail)
            results.append(result)
        self._seen = {k: v for k, v in self._seen.items() if k in names}
        return results

    def _bundle(self, path: Path) -> InboxResult:
        try:
            target, manifest = self._installer.install(path)
        except FetchRefusedError as exc:
            return InboxResult(path, "refused", str(exc))
        except (ModelError, OSError) as exc:
            return InboxResult(path, "failed", str(exc))
        return InboxResult(path, "installed", f"{manifest.label} as {target.name}")

    def _revocations(self, path: Path) -> InboxResult:
        keys = self._verifier.keys
        if keys is None:
            return InboxResult(path, "refused", "no trusted_keys: revocations mean nothing here")
        try:
            data = read_own(path, MAX_SIGNED_DOCUMENT_BYTES + 1)
            taken = keys.accept_revocations(data, source=str(path))
        except (ModelError, OSError) as exc:
            return InboxResult(path, "refused", str(exc))
        return InboxResult(path, "installed" if taken else "refused", "taken" if taken else "not newer")


def _relevant(name: str) -> bool:
    return not name.startswith(".") and (name.endswith(BUNDLE_SUFFIX) or name == REVOCATIONS_FILE)
