"""How the process's C allocator hands memory back to the system, for CPU training and
inference.

A model frees and allocates the same large buffers on every call or training
iteration (an encoder activation at 800x1333 is tens of MB). glibc's malloc serves a
block of more than a few MB with a fresh mmap and unmaps it when it is freed, so each
call page-faults its buffers in again, a large share of a model's time on a CPU
(docs/benchmarks.md). ``reuse_freed_memory`` makes malloc keep freed memory for the
next call instead: no mmap for large blocks, no trimming of the heap's top. The price
is that the process keeps its peak memory, as a server that runs one model, or a
training, does anyway.

It is process-wide. tools/lazyconfig_train_net.py calls it when train.device is "cpu"
(train.reuse_freed_memory=False not to), demo/demo.py on a CPU
(--no-reuse-freed-memory not to); tools/benchmark_model.py --reuse-freed-memory calls
it for every model it times.
"""

import ctypes
import ctypes.util
import logging
import platform

__all__ = ["reuse_freed_memory"]

logger = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# mallopt takes an int; the largest trim threshold it accepts
_NEVER_TRIM = 2**31 - 1


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def reuse_freed_memory() -> bool:
    """Makes this process's malloc (glibc) keep the memory it frees for reuse: large
    blocks come from the heap instead of their own mmap, and the heap is not trimmed.
    Returns whether it could (False, with a log line, where the C library is not
    glibc: macOS, Windows, musl)."""
    libc = _glibc()
    if libc is None:
        logger.info(
            "reuse_freed_memory: the C library is not glibc (%s %s); the allocator is left "
            "as it is",
            platform.system(),
            platform.libc_ver()[0] or "unknown",
        )
        return False
    # mallopt returns 1 on success
    done = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
    if done:
        logger.info("malloc keeps the memory it frees for reuse (no mmap, no heap trimming)")
    else:
        logger.warning("reuse_freed_memory: glibc's mallopt refused the settings")
    return done
