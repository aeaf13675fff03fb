"""oneDNN convolutions (``conv_impl='onednn'``): values against a NumPy float64 convolution,
first and second derivatives (reverse over reverse, forward over reverse) and ``vmap`` against
XLA's convolution in float64, Conv-4 against im2col, and the explicit build: its failure modes,
its manifest, and a planted library refused.

The numeric tests are marked ``onednn``: they skip, saying why, where the extra is not built
(``pip install '.[onednn]' && smallsample onednn build``); the build tests skip where the extra's
wheels or a compiler are missing."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smallsample.models import onednn
from smallsample.models.conv4 import Conv4
from smallsample.models.layers import conv2d, default_conv_impl

ONEDNN = pytest.mark.onednn

CASES = [  # (n, size, cin, cout, kernel, stride, pad)
    (2, 6, 3, 4, 3, 1, 1), (2, 7, 3, 4, 3, 2, 1), (2, 8, 1, 5, 3, 2, 1), (3, 5, 4, 2, 1, 1, 0),
    (1, 9, 2, 3, 3, 1, 0),
    (2, 7, 3, 4, 3, 3, 0), (2, 8, 3, 2, 5, 3, 1),  # the last rows and columns are not read
]


@ONEDNN
def test_auto_picks_onednn_once_built():
    """Built and verified, so 'auto' picks it for float32 on CPU, and only there."""
    assert onednn.available()
    assert default_conv_impl("cpu", jnp.float32) == "onednn"
    assert default_conv_impl("cpu", jnp.float64) == "im2col"
    assert default_conv_impl("gpu", jnp.float32) == "xla"


def _data(case, seed=0):
    n, size, cin, cout, k, stride, pad = case
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, size, size, cin)).astype(np.float32)
    w = rng.normal(size=(k, k, cin, cout)).astype(np.float32)
    return x, w, stride, pad


def _f32(x, w, stride, pad):
    return conv2d(x, w, stride=stride, padding=pad, impl="onednn")


def _f64(x, w, stride, pad):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _close(a, b, rtol=2e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


@ONEDNN
@pytest.mark.parametrize("case", CASES)
def test_forward_equals_numpy_float64(case, np_ref):
    x, w, stride, pad = _data(case)
    ref = np_ref.conv(x.astype(np.float64), w.astype(np.float64), stride, pad)
    _close(jax.jit(_f32, static_argnums=(2, 3))(x, w, stride, pad), ref)
    _close(_f32(x, w, stride, pad), ref)  # eager too


@ONEDNN
@pytest.mark.parametrize("case", CASES)
def test_derivatives_equal_xla_float64(case):
    """Gradients, a second-order reverse-over-reverse derivative (as second-order MAML takes)
    and a forward-over-reverse Hessian-vector product (as iMAML takes)."""
    x, w, stride, pad = _data(case, 1)
    rng = np.random.default_rng(2)
    r = rng.normal(size=np.asarray(_f32(x, w, stride, pad)).shape)
    tx, tw = rng.normal(size=x.shape), rng.normal(size=w.shape)

    def derivatives(conv, x, w, r, tx, tw):
        loss = lambda x, w: jnp.sum(jnp.tanh(conv(x, w, stride, pad)) * r)
        gx, gw = jax.grad(loss, (0, 1))(x, w)
        second = jax.grad(lambda w: jnp.sum(jax.grad(loss)(x, w) ** 2))(w)
        hvp = jax.jvp(jax.grad(loss, (0, 1)), (x, w), (tx, tw))[1]
        return gx, gw, second, *hvp

    got = jax.jit(lambda *a: derivatives(_f32, *a))(x, w, *(a.astype(np.float32)
                                                            for a in (r, tx, tw)))
    with jax.enable_x64(True):
        ref = jax.jit(lambda *a: derivatives(_f64, *a))(
            *(np.asarray(a, np.float64) for a in (x, w, r, tx, tw)))
        ref = [np.asarray(v) for v in ref]
    for name, a, b in zip(["dx", "dw", "second", "hvp x", "hvp w"], got, ref, strict=True):
        assert a.dtype == jnp.float32 and a.shape == b.shape, name
        _close(a, b, rtol=2e-4)


@ONEDNN
def test_vmap_over_shared_and_per_task_weights():
    x, w, stride, pad = _data((2, 7, 3, 4, 3, 2, 1), 3)
    xs = np.stack([x, x + 1, 2 * x])
    ws = np.stack([w, -w, 0.5 * w])
    r = np.random.default_rng(4).normal(size=(3, 2, 4, 4, 4)).astype(np.float32)

    def run(conv, xs, ws, r):
        shared = jax.vmap(lambda x: conv(x, ws[0], stride, pad))(xs)
        per_task = jax.vmap(lambda x, w: conv(x, w, stride, pad))(xs, ws)
        loss = lambda x, w, r: jnp.sum(jnp.sin(conv(x, w, stride, pad)) * r)
        grads = jax.vmap(jax.grad(loss, (0, 1)))(xs, ws, r)
        return shared, per_task, *grads

    got = jax.jit(lambda *a: run(_f32, *a))(xs, ws, r)
    with jax.enable_x64(True):
        ref = [np.asarray(v) for v in jax.jit(lambda *a: run(_f64, *a))(
            *(np.asarray(a, np.float64) for a in (xs, ws, r)))]
    for a, b in zip(got, ref, strict=True):
        _close(a, b, rtol=1e-4)


@ONEDNN
@pytest.mark.parametrize("downsample", ["pool", "stride"])
def test_conv4_onednn_equals_im2col(downsample):
    x = np.random.default_rng(5).normal(size=(6, 16, 16, 1)).astype(np.float32)
    models = {impl: Conv4(width=8, downsample=downsample, num_classes=5, conv_impl=impl)
              for impl in ("onednn", "im2col")}
    params = jax.jit(models["im2col"].init)(jax.random.key(0), x)
    y = np.random.default_rng(6).normal(size=(6, 5)).astype(np.float32)

    def value_and_grad(impl):
        loss = lambda p: jnp.sum(jnp.tanh(models[impl].apply(p, x)) * y)
        return jax.jit(jax.value_and_grad(loss))(params)

    (va, ga), (vb, gb) = value_and_grad("onednn"), value_and_grad("im2col")
    _close(va, vb, rtol=1e-4)
    for path, a in jax.tree_util.tree_leaves_with_path(ga):
        b = np.asarray(dict(jax.tree_util.tree_leaves_with_path(gb))[path])
        _close(a, b, rtol=2e-3)


@ONEDNN
def test_non_float32_is_refused_with_the_dtypes():
    x, w = np.zeros((1, 4, 4, 1)), np.zeros((3, 3, 1, 2))
    with jax.enable_x64(True), pytest.raises(ValueError, match="float32.*float64"):
        conv2d(x, w, impl="onednn")


def test_missing_onednn_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLSAMPLE_ONEDNN_ROOT", str(tmp_path))
    with pytest.raises(onednn.OneDNNUnavailable, match=str(tmp_path)):
        onednn.onednn_root()


def _need_toolchain():
    try:
        onednn._plan()
    except onednn.OneDNNUnavailable as e:
        pytest.skip(f"the oneDNN extra's wheels or a compiler are missing: {e}")


def test_failed_build_says_why_and_leaves_nothing(tmp_path, monkeypatch):
    """A compiler that fails: a clear error with the command, and no (half-written) library."""
    monkeypatch.setenv("SMALLSAMPLE_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.setenv("CXX", "false")
    _need_toolchain()
    with pytest.raises(onednn.OneDNNUnavailable, match="building onednn_conv.cc failed.*false"):
        onednn.build()
    assert list((tmp_path / "build").iterdir()) == []


def test_build_writes_a_verified_library_once_and_refuses_a_planted_one(tmp_path, monkeypatch):
    """Nothing is built by looking (status, available); `build` compiles once under a content
    hash with a manifest of its sha256; a second build reuses it; a library whose bytes no
    longer match the manifest, or that has no manifest, is not loaded."""
    monkeypatch.setenv("SMALLSAMPLE_BUILD_DIR", str(tmp_path))
    _need_toolchain()
    path, why = onednn.status()
    assert path is None and "not built" in why and "smallsample onednn build" in why
    assert not any(tmp_path.iterdir())  # looking built nothing
    first = onednn.build()
    assert first.parent == tmp_path and first.name.startswith("libsmallsample_onednn_")
    manifest = json.loads(first.with_suffix(".json").read_text())
    assert manifest["sha256"] == onednn._sha256(first)
    assert onednn.status()[0] == first
    mtime = first.stat().st_mtime_ns
    assert onednn.build() == first and first.stat().st_mtime_ns == mtime  # reused
    first.write_bytes(first.read_bytes() + b"planted")  # another file at the cached name
    path, why = onednn.status()
    assert path is None and "does not match its manifest" in why
    first.with_suffix(".json").unlink()
    path, why = onednn.status()
    assert path is None and "no valid manifest" in why
    assert onednn.build(force=True) == first and onednn.status()[0] == first
