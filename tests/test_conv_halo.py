"""The halo 3x3 conv forward and dgrad (kernels/conv_halo.py, Gluon, sm_90) against torch in
float64, and their dispatch rules.

Gluon has no interpreter: the CPU tier checks the host side (tiles, candidates, when the
kernel applies, a forced tile where it can't run) and, in tests/test_ptx.py, the compiled
kernel. The GPU tier runs every candidate tile at ResNet-18's 3x3 shapes (odd batch, fp16 and
bf16, poisoned outputs), the epilogues, the dispatch through conv2d_forward / conv2d_dgrad,
and a CUDA-graph capture.
"""

import dataclasses
import math

import pytest
import torch
from helpers import assert_close, randn
from test_conv import reference
from test_conv_tma import _moments_reference
from test_grad_sums import _bn, _check_backward, _check_sums

from tritoncnn.kernels import conv as K
from tritoncnn.kernels import conv_configs, conv_wgrad, norm_fusion
from tritoncnn.kernels import conv_halo as H
from tritoncnn.kernels import conv_halo_wgrad as HW
from tritoncnn.kernels.elementwise import ACT_ELU, ACT_RELU, ACT_RELU6


def _weight(c_out, c_in, dtype):
    w = randn(c_out, c_in, 3, 3) / math.sqrt(c_in * 9)
    return w.to(dtype).contiguous(memory_format=torch.channels_last)


def test_rows_per_tile():
    assert H.rows_per_tile(32, 32, 128) == 4
    assert H.rows_per_tile(16, 16, 128) == 8
    assert H.rows_per_tile(8, 8, 64) == 8
    assert H.rows_per_tile(8, 8, 128) is None  # 16 rows of an 8-row image
    assert H.rows_per_tile(4, 4, 64) is None  # W < 8: sub-views off the swizzle pattern
    assert H.rows_per_tile(24, 24, 128) is None  # W not a power of two
    assert H.rows_per_tile(32, 64, 64) is None  # one row: no room for BH >= 2


def test_candidates_fit_shared_memory_and_the_shape():
    limit = 227 * 1024
    fwd = H.halo_candidates(64, 32, 32, limit, epilogue_tiles=1)
    assert H.HaloConfig(128, 64, 32, 4, 4) in fwd
    assert all(c.BLOCK_N == 64 for c in fwd)  # 128 doesn't divide 64 channels
    assert all(c.smem_bytes(32, 1) <= limit for c in fwd)
    # the dgrad's add and ReLU tiles push the 128 x 128 tiles out
    dgrad = H.halo_candidates(128, 16, 16, limit, epilogue_tiles=3)
    assert dgrad and all(c.smem_bytes(16, 3) <= limit for c in dgrad)
    assert H.HaloConfig(128, 128, 32, 4, 4) in H.halo_candidates(128, 16, 16, limit, 1)
    assert H.HaloConfig(128, 128, 32, 4, 4) not in dgrad
    assert all(c.BLOCK_M == 64 for c in H.halo_candidates(256, 8, 8, limit))
    assert H.halo_candidates(512, 4, 4, limit) == []
    # 2 stages of (halo: 6 x 32 rows rounded up to 256, 3 weight boxes of 64) x 64 channels,
    # and the output tile, in fp16; 3 mbarriers; a persistent program also the moments' fp32
    # scratch (4 warps x 64 columns: a program of one tile puts it in its dead stages)
    expected = (2 * 448 * 64 + 128 * 64) * 2 + 3 * 8
    assert H.HaloConfig(128, 64, 64, 4, 2).smem_bytes(32, 1) == expected
    persistent = H.HaloConfig(128, 64, 64, 4, 2, per_sm=1)
    assert persistent.smem_bytes(32, 1) == expected + 4 * 64 * 4


@pytest.mark.parametrize("size", [8, 16, 32, 64, 128])
def test_heuristic_tiles_fit_shared_memory(size):
    """Wherever the kernels apply, their heuristic tiles fit an H100's 227 KiB of shared
    memory with the dgrad's add and ReLU tiles (and the wgrad's pipeline)."""
    cfg = H.pick_halo_config(size, size)
    assert cfg is not None and H.rows_per_tile(size, size, cfg.BLOCK_M)
    assert cfg.smem_bytes(size, epilogue_tiles=3) <= 227 * 1024, cfg
    wcfg = HW.pick_halo_wgrad_config(size, size)
    if wcfg is not None:
        assert HW.wgrad_smem_bytes(wcfg, size) <= 227 * 1024, wcfg


