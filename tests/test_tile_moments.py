"""Batch-norm statistics from a conv's epilogue (norm_fusion.TileMoments, nn.fusion's conv ->
BN link): the same statistics, running-stat update and output as the statistics pass, without
it."""

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, TOL, assert_close, f64, randn

from tritoncnn import models, runtime
from tritoncnn.kernels import conv as K
from tritoncnn.kernels import depthwise as DW
from tritoncnn.kernels import norm, norm_fusion
from tritoncnn.kernels.depthwise_rows import ROWS_CONFIGS
from tritoncnn.nn import BatchNorm2d, Conv2d, ReLU, Sequential
from tritoncnn.nn.fusion import link_conv_bn_moments, unlink_conv_bn_moments

EPS, MOMENTUM = 1e-5, 0.1


def _reference(y: torch.Tensor, rm: torch.Tensor, rv: torch.Tensor):
    """(mean, invstd, running mean, running var) of torch's training batch norm, float64."""
    yd = f64(y)
    mean = yd.mean((0, 2, 3))
    var = yd.var((0, 2, 3), unbiased=False)
    n = yd.numel() // yd.shape[1]
    rm_ref = (1 - MOMENTUM) * f64(rm) + MOMENTUM * mean
    rv_ref = (1 - MOMENTUM) * f64(rv) + MOMENTUM * var * n / (n - 1)
    return mean, (var + EPS).rsqrt(), rm_ref, rv_ref


def _check_bn_from_moments(y: torch.Tensor, moments: norm_fusion.TileMoments, dtype, config=None):
    """batch_norm_forward_train(moments=...) against float64 torch and the statistics pass."""
    c = y.shape[1]
    w, b = randn(c, seed=3), randn(c, seed=4)
    rm, rv = randn(c, seed=5), randn(c, seed=6).abs() + 0.5
    rm_pass, rv_pass = rm.clone(), rv.clone()
    mean_ref, invstd_ref, rm_ref, rv_ref = _reference(y, rm, rv)
    out, mean, invstd = norm.batch_norm_forward_train(
        y, w, b, rm, rv, None, MOMENTUM, EPS, config=config, moments=moments
    )
    assert_close(mean, mean_ref, what="mean")
    assert_close(invstd, invstd_ref, what="invstd")
    assert_close(rm, rm_ref, what="running mean")
    assert_close(rv, rv_ref, what="running var")
    ref = F.batch_norm(f64(y), None, None, f64(w), f64(b), training=True, eps=EPS)
    assert_close(out, ref, dtype, what="output")
    # the statistics pass over the same tensor: same numbers to fp32 rounding
    _, mean_pass, invstd_pass = norm.batch_norm_forward_train(
        y, w, b, rm_pass, rv_pass, None, MOMENTUM, EPS, config=config
    )
    assert_close(mean, mean_pass, what="mean vs statistics pass")
    assert_close(invstd, invstd_pass, what="invstd vs statistics pass")


