"""Keep the memory a training step frees, so the next step does not fault it back in.

A step allocates and frees the same large activation and gradient buffers every time (a 2x640
LSTM at batch 32 x 64: about 80 MB). glibc's malloc hands buffers above its mmap threshold (128 KiB,
rising to at most 32 MiB as buffers are freed) back to the kernel on free, and trims the top of
its heap past 128 KiB free; the next step then takes a page fault for every 4 KiB it touches, and
the kernel zeroes each page. On the development CPU (BENCHMARKS.md, "Page faults") that was
20,000 faults a step at 2x640 and 33,000 at 2x256 with batch 64 x 128: steps ran 1.09-1.16x
faster without them, every shape, both precisions.

`keep_freed_memory` raises both thresholds, once per process: buffers under 128 MiB come from
the heap, and the heap keeps what is freed for the next step: 0 faults a step from 2x256 to
2x1024, fp32 and bf16, at batch 16-32 x 64 (at 64 MiB a 2x640 fp32 step still faulted 25,000
pages). Larger buffers (2x512 at batch 64 x 128: oneDNN's workspace of the whole window) still
go back to the kernel: with a 1 GiB threshold such a run went 1.25x faster again, but while
`auto` timed fp32 against bf16 the process held both precisions' buffers, 1.27 GB at its peak
against 0.84 GB before (0.85 GB with 128 MiB). The cost here: the process keeps its peak heap
until it exits, as jemalloc and tcmalloc also do by default.
Where the allocator is not glibc's (macOS, Windows, musl, an LD_PRELOADed jemalloc/tcmalloc), or
the user tuned glibc's malloc in the environment, nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# bytes: a buffer this large or larger is still mapped on its own (glibc before 2.26 refuses more
# than 32 MiB, which still keeps the buffers of most steps)
MMAP_THRESHOLDS = (128 << 20, 32 << 20)
TRIM_THRESHOLD = (1 << 31) - 1  # bytes of free heap top before any goes back (mallopt: an int)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

KEPT = "kept (glibc)"
_state: str | None = None  # what the first call found: this process's answer


def keep_freed_memory() -> str:
    """Raise glibc's mmap and trim thresholds (once; later calls only report) -> the allocator
    state to record: 'kept (glibc)', or why nothing was changed."""
    global _state
    if _state is None:
        _state = _apply()
    return _state


def state() -> str:
    """What this process's allocator does with freed memory, for machine.json and cache keys."""
    return _state or "default"


def _apply() -> str:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "default (not glibc)"
    if any(os.environ.get(name) for name in USER_SETTINGS) or "malloc" in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return "default (set in the environment)"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in OTHER_ALLOCATORS):
        return "default (another allocator preloaded)"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "default (no mallopt)"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not any(mallopt(M_MMAP_THRESHOLD, size) for size in MMAP_THRESHOLDS):
        return "default (mallopt refused)"
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return KEPT


def release() -> None:
    """Give the free memory back to the kernel now (glibc's malloc_trim), where memory is kept:
    after timing candidates of different shapes, whose freed buffers the run will not reuse."""
    if state() == KEPT:
        ctypes.CDLL(None).malloc_trim(0)
