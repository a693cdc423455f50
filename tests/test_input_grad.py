"""``input_grad``: the stem skips the gradient of the input images, as torch does for a batch
that does not require grad, and nothing else changes."""

from __future__ import annotations

import pytest
import torch
from helpers import randn

from tritoncnn import models, nn
from tritoncnn.kernels import conv as K
from tritoncnn.nn.conv import Conv2d
from tritoncnn.nn.linear import Linear

# Small versions of every zoo model (the forward stops at the first layer, so size is cheap).
ZOO = [
    ("baseline", {}, 3, 32),
    ("resnet18", {}, 3, 32),
    ("resnet18", {"variant": "imagenet"}, 3, 64),
    ("resnet34", {}, 1, 32),
    ("mobilenetv2", {}, 3, 32),
    ("vgg16_bn", {}, 3, 32),
]


class _FirstCall(Exception):
    pass


@pytest.mark.parametrize("name,kw,c,s", ZOO, ids=[f"{z[0]}-{z[2]}x{z[3]}" for z in ZOO])
def test_stem_layer_is_the_first_layer_the_forward_calls(name, kw, c, s, monkeypatch):
    model = models.build(name, in_channels=c, image_size=s, **kw)

    def stop(self, x):
        raise _FirstCall(self)

    monkeypatch.setattr(Conv2d, "forward", stop)
    monkeypatch.setattr(Linear, "forward", stop)
    with pytest.raises(_FirstCall) as first:
        model(torch.zeros(2, c, s, s, device=models.stem_layer(model).weight.data.device))
    assert first.value.args[0] is models.stem_layer(model)
    assert models.stem_layer(model).input_grad is False
    others = [m for m in model.modules() if isinstance(m, Conv2d | Linear)][1:]
    assert others and all(m.input_grad for m in others)


def test_build_without_input_grad_gives_the_same_parameter_grads(monkeypatch):
    kw = dict(num_classes=5, image_size=8, filters=(4, 6, 5), units=(12, 7), dropout=0.0)
    calls = []
    dgrad = K.conv2d_dgrad
    monkeypatch.setattr(K, "conv2d_dgrad", lambda *a, **k: calls.append(a[2]) or dgrad(*a, **k))
    results = []
    for input_grad in (True, False):
        torch.manual_seed(0)
        model = models.build("baseline", input_grad=input_grad, **kw)
        x = randn(3, 3, 8, 8, channels_last=True, seed=1)
        model(x)
        calls.clear()
        dx = model.backward(randn(3, 5, seed=2))
        results.append(({n: p.grad.clone() for n, p in model.named_parameters()}, dx, calls[:]))
    (grads_on, dx_on, calls_on), (grads_off, dx_off, calls_off) = results
    assert dx_on is not None and dx_on.shape == (3, 3, 8, 8) and dx_off is None
    assert torch.Size((3, 3, 8, 8)) in calls_on and torch.Size((3, 3, 8, 8)) not in calls_off
    assert len(calls_off) == len(calls_on) - 1 == 2  # only the stem's dgrad is gone
    assert list(grads_on) == list(grads_off)
    for n in grads_on:  # same kernels on the same data: bitwise equal
        assert torch.equal(grads_on[n], grads_off[n]), n


def test_linear_stem_returns_none():
    lin = Linear(6, 4)
    lin.input_grad = False
    lin(randn(3, 6, seed=0))
    assert lin.backward(randn(3, 4, seed=1)) is None
    assert lin.weight.grad is not None and lin.bias.grad is not None


def test_only_the_first_layer_may_skip_its_input_grad():
    seq = nn.Sequential(Linear(6, 5), Linear(5, 4))
    seq[1].input_grad = False
    seq(randn(3, 6, seed=0))
    with pytest.raises(RuntimeError, match="only a model's first layer may set input_grad"):
        seq.backward(randn(3, 4, seed=1))