def test_grad_sums_tiles_and_activations():
    """The dgrad's batch-norm sums: none / ReLU / ReLU6 only, and no tile whose accumulator
    and input tile take more than 64 fp32 registers a thread each (128 x 128 on 4 warps
    spills)."""
    mean = invstd = torch.ones(64)
    assert H.grad_sums_supported(None)
    for act, ok in ((ACT_RELU, True), (ACT_RELU6, True), (ACT_ELU, False)):
        assert (
            H.grad_sums_supported(norm_fusion.PendingNorm(mean, invstd, None, None, act, 1.0)) == ok
        )
    limit = 227 * 1024
    plain = H.halo_candidates(128, 16, 16, limit, epilogue_tiles=2)
    sums = H.halo_candidates(128, 16, 16, limit, epilogue_tiles=2, grad_sums=True)
    assert any(c.BLOCK_N == 128 for c in plain)
    assert sums and all(c.BLOCK_M * c.BLOCK_N <= 64 * 32 * c.num_warps for c in sums)
    assert set(sums) == {c for c in plain if c.BLOCK_M * c.BLOCK_N <= 64 * 32 * c.num_warps}


def test_persistent_programs_fit_on_an_sm_at_once(monkeypatch):
    monkeypatch.setattr(H.runtime, "sm_count", lambda: 132)
    sm = H.H100_SM_SHARED_BYTES
    fwd = H.HaloConfig(128, 64, 32, 4, 2, per_sm=3)
    assert H.persistent_programs(3, 10_000, fwd.smem_bytes(32, 1), sm) == 3 * 132  # 73 KiB
    # the dgrad's add and ReLU tiles: 105 KiB, two fit
    assert H.persistent_programs(3, 10_000, fwd.smem_bytes(32, 3), sm) == 2 * 132
    assert H.persistent_programs(1, 100, 200 * 1024, sm) == 100  # fewer tiles than SMs
    assert H.persistent_programs(2, 10_000, 300 * 1024, sm) == 132  # at least one per SM


def test_weight_gradient_takes_its_loader_warp_alone_when_asked(monkeypatch):
    """conv_halo_wgrad.LOADER_WARP (TRITONCNN_HALO_WGRAD_LOADER_WARP=1) gives the weight
    gradient its loader-warp tiles while the forward / dgrad keep theirs off; None follows
    conv_halo.LOADER_WARP; False keeps them off even when that is on."""
    limit = 227 * 1024
    monkeypatch.setattr(H, "LOADER_WARP", False)
    monkeypatch.setattr(HW, "LOADER_WARP", True)
    assert HW.pick_halo_wgrad_config(32, 32).loader_warp
    assert any(c.loader_warp for c in HW.halo_wgrad_candidates(64, 64, 32, 32, limit))
    assert not H.pick_halo_config(32, 32).loader_warp
    assert not H.pick_halo_config(32, 32, dgrad=True).loader_warp
    assert not any(c.loader_warp for c in H.halo_candidates(64, 32, 32, limit, 1))
    monkeypatch.setattr(HW, "LOADER_WARP", None)
    assert not HW.pick_halo_wgrad_config(32, 32).loader_warp
    monkeypatch.setattr(H, "LOADER_WARP", True)
    assert HW.pick_halo_wgrad_config(32, 32).loader_warp
    monkeypatch.setattr(HW, "LOADER_WARP", False)
    assert not HW.pick_halo_wgrad_config(16, 16).loader_warp
    assert not any(c.loader_warp for c in HW.halo_wgrad_candidates(64, 64, 32, 32, limit))


