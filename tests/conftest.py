"""Shared test set-up: where the data is, NumPy float64 references of the layers, and the
``onednn`` marker (tests that need oneDNN's convolution built skip, saying why, where it is not).

Test files share helpers through this file only, never by importing each other."""

import os
import types
from pathlib import Path

import numpy as np
import pytest

# Not set here: XLA_FLAGS=--xla_backend_optimization_level=0 would halve compile times, but with
# jax 0.10.2 on CPU it makes the Conv-4 prototypical-network step's gradient NaN (the CLI test
# caught it); compile at the default level.

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = Path(os.environ.get("SMALLSAMPLE_DATA", SHARED))


def pytest_configure(config):
    if (DATA / "omniglot").exists():
        os.environ.setdefault("SMALLSAMPLE_DATA", str(DATA))
    # Programs compiled again by later tests (the same small training step in several tests)
    # load from JAX's persistent cache, in a folder of this session's own: a test-suite setting,
    # as the command line's compile cache is the command's (the library sets nothing).
    import tempfile  # noqa: PLC0415

    import jax  # noqa: PLC0415

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        cache = os.environ.setdefault("SMALLSAMPLE_TEST_JIT_CACHE",
                                      tempfile.mkdtemp(prefix="smallsample-tests-jit-"))
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    config.addinivalue_line("markers", "onednn: needs oneDNN's convolution built "
                            "(pip install '.[onednn]' && smallsample onednn build)")


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if item.get_closest_marker("onednn")]
    if not marked:
        return
    from smallsample.models import onednn  # noqa: PLC0415

    if onednn.available():
        return
    skip = pytest.mark.skip(reason=f"oneDNN convolution not available: {onednn.status()[1]}")
    for item in marked:
        item.add_marker(skip)


def np_conv(x, k, stride, pad):
    """NumPy float64 reference: zero padding ``pad`` on every side, then a strided correlation."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = k.shape[:2]
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, k.shape[3]))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j] = np.einsum("nabc,abco->no", patch, k)
    return out


def np_bn(x, scale, bias, eps=1e-5):
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def np_pool(x):
    n, h, w, c = x.shape
    return x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))




@pytest.fixture(scope="session")
def np_ref():
    """NumPy float64 references: ``conv(x, k, stride, pad)``, ``bn(x, scale, bias)``,
    ``pool(x)`` (2x2 max-pool, floor mode)."""
    return types.SimpleNamespace(conv=np_conv, bn=np_bn, pool=np_pool)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "omniglot" / "images_background.zip").exists():
        pytest.skip(f"Omniglot not found under {DATA}: set SMALLSAMPLE_DATA to the data folder")
    return DATA
