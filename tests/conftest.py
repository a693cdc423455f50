"""Test tiers: the CPU tier runs everything not marked ``gpu`` through Triton's interpreter;
``pytest -m gpu`` runs the GPU tier (skipped when CUDA is absent)."""

import os
import sys

os.environ.setdefault("TRITONCNN_POISON", "1")  # every fresh output starts as NaN
sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py

import pytest  # noqa: E402
import torch  # noqa: E402

import tritoncnn  # noqa: E402,F401  (sets up the interpreter before triton loads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu tier: needs CUDA (run `pytest -m gpu` on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _session_autotune_cache(tmp_path_factory):
    """Tuned conv tiles chosen during tests go to a temporary cache, never the user's
    (timings taken beside other test workers are noisy)."""
    from tritoncnn.kernels import autotune

    path = tmp_path_factory.getbasetemp() / "autotune-session" / "autotune.json"
    previous = autotune.set_default_tuner(autotune.Tuner(path))
    yield
    autotune.set_default_tuner(previous)