def test_loader_warp_tiles_are_candidates_only_when_asked(monkeypatch):
    """The warp-specialized tiles join the candidates with TRITONCNN_HALO_LOADER_WARP=1 (the
    module flag) or when asked; they count their release mbarriers (and the 4 bytes Triton's
    warp-specialized region adds); two programs of them per SM are capped at 128 registers."""
    limit = 227 * 1024
    monkeypatch.setattr(HW, "LOADER_WARP", None)  # (follows H.LOADER_WARP)
    monkeypatch.setattr(H, "LOADER_WARP", False)
    assert not any(c.loader_warp for c in H.halo_candidates(64, 32, 32, limit, 1))
    assert not any(c.loader_warp for c in HW.halo_wgrad_candidates(64, 64, 32, 32, limit))
    monkeypatch.setattr(H, "LOADER_WARP", True)
    fwd = H.halo_candidates(64, 32, 32, limit, 1)
    assert H.HaloConfig(128, 64, 32, 4, 4, loader_warp=True) in fwd
    assert H.HaloConfig(128, 64, 32, 4, 4) in fwd
    assert any(c.loader_warp for c in HW.halo_wgrad_candidates(64, 64, 32, 32, limit))
    # the heuristics take the loader-warp versions of their tiles, where there is one
    assert H.pick_halo_config(32, 32) == H.HaloConfig(128, 64, 32, 4, 4, loader_warp=True)
    assert H.pick_halo_config(32, 32, dgrad=True).loader_warp
    assert H.pick_halo_config(128, 128) == H.HaloConfig(256, 64, 32, 8, 2, loader_warp=True)
    assert HW.pick_halo_wgrad_config(32, 32).loader_warp
    no_version = H.HaloConfig(64, 64, 64, 4, 2)
    assert H.with_loader_warp(no_version, H.HALO_LOADER_WARP_CONFIGS) == no_version
    assert not any(
        c.loader_warp for c in H.halo_candidates(64, 32, 32, limit, 1, loader_warp=False)
    )
    plain, split = H.HaloConfig(64, 64, 32, 4, 4), H.HaloConfig(64, 64, 32, 4, 4, loader_warp=True)
    # its empty barriers, the +4 of the warp-specialized region, its moments' own scratch
    assert split.smem_bytes(32, 1) == plain.smem_bytes(32, 1) + 4 * 8 + 4 + 4 * 64 * 4
    sm = H.H100_SM_SHARED_BYTES
    assert H.launch_options(split, split.smem_bytes(32, 3), sm) == {"maxnreg": 128}
    big = H.HaloConfig(128, 128, 32, 4, 4, loader_warp=True)
    assert H.launch_options(big, big.smem_bytes(16, 1), sm) == {}  # one program per SM
    assert H.launch_options(plain, plain.smem_bytes(32, 1), sm) == {}


def test_halo_is_on_unless_turned_off_and_only_on_sm90(monkeypatch):
    """TRITONCNN_HALO=0 turns the halo kernels off; otherwise they take the convs that
    qualify, but only on an sm_90 GPU (never in the interpreter)."""
    x = randn(2, 64, 8, 8, dtype=torch.float16, channels_last=True)
    wt = _weight(64, 64, torch.float16)
    monkeypatch.delenv("TRITONCNN_HALO", raising=False)
    assert H.env_enabled()
    monkeypatch.setenv("TRITONCNN_HALO", "0")
    assert not H.env_enabled()
    monkeypatch.setattr(H, "ENABLED", False)
    assert not H.halo_applicable(x, wt, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    monkeypatch.setattr(H, "ENABLED", True)
    on_hopper = torch.cuda.is_available() and H._is_hopper()
    assert H.halo_applicable(x, wt, (1, 1), (1, 1, 1, 1), (1, 1), 1) == on_hopper


def test_forced_halo_tile_where_it_cannot_run_is_an_error():
    x = randn(2, 64, 8, 8, dtype=torch.float16, channels_last=True)
    wt = _weight(64, 64, torch.float16)
    cfg = H.HaloConfig(64, 64, 32, 4, 4)
    with pytest.raises(ValueError, match="halo tile"):
        K.conv2d_forward(x, wt, None, 1, 1, 1, 1, config=cfg)
    with pytest.raises(ValueError, match="halo tile"):
        K.conv2d_dgrad(x, wt, x.shape, 1, 1, 1, 1, config=cfg)
    with pytest.raises(ValueError, match="halo tile"):
        conv_wgrad.conv2d_wgrad(x, x, wt.shape, 1, 1, 1, 1, config=H.HaloConfig(64, 64, 64, 4, 4))


def test_wgrad_candidates():
    limit = 227 * 1024
    cands = HW.halo_wgrad_candidates(64, 64, 32, 32, limit)
    assert HW.pick_halo_wgrad_config(32, 32) in cands
    assert all(c.BLOCK_M == c.BLOCK_N == 64 for c in cands)  # 128 doesn't divide 64
    assert all(HW.wgrad_smem_bytes(c, 32) <= limit for c in cands)
    assert {c.BLOCK_K for c in HW.halo_wgrad_candidates(256, 256, 8, 8, limit)} == {64}
    assert HW.halo_wgrad_candidates(512, 512, 4, 4, limit) == []
    # 4 stages of a 128-pixel dy box x 64 and a 256-row halo buffer x 64, fp16
    assert HW.wgrad_smem_bytes(H.HaloConfig(64, 64, 128, 4, 4), 32) == 4 * (128 + 256) * 64 * 2


# ResNet-18 (CIFAR) 3x3 stride-1 shapes (c_in, hw, c_out), at an odd batch
GPU_SHAPES = [(64, 32, 64), (128, 16, 128), (256, 8, 256), (64, 16, 128)]
BATCH = 37


def _gpu_case(shape, dtype):
    if not (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)):
        pytest.skip("the halo kernel's wgmma needs sm_90")
    c_in, hw, c_out = shape
    x = randn(BATCH, c_in, hw, hw, dtype=dtype, channels_last=True)
    go = randn(BATCH, c_out, hw, hw, dtype=dtype, channels_last=True)
    return x, _weight(c_out, c_in, dtype), go