# 16-row tiles: 3 x 5 x 7 = 105 output rows make 7 partials, the last one 9 rows short
SMALL_TILE = K.ConvConfig(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "c_in,c_out,k,stride,groups,bias",
    [(5, 11, 3, 1, 1, False), (6, 20, 1, 1, 2, False), (4, 9, 3, 2, 1, True)],
    ids=["3x3", "1x1-groups2", "3x3-stride2-bias"],
)
def test_conv_epilogue_moments(c_in, c_out, k, stride, groups, bias, dtype):
    x = randn(3, c_in, 5 * stride, 7 * stride, dtype=dtype, channels_last=True, seed=1)
    w = randn(c_out, c_in // groups, k, k, seed=2)
    # a bias of 1000 + small: statistics with a large common offset (cancellation-prone)
    b = (1000 + randn(c_out, seed=7)) if bias else None
    args = (x, w, b, stride, k // 2, 1, groups)
    y, moments = K.conv2d_forward_moments(*args, config=SMALL_TILE)
    assert torch.equal(y, K.conv2d_forward(*args, config=SMALL_TILE))  # same output
    assert moments.rows == 16 and moments.partials.shape == (2, 7, c_out)
    _check_bn_from_moments(y, moments, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_depthwise_epilogue_moments_give_the_batch_statistics(dtype):
    x = randn(2, 13, 9, 7, dtype=dtype, channels_last=True, seed=1)
    w = randn(13, 1, 3, 3, seed=2)
    cfg = DW.DepthwiseConfig(block_p=16, block_c=16, num_warps=4)
    y, moments = DW.depthwise_conv2d_forward_moments(x, w, None, 2, 1, 1, config=cfg)
    assert torch.equal(y, DW.depthwise_conv2d_forward(x, w, None, 2, 1, 1, config=cfg))
    assert moments.rows == 16 and moments.partials.shape == (2, 3, 13)  # 2*5*4 = 40 pixels
    _check_bn_from_moments(y, moments, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rolling_rows_moments_give_the_batch_statistics(dtype):
    """depthwise_rows_kernel merges each output row's moments into its program's (Chan): one
    partial per group of 2 images, the last group short; a bias of 1000 + small."""
    x = randn(3, 13, 9, 7, dtype=dtype, channels_last=True, seed=1)
    w = randn(13, 1, 3, 3, seed=2)
    b = 1000 + randn(13, seed=7)
    cfg = DW.RowsConfig(pixels=16, block_c=16, num_warps=4)
    y, moments = DW.depthwise_conv2d_forward_moments(x, w, b, 1, 1, 1, config=cfg)
    assert torch.equal(y, DW.depthwise_conv2d_forward(x, w, b, 1, 1, 1, config=cfg))
    assert moments.rows == 2 * 9 * 7 and moments.partials.shape == (2, 2, 13)
    _check_bn_from_moments(y, moments, dtype)


def test_many_tiles_merge_in_slabs():
    """More partials than one program merges (several slabs, a short last slab): moments of
    two-row tiles of a 1000-row tensor, taken by torch."""
    # an offset of 50: its fp32 ulp (4e-6) keeps the normalised output within fp32's tolerance
    y = (50 + randn(10, 24, 10, 10, seed=1)).contiguous(memory_format=torch.channels_last)
    rows = 2
    tiles = f64(y).permute(0, 2, 3, 1).reshape(-1, rows, 24)  # (500, 2, C) row pairs
    mean = tiles.mean(1)
    m2 = ((tiles - mean[:, None, :]) ** 2).sum(1)
    partials = torch.stack([mean, m2]).float().to(DEVICE)
    cfg = norm.NormConfig(block_m=16, block_c=16, num_warps=4)
    slab = norm.TILE_MERGE_ITERS * norm.stage2_block(cfg)
    assert slab < 500 < 2 * slab  # two slabs, the last one short
    _check_bn_from_moments(y, norm_fusion.TileMoments(partials, rows), torch.float32, config=cfg)


def test_moments_of_the_wrong_shape_are_refused():
    y = randn(2, 8, 4, 4, channels_last=True)
    bad = norm_fusion.tile_moments(32, 9, 16)  # 9 channels for an 8-channel input
    with pytest.raises(ValueError, match="tile moments"):
        norm.batch_norm_forward_train(y, None, None, None, None, None, 0.1, EPS, moments=bad)


def _conv_bn(dw: bool = False) -> Sequential:
    conv = Conv2d(6, 6, 3, 1, 1, groups=6 if dw else 1, bias=False)
    return Sequential(conv, BatchNorm2d(6), ReLU())


@pytest.mark.parametrize("dw", [False, True], ids=["dense", "depthwise"])
def test_linked_layers_skip_the_statistics_pass_and_match(dw, monkeypatch):
    plain, linked = _conv_bn(dw), _conv_bn(dw)
    linked.load_state_dict(plain.state_dict())
    assert link_conv_bn_moments(linked) == 1 and link_conv_bn_moments(linked) == 0
    x = randn(3, 6, 5, 7, channels_last=True, seed=1)
    ref = plain(x)

    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("the linked BatchNorm ran its own statistics pass")

    monkeypatch.setattr(norm, "bn_stats_kernel", NoLaunch())
    got = linked(x)
    monkeypatch.undo()
    assert_close(got, ref, tol=TOL[torch.float32] / 10, what="output")
    for key, value in plain.state_dict().items():  # running stats, num_batches_tracked
        assert_close(linked.state_dict()[key], value, what=key)
    g = randn(*ref.shape, channels_last=True, seed=2)
    assert_close(linked.backward(g), plain.backward(g), what="input grad")
    assert_close(linked[0].weight.grad, plain[0].weight.grad, what="conv weight grad")


def test_link_falls_back_when_the_bn_gets_another_tensor_or_is_in_eval():
    seq = _conv_bn()
    link_conv_bn_moments(seq)
    conv, bn = seq[0], seq[1]
    x = randn(2, 6, 4, 4, channels_last=True, seed=1)
    conv(x)  # publishes moments of its output...
    other = randn(2, 6, 4, 4, channels_last=True, seed=2)
    _, mean, invstd = norm.batch_norm_forward_train(other, None, None, None, None, None, 0.1, EPS)
    bn(other)  # ...which must not be used for another input
    assert_close(bn._saved[2], mean, what="mean of the other tensor")
    assert bn.moments_link._output is None  # and nothing stays held
    seq.eval()
    assert not conv.moments_link.wanted()  # running statistics: the conv stores no moments
    assert unlink_conv_bn_moments(seq) == 1 and conv.moments_link is None


# (build name, kwargs, conv -> BatchNorm2d pairs: every BatchNorm2d of these nets)
MODELS = [
    ("resnet18", dict(widths=(4, 6, 8, 10)), 1 + 8 * 2 + 3),  # stem, 2 per block, 3 downsample
    (
        "mobilenetv2",
        dict(width_mult=0.25, round_nearest=4, inverted_residual_setting=((1, 16, 1, 1),)),
        1 + 2 + 1,  # stem, block (depthwise + projection), last 1x1 conv
    ),
    ("baseline", dict(filters=(4, 6, 5), units=(12, 7), dropout=0.0), 3),
]


@pytest.mark.parametrize("name,kw,pairs", MODELS, ids=[m[0] for m in MODELS])
def test_build_links_every_conv_bn_pair(name, kw, pairs):
    model = models.build(name, num_classes=5, image_size=8, **kw)  # on by default
    links = {id(m.moments_link) for m in model.modules() if isinstance(m, BatchNorm2d)}
    assert len(links) == pairs and id(None) not in links
    plain = models.build(name, num_classes=5, image_size=8, conv_bn_moments=False, **kw)
    assert all(m.moments_link is None for m in plain.modules() if isinstance(m, BatchNorm2d))


# --- GPU tier: real shapes, the autotuned tile ------------------------------------------------

GPU_SHAPES = [
    # (batch, c_in, c_out, size, kernel, stride, groups): MobileNetV2-CIFAR and ResNet-18 layers
    (128, 24, 144, 32, 1, 1, 1),
    (128, 144, 24, 32, 1, 1, 1),
    (128, 64, 64, 32, 3, 1, 1),
    (128, 256, 512, 8, 3, 2, 1),
    (128, 144, 144, 32, 3, 2, 144),
    (128, 960, 960, 4, 3, 1, 960),
]


@pytest.mark.gpu
@pytest.mark.parametrize("config", ROWS_CONFIGS, ids=str)
@pytest.mark.parametrize("c,size", [(144, 32), (192, 16), (960, 4)])
def test_gpu_rolling_rows_moments(config, c, size):
    x = randn(128, c, size, size, dtype=torch.float16, channels_last=True, seed=1)
    w = randn(c, 1, 3, 3, seed=2) / 3
    y, moments = DW.depthwise_conv2d_forward_moments(x, w, None, 1, 1, 1, config=config)
    _check_bn_from_moments(y, moments, torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("n,c_in,c_out,size,k,stride,groups", GPU_SHAPES)
def test_gpu_epilogue_moments(n, c_in, c_out, size, k, stride, groups):
    dtype = torch.float16
    x = randn(n, c_in, size, size, dtype=dtype, channels_last=True, seed=1)
    w = randn(c_out, c_in // groups, k, k, seed=2) / (c_in // groups * k * k) ** 0.5
    if groups == c_in:
        y, moments = DW.depthwise_conv2d_forward_moments(x, w, None, stride, k // 2, 1)
    else:
        args = (x, w.to(dtype), None, stride, k // 2, 1, groups)
        y, moments = K.conv2d_forward_moments(*args)
    assert runtime.DEVICE.type == "cuda"
    _check_bn_from_moments(y, moments, dtype)
