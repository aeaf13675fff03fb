"""Shared test set-up: where the data is, and a per-session array cache."""

import os
from pathlib import Path

import pytest

# Not set here: XLA_FLAGS=--xla_backend_optimization_level=0 would halve compile times, but with
# jax 0.10.2 on CPU it makes the Conv-4 prototypical-network step's gradient NaN (the CLI test
# caught it); compile at the default level.

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = Path(os.environ.get("SMALLSAMPLE_DATA", SHARED))


def pytest_configure(config):
    if (DATA / "omniglot").exists():
        os.environ.setdefault("SMALLSAMPLE_DATA", str(DATA))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "omniglot" / "images_background.zip").exists():
        pytest.skip(f"Omniglot not found under {DATA}: set SMALLSAMPLE_DATA to the data folder")
    return DATA
