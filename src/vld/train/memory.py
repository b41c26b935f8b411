"""How a CPU training process keeps its freed memory.

glibc hands large freed blocks back to the kernel (munmap, or trimming the top of the heap),
so the next step's tensors of the same sizes are mapped afresh: the kernel zero-fills each new
page on its first write, thousands of minor page faults per step, paid inside whichever kernel
writes first (docs/model.md, "Where a training step's time goes"). Raising glibc's mmap and trim
thresholds keeps those pages for reuse: the process stays at its step's peak memory between
steps instead of dropping below it. Where a tensor lands never changes arithmetic: torch aligns
every CPU allocation to 64 bytes itself, so the same kernels run on the same data.
"""

from __future__ import annotations

import ctypes
import functools
import platform

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 2**31 - 1  # the largest mallopt takes: never trim the heap's top during a run
# Blocks at least this large still come from mmap; glibc refuses values above its limit (32 MiB
# on some versions), so the largest it accepts is used.
MMAP_THRESHOLDS = (1 << 30, 32 << 20)


@functools.cache  # platform.libc_ver reads the interpreter's binary; the answer cannot change
def on_glibc() -> bool:
    """Whether this process runs on Linux's glibc, the allocator these settings are for."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory for reuse, from now on, process-wide. Returns whether it
    took effect (False on other C libraries, which are left as they are). Calling it again
    (every fit does) sets the same thresholds again."""
    if not on_glibc():
        return False
    libc = ctypes.CDLL("libc.so.6")
    if not libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD):
        return False
    return any(libc.mallopt(M_MMAP_THRESHOLD, threshold) for threshold in MMAP_THRESHOLDS)
