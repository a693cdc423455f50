"""Max, average and adaptive average pooling against torch.nn.functional in float64."""

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_close, f64, randn

from tritoncnn import nn
from tritoncnn.kernels import pool

SMALL = [(2, 3, 7, 5), (1, 37, 9, 11)]

MAX_CASES = [
    {"kernel_size": 2, "stride": 2},
    {"kernel_size": 3, "stride": 2, "padding": 1},  # ResNet ImageNet stem, overlapping windows
    {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
    {"kernel_size": 2, "stride": 2, "ceil_mode": True},  # odd sizes: a partial last window
    {"kernel_size": 3, "stride": 3, "padding": 1, "ceil_mode": True},  # drops a pad-only window
    {"kernel_size": 3, "stride": 1, "padding": 1, "dilation": 2},
    {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)},
]

AVG_CASES = [
    {"kernel_size": 2, "stride": 2},
    {"kernel_size": 3, "stride": 2, "padding": 1},
    {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False},
    {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
    {"kernel_size": 4, "stride": 3, "padding": 1, "ceil_mode": True},  # window past the pad
    {"kernel_size": 2, "stride": 2, "ceil_mode": True},  # partial window, no padding
    {"kernel_size": 2, "stride": 3, "padding": 1, "ceil_mode": True, "count_include_pad": False},
    {"kernel_size": (3, 2), "stride": (1, 2), "padding": (1, 1), "divisor_override": 5},
]

ADAPTIVE_SIZES = [1, (1, 1), (3, 4), (5, None), (9, 2)]


def _reference(fn, x, g, **kw):
    """torch's forward and input gradient in float64 (NCHW-contiguous on the CPU)."""
    xr = f64(x).contiguous().requires_grad_()
    yr = fn(xr, **kw)
    yr.backward(f64(g).contiguous())
    return yr.detach(), xr.grad


def _check_layouts(x, y, dx):
    assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == x.dtype
    assert dx.shape == x.shape and dx.dtype == x.dtype
    assert dx.is_contiguous(memory_format=torch.channels_last)


def _run_max(shape, kw, dtype, channels_last=True):
    x = randn(*shape, dtype=dtype, channels_last=channels_last)
    m = nn.MaxPool2d(**kw)
    y = m(x)
    g = randn(*y.shape, dtype=dtype, channels_last=True)
    dx = m.backward(g)
    yr, dxr = _reference(F.max_pool2d, x, g, **kw)
    _check_layouts(x, y, dx)
    assert torch.equal(f64(y), yr), "max pool forward must be exact"
    assert_close(dx, dxr, dtype, what="max pool backward")


def _run_avg(shape, kw, dtype, channels_last=True):
    x = randn(*shape, dtype=dtype, channels_last=channels_last)
    m = nn.AvgPool2d(**kw)
    y = m(x)
    g = randn(*y.shape, dtype=dtype, channels_last=True)
    dx = m.backward(g)
    yr, dxr = _reference(F.avg_pool2d, x, g, **kw)
    _check_layouts(x, y, dx)
    assert_close(y, yr, dtype, what="avg pool forward")
    assert_close(dx, dxr, dtype, what="avg pool backward")


def _run_adaptive(shape, output_size, dtype, channels_last=True):
    x = randn(*shape, dtype=dtype, channels_last=channels_last)
    m = nn.AdaptiveAvgPool2d(output_size)
    y = m(x)
    g = randn(*y.shape, dtype=dtype, channels_last=True)
    dx = m.backward(g)
    yr, dxr = _reference(F.adaptive_avg_pool2d, x, g, output_size=output_size)
    _check_layouts(x, y, dx)
    assert_close(y, yr, dtype, what="adaptive avg pool forward")
    assert_close(dx, dxr, dtype, what="adaptive avg pool backward")


# --- CPU tier ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SMALL)
@pytest.mark.parametrize("kw", MAX_CASES)
def test_max_pool(shape, kw):
    _run_max(shape, kw, torch.float32)


@pytest.mark.parametrize("kw", MAX_CASES[:3])
def test_max_pool_fp16(kw):
    _run_max((2, 5, 9, 7), kw, torch.float16)


def test_max_pool_nchw_input():
    """A torch-contiguous (NCHW) input is read through its strides, no copy needed."""
    _run_max((2, 3, 7, 5), MAX_CASES[1], torch.float32, channels_last=False)


@pytest.mark.parametrize("kw", MAX_CASES[:5])
def test_max_pool_ties_route_like_torch(kw):
    """Integer-valued inputs tie constantly; torch sends the gradient to the first maximum
    in window scan order. Integer gradients make the sums exact, so compare exactly."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 3, (2, 37, 9, 11), generator=gen).to(DEVICE, torch.float32)
    x = x.contiguous(memory_format=torch.channels_last)
    m = nn.MaxPool2d(**kw)
    y = m(x)
    g = torch.randint(-4, 5, tuple(y.shape), generator=gen).to(DEVICE, torch.float32)
    dx = m.backward(g)
    yr, dxr = _reference(F.max_pool2d, x, g, **kw)
    assert torch.equal(f64(y), yr)
    assert torch.equal(f64(dx), dxr), "tied maxima routed differently from torch"


def test_max_pool_nan_and_inf_like_torch():
    """A NaN wins its windows (and takes their gradient); an all -inf window keeps -inf."""
    x = randn(1, 3, 7, 5, channels_last=True)
    x[0, 0, 2, 2] = float("nan")
    x[0, 1, 3, 1] = float("nan")
    x[0, 1, 3, 2] = float("nan")
    x[0, 2, :3, :3] = float("-inf")
    kw = {"kernel_size": 3, "stride": 2, "padding": 1}
    m = nn.MaxPool2d(**kw)
    y = m(x)
    g = randn(*y.shape, channels_last=True)
    dx = m.backward(g)
    yr, dxr = _reference(F.max_pool2d, x, g, **kw)
    torch.testing.assert_close(f64(y), yr, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(f64(dx), dxr, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", SMALL)
@pytest.mark.parametrize("kw", AVG_CASES)
def test_avg_pool(shape, kw):
    _run_avg(shape, kw, torch.float32)


@pytest.mark.parametrize("kw", AVG_CASES[2:4])
def test_avg_pool_fp16(kw):
    _run_avg((2, 5, 9, 7), kw, torch.float16)


def test_avg_pool_nchw_input():
    _run_avg((2, 3, 7, 5), AVG_CASES[2], torch.float32, channels_last=False)


@pytest.mark.parametrize("shape", SMALL)
@pytest.mark.parametrize("output_size", ADAPTIVE_SIZES)
def test_adaptive_avg_pool(shape, output_size):
    _run_adaptive(shape, output_size, torch.float32)


@pytest.mark.parametrize("output_size", [1, (3, 4)])
def test_adaptive_avg_pool_fp16(output_size):
    _run_adaptive((2, 37, 9, 11), output_size, torch.float16)


def test_global_pool_nchw_input():
    _run_adaptive((2, 37, 7, 5), 1, torch.float32, channels_last=False)


@pytest.mark.parametrize("cfg", pool.POOL_CONFIGS)
def test_every_pool_config(cfg):
    """Each tile the helpers can pick, forced on C=37 (several channel blocks, masked tail)."""
    x = randn(2, 37, 7, 5, channels_last=True)
    kw = {"kernel_size": 3, "stride": 2, "padding": 1}
    y, idx = pool.max_pool2d_forward(x, **kw, config=cfg)
    g = randn(*y.shape, channels_last=True)
    dx = pool.max_pool2d_backward(g, idx, x.shape, **kw, config=cfg)
    yr, dxr = _reference(F.max_pool2d, x, g, **kw)
    assert torch.equal(f64(y), yr)
    assert_close(dx, dxr, what=f"max backward {cfg}")

    kw = {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}
    y = pool.avg_pool2d_forward(x, **kw, config=cfg)
    dx = pool.avg_pool2d_backward(g, x.shape, 3, 2, 1, config=cfg)
    yr, dxr = _reference(F.avg_pool2d, x, g, **kw)
    assert_close(y, yr, what=f"avg forward {cfg}")
    assert_close(dx, dxr, what=f"avg backward {cfg}")

    y = pool.adaptive_avg_pool2d_forward(x, (3, 2), config=cfg)
    g = randn(*y.shape, channels_last=True)
    dx = pool.adaptive_avg_pool2d_backward(g, x.shape, config=cfg)
    yr, dxr = _reference(F.adaptive_avg_pool2d, x, g, output_size=(3, 2))
    assert_close(y, yr, what=f"adaptive forward {cfg}")
    assert_close(dx, dxr, what=f"adaptive backward {cfg}")

    g = randn(2, 37, 1, 1, channels_last=True)
    dx = pool.adaptive_avg_pool2d_backward(g, x.shape, config=cfg)
    _, dxr = _reference(F.adaptive_avg_pool2d, x, g, output_size=1)
    assert_close(dx, dxr, what=f"global backward {cfg}")


@pytest.mark.parametrize("cfg", pool.GLOBAL_POOL_CONFIGS)
def test_every_global_pool_config(cfg):
    x = randn(2, 37, 9, 11, channels_last=True)  # 99 pixels: several HW chunks, masked tail
    y = pool.adaptive_avg_pool2d_forward(x, 1, config=cfg)
    assert_close(y, F.adaptive_avg_pool2d(f64(x), 1), what=f"global forward {cfg}")


@pytest.mark.parametrize(
    "size,k,s,p,d,ceil", [(7, 2, 2, 0, 1, True), (9, 3, 2, 1, 1, True), (5, 3, 3, 1, 1, True),
                          (6, 2, 3, 1, 1, True), (11, 3, 2, 1, 2, False), (4, 4, 1, 2, 1, True)]
)  # fmt: skip
def test_output_size_matches_torch(size, k, s, p, d, ceil):
    x = torch.zeros(1, 1, size, size)
    want = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil).shape[-1]
    assert pool.pool_output_size(size, k, s, p, d, ceil) == want


def test_argument_semantics_and_errors():
    m = nn.MaxPool2d(3)
    assert m.stride == 3 and repr(m) == repr(torch.nn.MaxPool2d(3))
    assert repr(nn.AvgPool2d(2, 1, 1)) == repr(torch.nn.AvgPool2d(2, 1, 1))
    assert repr(nn.AdaptiveAvgPool2d(1)) == repr(torch.nn.AdaptiveAvgPool2d(1))
    with pytest.raises(NotImplementedError):
        nn.MaxPool2d(2, return_indices=True)
    x = randn(1, 2, 7, 5, channels_last=True)
    with pytest.raises(ValueError, match="half of kernel size"):
        nn.MaxPool2d(3, padding=2)(x)
    with pytest.raises(ValueError, match="half of kernel size"):
        nn.AvgPool2d(2, padding=(0, 2))(x)
    with pytest.raises(ValueError, match="too small"):
        nn.MaxPool2d(9)(x)
    with pytest.raises(RuntimeError, match="before forward"):
        nn.AvgPool2d(2).backward(x)


# --- GPU tier ---------------------------------------------------------------------------------

GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("shape", [(128, 32, 32, 32), (128, 64, 16, 16), (128, 128, 8, 8)])
def test_seed_net_pools_gpu(shape, dtype):
    _run_max(shape, {"kernel_size": 2, "stride": 2}, dtype)
    _run_avg(shape, {"kernel_size": 2, "stride": 2}, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_resnet_stem_pool_gpu(dtype):
    _run_max((16, 64, 112, 112), {"kernel_size": 3, "stride": 2, "padding": 1}, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("shape", [(128, 512, 4, 4), (128, 1280, 4, 4), (128, 512, 7, 7)])
def test_global_pool_gpu(shape, dtype):
    _run_adaptive(shape, 1, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_pool_variants_gpu(dtype):
    shape = (32, 96, 33, 29)
    _run_max(shape, MAX_CASES[2], dtype)
    _run_max(shape, MAX_CASES[4], dtype)
    _run_avg(shape, AVG_CASES[3], dtype)
    _run_avg(shape, AVG_CASES[4], dtype)
    _run_adaptive(shape, (5, 7), dtype)


@pytest.mark.gpu
def test_max_pool_ties_gpu():
    x = torch.randint(0, 3, (64, 64, 33, 33), device=DEVICE).to(torch.float16)
    x = x.contiguous(memory_format=torch.channels_last)
    for kw in MAX_CASES[:3]:
        m = nn.MaxPool2d(**kw)
        y = m(x)
        g = torch.randint(-4, 5, tuple(y.shape), device=DEVICE).to(torch.float16)
        dx = m.backward(g)
        yr, dxr = _reference(F.max_pool2d, x, g, **kw)
        assert torch.equal(f64(y), yr)
        assert torch.equal(f64(dx), dxr), kw


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("cfg", pool.POOL_CONFIGS)
def test_every_pool_config_gpu(cfg, dtype):
    x = randn(64, 200, 15, 17, dtype=dtype, channels_last=True)
    kw = {"kernel_size": 3, "stride": 2, "padding": 1}
    y, idx = pool.max_pool2d_forward(x, **kw, config=cfg)
    g = randn(*y.shape, dtype=dtype, channels_last=True)
    dx = pool.max_pool2d_backward(g, idx, x.shape, **kw, config=cfg)
    yr, dxr = _reference(F.max_pool2d, x, g, **kw)
    assert torch.equal(f64(y), yr)
    assert_close(dx, dxr, dtype, what=f"max backward {cfg}")
    y = pool.avg_pool2d_forward(x, **kw, config=cfg)
    dx = pool.avg_pool2d_backward(g, x.shape, **kw, config=cfg)
    yr, dxr = _reference(F.avg_pool2d, x, g, **kw)
    assert_close(y, yr, dtype, what=f"avg forward {cfg}")
    assert_close(dx, dxr, dtype, what=f"avg backward {cfg}")
    y = pool.adaptive_avg_pool2d_forward(x, (4, 5), config=cfg)
    g = randn(*y.shape, dtype=dtype, channels_last=True)
    dx = pool.adaptive_avg_pool2d_backward(g, x.shape, config=cfg)
    yr, dxr = _reference(F.adaptive_avg_pool2d, x, g, output_size=(4, 5))
    assert_close(y, yr, dtype, what=f"adaptive forward {cfg}")
    assert_close(dx, dxr, dtype, what=f"adaptive backward {cfg}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("cfg", pool.GLOBAL_POOL_CONFIGS)
def test_every_global_pool_config_gpu(cfg, dtype):
    x = randn(128, 1280, 7, 7, dtype=dtype, channels_last=True)
    y = pool.adaptive_avg_pool2d_forward(x, 1, config=cfg)
    assert_close(y, F.adaptive_avg_pool2d(f64(x), 1), dtype, what=f"global forward {cfg}")
