"""Peak resident memory of this process, resettable (Linux), with no dependencies.

``ru_maxrss`` is a high-water mark over the whole process, compilation included. To measure what a
training step needs, reset the mark after compiling and read it after the timed steps: Linux resets
``VmHWM`` to the current resident size when ``5`` is written to ``/proc/self/clear_refs``, after
the heap that the compiler freed is handed back to the OS. Used by
``smallsample bench`` and by the PyTorch peer in ``benchmarks/`` (which loads this file by path, so
it imports nothing from smallsample), so that both sides are measured the same way.
"""

from __future__ import annotations

import ctypes
import resource
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
