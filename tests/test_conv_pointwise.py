"""The persistent 1x1 kernel (kernels/conv_pointwise.py) against torch in float64: the
forward and the input gradient, odd row and channel counts, every tile, bias and activation,
the per-tile batch-norm moments, poisoned outputs (every element must be written), and
conv2d_forward's and conv2d_dgrad's dispatch."""

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_close, randn

from tritoncnn.kernels import conv as conv_k
from tritoncnn.kernels import conv_pointwise as pw
from tritoncnn.kernels.elementwise import ACT_NONE, ACT_RELU6

# (on the CPU tier, small tiles: the interpreter runs one program, which walks every row tile)
CPU_CONFIG = pw.PointwiseConfig(16, 32, 4, 2, (4,) * 4, (4,) * 4, (4,) * 4, per_sm_sums=4)


def _run(n, c_in, c_out, hw, dtype, cfg, bias=True, act=ACT_NONE, fp32_weight=False):
    x = randn(n, c_in, hw, hw, dtype=dtype, channels_last=True)
    weight = randn(c_out, c_in, 1, 1)
    if not fp32_weight:  # the layer's 16-bit copy (nn.Conv2d's default)
        weight = weight.to(dtype)
    b = randn(c_out) if bias else None
    ref = F.conv2d(x.double(), weight.double(), None if b is None else b.double())
    if act == ACT_RELU6:
        ref = ref.clamp(0.0, 6.0)
    out = torch.full((n, c_out, hw, hw), float("nan"), dtype=dtype, device=DEVICE)
    out = out.contiguous(memory_format=torch.channels_last)
    tiles = pw.conv2d_forward_pointwise(x, weight, b, out, act, 0.0, True, cfg)
    assert not out.isnan().any(), "unwritten outputs"
    assert_close(out, ref, dtype, what="pointwise forward")
    return out, tiles, cfg.block_m


