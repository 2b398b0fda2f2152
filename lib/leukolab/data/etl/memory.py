"""Freed memory handed back to the system while the ETL driver works.

Arrow's allocator and glibc's heap keep pages that a conversion freed, so the
driver's resident memory would grow with every step (after the first pass at
100,000 smears: Arrow's pool 15 MB, glibc 47 MB) although it holds little more.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Collection, Iterator

import pandas as pd
import pyarrow as pa

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_MAPPED_FROM = 128 * 1024  # glibc's starting mmap threshold: arrays of 16,000 float64s and more
_GROWN_MMAP, _GROWN_TRIM = 32 * 1024 * 1024, 64 * 1024 * 1024  # where glibc's own thresholds end up after large frees


def _glibc():
    """glibc, or None where the C library is another (musl, macOS)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    return None


def return_freed_arrow_memory() -> None:
    """The pages Arrow's default pool keeps after freeing."""
    pa.default_memory_pool().release_unused()


def return_freed_memory() -> None:
    """Arrow's kept pages and glibc's free heap pages (``malloc_trim``; nothing more where the C library is not glibc)."""
    return_freed_arrow_memory()
    if libc := _glibc():
        libc.malloc_trim(0)


@contextlib.contextmanager
def large_allocations_returned() -> Iterator[None]:
    """Within the block, glibc maps every allocation of 128 kB or more on its own and unmaps it when freed.

    By default glibc raises that threshold after the first large free, so the
    pandas columns a step copies and drops stay in the heap as free pages: the
    curation's peak at 100,000 smears was 68 MB over its input, 61 MB with this.
    Afterwards the thresholds are set where glibc's own grow to at most.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _MAPPED_FROM)
        libc.mallopt(_M_TRIM_THRESHOLD, _MAPPED_FROM)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, _GROWN_MMAP)
            libc.mallopt(_M_TRIM_THRESHOLD, _GROWN_TRIM)
            return_freed_memory()


def arrow_to_pandas(table: pa.Table, distinct: Collection[str] = ()) -> pd.DataFrame:
    """``table`` as a pandas frame, one column at a time: each column's buffers are freed and handed back to the
    system as soon as it is converted, so the peak is the frame plus one column's conversion, not frame and table.

    ``distinct`` names columns whose values differ from row to row (paths, hashes): they are converted last, once
    the other columns' buffers are gone, and without deduplicating equal strings, whose hash table would cost more
    than it saves. The first pass's metadata at 100,000 smears peaked 55 MB over its Arrow table through
    ``Table.to_pandas(self_destruct=True)``, 18 MB this way. Needs a table whose every column has buffers of its
    own (Spark's ``selfDestruct``); the caller must hold no other reference to it.
    """
    names = table.column_names
    columns = {}
    for name in sorted(names, key=lambda name: name in distinct):  # stable: the table's order otherwise
        columns[name] = table.column(name).to_pandas(deduplicate_objects=name not in distinct)
        table = table.drop_columns([name])
        return_freed_memory()  # the buffers are small (a Spark batch's share of one column): heap pages until trimmed
    return pd.DataFrame({name: columns.pop(name) for name in names}, copy=False)


@contextlib.contextmanager
def arrow_through_malloc() -> Iterator[None]:
    """Within the block, Arrow allocates through malloc instead of its default pool (mimalloc).

    Inside :func:`large_allocations_returned`, a large buffer freed is then
    unmapped at once, where mimalloc keeps freed pages a while: around
    :func:`arrow_to_pandas` of the first pass's metadata at 100,000 smears, the
    conversion peaked 18 MB over the table with this, 43 MB without.
    """
    pool = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(pool)
