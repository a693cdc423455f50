"""The BN -> activation fusion pass: same function, same state, no separate activation kernel."""

import pytest
import torch
from helpers import TOL, assert_close, randn
from test_models import randn_input, randomize_

from tritoncnn import models
from tritoncnn.export import to_torch
from tritoncnn.kernels import elementwise as ew
from tritoncnn.nn import (
    ELU,
    BatchNorm2d,
    ReLU,
    Sequential,
    fuse_bn_activations,
    unfuse_bn_activations,
    unlink_conv_bn_moments,
)

# (build name, kwargs, image size, BN -> activation pairs the pass must find)
CASES = [
    ("baseline", dict(filters=(4, 6, 5), units=(12, 7), dropout=0.0), 8, 5),
    ("resnet18", dict(widths=(4, 6, 8, 10)), 8, 9),  # stem + bn1/relu of each of 8 blocks
    (
        "mobilenetv2",
        dict(
            width_mult=0.25,
            round_nearest=4,
            dropout=0.0,
            inverted_residual_setting=((1, 16, 1, 1), (6, 24, 2, 2)),
        ),
        8,
        # stem, block 1 (depthwise), blocks 2-3 (expand + depthwise), last 1x1 conv
        1 + 1 + 2 * 2 + 1,
    ),  # fmt: skip
]


def _run(model, x, g, train):
    model.train(train)
    model.zero_grad()
    y = model(x)
    dx = model.backward(g)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return y.clone(), dx.clone(), grads


@pytest.mark.parametrize("name,kw,s,pairs", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_fused_model_equals_unfused(name, kw, s, pairs, train, monkeypatch):
    plain = models.build(name, num_classes=7, image_size=s, fuse=False, input_grad=True, **kw)
    randomize_(plain)
    fused = models.build(name, num_classes=7, image_size=s, input_grad=True, **kw)  # fused
    # this test is about the activation fusion, whose fp32 arithmetic is the unfused one; the
    # conv -> BN moments link sums the statistics in another order (tests/test_tile_moments.py)
    unlink_conv_bn_moments(fused)
    fused.load_state_dict(plain.state_dict())
    assert list(fused.state_dict()) == list(plain.state_dict())
    assert sum(m.fused for m in fused.modules() if hasattr(m, "fused")) == pairs
    assert not any(getattr(m, "fused", False) for m in plain.modules())
    x = randn_input(3, 3, s, torch.float32)
    g = randn(3, 7, seed=5)
    ref = _run(plain, x, g, train)
    # the fused model launches no separate activation kernel for the fused pairs
    calls = {"n": 0}
    real = ew.activation_forward

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(ew, "activation_forward", counting)
    got = _run(fused, x, g, train)
    monkeypatch.undo()
    assert calls["n"] == 0, "a fused activation still launched its own kernel"
    # fp32: the fused kernel applies the activation to the same fp32 value before the store
    assert_close(got[0], ref[0], tol=TOL[torch.float32] / 10, what="output")
    assert_close(got[1], ref[1], tol=TOL[torch.float32] / 10, what="input grad")
    for n, r in ref[2].items():
        if r.norm() > 0:
            assert_close(got[2][n], r, tol=TOL[torch.float32] / 10, what=n)


def test_fusion_only_pairs_bn_with_the_activation_right_after():
    seq = Sequential(ReLU(), BatchNorm2d(3), ELU(alpha=0.5), ELU(), BatchNorm2d(3))
    assert fuse_bn_activations(seq) == 1
    assert seq[1].act == ew.ACT_ELU and seq[1].act_alpha == 0.5 and seq[2].fused
    assert not seq[0].fused and not seq[3].fused and seq[4].act == ew.ACT_NONE
    assert fuse_bn_activations(seq) == 0  # idempotent
    assert unfuse_bn_activations(seq) == 1
    assert seq[1].act == ew.ACT_NONE and not seq[2].fused


def test_fused_twin_is_bn_then_activation():
    model = models.build(
        "baseline", num_classes=5, image_size=8, filters=(3, 4, 5), units=(6, 6), dropout=0.0
    )
    model.eval()
    twin = to_torch(model).double().eval()
    names = [type(m).__name__ for m in twin.modules()]
    assert names.count("ELU") == 5 and names.count("BatchNorm2d") == 3
    x = randn_input(2, 3, 8, torch.float32)
    with torch.no_grad():
        ref = twin(x.double().cpu())
    assert_close(model(x), ref, what="fused model vs its twin")
