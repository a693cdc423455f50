"""BatchNorm2d / BatchNorm1d and the kernels of kernels/norm.py against torch.nn in float64."""

import pytest
import torch
import torch.nn.functional as F
import triton
from helpers import DEVICE, assert_close, f64, randn

from tritoncnn import nn, runtime
from tritoncnn.kernels import elementwise as ew
from tritoncnn.kernels import norm

FP32 = torch.float32


def _pair(cls, torch_cls, c, seed=1, **kw):
    """Our layer and a float64 torch twin with the same random affine params and running stats."""
    ref = torch_cls(c, **kw).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if ref.affine:
            ref.weight.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
        if ref.bias is not None:
            ref.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        if ref.track_running_stats:
            ref.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64))
            ref.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
    ours = cls(c, **kw)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _input(shape, dtype, channels_last, shift=0.0, scale=1.0):
    x = randn(*shape, dtype=torch.float64) * scale + shift
    x = x.to(dtype)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _check_step(ours, ref, x, dtype, act_ref=None, what=""):
    """One forward + backward of both layers; compares output, grad_in and grads, buffers."""
    g = randn(*x.shape, dtype=dtype)
    y = ours(x)
    dx = ours.backward(g)
    assert y.shape == x.shape and y.dtype == x.dtype and y.stride() == x.stride()
    assert dx.shape == x.shape and dx.dtype == x.dtype and dx.stride() == x.stride()
    xr = f64(x).requires_grad_()
    yr = ref(xr)
    if act_ref is not None:
        yr = act_ref(yr)
    yr.backward(f64(g))
    assert_close(y, yr, dtype, what=f"{what} output")
    assert_close(dx, xr.grad, dtype, what=f"{what} grad_in")
    _check_state(ours, ref, what)


def _check_state(ours, ref, what=""):
    """Parameter grads and running statistics are fp32 whatever the activation dtype."""
    if ref.affine:
        assert ours.weight.grad.dtype == FP32
        assert_close(ours.weight.grad, ref.weight.grad, FP32, what=f"{what} grad_weight")
        if ref.bias is not None:
            assert ours.bias.grad.dtype == FP32
            assert_close(ours.bias.grad, ref.bias.grad, FP32, what=f"{what} grad_bias")
    else:
        assert ours.weight is None and ours.bias is None
    if ref.track_running_stats:
        assert_close(ours.running_mean, ref.running_mean, FP32, what=f"{what} running_mean")
        assert_close(ours.running_var, ref.running_var, FP32, what=f"{what} running_var")
        assert ours.num_batches_tracked.dtype == torch.int64
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked), what


# --- CPU tier --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "c,dtype,momentum,channels_last",
    [
        (5, torch.float32, 0.1, True),
        (37, torch.float32, None, True),
        (5, torch.float16, None, True),
        (37, torch.float16, 0.1, True),
        (5, torch.float32, 0.3, False),  # torch-contiguous NCHW input, read through strides
        # whole 16-byte vectors of channels that Triton can't see: ALIGN 8 (fp16) and 4 (fp32)
        (24, torch.float16, 0.1, True),
        (24, torch.float32, 0.1, True),
    ],
)
def test_batchnorm2d_train_two_steps(c, dtype, momentum, channels_last):
    """Two training steps: the second accumulates into the first step's parameter grads."""
    ours, ref = _pair(nn.BatchNorm2d, torch.nn.BatchNorm2d, c, momentum=momentum)
    for step in range(2):
        x = _input((3, c, 7, 5), dtype, channels_last, shift=0.5 * step, scale=1.0 + step)
        _check_step(ours, ref, x, dtype, what=f"step {step}")
    assert int(ours.num_batches_tracked) == 2


@pytest.mark.parametrize("shape,dtype", [((7, 37), torch.float16), ((4, 5, 3), torch.float32)])
def test_batchnorm1d_train_two_steps(dtype, shape):
    ours, ref = _pair(nn.BatchNorm1d, torch.nn.BatchNorm1d, shape[1])
    for step in range(2):
        _check_step(ours, ref, _input(shape, dtype, False), dtype, what=f"step {step}")


