"""RETR_MALLOC=keep (retriever/allocator.py): a block freed and allocated again is reused, not faulted in afresh
page by page; without it, and from the Python API, glibc's defaults stay. Each case runs in a process of its own
(the settings are process-wide)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from conftest import one_line_error

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc malloc only")

# malloc, touch and free a 64 MB block (above glibc's largest mmap threshold, 32 MB) five times; print the minor
# page faults of the last four rounds (a 4 KB page each: 16,384 per round when the block is unmapped on free)
PROBE = """
import ctypes, resource, sys
{setup}
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(5):
    if i == 1:
        start = faults()
    block = libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
print(faults() - start)
"""

CLI_FIRST = """
from retr.cli.main import main
sys.argv = ["retr", "--help"]
try:
    main()
except SystemExit:
    pass
"""


def _faults(setup: str, **env: str) -> int:
    environ = {k: v for k, v in os.environ.items() if k != "RETR_MALLOC"}
    proc = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True,
                          env={**environ, **env}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().splitlines()[-1])


def test_retr_malloc_keep_reuses_freed_memory_in_the_cli():
    assert _faults(CLI_FIRST, RETR_MALLOC="keep") < 1_000  # four rounds of 64 MB from the heap's own pages


def test_glibc_defaults_stay_without_it_and_from_the_python_api():
    assert _faults(CLI_FIRST) > 4 * 16_000  # the block is unmapped on free and faulted in again
    assert _faults(CLI_FIRST, RETR_MALLOC="default") > 4 * 16_000
    assert _faults("import retr.retriever, retr.retriever.allocator", RETR_MALLOC="keep") > 4 * 16_000


def test_a_bad_retr_malloc_is_one_line():
    env = {**os.environ, "RETR_MALLOC": "jemalloc"}
    proc = subprocess.run([sys.executable, "-c", "from retr.cli.main import main; main()", "--help"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "RETR_MALLOC must be keep or default" in one_line_error(proc.stderr)
