"""Depthwise conv kernels (forward, dgrad, wgrad) against torch's grouped conv2d in float64."""

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_close, f64, randn

from tritoncnn import runtime
from tritoncnn.kernels import depthwise as dw
from tritoncnn.kernels.depthwise_rows import ROWS_CONFIGS, RowsConfig, rows_conv
from tritoncnn.kernels.elementwise import ACT_NONE, ACT_RELU6


def _ref64(t: torch.Tensor) -> torch.Tensor:
    """float64 copy on the kernel device (the GPU tier's references stay on the GPU)."""
    return t.detach().to(DEVICE, torch.float64)


def _check(
    n, c, hw, k, stride, pad, dil, dtype,
    act=ACT_NONE, bias=True, channels_last=True, config=None, wgrad_config=None,
    odd_weight_strides=False,
):  # fmt: skip
    """Forward (optionally fused bias + relu6), dgrad, and wgrad in write and accumulate mode."""
    h, w = hw
    kh, kw = k
    x = randn(n, c, h, w, dtype=dtype, channels_last=channels_last)
    if act == ACT_RELU6:
        x = x * 4  # so the relu6 cap at 6 is reached
    # the layer stores its weight channels_last; its logical shape is C,1,KH,KW
    weight = randn(c, 1, kh, kw).contiguous(memory_format=torch.channels_last)
    if odd_weight_strides:  # a transposed view: kw is no longer the unit-stride axis
        weight = randn(c, 1, kw, kh).transpose(2, 3)
    b = randn(c) if bias else None

    xr = _ref64(x).requires_grad_()
    wr = _ref64(weight).requires_grad_()
    br = _ref64(b) if bias else None
    yr = F.conv2d(xr, wr, br, stride, pad, dil, groups=c)
    ho, wo = yr.shape[2:]
    g = randn(n, c, ho, wo, dtype=dtype, channels_last=channels_last)
    yr.backward(_ref64(g))
    if act == ACT_RELU6:
        yr = yr.clamp(0.0, 6.0)

    y = dw.depthwise_conv2d_forward(x, weight, b, stride, pad, dil, act=act, config=config)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, yr, dtype, what="forward")

    gi = dw.depthwise_conv2d_dgrad(g, weight, x.shape, stride, pad, dil, config=config)
    assert gi.dtype == dtype and gi.is_contiguous(memory_format=torch.channels_last)
    assert_close(gi, xr.grad, dtype, what="dgrad")

    if not channels_last:  # the layer may ask for the gradient in the input's own layout
        out = runtime.empty_like(x)
        assert dw.depthwise_conv2d_dgrad(g, weight, x.shape, stride, pad, dil, out=out) is out
        assert_close(out, xr.grad, dtype, what="dgrad into out")

    gw = dw.depthwise_conv2d_wgrad(x, g, weight.shape, stride, pad, dil, config=wgrad_config)
    assert gw.dtype == torch.float32 and gw.shape == weight.shape
    assert_close(gw, wr.grad, dtype, what="wgrad")

    prior = randn(c, 1, kw, kh).transpose(2, 3) if odd_weight_strides else randn(c, 1, kh, kw)
    acc = prior.clone()  # clone keeps the strides
    assert acc.stride() == prior.stride()
    out = dw.depthwise_conv2d_wgrad(x, g, weight.shape, stride, pad, dil, grad_weight=acc)
    assert out is acc
    assert_close(acc, wr.grad + _ref64(prior), dtype, what="wgrad accumulate")


# (C, image HxW, kernel, stride, padding, dilation): odd sizes, C=20 is not a multiple of any
# channel block, 7x5 images leave partial pixel tiles.
CPU_CASES = [
    (3, (7, 5), (3, 3), (1, 1), (1, 1), (1, 1)),
    (20, (7, 5), (3, 3), (2, 2), (1, 1), (1, 1)),
    (20, (7, 5), (5, 5), (1, 1), (2, 2), (1, 1)),
    (3, (7, 5), (5, 5), (2, 2), (2, 2), (1, 1)),
    (20, (7, 5), (3, 3), (1, 1), (0, 0), (1, 1)),
    (3, (7, 5), (3, 3), (2, 2), (2, 2), (2, 2)),
    (20, (7, 5), (3, 3), (1, 2), (2, 1), (2, 1)),  # mixed stride / padding / dilation
    (3, (7, 5), (1, 3), (2, 1), (0, 1), (1, 1)),  # non-square kernel
]


