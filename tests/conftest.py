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
