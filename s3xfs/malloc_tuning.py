"""Make glibc keep and reuse the daemon's large read buffers instead of returning them to the kernel.

Every ranged GET lands in a fresh buffer of up to ``--part-size`` bytes, and the default glibc
policy serves such sizes with ``mmap`` and gives them back with ``munmap``: the next buffer then
page-faults in (and the kernel zeroes) every 4 KiB page again. On this project's benchmark machine
a third of the pages of a 1 GiB cold read were such faults. With a higher mmap threshold, a high
trim threshold and one arena (so a buffer received in a worker thread and freed by the trio thread
goes back to where the next worker allocates), the same memory is reused. Peak memory does not
grow: the prefetcher's budget still bounds how many buffers exist at once; only the freed ones are
kept for the next GET rather than handed back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit (HEAP_MAX_SIZE / 2): covers the default 8 MiB parts
TRIM_THRESHOLD = 256 * 1024 * 1024  # about the default memory budget: keep what the read path may reuse
ARENA_MAX = 1  # the trio thread frees what worker threads allocate; one arena lets them reuse it


def keep_freed_buffers() -> bool:
    """Apply the settings; True when glibc accepted all of them. Call before any thread starts.

    Anything but glibc (musl, a sanitizer's allocator) is left alone: this is a speed-up, never a
    requirement.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.debug("mallopt is not available; leaving the allocator as it is")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    accepted = all(mallopt(param, value) == 1 for param, value in (
        (_M_ARENA_MAX, ARENA_MAX), (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    if not accepted:
        log.debug("glibc refused a mallopt setting; large buffers may be unmapped after each GET")
    return accepted
