"""Shared fixtures: a tiny config and one tiny trained run reused by the tests that only read it."""

from __future__ import annotations

from pathlib import Path

import pytest

from purrgan.config import load_config
from purrgan.loop import train

TINY = {
    "model.g_width": "8", "model.d_width": "8", "model.z_dim": "16",
    "train.batch_size": "32", "train.log_every": "10", "train.sample_every": "50",
    "train.checkpoint_every": "50", "train.num_samples": "16", "train.device": "cpu",
    "train.amp": "off",  # the same float32 numbers on every machine ("auto" measures bf16 on the CPU: test_core)
}


def tiny_config(**extra):
    """Return the default preset shrunk to train in seconds; extra keys use '__' for '.'."""
    overrides = dict(TINY)
    overrides.update({k.replace("__", "."): str(v) for k, v in extra.items()})
    overrides.setdefault("train.steps", "60")
    return load_config(overrides=overrides)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run folder of the default digits DCGAN trained for 300 tiny steps (shared, read-only)."""
    run = tmp_path_factory.mktemp("runs") / "digits"
    train(tiny_config(train__steps=300), run)
    return run


def pytest_configure(config):
    # Prepared data files and downloads go to a throw-away cache, never the user's.
    import atexit
    import os
    import shutil
    import tempfile

    os.environ["PURRGAN_DATA"] = tempfile.mkdtemp(prefix="purrgan-test-cache-")
    atexit.register(shutil.rmtree, os.environ["PURRGAN_DATA"], True)
