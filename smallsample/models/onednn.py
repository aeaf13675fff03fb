"""2-D convolutions through oneDNN on CPU, as JAX primitives (``conv_impl='onednn'``): an
optional extra, built explicitly.

XLA's CPU backend has no fast convolution; oneDNN, the library behind PyTorch's CPU
convolutions, convolves NHWC activations directly (docs/performance.md, "convolution lowering").
This module exposes three primitives over a small C++ file (``onednn_conv.cc``) compiled against
oneDNN and XLA's FFI headers:

- ``fwd(x, w) = y``,
- ``bwd_data(g, w) = dx``,
- ``bwd_weights(x, g) = dw``.

Each is bilinear and the transpose of another in each argument, so every order of
differentiation works: reverse over reverse (second-order MAML), forward over reverse (iMAML's
Hessian-vector products) and ``vmap``. Shared weights fold the mapped axis into the batch; per-task
weights run the tasks one after another (``lax.map``). The primitives run on CPU in float32; on
other platforms they lower to XLA's convolution, so a model built with ``'onednn'`` runs anywhere.

Building is a step of its own, never a side effect of tracing::

    pip install 'smallsample[onednn]'     # the onednn-cpu-gomp and onednn-devel-cpu-gomp wheels
    smallsample onednn build              # or: python -m smallsample.models.onednn build

It needs a C++17 compiler (``$CXX``, else ``g++``) and oneDNN's headers and library (the wheels
above, or ``$SMALLSAMPLE_ONEDNN_ROOT`` with ``include/`` and ``lib/``). The library is written to
``$SMALLSAMPLE_BUILD_DIR`` (default ``~/.cache/smallsample/build``) under a name that hashes its
inputs, beside a manifest holding its sha256; both are written atomically. A library is loaded
only when its manifest matches its inputs and its bytes (a file planted at the cached name is
refused). :func:`available` says whether a verified build is there (it never builds);
``conv_impl='auto'`` picks oneDNN on CPU only then, and im2col otherwise.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core
from jax.interpreters import ad, batching, mlir

from smallsample.paths import user_dir

SOURCE = Path(__file__).with_name("onednn_conv.cc")
_TARGETS = {"ss_conv_fwd": "SsConvFwd", "ss_conv_bwd_data": "SsConvBwdData",
            "ss_conv_bwd_weights": "SsConvBwdWeights"}
BUILD_HINT = ("pip install 'smallsample[onednn]' && smallsample onednn build "
              "(or python -m smallsample.models.onednn build)")


class OneDNNUnavailable(RuntimeError):
    """oneDNN's convolution is not built, or could not be built or loaded (the message says
    why)."""


def conv_output_hw(x_shape, kernel_shape, stride: int, padding: int) -> tuple[int, int]:
    """``(Ho, Wo)`` of a convolution of ``x [n, H, W, Cin]`` with ``kernel [kh, kw, ...]``."""
    return tuple((x_shape[1 + i] + 2 * padding - kernel_shape[i]) // stride + 1 for i in (0, 1))


def onednn_root() -> Path:
    """The prefix holding ``include/oneapi/dnnl/dnnl.hpp`` and ``lib/libdnnl.so``."""
    env = os.environ.get("SMALLSAMPLE_ONEDNN_ROOT")
    candidates = [Path(env)] if env else [Path(sys.prefix), Path(sys.base_prefix)]
    for root in candidates:
        if (root / "include/oneapi/dnnl/dnnl.hpp").is_file() and any(
                (root / "lib").glob("libdnnl.so*")):
            return root
    raise OneDNNUnavailable(
        "oneDNN not found: looked for include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so under "
        + ", ".join(str(c) for c in candidates)
        + ". Install the extra (pip install 'smallsample[onednn]'), or set "
          "SMALLSAMPLE_ONEDNN_ROOT.")


def build_dir() -> Path:
    return user_dir("SMALLSAMPLE_BUILD_DIR", "build")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plan() -> tuple[list[str], Path, Path, str]:
    """``(compile command without -o, library path, manifest path, inputs key)`` for this
    environment (raises OneDNNUnavailable without oneDNN or a compiler)."""
    root = onednn_root()
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise OneDNNUnavailable("no C++ compiler: set CXX or install g++")
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}",
           f"-I{root / 'include'}", str(SOURCE), f"-L{root / 'lib'}", "-ldnnl",
           f"-Wl,-rpath,{root / 'lib'}"]
    key = hashlib.sha256("\0".join([SOURCE.read_text(), jax.__version__, *cmd]).encode())
    key = key.hexdigest()
    out = build_dir() / f"libsmallsample_onednn_{key[:16]}.so"
    return cmd, out, out.with_suffix(".json"), key


def status() -> tuple[Path | None, str]:
    """``(library, why)``: the verified library for this environment, or None and the reason."""
    try:
        _, out, manifest, key = _plan()
    except OneDNNUnavailable as e:
        return None, str(e)
    if not out.is_file():
        return None, f"oneDNN's convolution is not built (no {out}): {BUILD_HINT}"
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None, (f"{out} has no valid manifest ({manifest}): not loaded; rebuild with "
                      f"smallsample onednn build --force")
    if meta.get("inputs") != key or meta.get("sha256") != _sha256(out):
        return None, (f"{out} does not match its manifest {manifest} (inputs or sha256): not "
                      f"loaded; rebuild with smallsample onednn build --force")
    return out, f"built and verified: {out}"


def build(*, force: bool = False) -> Path:
    """Compiles the library for this environment (unless a verified one is there and not
    ``force``) and writes its manifest; returns its path. Raises OneDNNUnavailable."""
    cmd, out, manifest, key = _plan()
    if not force and status()[0] is not None:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([*cmd, "-o", tmp], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise OneDNNUnavailable(f"building {SOURCE.name} failed ({' '.join(cmd)}):\n"
                                    + proc.stderr[-2000:])
        meta = {"inputs": key, "sha256": _sha256(Path(tmp)), "command": cmd,
                "jax": jax.__version__, "source": SOURCE.name}
        os.replace(tmp, out)
        fd, tmp_meta = tempfile.mkstemp(suffix=".json", dir=out.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_meta, manifest)
    except subprocess.TimeoutExpired as e:
        raise OneDNNUnavailable(f"building {SOURCE.name} took over 300 s") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _load_error.cache_clear()
    return out


@functools.cache
def _load_error() -> OneDNNUnavailable | None:
    """Loads and registers the verified library once per process; the failure, if any, is kept
    (so a missing build is not looked for at every trace)."""
    path, why = status()
    if path is None:
        return OneDNNUnavailable(why)
    try:
        lib = ctypes.cdll.LoadLibrary(str(path))
    except OSError as e:
        return OneDNNUnavailable(f"loading {path} failed: {e}")
    for target, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
    return None


def _register() -> None:
    error = _load_error()
    if error is not None:
        raise error


def available() -> bool:
    """Whether a verified build of the oneDNN convolution is there and loads (never builds,
    never raises)."""
    return _load_error() is None


# ------------------------------------------------------------------------------ primitives

fwd_p = jex_core.Primitive("smallsample_conv_fwd")             # (x, w) -> y
bwd_data_p = jex_core.Primitive("smallsample_conv_bwd_data")    # (g, w) -> dx; in_hw
bwd_weights_p = jex_core.Primitive("smallsample_conv_bwd_weights")  # (x, g) -> dw; ksize


# Output shapes (the dtype is the first operand's)
def _fwd_shape(x, w, *, stride, pad):
    return (x.shape[0], *conv_output_hw(x.shape, w.shape, stride, pad), w.shape[3])


def _bwd_data_shape(g, w, *, stride, pad, in_hw):
    return (g.shape[0], *in_hw, w.shape[2])


def _bwd_weights_shape(x, g, *, stride, pad, ksize):
    return (*ksize, x.shape[3], g.shape[3])


def _ffi_lowering(target, shape_fn):
    def call(a, b, *, stride, pad, **params):
        out = jax.ShapeDtypeStruct(shape_fn(a, b, stride=stride, pad=pad, **params), a.dtype)
        return jax.ffi.ffi_call(target, out)(a, b, stride=np.int64(stride), pad=np.int64(pad))
    return call


def _xla_fwd(x, w, *, stride, pad):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _xla_bwd_data(g, w, *, stride, pad, in_hw):
    x = jnp.zeros(_bwd_data_shape(g, w, stride=stride, pad=pad, in_hw=in_hw), g.dtype)
    _, vjp = jax.vjp(lambda x: _xla_fwd(x, w, stride=stride, pad=pad), x)
    return vjp(g)[0]


def _xla_bwd_weights(x, g, *, stride, pad, ksize):
    w = jnp.zeros(_bwd_weights_shape(x, g, stride=stride, pad=pad, ksize=ksize), x.dtype)
    _, vjp = jax.vjp(lambda w: _xla_fwd(x, w, stride=stride, pad=pad), w)
    return vjp(g)[0]


for _p, _target, _shape, _xla in [
        (fwd_p, "ss_conv_fwd", _fwd_shape, _xla_fwd),
        (bwd_data_p, "ss_conv_bwd_data", _bwd_data_shape, _xla_bwd_data),
        (bwd_weights_p, "ss_conv_bwd_weights", _bwd_weights_shape, _xla_bwd_weights)]:
    _p.def_abstract_eval(lambda a, b, _shape=_shape, **params: jax.core.ShapedArray(
        _shape(a, b, **params), a.dtype))
    # Eager calls compile the primitive alone, so it lowers for the platform it runs on.
    _p.def_impl(lambda *a, _p=_p, **kw: jax.jit(lambda *a: _p.bind(*a, **kw))(*a))
    mlir.register_lowering(_p, mlir.lower_fun(_xla, multiple_results=False))
    mlir.register_lowering(_p, mlir.lower_fun(_ffi_lowering(_target, _shape),
                                              multiple_results=False), platform="cpu")

# fwd(x, w): x <- bwd_data(ct, w); w <- bwd_weights(x, ct)
ad.defbilinear(
    fwd_p,
    lambda ct, x, w, *, stride, pad: bwd_data_p.bind(ct, w, stride=stride, pad=pad,
                                                     in_hw=tuple(x.aval.shape[1:3])),
    lambda ct, x, w, *, stride, pad: bwd_weights_p.bind(x, ct, stride=stride, pad=pad,
                                                        ksize=tuple(w.aval.shape[:2])))
# bwd_data(g, w) = dx: g <- fwd(ct, w); w <- bwd_weights(ct, g)
ad.defbilinear(
    bwd_data_p,
    lambda ct, g, w, *, stride, pad, in_hw: fwd_p.bind(ct, w, stride=stride, pad=pad),
    lambda ct, g, w, *, stride, pad, in_hw: bwd_weights_p.bind(
        ct, g, stride=stride, pad=pad, ksize=tuple(w.aval.shape[:2])))
# bwd_weights(x, g) = dw: x <- bwd_data(g, ct); g <- fwd(x, ct)
ad.defbilinear(
    bwd_weights_p,
    lambda ct, x, g, *, stride, pad, ksize: bwd_data_p.bind(
        g, ct, stride=stride, pad=pad, in_hw=tuple(x.aval.shape[1:3])),
    lambda ct, x, g, *, stride, pad, ksize: fwd_p.bind(x, ct, stride=stride, pad=pad))


def _batching_rule(prim, shared_second: bool):
    """vmap: an unmapped second operand (shared weights) folds the mapped axis into the batch;
    otherwise the mapped pairs run one after another."""

    def rule(args, dims, **params):
        (a, b), (da, db) = args, dims
        if shared_second and db is None:
            a = jnp.moveaxis(a, da, 0)
            size, n = a.shape[:2]
            out = prim.bind(a.reshape(size * n, *a.shape[2:]), b, **params)
            return out.reshape(size, n, *out.shape[1:]), 0
        size = a.shape[da] if da is not None else b.shape[db]
        a = jnp.moveaxis(a, da, 0) if da is not None else jnp.broadcast_to(a, (size, *a.shape))
        b = jnp.moveaxis(b, db, 0) if db is not None else jnp.broadcast_to(b, (size, *b.shape))
        return jax.lax.map(lambda ab: prim.bind(*ab, **params), (a, b)), 0

    batching.primitive_batchers[prim] = rule


_batching_rule(fwd_p, shared_second=True)
_batching_rule(bwd_data_p, shared_second=True)
_batching_rule(bwd_weights_p, shared_second=False)


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1, padding: int = 1) -> jax.Array:
    """``x [n, H, W, Cin]`` convolved with ``kernel [kh, kw, Cin, Cout]``, zero padding
    ``padding`` on every side, through oneDNN (float32)."""
    if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
        raise ValueError(f"conv impl 'onednn' computes in float32, got x {x.dtype} and kernel "
                         f"{kernel.dtype}; use conv_impl='im2col' or 'xla' for other dtypes")
    _register()
    return fwd_p.bind(x, kernel, stride=int(stride), pad=int(padding))


def main(argv: list[str] | None = None) -> int:
    """``python -m smallsample.models.onednn build [--force] | status``."""
    import argparse  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="smallsample onednn",
                                description="build or check oneDNN's CPU convolution")
    p.add_argument("action", choices=["build", "status"])
    p.add_argument("--force", action="store_true", help="rebuild even if a verified build exists")
    args = p.parse_args(argv)
    if args.action == "status":
        path, why = status()
        print(why)
        return 0 if path is not None else 1
    try:
        print(f"built: {build(force=args.force)}")
    except OneDNNUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