@pytest.mark.parametrize(
    "cls,torch_cls,shape,dtype",
    [
        (nn.BatchNorm2d, torch.nn.BatchNorm2d, (3, 37, 7, 5), torch.float16),
        (nn.BatchNorm1d, torch.nn.BatchNorm1d, (3, 5), torch.float32),
    ],
)
def test_eval_forward_backward(cls, torch_cls, shape, dtype):
    """Eval normalises with the running stats, leaves them alone, still yields param grads."""
    ours, ref = _pair(cls, torch_cls, shape[1])
    ours.eval()
    ref.eval()
    for step in range(2):
        _check_step(ours, ref, _input(shape, dtype, True), dtype, what=f"eval step {step}")
    assert int(ours.num_batches_tracked) == 0


ACTS = [
    (ew.ACT_RELU, 0.0, F.relu),
    (ew.ACT_RELU6, 0.0, F.relu6),
    (ew.ACT_ELU, 0.7, lambda z: F.elu(z, 0.7)),
    (ew.ACT_LEAKY_RELU, 0.2, lambda z: F.leaky_relu(z, 0.2)),
    (ew.ACT_SILU, 0.0, F.silu),
]


@pytest.mark.parametrize(
    "act,alpha,act_ref,training", [(*a, True) for a in ACTS] + [(*ACTS[2], False)]
)
def test_fused_activation(act, alpha, act_ref, training):
    """BN + activation in one kernel; the backward recomputes the activation's input."""
    ours, ref = _pair(nn.BatchNorm2d, torch.nn.BatchNorm2d, 5)
    ours.act, ours.act_alpha = act, alpha
    ours.train(training)
    ref.train(training)
    x = _input((3, 5, 7, 5), FP32, True, scale=3.0)  # reaches relu6's cap
    _check_step(ours, ref, x, FP32, act_ref=act_ref)


def test_fused_activation_fp16():
    ours, ref = _pair(nn.BatchNorm2d, torch.nn.BatchNorm2d, 37)
    ours.act, ours.act_alpha = ew.ACT_SILU, 0.0
    _check_step(ours, ref, _input((3, 37, 7, 5), torch.float16, True), torch.float16, F.silu)


@pytest.mark.parametrize("training", [True, False])
def test_affine_false(training):
    ours, ref = _pair(nn.BatchNorm2d, torch.nn.BatchNorm2d, 37, affine=False)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert list(ours.parameters()) == []
    ours.train(training)
    ref.train(training)
    for step in range(2):
        _check_step(ours, ref, _input((3, 37, 7, 5), FP32, True), FP32, what=f"step {step}")


@pytest.mark.parametrize("training", [True, False])
def test_bias_false(training):
    """torch's keyword-only ``bias=False``: a weight but no bias (and no bias grad)."""
    kw = {"bias": False} if "bias=" in repr(torch.nn.BatchNorm1d(1)) else None
    if kw is None:
        pytest.skip("this torch has no BatchNorm(bias=False)")
    ours, ref = _pair(nn.BatchNorm2d, torch.nn.BatchNorm2d, 5, **kw)
    assert ours.bias is None and list(ours.state_dict()) == list(ref.state_dict())
    ours.act = ew.ACT_RELU
    ours.train(training)
    ref.train(training)
    _check_step(ours, ref, _input((3, 5, 7, 5), FP32, True), FP32, F.relu)
    assert_close(ours.weight.grad, ref.weight.grad, what="grad_weight")