def _poisoned(shape, dtype):
    """A dense NHWC output full of NaN: a tile the kernel leaves unwritten fails the test."""
    out = torch.full(shape, float("nan"), dtype=dtype, device="cuda")
    return out.contiguous(memory_format=torch.channels_last)


@pytest.fixture
def _halo_on(monkeypatch):
    monkeypatch.setattr(H, "ENABLED", True)


def _tiles(loader_warp: bool, *args, **kwargs) -> list:
    """The candidates of one kind: the tiles whose warpgroup issues its own loads, or those
    with a loader warp (HaloConfig.loader_warp; off by default: TRITONCNN_HALO_LOADER_WARP)."""
    cands = H.halo_candidates(*args, **kwargs, loader_warp=loader_warp)
    return [cfg for cfg in cands if cfg.loader_warp == loader_warp]


LOADER_WARP = pytest.mark.parametrize(
    "loader_warp", [False, True], ids=["warpgroup_loads", "loader_warp"]
)


@pytest.mark.gpu
@LOADER_WARP
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}->{s[2]}")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_halo_forward_every_candidate(shape, dtype, loader_warp, _halo_on):
    x, wt, _ = _gpu_case(shape, dtype)
    c_in, hw, c_out = shape
    assert H.halo_applicable(x, wt, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    yr = reference(x, wt.float(), None, None, 1, 1, 1, 1, device="cuda")[0]
    cands = _tiles(loader_warp, c_out, hw, hw, conv_configs.smem_optin(), 1)
    assert cands
    for cfg in cands:
        y = _poisoned((BATCH, c_out, hw, hw), dtype)
        tiles = H.launch_halo(x, wt, y, cfg, dgrad=False, moments=True)
        assert_close(y, yr, dtype, what=f"{cfg}")
        mean_r, m2_r = _moments_reference(y, cfg.BLOCK_M)
        assert_close(tiles.partials[0], mean_r, torch.float32, what=f"{cfg} tile means")
        assert_close(tiles.partials[1], m2_r, torch.float32, what=f"{cfg} tile M2")


@pytest.mark.gpu
@LOADER_WARP
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}->{s[2]}")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_halo_dgrad_every_candidate(shape, dtype, loader_warp, _halo_on):
    x, wt, go = _gpu_case(shape, dtype)
    c_in, hw, c_out = shape
    add = randn(*x.shape, dtype=dtype, channels_last=True)
    relu_out = randn(*x.shape, dtype=dtype, channels_last=True).clamp_min(0)
    dxr = reference(x, wt.float(), None, go, 1, 1, 1, 1, device="cuda")[1]
    for tiles, extra in ((1, {}), (3, {"add": add, "relu_out": relu_out})):
        cands = _tiles(loader_warp, c_in, hw, hw, conv_configs.smem_optin(), tiles)
        assert cands
        for cfg in cands:
            dx = _poisoned(x.shape, dtype)
            H.launch_halo(go, wt, dx, cfg, dgrad=True, **extra)
            want = dxr if not extra else (dxr + add.double()) * (relu_out > 0)
            assert_close(dx, want, dtype, what=f"{cfg} {sorted(extra)}")


