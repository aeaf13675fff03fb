"""Peak resident memory of this process, resettable (Linux), with no dependencies; and the heap
setting the command line runs with (:func:`hugepage_env`).

``ru_maxrss`` is a high-water mark over the whole process, compilation included. To measure what a
training step needs, reset the mark after compiling and read it after the timed steps: Linux resets
``VmHWM`` to the current resident size when ``5`` is written to ``/proc/self/clear_refs``, after
the heap that the compiler freed is handed back to the OS. Used by
``smallsample bench`` and by the PyTorch peer in ``benchmarks/`` (which loads this file by path), so
that both sides are measured the same way.
"""

from __future__ import annotations

import ctypes
import os
import resource
from collections.abc import Mapping
from pathlib import Path


def release_free_heap() -> bool:
    """Returns memory that ``malloc`` holds but nobody uses to the OS (glibc ``malloc_trim``).

    A compiler frees its working memory when done, but glibc keeps the pages, so the RSS after
    compiling stays near the compiler's peak; trimming makes the RSS the memory actually in use.
    ``False`` where there is no glibc.
    """
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"


def transparent_hugepages() -> str | None:
    """The kernel's transparent huge page mode (``'always'``, ``'madvise'`` or ``'never'``), or
    ``None`` where it cannot be read."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return next((w[1:-1] for w in text.split() if w.startswith("[")), None)


def glibc() -> bool:
    """Whether this process's C library is glibc."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False


def hugepage_heap() -> bool:
    """Whether this process's glibc ``malloc`` asks for transparent huge pages
    (``GLIBC_TUNABLES`` holds :data:`HUGEPAGE_TUNABLE`, read by glibc 2.35+ at start-up)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
    return any(t.startswith("glibc.malloc.hugetlb=") and t != "glibc.malloc.hugetlb=0"
               for t in tunables)


def hugepage_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with :data:`HUGEPAGE_TUNABLE` added to ``GLIBC_TUNABLES``: a process started
    with it has glibc ``madvise`` its heaps and large blocks for transparent huge pages.

    XLA's CPU runtime allocates each execution's temporary buffer with ``posix_memalign`` and
    frees it when the step ends. A block over 64 MiB asked for by one of its worker threads
    cannot come from that thread's arena, so glibc maps fresh pages at every step and the step
    faults them in one 4 KiB page at a time: the prototypical-network step at one episode (a
    73 MB buffer) took 18,600 page faults and 60 ms of system time a step. With huge pages the
    same step took about 250 faults and ran 1.24x faster (``benchmarks/README.md``). Where the
    kernel's mode is ``madvise`` (the usual default) this is what turns them on for the
    process; glibc reads it only at start-up, so the ``smallsample`` command starts itself again
    with it (:func:`smallsample.cli.entry`).
    """
    env = dict(env)
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":")
                if t and not t.startswith("glibc.malloc.hugetlb=")]
    env["GLIBC_TUNABLES"] = ":".join([*tunables, HUGEPAGE_TUNABLE])
    return env


def minor_faults() -> int:
    """Minor page faults of this process so far (pages the kernel mapped in on first touch)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def reset_peak_rss() -> bool:
    """Releases the free heap (:func:`release_free_heap`), then resets the peak-RSS mark to the
    current RSS; ``False`` where the OS does not allow the reset."""
    release_free_heap()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """The peak RSS in MiB since the last :func:`reset_peak_rss` (else since start)."""
    mb = _status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if mb is None else mb


def current_rss_mb() -> float:
    """The RSS in MiB now (e.g. after the imports: the framework's own floor)."""
    mb = _status_mb("VmRSS")
    return peak_rss_mb() if mb is None else mb