def test_no_running_stats_uses_batch_stats_in_eval():
    ours, ref = _pair(nn.BatchNorm1d, torch.nn.BatchNorm1d, 5, track_running_stats=False)
    assert ours.running_mean is None and ours.num_batches_tracked is None
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    ours.eval()
    ref.eval()
    _check_step(ours, ref, _input((6, 5), FP32, False), FP32)
    # batch statistics from a single sample with 3 values per channel
    ours_m, ref_m = _pair(nn.BatchNorm2d, torch.nn.BatchNorm2d, 5, track_running_stats=False)
    ours_m.train()
    ref_m.train()
    _check_step(ours_m, ref_m, _input((1, 5, 3, 1), FP32, True), FP32)


def test_large_mean_no_cancellation():
    """x = 1000 + randn: a sum / sum-of-squares variance loses ~1e-1 here in fp32.

    Variance-derived results (save_invstd, running_var) must stay at fp32 accuracy. The mean
    itself is then exact up to its own fp32 rounding (half an ulp of 1000 = 3e-5 absolute),
    which is also the floor of (x - mean) for any fp32 implementation; so the output and
    gradients are checked at 100 + randn, where that floor (~2e-6) is far below tolerance
    and a naive variance would still be off by ~1e-3.
    """
    c = 37
    x = _input((3, c, 7, 5), FP32, True, shift=1000.0)
    rm, rv = randn(c), randn(c).abs() + 0.5
    rm_ref, rv_ref = f64(rm), f64(rv)
    nbt = torch.zeros((), dtype=torch.int64, device=DEVICE)
    _, mean, invstd = norm.batch_norm_forward_train(x, None, None, rm, rv, nbt, 0.1, 1e-5)
    xd = f64(x)
    mean_ref = xd.mean((0, 2, 3))
    var_ref = xd.var((0, 2, 3), unbiased=False)
    assert (f64(mean) - mean_ref).abs().max() <= 6.2e-5  # one ulp at 1000
    assert_close(invstd, (var_ref + 1e-5).rsqrt(), FP32, what="save_invstd")
    assert_close(rv, 0.9 * rv_ref + 0.1 * xd.var((0, 2, 3)), FP32, what="running_var")
    assert_close(rm, 0.9 * rm_ref + 0.1 * mean_ref, FP32, what="running_mean")

    ours, ref = _pair(nn.BatchNorm2d, torch.nn.BatchNorm2d, c)
    _check_step(ours, ref, _input((3, c, 7, 5), FP32, True, shift=100.0), FP32)


def test_align_hint():
    """ALIGN is a channel count's whole vectors when Triton can't see them, else 1."""
    x16 = _input((3, 24, 7, 5), torch.float16, True)
    assert norm._align(24, x16) == 8
    assert norm._align(24, x16.float()) == 4  # (the copy keeps channels_last strides)
    assert norm._align(24, _input((3, 24, 7, 5), torch.float16, False)) == 1  # NCHW
    assert norm._align(32, _input((3, 32, 7, 5), torch.float16, True)) == 1  # visible
    assert norm._align(24, _input((6, 24), torch.float16, False)) == 8  # (N, C)
    assert norm._align(24, x16, _input((3, 24, 7, 5), torch.float16, False)) == 1  # disagree


def test_outlier_pivot_no_cancellation():
    """The statistics are taken of x - x[row 0]; when row 0 is an outlier (a zero padding
    pixel in front of values near 1000) the shifted values are ~1000 again. Welford's update
    keeps the variance at fp32 accuracy there; fp32 sums of squares of the shifted values
    would be off by ~5e-3 (4096 rows: variance ~245 against squares of ~1e6)."""
    c = 19
    x = randn(4, c, 32, 32, dtype=torch.float64) + 1000.0
    x[0, :, 0, 0] = 0.0
    x = x.float().contiguous(memory_format=torch.channels_last)
    _, mean, invstd = norm.batch_norm_forward_train(x, None, None, None, None, None, 0.1, 1e-5)
    xd = f64(x)
    assert_close(mean, xd.mean((0, 2, 3)), FP32, what="mean")
    assert_close(invstd, (xd.var((0, 2, 3), unbiased=False) + 1e-5).rsqrt(), FP32, what="invstd")


