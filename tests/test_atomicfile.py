"""agent.atomicfile: a file is replaced whole, with the asked mode, and a failed write leaves nothing."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.atomicfile import write_atomically


def test_a_file_is_replaced_whole_with_the_asked_mode_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    target.write_bytes(b"old content that is longer than the new")
    previous = os.umask(0o077)
    try:
        assert write_atomically(target, b"new", 0o644) == target
    finally:
        os.umask(previous)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_a_failed_rename_keeps_what_was_there_and_leaves_no_hidden_file(tmp_path: Path) -> None:
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "kept").write_bytes(b"x")
    with pytest.raises(IsADirectoryError):
        write_atomically(target, b"new", 0o600, sync_directory=False)
    assert (target / "kept").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]


def test_writers_of_one_path_at_once_each_replace_it_whole(tmp_path: Path) -> None:
    """Threads writing one file at once never share a temporary: each write succeeds, the file is whole."""
    target = tmp_path / "floor.json"
    payloads = [bytes([i]) * (256 * 1024) for i in range(4)]

    def write_often(data: bytes) -> None:
        for _ in range(10):
            write_atomically(target, data, 0o644, sync_directory=False)

    with ThreadPoolExecutor(len(payloads)) as pool:
        list(pool.map(write_often, payloads))
    assert target.read_bytes() in payloads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["floor.json"]
