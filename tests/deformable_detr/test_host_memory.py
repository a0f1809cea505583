"""reuse_freed_memory: a freed large block stays with the process for reuse (glibc),
in a fresh process since the setting is process-wide; elsewhere it says it did
nothing."""

import logging
import platform
import sys

import pytest

from deformable_detr.engine import host_memory

from ..scripts import run_command

# How many MB of a freed 64 MB buffer (above glibc's largest mmap threshold, 32 MB)
# stay resident in the process, after it was allocated, written and freed.
KEPT_AFTER_FREE = """
import os, sys
import torch
from deformable_detr.engine.host_memory import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = resident_mb()
torch.ones(16 * 2**20)  # 64 MB of float32, freed at once
print(resident_mb() - before)
"""

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the allocator setting is glibc's",
)


@glibc_only
def test_freed_memory_stays_with_the_process():
    def kept_mb(mode):
        return float(run_command([sys.executable, "-c", KEPT_AFTER_FREE, mode]))

    assert kept_mb("as-it-is") < 8  # unmapped: the next call faults every page in again
    assert kept_mb("reuse") > 56  # kept for the next allocation


def test_without_glibc_it_changes_nothing(monkeypatch, caplog):
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))
    with caplog.at_level(logging.INFO, logger=host_memory.__name__):
        assert host_memory.reuse_freed_memory() is False
    assert "not glibc" in caplog.text