@pytest.mark.parametrize("cfg", norm.NORM_CONFIGS)
def test_every_config(cfg):
    """Each listed tile config, on strided (non-dense) views of x and grad_out."""
    c = 37
    base = randn(3, c, 9, 11, dtype=FP32)
    x = base[:, :, 1:8, 2:7]  # 7x5 window of an NCHW tensor: no dense layout at all
    g = randn(3, c, 5, 7, dtype=FP32, channels_last=True).transpose(2, 3)
    w, b = randn(c) + 1.0, randn(c)
    rm, rv = randn(c), randn(c).abs() + 0.5
    nbt = torch.zeros((), dtype=torch.int64, device=DEVICE)
    wr, br = f64(w).requires_grad_(), f64(b).requires_grad_()
    rm_ref, rv_ref = f64(rm), f64(rv)
    xr = f64(x).requires_grad_()
    yr = F.batch_norm(xr, rm_ref, rv_ref, wr, br, training=True, momentum=0.1, eps=1e-5)
    yr.backward(f64(g))

    y, mean, invstd = norm.batch_norm_forward_train(x, w, b, rm, rv, nbt, 0.1, 1e-5, config=cfg)
    dx, gw, gb = norm.batch_norm_backward(g, x, w, mean, invstd, config=cfg)
    assert_close(y, yr, what="output")
    assert_close(dx, xr.grad, what="grad_in")
    assert_close(gw, wr.grad, what="grad_weight")
    assert_close(gb, br.grad, what="grad_bias")
    assert_close(rm, rm_ref, what="running_mean")
    assert_close(rv, rv_ref, what="running_var")
    assert int(nbt) == 1

    # accumulate into the given grads
    _, gw2, gb2 = norm.batch_norm_backward(g, x, w, mean, invstd, gw, gb, config=cfg)
    assert gw2 is gw and gb2 is gb
    assert_close(gw, 2 * wr.grad, what="accumulated grad_weight")
    assert_close(gb, 2 * br.grad, what="accumulated grad_bias")


@pytest.mark.parametrize("programs", [1, 64])
def test_row_split(monkeypatch, programs):
    """Many rows per stage-1 program (Chan merges inside the loop), or more partials than one
    stage-2 step takes (BLOCK_P) and than one group of the backward's two-level sum holds, with
    a last group and a last partial that are only partly full."""
    monkeypatch.setattr(norm, "_target_programs", lambda: programs)
    # a listed (GPU) tile: the interpreter's own tiles are too large to split 6000 rows this way
    monkeypatch.setattr(norm, "pick_config", lambda c, elementwise=False: norm.NORM_CONFIGS[0])
    monkeypatch.setattr(norm, "STAGE2_TILE", 256)  # 16 partials per stage-2 iteration
    cfg = norm.pick_config(3)
    rows, parts = norm._split_rows(6000, 3, cfg)
    group, _ = norm.reduce_groups(parts, cfg)
    assert (rows > cfg.block_m) if programs == 1 else (parts > group and parts % group)
    assert 6000 % rows and rows % cfg.block_m == 0
    ours, ref = _pair(nn.BatchNorm1d, torch.nn.BatchNorm1d, 3)
    _check_step(ours, ref, _input((6000, 3), FP32, False, shift=5.0, scale=2.0), FP32)
    _assert_tickets_rearmed()


def test_split_rows_keeps_partials_few(monkeypatch):
    """A small tensor on a large GPU: every stage-1 program still reduces MIN_STAGE1_TILES
    tiles, so stage 2 (serial) has few partials to walk."""
    monkeypatch.setattr(norm, "_target_programs", lambda: 528)
    cfg = norm.NORM_CONFIGS[-1]
    rows, parts = norm._split_rows(8192, 128, cfg)
    assert rows == norm.MIN_STAGE1_TILES * cfg.block_m
    assert parts == 8192 // rows