@pytest.mark.gpu
@LOADER_WARP
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}->{s[2]}")
def test_gpu_halo_dgrad_bn_sums_every_candidate(shape, loader_warp, _halo_on):
    """The dgrad that also stores the backward sums of the batch norm whose output the conv
    reads (ReLU6, affine; and ReLU without affine): dx as the plain dgrad's, the sums as a
    float64 reduction's, the batch norm's backward from them as from its own pass."""
    x, wt, go = _gpu_case(shape, torch.float16)
    c_in, hw, c_out = shape
    bn_in = x * 2 + 0.5  # the batch norm's input, at the conv input's shape
    dxr = reference(x, wt.float(), None, go, 1, 1, 1, 1, device="cuda")[1]
    cases = ((ACT_RELU6, True), (ACT_RELU, False))
    for act, affine in cases:
        bn = _bn(bn_in, act, affine)
        cands = _tiles(loader_warp, c_in, hw, hw, conv_configs.smem_optin(), 2, grad_sums=True)
        assert cands
        for cfg in cands:
            dx = _poisoned(x.shape, torch.float16)
            sums = H.launch_halo(go, wt, dx, cfg, True, bn=bn, bn_input=bn_in)
            what = f"{cfg} act {act}"
            assert sums.partials.shape == (2, x.shape[0] * hw * hw // cfg.BLOCK_M, c_in)
            assert_close(dx, dxr, torch.float16, what=what)
            _check_sums(sums, dx, bn_in, bn, what)
    # through the dispatch (a halo tile, or what the tuner picked): the backward from the sums
    geo = (x.shape, (1, 1), (1, 1), (1, 1), 1)
    dx, sums = K.conv2d_dgrad_grad_sums(go, wt, *geo, bn_input=bn_in, bn=bn)
    _check_backward(sums, dx, bn_in, bn, f"{shape} dispatch")


@pytest.mark.gpu
def test_gpu_halo_through_conv2d_forward_and_dgrad(_halo_on):
    """The heuristic sends ResNet's 3x3 convs to the halo kernels: the
    same results as the pointer kernels', and the moments' tiles are the halo tile's."""
    x, wt, go = _gpu_case((64, 32, 64), torch.float16)
    y, tiles = K.conv2d_forward_moments(x, wt, None, 1, 1, 1, 1)
    assert tiles.rows == H.pick_halo_config(32, 32).BLOCK_M
    yr, dxr = reference(x, wt.float(), None, go, 1, 1, 1, 1, device="cuda")[:2]
    assert_close(y, yr, torch.float16, what="forward")
    assert_close(K.conv2d_dgrad(go, wt, x.shape, 1, 1, 1, 1), dxr, torch.float16, what="dgrad")


@pytest.mark.gpu
@LOADER_WARP
def test_gpu_halo_in_a_cuda_graph(loader_warp, _halo_on):
    """Descriptors are captured by value with the launch: a replay reads x changed in place."""
    x, wt, _ = _gpu_case((64, 16, 64), torch.float16)
    cfg = dataclasses.replace(H.pick_halo_config(16, 16), loader_warp=loader_warp)
    K.conv2d_forward(x, wt, None, 1, 1, 1, 1, config=cfg)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = K.conv2d_forward(x, wt, None, 1, 1, 1, 1, config=cfg)
    x.copy_(randn(*x.shape, dtype=torch.float16, channels_last=True))
    graph.replay()
    torch.cuda.synchronize()
    assert_close(y, reference(x, wt.float(), None, None, 1, 1, 1, 1, "cuda")[0], torch.float16)


@pytest.mark.gpu
@LOADER_WARP
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}->{s[2]}")
def test_gpu_halo_wgrad_every_candidate(shape, loader_warp, _halo_on):
    """Every weight-gradient tile, unsplit and split (a last split shorter than the others),
    written and added into an existing gradient."""
    x, wt, go = _gpu_case(shape, torch.float16)
    c_in, hw, c_out = shape
    dwr = reference(x, wt.float(), None, go, 1, 1, 1, 1, device="cuda")[2]
    cands = HW.halo_wgrad_candidates(
        c_in, c_out, hw, hw, conv_configs.operand_smem_limit(), loader_warp
    )
    cands = [cfg for cfg in cands if cfg.loader_warp == loader_warp]
    assert cands
    for cfg in cands:
        for split in (1, 7):
            dw = conv_wgrad.conv2d_wgrad(x, go, wt.shape, 1, 1, 1, 1, config=cfg, split_k=split)
            assert_close(dw, dwr, tol=1e-4, what=f"{cfg} split {split}")
        base = randn(*wt.shape).contiguous(memory_format=torch.channels_last)
        dw = conv_wgrad.conv2d_wgrad(x, go, wt.shape, 1, 1, 1, 1, grad_weight=base.clone(),
                                     config=cfg, split_k=1)  # fmt: skip
        assert_close(dw, dwr + base.double(), tol=1e-4, what=f"{cfg} accumulated")


@pytest.mark.gpu
def test_gpu_halo_wgrad_through_conv2d_wgrad(_halo_on):
    x, wt, go = _gpu_case((64, 32, 64), torch.float16)
    dwr = reference(x, wt.float(), None, go, 1, 1, 1, 1, device="cuda")[2]
    assert_close(conv_wgrad.conv2d_wgrad(x, go, wt.shape, 1, 1, 1, 1), dwr, tol=1e-4, what="wgrad")
