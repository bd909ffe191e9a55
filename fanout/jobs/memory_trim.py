"""Give the C allocator's free memory back to the system after a big sweep (glibc)."""

from __future__ import annotations

import ctypes
import logging

logger = logging.getLogger(__name__)


def trim_free_memory() -> bool:
    """Ask glibc's malloc to return its free pages to the system; False where it cannot.

    Freed job results leave the process's heap full of holes between the
    objects still alive; glibc keeps those pages (resident) for reuse, so the
    process never shrinks back after a burst of jobs expires. ``malloc_trim``
    releases every whole free page, wherever it lies in the heap.
    """
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:  # not glibc (musl, macOS): nothing to ask
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