@pytest.mark.parametrize("m,c", [(512 * 32 * 32, 144), (512 * 16 * 16, 192), (512 * 16, 1280)])
def test_split_rows_stays_within_one_wave(monkeypatch, m, c):
    """MobileNetV2's layers at b512 on an H100 (528 programs: 4 per SM x 132): stage 1 never
    launches more programs than that, which would leave a second wave of full-length slabs,
    nor fewer than half of it."""
    monkeypatch.setattr(norm, "_target_programs", lambda: 528)
    monkeypatch.setattr(runtime, "INTERPRETED", False)
    cfg = norm.pick_config(c)
    rows, parts = norm._split_rows(m, c, cfg)
    programs = parts * triton.cdiv(c, cfg.block_c)
    assert 264 <= programs <= 528, (rows, parts, programs)
    assert rows * parts >= m > rows * (parts - 1)


def test_pick_config_pads_wide_channels_little(monkeypatch):
    """GPU tiles: the narrowest block covering C; past 128 channels a block that pads C by at
    most 1/8 for the reductions, the widest for the elementwise kernels."""
    monkeypatch.setattr(runtime, "INTERPRETED", False)
    assert norm.pick_config(20).block_c == 32
    assert norm.pick_config(128).block_c == 128
    for c, block in ((144, 32), (192, 64), (384, 128), (576, 128), (960, 128), (1000, 128)):
        assert norm.pick_config(c).block_c == block, c
    for c in range(129, 2000):
        cfg = norm.pick_config(c)
        assert cfg in norm.NORM_CONFIGS
        assert 8 * (-c % cfg.block_c) <= c
        assert norm.pick_config(c, elementwise=True) is norm.NORM_CONFIGS[-1]
    assert norm.pick_config(20, elementwise=True).block_c == 32


def _assert_tickets_rearmed():
    """Every launch leaves the shared tickets at zero (the last program re-arms them)."""
    assert not runtime.tickets(runtime.TICKET_SLOTS).any()


def _repeat_step(shape, dtype, times):
    x = _input(shape, dtype, True)
    g = randn(*shape, dtype=dtype, channels_last=True)
    outs = []
    for _ in range(times):
        m = nn.BatchNorm2d(shape[1])
        y = m(x)
        dx = m.backward(g)
        _, _, mean, invstd = m._saved
        outs.append((y, dx, mean, invstd, m.weight.grad, m.bias.grad, m.running_var))
    for out in outs[1:]:
        for a, b in zip(outs[0], out, strict=True):
            assert torch.equal(a, b)
    _assert_tickets_rearmed()


def test_deterministic():
    """Stage 2 adds the partials in a fixed order, whichever program takes the last ticket:
    identical inputs give bitwise identical results."""
    _repeat_step((3, 37, 7, 5), torch.float16, 2)


@pytest.mark.gpu
def test_deterministic_gpu():
    """On the GPU the last ticket goes to a different program each time: 30 repeats of a
    step with hundreds of partials per channel block must agree bit for bit."""
    _repeat_step((128, 64, 32, 32), torch.float16, 30)


def test_state_dict_matches_torch():
    for ours_cls, torch_cls in [
        (nn.BatchNorm2d, torch.nn.BatchNorm2d),
        (nn.BatchNorm1d, torch.nn.BatchNorm1d),
    ]:
        ours, ref = ours_cls(7), torch_cls(7)
        sd, rsd = ours.state_dict(), ref.state_dict()
        assert (
            list(sd)
            == list(rsd)
            == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
        )
        for k in rsd:
            assert sd[k].shape == rsd[k].shape and sd[k].dtype == rsd[k].dtype, k
            assert torch.equal(sd[k].cpu(), rsd[k]), k  # default initialisation
        assert [n for n, _ in ours.named_parameters()] == ["weight", "bias"]
        assert all(p.no_weight_decay for p in ours.parameters())
        # torch >= 2.12 prints bias=...; older torch does not
        assert repr(ours) == repr(ref) or repr(ours).replace(" bias=True,", "") == repr(ref)


