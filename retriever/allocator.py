"""Keep freed memory in the process: the glibc malloc settings that stop every batch re-faulting its activations.

glibc serves a block at or above its mmap threshold (128 KB, rising with use to at most 32 MB) with an mmap of its
own and unmaps it on free. An encoder frees and re-allocates its activations every batch (MiniLM's FFN block at
batch 32 x 256 tokens is 32 x 256 x 1536 fp32 = 50 MB), so the kernel hands out and zero-fills those pages again,
one fault per 4 KB page: for 500 SciFact passages, 2.3 M minor faults and ~4.5 s of system time, a tenth of the
CPU (RESULTS.md section 17). ``mallopt(M_MMAP_MAX, 0)`` serves every block from the heap instead, and a high
``M_TRIM_THRESHOLD`` keeps freed heap memory for the next batch rather than returning it to the kernel.

Opt-in (``RETR_MALLOC=keep`` for the CLI, or ``keep_freed_memory()`` from Python), because of what it costs in
memory: the heap keeps what it held at its peak until the process exits, and with glibc before 2.38 a block
freed by ``posix_memalign`` (torch's CPU allocator) is often too small for the next request of the same size, so
the heap grows past the default allocator's peak before it settles: a loop of 64 MB tensors settled at 700 MB,
a SciFact ``retr eval`` (MiniLM, torch fp32) peaked at 1.58 GB RSS instead of 1.37 GB. Measured gain: that eval
11% faster (246 s vs 276 s; system time 1.5 s vs 58 s), and 6-14% per engine in ``benchmarks/encode.py``
(RESULTS.md section 17).

Why own code: the usual remedies, jemalloc or tcmalloc, must be preloaded (``LD_PRELOAD``) before the interpreter
starts and are not installable from PyPI; glibc's own ``mallopt`` is two calls through ``ctypes``. Elsewhere
(macOS, Windows, musl) this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>
TRIM_THRESHOLD = 1 << 30  # free heap memory above this at the top of the heap goes back to the kernel


def keep_freed_memory() -> bool:
    """Switch glibc malloc to serving every block from the heap and keeping freed memory (module docstring).
    Process-wide, for the allocations made after the call. ``True`` when applied; ``False`` when the C library
    is not glibc or ``mallopt`` refuses."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return False
    log.debug("glibc malloc: blocks from the heap, freed memory kept (%s)", "applied" if done else "refused")
    return done


def malloc_from_env() -> bool:
    """What ``retr`` (the CLI) calls at start: ``keep_freed_memory()`` when ``RETR_MALLOC=keep``, else nothing
    (glibc's defaults). ``ValueError`` for another value."""
    given = os.environ.get("RETR_MALLOC", "default")
    wanted = given.strip().lower()
    if wanted not in ("keep", "default", ""):
        raise ValueError(f"RETR_MALLOC must be keep or default, got {given!r}")
    return wanted == "keep" and keep_freed_memory()
