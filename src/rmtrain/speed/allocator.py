"""Keep memory freed during a training step in the process (CPU, glibc).

Every step allocates its activations and gradients afresh and frees them at its end. By default
glibc gives the free top of its heap back to the kernel once it exceeds a threshold (twice the
mmap threshold, which it raises up to 32 MB), so the next step faults the same pages in again,
each one zero-filled by the kernel. Here the trim threshold is lifted, so those pages stay
mapped and are reused. The mmap threshold is fixed at glibc's own ceiling (32 MB; lifting the
trim threshold alone would freeze it at 128 KB): larger blocks are still mapped and unmapped one
by one. A heap serving them too grows step after step (fragmentation), so they stay out of it.
Peak resident memory stays where the step puts it; only what a finished step frees is no longer
given back. (`MALLOC_TRIM_THRESHOLD_` / `MALLOC_MMAP_THRESHOLD_` set the same from the
environment, for any program.)
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_CEILING = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems
NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int)
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def retain_freed_memory(
    mmap_threshold: int = MMAP_CEILING, trim_threshold: int = NEVER_TRIM
) -> bool:
    """Serve blocks below `mmap_threshold` bytes from the heap and give its free top back only
    past `trim_threshold` bytes. Returns whether it was applied: only on Linux with glibc, and
    not where the environment already sets glibc's allocator (the user's choice stands)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    libc = ctypes.CDLL(None)
    mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    return bool(mmap_ok and libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1)