def test_errors():
    bn2, bn1 = nn.BatchNorm2d(5), nn.BatchNorm1d(5)
    with pytest.raises(ValueError, match="channels"):
        bn2(randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="4D"):
        bn2(randn(2, 5, 3))
    with pytest.raises(ValueError, match="2D or 3D"):
        bn1(randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="channels"):
        bn1(randn(4, 6))
    with pytest.raises(ValueError, match="more than 1 value"):
        bn1(randn(1, 5))
    with pytest.raises(ValueError, match="more than 1 value"):
        bn2(randn(1, 5, 1, 1))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.BatchNorm1d(5).backward(randn(2, 5))
    bn1.eval()
    assert bn1(randn(1, 5)).shape == (1, 5)  # eval with one sample is fine, as in torch
    # batch statistics of one value per channel are refused in eval too (as torch does)
    ours, ref = _pair(nn.BatchNorm1d, torch.nn.BatchNorm1d, 5, track_running_stats=False)
    ours.eval()
    ref.eval()
    x = randn(1, 5)
    with pytest.raises(ValueError, match="more than 1 value"):
        ref(f64(x))
    with pytest.raises(ValueError, match="more than 1 value"):
        ours(x)


# --- GPU tier --------------------------------------------------------------------------------

RESNET18_BN = [(64, 32), (128, 16), (256, 8), (512, 4)]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _gpu_check(shape, dtype, cfg, momentum=0.1, shift=0.0):
    """Train forward + backward (twice, accumulating) and eval forward + backward at ``cfg``."""
    c = shape[1]
    x = _input(shape, dtype, True, shift=shift)
    g = randn(*shape, dtype=dtype, channels_last=True)
    w, b = randn(c) * 0.2 + 1.0, randn(c)
    rm, rv = randn(c), randn(c).abs() + 0.5
    nbt = torch.zeros((), dtype=torch.int64, device=DEVICE)
    # float64 reference on the GPU (the CPU would be slow at these sizes)
    xr = x.double().requires_grad_()
    wr, br = w.double().requires_grad_(), b.double().requires_grad_()
    rm_ref, rv_ref = rm.double(), rv.double()
    yr = F.batch_norm(
        xr, rm_ref, rv_ref, wr, br, training=True, momentum=1.0 if momentum is None else momentum
    )
    yr.backward(g.double())

    y, mean, invstd = norm.batch_norm_forward_train(
        x, w, b, rm, rv, nbt, momentum, 1e-5, config=cfg
    )
    dx, gw, gb = norm.batch_norm_backward(g, x, w, mean, invstd, config=cfg)
    assert_close(y, yr, dtype, what="output")
    assert_close(dx, xr.grad, dtype, what="grad_in")
    assert_close(gw, wr.grad, FP32, what="grad_weight")
    assert_close(gb, br.grad, FP32, what="grad_bias")
    assert_close(rm, rm_ref, FP32, what="running_mean")
    assert_close(rv, rv_ref, FP32, what="running_var")
    assert int(nbt) == 1
    norm.batch_norm_backward(g, x, w, mean, invstd, gw, gb, config=cfg)
    assert_close(gw, 2 * wr.grad, FP32, what="accumulated grad_weight")

    xe = x.double().requires_grad_()
    ye_ref = F.batch_norm(xe, rm.double(), rv.double(), w.double(), b.double(), training=False)
    ye_ref.backward(g.double())
    ye = norm.batch_norm_forward_eval(x, w, b, rm, rv, 1e-5, config=cfg)
    dxe, _, _ = norm.batch_norm_backward_eval(g, x, w, rm, rv, 1e-5, config=cfg)
    assert_close(ye, ye_ref, dtype, what="eval output")
    assert_close(dxe, xe.grad, dtype, what="eval grad_in")


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", norm.NORM_CONFIGS)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("c,hw", RESNET18_BN)
def test_batchnorm2d_resnet18_shapes_gpu(c, hw, dtype, cfg):
    _gpu_check((128, c, hw, hw), dtype, cfg)


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", norm.NORM_CONFIGS)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("n,c", [(128, 512), (512, 256), (512, 512), (128, 256)])
def test_batchnorm1d_gpu(n, c, dtype, cfg):
    _gpu_check((n, c), dtype, cfg)


