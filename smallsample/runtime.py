"""Process-level settings of the ``smallsample`` command and of ``python -m smallsample.bench``.

These are a program's choices about its own process, so the library never makes them: importing
``smallsample`` changes nothing. The command line calls :func:`configure` once, before JAX starts,
and prints one line to standard error saying what it set. Each setting has an off switch:

=================  ===========================================  ==================================
setting            what it does                                 off switch
=================  ===========================================  ==================================
CPU devices        one JAX CPU device per core, so training     ``SMALLSAMPLE_CPU_DEVICES=off``
                   can split small meta-batches over them       (a ``JAX_NUM_CPU_DEVICES`` or
                   (:func:`smallsample.parallel.auto_devices`)  XLA flag you set is kept)
compile cache      JAX's persistent compilation cache in        ``SMALLSAMPLE_COMPILE_CACHE=off``
                   ``~/.cache/smallsample/jax``, so a second    (``=DIR`` moves it; a
                   run of a job loads its programs              ``JAX_COMPILATION_CACHE_DIR`` you
                                                                set is kept)
huge-page heap     glibc's heap on transparent huge pages:      ``SMALLSAMPLE_HEAP=default``
                   where the kernel gives them on request
                   only, the process starts itself again once
                   with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
=================  ===========================================  ==================================

``SMALLSAMPLE_RUNTIME=off`` turns all three off. Each is on by default because the benchmarks
show it pays (``docs/performance.md``, sections "one cpu device per core", "compilation cache"
and "huge pages"). A script of your own can call :func:`configure` too, first thing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from smallsample.paths import user_dir

HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
_OFF = ("off", "0", "no", "false", "none", "default")
_RESTARTED = "_SMALLSAMPLE_HEAP_RESTARTED"  # set in the environment of the restarted process


def _off(name: str, environ: Mapping[str, str]) -> bool:
    return (environ.get("SMALLSAMPLE_RUNTIME", "").strip().lower() in _OFF
            or environ.get(name, "").strip().lower() in _OFF)


# ------------------------------------------------------------------------- huge-page heap
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


def hugepage_heap(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``GLIBC_TUNABLES`` asks glibc's ``malloc`` for transparent huge pages
    (:data:`HUGEPAGE_TUNABLE`; glibc 2.35+ reads it at start-up only)."""
    environ = os.environ if environ is None else environ
    tunables = environ.get("GLIBC_TUNABLES", "").split(":")
    return any(t.startswith("glibc.malloc.hugetlb=") and t != "glibc.malloc.hugetlb=0"
               for t in tunables)


def hugepage_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with :data:`HUGEPAGE_TUNABLE` in ``GLIBC_TUNABLES`` (other tunables kept).

    XLA's CPU runtime takes each step's temporaries from ``malloc`` and frees them when the step
    ends; a large block is then a fresh mapping every step, faulted in one 4 KiB page at a time.
    With this tunable glibc asks for huge pages (docs/performance.md, "huge pages")."""
    env = dict(env)
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":")
                if t and not t.startswith("glibc.malloc.hugetlb=")]
    env["GLIBC_TUNABLES"] = ":".join([*tunables, HUGEPAGE_TUNABLE])
    return env


def restart_with_hugepage_heap(argv: Sequence[str], environ: Mapping[str, str] | None = None
                               ) -> None:
    """Replaces this process with ``python -m smallsample ARGV`` on a huge-page heap, unless it
    already has one, ``SMALLSAMPLE_HEAP=default`` (or ``SMALLSAMPLE_RUNTIME=off``), the C library
    is not glibc, or the kernel's mode makes it moot (``always``, ``never``). Returns only when it
    does not restart."""
    environ = os.environ if environ is None else environ
    if (_off("SMALLSAMPLE_HEAP", environ) or hugepage_heap(environ) or not glibc()
            or transparent_hugepages() != "madvise"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    env = dict(hugepage_env(environ), **{_RESTARTED: "1"})
    try:
        os.execve(sys.executable, [sys.executable, "-m", "smallsample", *argv], env)
    except OSError:  # run as started
        return


# ------------------------------------------------------------------------- compile cache
def compile_cache_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The command line's folder for JAX's persistent compilation cache:
    ``$SMALLSAMPLE_COMPILE_CACHE`` (``off`` disables it), else ``~/.cache/smallsample/jax``."""
    environ = os.environ if environ is None else environ
    if _off("SMALLSAMPLE_COMPILE_CACHE", environ):
        return None
    return user_dir("SMALLSAMPLE_COMPILE_CACHE", "jax")


def use_compile_cache(path: str | os.PathLike | None) -> None:
    """Keeps compiled programs in JAX's persistent compilation cache at ``path`` (None: off)."""
    if path is not None:
        import jax  # noqa: PLC0415

        jax.config.update("jax_compilation_cache_dir", str(path))


# ------------------------------------------------------------------------- CPU devices
def cpu_devices_per_core(environ: Mapping[str, str] | None = None) -> int | None:
    """Sets ``jax_num_cpu_devices`` to the cores this process may run on, before JAX starts its
    backends. A computation that is not split runs on the first device with every core.

    Left alone (returns None) where the user chose a count (``JAX_NUM_CPU_DEVICES``, or
    ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``), said
    ``SMALLSAMPLE_CPU_DEVICES=off``, or JAX has already started. Returns the count set."""
    environ = os.environ if environ is None else environ
    if (_off("SMALLSAMPLE_CPU_DEVICES", environ) or "JAX_NUM_CPU_DEVICES" in environ
            or "xla_force_host_platform_device_count" in environ.get("XLA_FLAGS", "")):
        return None
    import jax  # noqa: PLC0415

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = max(1, cores or 1)
    try:
        jax.config.update("jax_num_cpu_devices", cores)
    except RuntimeError:  # the backends have started: too late, leave them as they are
        return None
    return cores


# ------------------------------------------------------------------------- all of them
def configure(argv: Sequence[str] | None = None, *, compile_cache: bool = True,
              restart: bool = True, announce: Callable[[str], None] | None = None) -> list[str]:
    """Makes the three settings (see the module docstring) and announces them in one line.

    ``argv``: the command's arguments, for the one restart onto a huge-page heap (``restart``).
    ``compile_cache``: whether to turn on the persistent compilation cache (the benchmark suite
    measures cold compilation, so it passes False). ``announce``: where the line goes (default:
    standard error). Returns the descriptions of what was set."""
    environ = os.environ
    if restart and argv is not None:
        restart_with_hugepage_heap(argv, environ)
    said = []
    n = cpu_devices_per_core(environ)
    if n is not None:
        said.append(f"{n} CPU device{'s' if n > 1 else ''}, one per core "
                    f"[SMALLSAMPLE_CPU_DEVICES=off]")
    if compile_cache and not environ.get("JAX_COMPILATION_CACHE_DIR"):
        path = compile_cache_dir(environ)
        if path is not None:
            use_compile_cache(path)
            said.append(f"compile cache {path} [SMALLSAMPLE_COMPILE_CACHE=off]")
    if os.environ.pop(_RESTARTED, None):
        said.append("glibc heap on huge pages [SMALLSAMPLE_HEAP=default]")
    if said:
        (announce or _stderr)("smallsample: " + "; ".join(said))
    return said


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
