"""agent.memory: freed heap memory goes back to the system."""

from __future__ import annotations

from agent import memory


def rss_anon_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_trim_returns_freed_heap_blocks_that_malloc_would_keep_resident() -> None:
    blocks = [bytes(4000) + bytes([i % 256]) for i in range(6000)]  # malloc'd, not pymalloc (> 512 B)
    kept = blocks[::10]  # every tenth stays, so the freed ones are holes malloc keeps, not a top it trims
    del blocks
    before = rss_anon_kib()
    assert memory.trim()
    assert before - rss_anon_kib() > 8 * 1024, "malloc_trim released less than 8 MiB of ~21 MiB freed"
    assert len(kept) == 600