@pytest.mark.gpu
def test_batchnorm_gpu_cumulative_and_large_mean():
    _gpu_check((512, 64, 32, 32), torch.float32, None, momentum=None, shift=30.0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_batchnorm2d_module_gpu(dtype):
    """The module path (default config choice) with a fused activation, two steps."""
    ours, ref = _pair(nn.BatchNorm2d, torch.nn.BatchNorm2d, 64, momentum=None)
    ours.act = ew.ACT_RELU
    # shifted input: with momentum=None the first running_mean *is* the batch mean, and a
    # mean of ~0 +- 3e-3 would make its relative error meaningless
    for step in range(2):
        x = _input((128, 64, 32, 32), dtype, True, shift=0.5)
        _check_step(ours, ref, x, dtype, F.relu, f"{step}")


@pytest.mark.gpu
@pytest.mark.parametrize("c,hw", [(96, 16), (64, 8), (576, 4), (32, 32)])
def test_batchnorm_backward_many_partials_gpu(c, hw):
    """MobileNetV2's shapes at batch 512, where each channel block of the backward reductions
    has hundreds of partials, added in several groups (bn_bwd_reduce_kernel's two levels):
    against torch in float64, with a fused ReLU6."""
    x = _input((512, c, hw, hw), torch.float16, True, shift=0.5)
    g = randn(512, c, hw, hw, dtype=torch.float16, channels_last=True)
    w, b = randn(c) + 2, randn(c)
    cfg = norm.pick_config(c)
    _, parts = norm._split_rows(512 * hw * hw, c, cfg)
    assert norm.reduce_groups(parts, cfg)[1] > 1
    _, mean, invstd = norm.batch_norm_forward_train(x, w, b, None, None, None, 0.1, 1e-5)
    dx, gw, gb = norm.batch_norm_backward(g, x, w, mean, invstd, bias=b, act=ew.ACT_RELU6)
    xr = f64(x).requires_grad_()
    wr, br = f64(w).requires_grad_(), f64(b).requires_grad_()
    yr = F.batch_norm(xr, None, None, wr, br, training=True, eps=1e-5).clamp(0.0, 6.0)
    yr.backward(f64(g))
    assert_close(dx, xr.grad, torch.float16, what=f"grad_in C{c} {hw}x{hw}")
    assert_close(gw, wr.grad, torch.float16, what=f"grad_weight C{c} {hw}x{hw}")
    assert_close(gb, br.grad, torch.float16, what=f"grad_bias C{c} {hw}x{hw}")


def test_row_decode():
    """HW = W = 1 and s_n = the row spacing when every tensor's rows are evenly spaced (dense
    NHWC, 2-d); the general decode otherwise (NCHW, (N, C, L), a strided NHWC view, or one
    such tensor among dense ones)."""
    nhwc = randn(2, 24, 5, 7, channels_last=True)
    assert norm._row_decode(nhwc, nhwc) == (1, 1, [(24, 0, 0, 1)] * 2)
    assert norm._row_decode(randn(6, 10)) == (1, 1, [(10, 0, 0, 1)])
    nchw = randn(2, 24, 5, 7)
    assert norm._row_decode(nchw) == (35, 7, [(24 * 35, 7, 1, 35)])
    assert norm._row_decode(randn(3, 4, 9))[:2] == (9, 9)
    view = randn(2, 24, 5, 9, channels_last=True)[:, :, :, :7]  # rows 9 apart, 7 per image row
    assert norm._row_decode(view)[:2] == (35, 7)
    assert norm._row_decode(nhwc, nchw)[:2] == (35, 7)
