"""Activations, residual add, fill and layout copies against torch in float64."""

import pytest
import torch
from helpers import DEVICE, assert_close, f64, randn, rounded

from tritoncnn import nn
from tritoncnn.kernels import elementwise as ew
from tritoncnn.kernels.layout import to_channels_last, to_contiguous

CASES = [
    (nn.ReLU, torch.nn.ReLU, {}),
    (nn.ReLU6, torch.nn.ReLU6, {}),
    (nn.ELU, torch.nn.ELU, {"alpha": 0.7}),
    (nn.LeakyReLU, torch.nn.LeakyReLU, {"negative_slope": 0.2}),
    (nn.SiLU, torch.nn.SiLU, {}),
]


def _check_activation(ours_cls, torch_cls, kw, shape, dtype, channels_last):
    x = randn(*shape, dtype=dtype, channels_last=channels_last) * 4  # reaches relu6's cap
    g = randn(*shape, dtype=dtype, channels_last=channels_last)
    m = ours_cls(**kw)
    y = m(x)
    dx = m.backward(g)
    assert y.stride() == x.stride() and dx.stride() == x.stride()
    xr = f64(x).requires_grad_()
    yr = torch_cls(**kw)(xr)
    yr.backward(f64(g))
    assert_close(y, yr, dtype, what="forward")
    assert_close(dx, xr.grad, dtype, what="backward")


@pytest.mark.parametrize("ours_cls,torch_cls,kw", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_activation(ours_cls, torch_cls, kw, dtype):
    _check_activation(ours_cls, torch_cls, kw, (3, 5, 7, 5), dtype, channels_last=True)


def test_activation_kinks_match_torch():
    """Derivatives at exactly 0 and 6 follow torch's conventions."""
    x = torch.tensor([-1.0, 0.0, 6.0, 3.0, 7.0], device=DEVICE)
    for ours_cls, torch_cls, kw in CASES:
        m = ours_cls(**kw)
        m(x)
        dx = m.backward(torch.ones_like(x))
        xr = f64(x).requires_grad_()
        torch_cls(**kw)(xr).sum().backward()
        # a wrong kink convention is off by O(1); fp32 exp differs from float64 by ~1e-7
        assert torch.allclose(f64(dx), xr.grad, rtol=1e-6, atol=0), ours_cls.__name__


def test_add_and_accumulate():
    a = randn(2, 3, 5, 7, channels_last=True)
    b = randn(2, 3, 5, 7, channels_last=True)
    out = ew.add(a, b, act=ew.ACT_RELU)
    assert_close(out, torch.relu(f64(a) + f64(b)))
    acc = a.clone()
    ew.accumulate_(acc, b)
    assert_close(acc, f64(a) + f64(b))
    with pytest.raises(ValueError):
        ew.add(a, randn(2, 3, 5, 6, channels_last=True))


def test_fill():
    t = randn(1000 + 37)
    ew.fill_(t, 0.0)
    assert torch.count_nonzero(t) == 0
    ew.fill_(t, 2.5)
    assert (t == 2.5).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cast_rounds_like_torch(dtype):
    """cast_ rounds fp32 to 16 bits as Tensor.to does (nearest even; see ``rounded`` for the
    interpreter's bf16), including values that overflow fp16 and halfway cases; every element
    of the poisoned output is written."""
    x = randn(4, 7, 3, 5, channels_last=True) * 3
    x[0, :4, 0, 0] = torch.tensor([70000.0, -1e-9, 1 + 2**-11, 1 + 3 * 2**-11])
    out = torch.full_like(x, float("nan"), dtype=dtype)
    ew.cast_(out, x)
    assert out.stride() == x.stride()
    assert torch.equal(out.float(), rounded(x, dtype).float())
    with pytest.raises(ValueError, match="shapes differ"):
        ew.cast_(out, randn(4, 7, 3, 4, channels_last=True))


def test_layout_round_trip():
    x = randn(2, 5, 3, 7)
    cl = to_channels_last(x)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(cl, x)
    back = to_contiguous(cl)
    assert back.is_contiguous() and torch.equal(back, x)


def test_flatten_round_trip():
    x = randn(2, 5, 3, 7, channels_last=True)
    f = nn.Flatten()
    y = f(x)
    assert torch.equal(y, x.reshape(2, -1).contiguous().view(2, -1)) or torch.equal(
        f64(y), f64(x).reshape(2, -1)
    )
    g = randn(2, 5 * 3 * 7)
    dx = f.backward(g)
    assert dx.shape == x.shape and torch.equal(f64(dx), f64(g).reshape(2, 5, 3, 7))


@pytest.mark.gpu
@pytest.mark.parametrize("ours_cls,torch_cls,kw", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_activation_gpu(ours_cls, torch_cls, kw, dtype):
    _check_activation(ours_cls, torch_cls, kw, (128, 64, 32, 32), dtype, channels_last=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cast_gpu(dtype):
    x = randn(512, 144, 3, 3, channels_last=True) * 100
    out = torch.full_like(x, float("nan"), dtype=dtype)
    assert torch.equal(ew.cast_(out, x).float(), x.to(dtype).float())
