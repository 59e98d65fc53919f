"""The public data sets that travel with the repository: where they are, reading them, their version.

Each set lives in ``data/<set>/`` (plain or xz-compressed, with its README: source and licence).
Shared by every benchmark runner (`trainer.datasets`, `trainer.robot_failures`).
"""

from __future__ import annotations

import hashlib
import lzma
from pathlib import Path

from trainer.errors import DataError, SourceError

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data"
"""The public data sets that travel with the repository (``data/<set>/``)."""


def read_data_file(path: Path) -> bytes:
    """The bytes of a data file: `path` itself, or ``<path>.xz`` decompressed when only that exists."""
    packed = path.with_name(path.name + ".xz")
    try:
        if path.is_file():
            return path.read_bytes()
        if packed.is_file():
            return lzma.decompress(packed.read_bytes())
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror}") from exc
    except lzma.LZMAError as exc:
        raise DataError(f"{packed}: not a valid xz file ({exc})") from exc
    raise SourceError(f"{path}: no such file (nor {packed.name})")


def read_data_text(path: Path) -> str:
    """A data file as text (UTF-8), plain or xz-compressed; see `read_data_file`."""
    try:
        return read_data_file(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None


def data_files_hash(*paths: Path) -> str:
    """sha256 over the names and decompressed bytes of data files (the data version)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(read_data_file(path))
    return digest.hexdigest()
