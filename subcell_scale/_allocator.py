"""The C allocator, kept from holding on to memory while a cells store is written from many shards.

Writing a store copies shards chunk by chunk; glibc keeps freed pages and raises its mmap threshold
after each large block it frees, so a long copy would leave the client holding memory it no longer
uses. :func:`large_blocks_returned` fixes the threshold inside a writer only, and :func:`trim_heap`
gives free pages back after each chunk. Other C libraries (macOS, musl): nothing to do.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["large_blocks_returned", "trim_heap"]

_M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number of the mmap threshold."""
_GLIBC_MMAP_THRESHOLD = 128 << 10
"""glibc's initial mmap threshold (``DEFAULT_MMAP_THRESHOLD_MIN``)."""
_WRITER_MMAP_THRESHOLD = 1 << 20
"""The mmap threshold while a cells store is written: blocks of 1 MiB and more go back when freed."""
_tuning = {"writers": 0}
_tuning_lock = threading.Lock()


@contextmanager
def large_blocks_returned() -> Iterator[None]:
    """Inside the block, glibc hands blocks of 1 MiB and more back to the system when they are freed.

    By default glibc raises its mmap threshold after each large block it frees, up to 32 MiB, so the
    shards and chunks of a copy end up in the heap and stay in the process's memory after the copy
    (``benchmarks/bench_cells_store.py``: ~1.8 KB more peak memory per cell of a run, ~1.7 KB held
    after it, against ~0.5 and ~0.3 with the fixed threshold). The threshold is fixed at 1 MiB while a
    writer copies and set back when the last writer of the process ends.

    glibc has no getter for the threshold and no way back to its adaptive threshold once one is set:
    "back" is glibc's initial threshold (128 KiB, fixed from then on). Nothing is changed when
    :attr:`subcell_scale.settings.tune_allocator` is False, when the threshold was chosen for the
    process (``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...``), or when
    the C library is not glibc.
    """
    from ._settings import settings

    libc = _glibc()
    if libc is None or not settings.tune_allocator or _threshold_chosen():
        yield
        return
    with _tuning_lock:
        _tuning["writers"] += 1
        if _tuning["writers"] == 1:
            libc.mallopt(_M_MMAP_THRESHOLD, _WRITER_MMAP_THRESHOLD)
    try:
        yield
    finally:
        with _tuning_lock:
            _tuning["writers"] -= 1
            if _tuning["writers"] == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD)


def _threshold_chosen() -> bool:
    """Whether the process was started with an mmap threshold of its own (glibc's environment variables)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return bool(os.environ.get("MALLOC_MMAP_THRESHOLD_", "").strip()) or "glibc.malloc.mmap_threshold=" in tunables


def trim_heap() -> None:
    """Give the heap's free pages back to the system (after each chunk a writer copies)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc() -> Any:
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None; looked up
    once (``find_library`` asks ``ldconfig``)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and libc.mallopt and libc.malloc_trim else None
    except (OSError, AttributeError):
        return None
