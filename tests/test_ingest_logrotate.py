"""The follower against the real logrotate(8): create and copytruncate, with compression of old segments."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.strategies import Harness, LogDir, ingest_config, stream_config

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"


def logrotate(config: Path, state: Path) -> None:
    subprocess.run([LOGROTATE, "-f", "-s", str(state), str(config)], check=True, capture_output=True)


@pytest.mark.parametrize("mode", ["inotify", "poll"])
@pytest.mark.parametrize("method", ["create", "copytruncate"])
def test_real_logrotate_with_compression_loses_and_repeats_nothing(
    tmp_path: Path, mode: str, method: str
) -> None:
    """Ten forced rotations by logrotate (rotate 3, compress, delaycompress) between appends: exact lines."""
    logs = LogDir(tmp_path / "logs")
    logs.create()
    config = tmp_path / "logrotate.conf"
    config.write_text(
        f"{logs.current} {{\n  rotate 3\n  {method}\n  compress\n  delaycompress\n  missingok\n}}\n"
    )
    h = Harness(stream_config(logs.dir), ingest_config(mode), watch=True)
    try:
        expected: list[bytes] = []
        for round_ in range(10):
            expected += logs.append(40)
            if round_ % 2:
                h.wait_for(len(expected))  # sometimes read up to date before the rotation
            logrotate(config, tmp_path / "logrotate.state")
            if method == "create" and logs.current.stat().st_size == 0:
                logs.append_raw(b"timestamp,a\n")  # logrotate made an empty file; the logger starts it
        expected += logs.append(10)
        h.wait_for(len(expected))
        h.settle(0.3)
        assert h.lines == expected
        assert any(p.name.endswith(".gz") for p in logs.dir.iterdir())
    finally:
        h.close()