def _case_id(case) -> str:
    c, _, k, s, p, d = case
    return f"c{c}_k{k[0]}x{k[1]}_s{s[0]}{s[1]}_p{p[0]}{p[1]}_d{d[0]}{d[1]}"


def _shape_id(shape) -> str:
    c, hw, s = shape
    return f"c{c}_{hw}x{hw}_s{s}"


@pytest.mark.parametrize("case", CPU_CASES, ids=_case_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_depthwise(case, dtype):
    c, hw, k, stride, pad, dil = case
    # alternate the fused relu6 and plain bias epilogues over the cases
    act = ACT_RELU6 if CPU_CASES.index(case) % 2 else ACT_NONE
    _check(2, c, hw, k, stride, pad, dil, dtype, act=act)


def test_no_bias_nchw_input_odd_weight_strides():
    """NCHW-contiguous activations and a transposed weight view are read through their
    strides; activation outputs are still NHWC."""
    _check(2, 20, (7, 5), (5, 3), (2, 1), (1, 1), (1, 1), torch.float32, bias=False,
           channels_last=False, odd_weight_strides=True)  # fmt: skip


def test_int_arguments():
    x = randn(1, 3, 5, 7, channels_last=True)
    weight = randn(3, 1, 3, 3)
    y = dw.depthwise_conv2d_forward(x, weight, None, 2, 1, 1)
    assert_close(y, F.conv2d(_ref64(x), _ref64(weight), None, 2, 1, 1, groups=3))


@pytest.mark.parametrize("config", dw.CONFIGS, ids=str)
def test_every_config(config):
    _check(2, 20, (7, 5), (3, 3), (2, 2), (1, 1), (1, 1), torch.float32, config=config)


@pytest.mark.parametrize("config", dw.WGRAD_CONFIGS, ids=str)
def test_every_wgrad_config(config):
    _check(2, 20, (7, 5), (3, 3), (1, 1), (1, 1), (1, 1), torch.float16, wgrad_config=config)


def test_heuristics_pick_listed_configs(monkeypatch):
    # the GPU heuristic (the interpreter takes its own large tiles)
    monkeypatch.setattr(dw.runtime, "INTERPRETED", False)
    for c in (3, 20, 32, 96, 144, 192, 384, 576, 960, 1280):
        for pixels in (70, 512, 128 * 32 * 32):
            assert dw.pick_config(c, pixels) in dw.CONFIGS
        assert dw.pick_wgrad_config(c) in dw.WGRAD_CONFIGS
        assert dw.pick_wgrad_config(c).all_taps == dw.WGRAD_ALL_TAPS
        for width in (2, 4, 8, 16, 32, 7):
            assert dw.pick_rows_config(c, width) in ROWS_CONFIGS
        assert not dw.pick_wgrad_config(c, (5, 5)).all_taps  # one program per tap


@pytest.mark.parametrize("all_taps", [False, True])
def test_wgrad_multi_tile_programs(monkeypatch, all_taps):
    """Few stage-1 programs of the flat kernels: each loops over several pixel tiles
    (ITERS > 1), one tap or all nine per program."""
    monkeypatch.setattr(dw, "WGRAD_ROLLING_ROWS", False)  # a stride-1 3x3 would take the rows
    monkeypatch.setattr(dw, "_WGRAD_TARGET_PROGRAMS", 3)
    monkeypatch.setattr(dw, "_WGRAD_ALL_TAPS_PROGRAMS", 3)
    monkeypatch.setattr(dw, "WGRAD_ALL_TAPS", all_taps)
    monkeypatch.setattr(dw.runtime, "INTERPRETED", False)  # use that target, not the CPU's
    _check(2, 20, (7, 5), (3, 3), (1, 1), (1, 1), (1, 1), torch.float32)


def test_wgrad_deterministic():
    x = randn(3, 20, 7, 5, channels_last=True)
    g = randn(3, 20, 4, 3, channels_last=True)
    a = dw.depthwise_conv2d_wgrad(x, g, (20, 1, 3, 3), (2, 2), (1, 1), (1, 1))
    b = dw.depthwise_conv2d_wgrad(x, g, (20, 1, 3, 3), (2, 2), (1, 1), (1, 1))
    assert torch.equal(a, b)


# Rolling-rows kernel (depthwise_rows.py; 3x3, stride 1, padding 1): partial image groups
# (3 images in groups of 2), a single row, a single column, a power-of-two width, C = 20 / 40
# / 3 not a multiple of the channel block.
ROWS_CASES = [(3, 20, 7, 5), (2, 3, 1, 9), (5, 40, 6, 1), (1, 17, 4, 16)]
ROWS_CPU_CONFIGS = [RowsConfig(16, 16, 4, 2), RowsConfig(32, 32, 2, 1)]


@pytest.mark.parametrize("shape", ROWS_CASES, ids=str)
@pytest.mark.parametrize("config", ROWS_CPU_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_rolling_rows(shape, config, dtype):
    n, c, h, w = shape
    act = ACT_RELU6 if ROWS_CASES.index(shape) % 2 else ACT_NONE
    args = (n, c, (h, w), (3, 3), (1, 1), (1, 1), (1, 1), dtype)
    _check(*args, act=act, config=config, wgrad_config=config)


def test_rolling_rows_nchw_and_odd_weight_strides():
    """NCHW activations, a transposed weight view (the dgrad rotates it through negated
    strides), the gradient written into an NCHW ``out``."""
    _check(2, 20, (7, 5), (3, 3), (1, 1), (1, 1), (1, 1), torch.float32, bias=False,
           channels_last=False, odd_weight_strides=True, config=ROWS_CPU_CONFIGS[0],
           wgrad_config=ROWS_CPU_CONFIGS[0])  # fmt: skip


def test_rolling_rows_is_the_default_when_on(monkeypatch):
    """With ROLLING_ROWS, qualifying convs take it (same numbers as the flat kernels to fp32
    rounding) and the others keep the flat kernels."""
    x = randn(2, 20, 7, 5, channels_last=True)
    weight = randn(20, 1, 3, 3)
    flat = dw.depthwise_conv2d_forward(x, weight, None, 1, 1, 1)
    monkeypatch.setattr(dw, "ROLLING_ROWS", True)
    calls = []
    monkeypatch.setattr(dw, "rows_conv", lambda *a, **k: calls.append(1) or rows_conv(*a, **k))
    assert_close(dw.depthwise_conv2d_forward(x, weight, None, 1, 1, 1), f64(flat))
    dw.depthwise_conv2d_dgrad(x, weight, x.shape, 1, 1, 1)
    assert len(calls) == 2
    dw.depthwise_conv2d_forward(x, weight, None, 2, 1, 1)  # stride 2: the flat kernel
    dw.depthwise_conv2d_forward(x, randn(20, 1, 5, 5), None, 1, 2, 1)  # 5x5
    assert len(calls) == 2


def test_rolling_rows_wgrad_is_the_default(monkeypatch):
    """WGRAD_ROLLING_ROWS is on: qualifying weight gradients take depthwise_rows_wgrad_kernel
    (the flat kernels' numbers to fp32 rounding; deterministic) and the others don't."""
    assert dw.WGRAD_ROLLING_ROWS
    x, g = randn(3, 20, 7, 5, channels_last=True), randn(3, 20, 7, 5, channels_last=True)
    monkeypatch.setattr(dw, "WGRAD_ROLLING_ROWS", False)
    flat = dw.depthwise_conv2d_wgrad(x, g, (20, 1, 3, 3), 1, 1, 1)
    monkeypatch.setattr(dw, "WGRAD_ROLLING_ROWS", True)
    calls = []
    stage1 = dw.rows_wgrad_partials
    monkeypatch.setattr(dw, "rows_wgrad_partials", lambda *a: calls.append(1) or stage1(*a))
    rows = dw.depthwise_conv2d_wgrad(x, g, (20, 1, 3, 3), 1, 1, 1)
    assert_close(rows, f64(flat))
    assert torch.equal(rows, dw.depthwise_conv2d_wgrad(x, g, (20, 1, 3, 3), 1, 1, 1))
    assert len(calls) == 2
    dw.depthwise_conv2d_wgrad(x, g[:, :, ::2, ::2], (20, 1, 3, 3), 2, 1, 1)  # stride 2
    assert len(calls) == 2


def test_rolling_rows_refuses_other_convs():
    x = randn(1, 4, 5, 5, channels_last=True)
    cfg = ROWS_CPU_CONFIGS[0]
    for stride, pad, dil, k in ((2, 1, 1, 3), (1, 0, 1, 3), (1, 2, 2, 3), (1, 2, 1, 5)):
        with pytest.raises(ValueError, match="RowsConfig"):
            dw.depthwise_conv2d_forward(x, randn(4, 1, k, k), None, stride, pad, dil, config=cfg)
        y = dw.depthwise_conv2d_forward(x, randn(4, 1, k, k), None, stride, pad, dil)
        with pytest.raises(ValueError, match="RowsConfig"):
            dw.depthwise_conv2d_wgrad(x, y, (4, 1, k, k), stride, pad, dil, config=cfg)


def test_shape_errors():
    x = randn(1, 4, 5, 5, channels_last=True)
    with pytest.raises(ValueError):
        dw.depthwise_conv2d_forward(x, randn(4, 2, 3, 3), None, 1, 1, 1)
    with pytest.raises(ValueError):
        dw.depthwise_conv2d_dgrad(randn(1, 4, 4, 4), randn(4, 1, 3, 3), x.shape, 1, 1, 1)


# --- GPU tier --------------------------------------------------------------------------------

# Every depthwise conv of MobileNetV2's CIFAR variant (stride-1 stem on 32x32 inputs), as
# (channels, image size, stride), plus the common tweak that keeps the second block at stride 1.
MOBILENETV2_DW = [
    (32, 32, 1),
    (96, 32, 2),
    (96, 32, 1),
    (144, 32, 1),
    (144, 16, 1),
    (144, 16, 2),
    (192, 8, 1),
    (192, 8, 2),
    (384, 4, 1),
    (576, 4, 1),
    (576, 4, 2),
    (960, 2, 1),
]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# big / strided / tiny-image layers for the forced-config runs
CONFIG_SHAPES_GPU = [(32, 32, 1), (144, 16, 2), (960, 2, 1)]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", MOBILENETV2_DW, ids=_shape_id)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_mobilenetv2_shapes_gpu(shape, dtype):
    if dtype == torch.bfloat16 and not runtime.bf16_supported():
        pytest.skip("bf16 needs sm_80+")
    c, hw, s = shape
    _check(128, c, (hw, hw), (3, 3), (s, s), (1, 1), (1, 1), dtype, act=ACT_RELU6)


@pytest.mark.gpu
@pytest.mark.parametrize("config", dw.CONFIGS, ids=str)
@pytest.mark.parametrize("shape", CONFIG_SHAPES_GPU, ids=_shape_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_every_config_gpu(config, shape, dtype):
    c, hw, s = shape
    _check(128, c, (hw, hw), (3, 3), (s, s), (1, 1), (1, 1), dtype, config=config)


@pytest.mark.gpu
@pytest.mark.parametrize("config", dw.WGRAD_CONFIGS, ids=str)
@pytest.mark.parametrize("shape", CONFIG_SHAPES_GPU, ids=_shape_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_every_wgrad_config_gpu(config, shape, dtype):
    c, hw, s = shape
    _check(128, c, (hw, hw), (3, 3), (s, s), (1, 1), (1, 1), dtype, wgrad_config=config)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_odd_shapes_gpu(dtype):
    """5x5 / dilated / NCHW input at a real batch: the general paths beyond MobileNetV2."""
    _check(64, 100, (17, 13), (5, 5), (2, 2), (2, 2), (1, 1), dtype)
    _check(64, 100, (17, 13), (3, 3), (1, 1), (2, 2), (2, 2), dtype, channels_last=False)


@pytest.mark.gpu
@pytest.mark.parametrize("config", ROWS_CONFIGS, ids=str)
@pytest.mark.parametrize("shape", [s for s in MOBILENETV2_DW if s[2] == 1], ids=_shape_id)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_rolling_rows_gpu(config, shape, dtype):
    """Every rolling-rows tile at every stride-1 depthwise shape of MobileNetV2 (2x2 to 32x32
    images: one to sixteen images per row tile)."""
    if dtype == torch.bfloat16 and not runtime.bf16_supported():
        pytest.skip("bf16 needs sm_80+")
    c, hw, _ = shape
    args = (128, c, (hw, hw), (3, 3), (1, 1), (1, 1), (1, 1), dtype)
    _check(*args, act=ACT_RELU6, config=config, wgrad_config=config)
