"""Freed memory handed back to the system between the ETL driver's large steps.

Arrow's allocator and glibc's heap keep pages that a conversion freed, so the
driver's resident memory would grow with every step (after the first pass at
100,000 smears: Arrow's pool 15 MB, glibc 47 MB) although it holds little more.
"""

from __future__ import annotations

import contextlib
import ctypes

import pyarrow as pa


def return_freed_arrow_memory() -> None:
    """The pages Arrow's default pool keeps after freeing."""
    pa.default_memory_pool().release_unused()


def return_freed_memory() -> None:
    """Arrow's kept pages and glibc's free heap pages (``malloc_trim``; nothing more where the C library is not glibc)."""
    return_freed_arrow_memory()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