def _check_moments(out: torch.Tensor, tiles, rows: int) -> None:
    """Each partial is the (mean, M2) of its BLOCK_M rows of the output as stored."""
    c = out.shape[1]
    y = out.double().permute(0, 2, 3, 1).reshape(-1, c)
    assert tiles.rows == rows and tiles.partials.shape == (2, -(-y.shape[0] // rows), c)
    for t in range(tiles.partials.shape[1]):
        block = y[t * rows : (t + 1) * rows]
        mean = block.mean(0)
        m2 = ((block - mean) ** 2).sum(0)
        torch.testing.assert_close(tiles.partials[0, t].double(), mean, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(tiles.partials[1, t].double(), m2, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    "n,c_in,c_out,hw",
    [(2, 24, 144, 5), (3, 16, 40, 3), (1, 8, 24, 7), (1, 128, 33, 3)],
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pointwise_forward_and_moments(n, c_in, c_out, hw, dtype):
    out, tiles, rows = _run(n, c_in, c_out, hw, dtype, CPU_CONFIG)
    _check_moments(out, tiles, rows)


@pytest.mark.parametrize("n,c_in,c_out,hw", [(2, 24, 144, 5), (1, 128, 33, 3)])
def test_pointwise_forward_one_pass_moments(n, c_in, c_out, hw, monkeypatch):
    """ONE_PASS_MOMENTS: the same per-tile (mean, M2), merged by Chan's formula in one
    reduction; the last row tile is partial (masked rows add nothing)."""
    monkeypatch.setattr(pw, "ONE_PASS_MOMENTS", True)
    out, tiles, rows = _run(n, c_in, c_out, hw, torch.float16, CPU_CONFIG)
    _check_moments(out, tiles, rows)


def test_one_pass_moments_far_from_zero(monkeypatch):
    """Outputs whose mean is ~250x their spread (a large bias): M2 from the merged groups
    keeps its digits, as the two-pass form does (a plain sum of squares minus the squared
    sum would lose ~1e-3 of it in fp32)."""
    monkeypatch.setattr(pw, "ONE_PASS_MOMENTS", True)
    x = randn(2, 16, 4, 4, dtype=torch.float16, channels_last=True)
    weight = randn(24, 16, 1, 1).to(torch.float16)
    bias = torch.full((24,), 1000.0, device=DEVICE)
    out = torch.full((2, 24, 4, 4), float("nan"), dtype=torch.float16, device=DEVICE)
    out = out.contiguous(memory_format=torch.channels_last)
    tiles = pw.conv2d_forward_pointwise(x, weight, bias, out, ACT_NONE, 0.0, True, CPU_CONFIG)
    y = out.double().permute(0, 2, 3, 1).reshape(-1, 24)
    rows = CPU_CONFIG.block_m
    for t in range(tiles.partials.shape[1]):
        block = y[t * rows : (t + 1) * rows]
        m2 = ((block - block.mean(0)) ** 2).sum(0)
        assert m2.min() > rows, "the outputs must spread inside a tile for this check"
        torch.testing.assert_close(tiles.partials[0, t].double(), block.mean(0), rtol=1e-6, atol=0)
        torch.testing.assert_close(tiles.partials[1, t].double(), m2, rtol=1e-4, atol=0)


def test_pointwise_relu6_without_bias_fp32_weight():
    """A fused activation, no bias, the fp32 master weight (cast as it is loaded)."""
    _run(2, 24, 48, 3, torch.float16, CPU_CONFIG, bias=False, act=ACT_RELU6, fp32_weight=True)


def _run_dgrad(n, c_in, c_out, hw, dtype, cfg, fp32_weight=False):
    """dx of a c_in -> c_out 1x1 conv (a reduction over c_out) into a poisoned output."""
    g = randn(n, c_out, hw, hw, dtype=dtype, channels_last=True)
    weight = randn(c_out, c_in, 1, 1)
    if not fp32_weight:
        weight = weight.to(dtype)
    ref = torch.nn.grad.conv2d_input((n, c_in, hw, hw), weight.double(), g.double())
    out = torch.full((n, c_in, hw, hw), float("nan"), dtype=dtype, device=DEVICE)
    out = out.contiguous(memory_format=torch.channels_last)
    pw.conv2d_dgrad_pointwise(g, weight, out, cfg)
    assert not out.isnan().any(), "unwritten outputs"
    assert_close(out, ref, dtype, what="pointwise dgrad")


@pytest.mark.parametrize("n,c_in,c_out,hw", [(2, 144, 24, 5), (3, 40, 16, 3), (1, 33, 128, 3)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pointwise_dgrad(n, c_in, c_out, hw, dtype):
    _run_dgrad(n, c_in, c_out, hw, dtype, CPU_CONFIG)


def test_pointwise_dgrad_fp32_weight():
    _run_dgrad(2, 48, 24, 3, torch.float16, CPU_CONFIG, fp32_weight=True)


def test_conv2d_dgrad_takes_it_when_enabled(monkeypatch):
    """With ENABLED, a plain 1x1 dgrad with a short reduction goes here; one with an added
    gradient (the skip's, in its epilogue) stays on the pointer kernel, and a pointwise tile
    forced on it is an error."""
    g = randn(2, 24, 5, 5, dtype=torch.float16, channels_last=True)
    w = randn(24, 40, 1, 1).to(torch.float16)
    shape = (2, 40, 5, 5)
    ref = torch.nn.grad.conv2d_input(shape, w.double(), g.double())
    calls = []
    real = pw.conv2d_dgrad_pointwise
    monkeypatch.setattr(pw, "conv2d_dgrad_pointwise", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(pw, "ENABLED", False)
    conv_k.conv2d_dgrad(g, w, shape, 1, 0, 1, 1)
    assert not calls
    monkeypatch.setattr(pw, "ENABLED", True)
    monkeypatch.setattr(pw, "pick_pointwise_config", lambda c, sums=False: CPU_CONFIG)
    assert_close(conv_k.conv2d_dgrad(g, w, shape, 1, 0, 1, 1), ref, torch.float16, what="dgrad")
    assert len(calls) == 1
    add = randn(*shape, dtype=torch.float16, channels_last=True)
    summed = conv_k.conv2d_dgrad(g, w, shape, 1, 0, 1, 1, add=add)
    assert len(calls) == 1
    assert_close(summed, ref + add.double(), torch.float16, what="dgrad + add")
    with pytest.raises(ValueError, match="pointwise tile"):
        conv_k.conv2d_dgrad(g, w, shape, 1, 0, 1, 1, config=CPU_CONFIG, add=add)


def test_applicability():
    x = randn(2, 24, 4, 4, dtype=torch.float16, channels_last=True)
    w = randn(48, 24, 1, 1)
    ok = pw.pointwise_applicable
    assert ok(x, w, (1, 1), (0, 0, 0, 0), (1, 1), 1)
    assert not ok(x, w, (2, 2), (0, 0, 0, 0), (1, 1), 1)  # strided
    assert not ok(x.contiguous(), w, (1, 1), (0, 0, 0, 0), (1, 1), 1)  # NCHW
    assert not ok(x.float(), w, (1, 1), (0, 0, 0, 0), (1, 1), 1)  # fp32 activations
    assert not ok(x, randn(48, 24, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)  # 3x3
    wide = randn(2, 256, 4, 4, dtype=torch.float16, channels_last=True)
    assert not ok(wide, randn(48, 256, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1)  # long K


def test_programs_per_sm_by_reduction():
    """resident_per_sm reads a tile's count for its use at its BLOCK_K (the registers ptxas
    gives it there: test_ptx.py); a tile without a sums count refuses the sums use."""
    plain, wide, small, deep = pw.POINTWISE_CONFIGS
    assert [pw.resident_per_sm(small, k) for k in (16, 24, 64, 96)] == [7, 6, 5, 6]
    assert pw.resident_per_sm(small, 64, "one_pass") == 4
    assert [pw.resident_per_sm(small, k, "plain") for k in (9, 64)] == [8, 5]
    assert pw.resident_per_sm(small, 64, "sums") == small.per_sm_sums == 2
    assert pw.resident_per_sm(plain, 64) == 3 and pw.resident_per_sm(plain, 33) == 3
    assert pw.resident_per_sm(plain, 64, "one_pass") == 2
    assert pw.resident_per_sm(wide, 16) == 2 and pw.resident_per_sm(wide, 24) == 1
    assert pw.resident_per_sm(deep, 48) == 2 and pw.resident_per_sm(deep, 32) == 3
    with pytest.raises(ValueError, match="sums"):
        pw.resident_per_sm(plain, 24, "sums")


def test_launch_sizes_its_grid_by_the_use(monkeypatch):
    """Each launch reads the programs per SM of what it runs: the forward with two-pass or
    one-pass moments, either GEMM without them, the dgrad with a batch norm's sums (a count
    for the wrong use would overclaim: a second wave of persistent programs)."""
    from tritoncnn.kernels.norm_fusion import PendingNorm

    uses = []
    real = pw.resident_per_sm
    monkeypatch.setattr(pw, "resident_per_sm", lambda *a: uses.append(a[2]) or real(*a))
    x = randn(1, 16, 3, 3, dtype=torch.float16, channels_last=True)
    w = randn(24, 16, 1, 1).to(torch.float16)
    y = torch.empty(1, 24, 3, 3, dtype=torch.float16, device=DEVICE)
    y = y.contiguous(memory_format=torch.channels_last)
    pw.conv2d_forward_pointwise(x, w, None, y, ACT_NONE, 0.0, True, CPU_CONFIG)
    pw.conv2d_forward_pointwise(x, w, None, y, ACT_NONE, 0.0, False, CPU_CONFIG)
    monkeypatch.setattr(pw, "ONE_PASS_MOMENTS", True)
    pw.conv2d_forward_pointwise(x, w, None, y, ACT_NONE, 0.0, True, CPU_CONFIG)
    dx = torch.empty_like(x)
    pw.conv2d_dgrad_pointwise(y, w, dx, CPU_CONFIG)
    stats = randn(16), randn(16).abs() + 0.5
    pw.conv2d_dgrad_pointwise(y, w, dx, CPU_CONFIG, PendingNorm(*stats, None, None, 0, 0.0), x)
    assert uses == ["moments", "plain", "one_pass", "plain", "sums"]


def test_conv2d_forward_takes_it_when_enabled(monkeypatch):
    """With ENABLED, conv2d_forward_moments sends a qualifying 1x1 forward here (the
    heuristic's tile) and returns its moments; off (the default), the pointer kernel."""
    x = randn(2, 24, 5, 5, dtype=torch.float16, channels_last=True)
    w = randn(40, 24, 1, 1).to(torch.float16)
    ref = F.conv2d(x.double(), w.double())
    calls = []
    real = pw.conv2d_forward_pointwise
    monkeypatch.setattr(pw, "conv2d_forward_pointwise", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(pw, "ENABLED", False)
    conv_k.conv2d_forward_moments(x, w, None, 1, 0, 1, 1)
    assert not calls
    monkeypatch.setattr(pw, "ENABLED", True)
    monkeypatch.setattr(pw, "pick_pointwise_config", lambda c_out, sums=False: CPU_CONFIG)
    y, tiles = conv_k.conv2d_forward_moments(x, w, None, 1, 0, 1, 1)
    assert len(calls) == 1 and tiles.rows == CPU_CONFIG.block_m
    assert_close(y, ref, torch.float16, what="dispatched forward")
    _check_moments(y, tiles, CPU_CONFIG.block_m)


def test_forced_pointwise_tile_on_a_3x3_conv_is_an_error():
    x = randn(1, 8, 4, 4, dtype=torch.float16, channels_last=True)
    w = randn(8, 8, 3, 3)
    with pytest.raises(ValueError, match="pointwise tile"):
        conv_k.conv2d_forward(x, w, None, 1, 1, 1, 1, config=CPU_CONFIG)


# GPU tier: MobileNetV2's short-K 1x1 forwards at b64, every tile.
@pytest.mark.gpu
@pytest.mark.parametrize("cfg", pw.POINTWISE_CONFIGS)
@pytest.mark.parametrize(
    "c_in,c_out,hw",
    [(16, 96, 32), (24, 144, 32), (32, 192, 16), (64, 384, 8), (96, 576, 8), (128, 40, 7)],
)
def test_pointwise_gpu(cfg, c_in, c_out, hw):
    out, tiles, rows = _run(64, c_in, c_out, hw, torch.float16, cfg)
    if c_out <= 144:  # (the per-tile loop in float64 is slow on wide layers)
        _check_moments(out, tiles, rows)


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", pw.POINTWISE_CONFIGS)
@pytest.mark.parametrize("c_in,c_out,hw", [(16, 96, 32), (24, 144, 32), (64, 384, 8)])
def test_pointwise_one_pass_moments_gpu(cfg, c_in, c_out, hw, monkeypatch):
    """The one-pass moments epilogue (ONE_PASS_MOMENTS) on every tile at real shapes."""
    monkeypatch.setattr(pw, "ONE_PASS_MOMENTS", True)
    out, tiles, rows = _run(64, c_in, c_out, hw, torch.float16, cfg)
    _check_moments(out, tiles, rows)


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", pw.POINTWISE_CONFIGS)
@pytest.mark.parametrize(
    "c_in,c_out,hw", [(96, 16, 32), (144, 24, 32), (192, 32, 16), (384, 64, 8), (576, 96, 8)]
)
def test_pointwise_dgrad_gpu(cfg, c_in, c_out, hw):
    """MobileNetV2's projection dgrads (reductions over 16-96 channels) at b64, every tile."""
    _run_dgrad(64, c_in, c_out, hw, torch.float16, cfg)


@pytest.mark.gpu
def test_pointwise_gpu_bf16_relu6_fp32_weight():
    cfg = pw.pick_pointwise_config(144)
    _run(32, 24, 144, 32, torch.bfloat16, cfg, act=ACT_RELU6, fp32_weight=True)


# every off-by-default MobileNetV2 option that changes what the 1x1 GEMMs do
ALL_OPTIONS = dict(bn_grad_sums=True, bn_into_depthwise=True)


def _mobilenetv2_with_pointwise(monkeypatch, batch: int, width: float, **options) -> None:
    """MobileNetV2 (CIFAR, fp16 activations) with its short-K 1x1 forwards and dgrads on the
    pointwise kernel (and ``options`` of models.build), against its float64 torch twin as
    test_models holds every model."""
    from test_models import check_against_twin, randn_input, randomize_

    from tritoncnn import models

    calls = []
    for name in ("conv2d_forward_pointwise", "conv2d_dgrad_pointwise"):
        real = getattr(pw, name)
        counted = lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a)  # noqa: E731
        monkeypatch.setattr(pw, name, counted)
    monkeypatch.setattr(pw, "ENABLED", True)
    x = randn_input(batch, 3, 32, torch.float16)
    model = models.build("mobilenetv2", num_classes=10, dropout=0.0, width_mult=width, **options)
    randomize_(model)
    check_against_twin(model, x, train=True, require_conditioned=False)
    assert "conv2d_forward_pointwise" in calls, "no 1x1 forward took the pointwise kernel"
    assert "conv2d_dgrad_pointwise" in calls, "no 1x1 dgrad took the pointwise kernel"


@pytest.mark.parametrize("options", [{}, ALL_OPTIONS], ids=["defaults", "all_options"])
def test_mobilenetv2_fp16_with_pointwise_matches_twin(monkeypatch, options):
    """(Batch 4 at 32x32, a quarter of the width: at batch 2 and 8x8 the last stages' batch
    norms see 2 values per channel; there one fp16 ulp of one 1x1 output (48 input channels,
    which the pointer kernel sums in other K blocks) moved the logits by 10% and the run
    left the twin's tolerance, while the pointer kernel's own rounding happened to pass.)
    With all options the projections' dgrads store their BN sums and the depthwise BNs are
    applied in the projections' loads (pointwise where C_in <= 128)."""
    _mobilenetv2_with_pointwise(monkeypatch, 4, 0.25, **options)


@pytest.mark.gpu
@pytest.mark.parametrize("options", [{}, ALL_OPTIONS], ids=["defaults", "all_options"])
def test_mobilenetv2_fp16_with_pointwise_matches_twin_gpu(monkeypatch, options):
    _mobilenetv2_with_pointwise(monkeypatch, 128, 1.0, **options)


def test_on_by_default_on_the_gpu_only(monkeypatch):
    """TRITONCNN_POINTWISE: unset, on for the GPU and off in the interpreter (its heuristic
    tiles are slow there; the tests above set ENABLED); 0 and 1 decide either way."""
    monkeypatch.delenv("TRITONCNN_POINTWISE", raising=False)
    monkeypatch.setattr(pw.runtime, "INTERPRETED", False)
    assert pw.env_enabled()
    monkeypatch.setenv("TRITONCNN_POINTWISE", "0")
    assert not pw.env_enabled()
    monkeypatch.setattr(pw.runtime, "INTERPRETED", True)
    assert not pw.env_enabled()
    monkeypatch.setenv("TRITONCNN_POINTWISE", "1")
    assert pw.env_enabled()
    monkeypatch.delenv("TRITONCNN_POINTWISE")
    assert not pw.env_enabled()
