"""The TMA conv forward, dgrad and wgrad (kernels/conv_tma.py) against torch in float64, and
their dispatch rules.

CPU tier: Triton's interpreter emulates the tensor-descriptor copies (out-of-bounds elements
read as zero), so the kernel's tiling, padding by box bounds, partial last tile, epilogues and
moments are checked on small odd shapes. GPU tier: ResNet-18's stride-1 shapes at a real batch,
every candidate tile, fp16 and bf16, and a CUDA-graph capture.
"""

import math

import pytest
import torch
from helpers import assert_close, randn
from test_conv import reference

from tritoncnn import runtime
from tritoncnn.kernels import conv as K
from tritoncnn.kernels import conv_configs, conv_wgrad, norm
from tritoncnn.kernels import conv_tma as T
from tritoncnn.kernels import elementwise as ew


@pytest.fixture(autouse=True)
def _tma_enabled(monkeypatch):
    """These kernels are off unless TRITONCNN_TMA=1 (conv_tma.ENABLED); on for these tests."""
    monkeypatch.setattr(T, "ENABLED", True)


def test_tma_is_off_unless_asked(monkeypatch):
    """Without TRITONCNN_TMA=1 no conv takes (or is tuned with) the TMA kernels."""
    monkeypatch.delenv("TRITONCNN_TMA", raising=False)
    monkeypatch.setattr(T, "ENABLED", T.env_enabled())
    x = randn(2, 32, 8, 8, dtype=torch.float16, channels_last=True)
    wt = _weight(32, 32, 3, torch.float16)
    assert not T.tma_applicable(x, wt, (1, 1), (1, 1), 1, 8, 8)
    assert not T.tma_dgrad_applicable(x, wt, (1, 1), (1, 1), 1, 8, 8)
    assert not T.tma_wgrad_applicable(x, x, (1, 1), (1, 1), 1)
    monkeypatch.setenv("TRITONCNN_TMA", "1")
    monkeypatch.setattr(T, "ENABLED", T.env_enabled())
    assert T.tma_applicable(x, wt, (1, 1), (1, 1), 1, 8, 8)


def _weight(c_out, c_in, k, dtype):
    w = randn(c_out, c_in, k, k) / math.sqrt(c_in * k * k)
    return w.to(dtype).contiguous(memory_format=torch.channels_last)


def _moments_reference(y: torch.Tensor, rows: int):
    """Per-tile (mean, M2) of y's M x C row matrix in float64, tiles of ``rows`` rows."""
    n, c, h, w = y.shape
    mat = y.detach().permute(0, 2, 3, 1).reshape(n * h * w, c).to("cpu", torch.float64)
    means, m2s = [], []
    for r0 in range(0, mat.shape[0], rows):
        tile = mat[r0 : r0 + rows]
        mean = tile.mean(0)
        means.append(mean)
        m2s.append(((tile - mean) ** 2).sum(0))
    return torch.stack(means), torch.stack(m2s)


# (n, c_in, h, w, c_out, k, padding): whole images per tile (4x4 outputs), row bands (8x8),
# 'valid' 3x3 (10x10 -> 8x8), 1x1, a partial last tile (3 images of 16 pixels, 64-row tiles)
# and more output channels than a column tile.
SHAPES = {
    "3x3_8x8": (2, 32, 8, 8, 24, 3, 1),
    "3x3_4x4_partial_tile": (3, 16, 4, 4, 40, 3, 1),
    "3x3_valid_10x10": (1, 16, 10, 10, 16, 3, 0),
    "1x1_8x8": (2, 48, 8, 8, 72, 1, 0),
}


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("epilogue", ["plain", "bias_relu", "moments"])
def test_tma_forward_matches_torch(name, epilogue):
    n, c_in, h, w, c_out, k, pad = SHAPES[name]
    dtype = torch.float16
    x = randn(n, c_in, h, w, dtype=dtype, channels_last=True)
    wt = _weight(c_out, c_in, k, dtype)
    bias = randn(c_out) if epilogue == "bias_relu" else None
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    assert T.tma_applicable(x, wt, (1, 1), (1, 1), 1, ho, wo)
    cfg = T.pick_tma_config(c_in, c_out)
    args = (x, wt, bias, 1, pad, 1, 1)
    if epilogue == "moments":
        y, tiles = K.conv2d_forward_moments(*args, config=cfg)
    else:
        act = ew.ACT_RELU if epilogue == "bias_relu" else ew.ACT_NONE
        y = K.conv2d_forward(*args, act=act, config=cfg)
    yr = reference(x, wt.float(), bias, None, 1, pad, 1, 1)[0]
    if epilogue == "bias_relu":
        yr = yr.clamp_min(0)
    assert y.shape == (n, c_out, ho, wo) and y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, yr, dtype, what="TMA forward")
    if epilogue == "moments":
        assert tiles.rows == cfg.BLOCK_M
        mean_r, m2_r = _moments_reference(y, tiles.rows)
        assert_close(tiles.partials[0], mean_r, torch.float32, what="tile means")
        assert_close(tiles.partials[1], m2_r, torch.float32, what="tile M2")


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("epilogue", ["plain", "add_relu"])
def test_tma_dgrad_matches_torch(name, epilogue):
    n, c_in, h, w, c_out, k, pad = SHAPES[name]
    dtype = torch.float16
    x = randn(n, c_in, h, w, dtype=dtype, channels_last=True)
    wt = _weight(c_out, c_in, k, dtype)
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    go = randn(n, c_out, ho, wo, dtype=dtype, channels_last=True)
    add = relu_out = None
    if epilogue == "add_relu":
        add = randn(n, c_in, h, w, dtype=dtype, channels_last=True)
        relu_out = randn(n, c_in, h, w, dtype=dtype, channels_last=True).clamp_min(0)
    if not T.tma_dgrad_applicable(go, wt, (1, 1), (1, 1), 1, h, w, add, relu_out):
        assert h == 10, "every SHAPES dgrad but the 10x10 input qualifies"
        return
    cfg = T.pick_tma_config(c_out, c_in, dgrad=True)
    dx = K.conv2d_dgrad(go, wt, x.shape, 1, pad, 1, 1, config=cfg, add=add, relu_out=relu_out)
    dxr = reference(x, wt.float(), None, go, 1, pad, 1, 1)[1]
    if add is not None:
        dxr = (dxr + add.double().cpu()) * (relu_out.cpu() > 0)
    assert dx.shape == x.shape and dx.is_contiguous(memory_format=torch.channels_last)
    assert_close(dx, dxr, dtype, what="TMA dgrad")


@pytest.mark.parametrize("name", ["3x3_8x8", "3x3_4x4_partial_tile", "1x1_8x8", "rows_8x8"])
@pytest.mark.parametrize("split", [1, 3])
def test_tma_wgrad_matches_torch(name, split):
    """One tap (or, "rows_", one filter row of three taps) per program over split pixel
    ranges; split 1 accumulates into an existing gradient, split 3 goes through the partial
    sums and their in-order reduction."""
    rows = name.startswith("rows_")
    n, c_in, h, w, c_out, k, pad = SHAPES["3x3_8x8" if rows else name]
    dtype = torch.float16
    x = randn(n, c_in, h, w, dtype=dtype, channels_last=True)
    wt = _weight(c_out, c_in, k, dtype)
    go = randn(n, c_out, h, w, dtype=dtype, channels_last=True)
    assert T.tma_wgrad_applicable(x, go, (1, 1), (1, 1), 1)
    dwr = reference(x, wt.float(), None, go, 1, pad, 1, 1)[2]
    cfg = T.pick_tma_wgrad_config(c_in, c_out)
    if rows:
        cfg = T.TmaConfig(cfg.BLOCK_M, cfg.BLOCK_N, cfg.BLOCK_K, 4, 1, row_taps=True)
    start = None
    if split == 1:
        start = randn(c_out, c_in, k, k).contiguous(memory_format=torch.channels_last)
        dwr = dwr + start.double().cpu()
    dw = conv_wgrad.conv2d_wgrad(
        x, go, wt.shape, 1, pad, 1, 1, grad_weight=None if start is None else start.clone(),
        config=cfg, split_k=split,
    )  # fmt: skip
    assert dw.dtype == torch.float32 and dw.is_contiguous(memory_format=torch.channels_last)
    assert_close(dw, dwr, tol=1e-4, what="TMA wgrad")


def test_tma_forward_equals_the_pointer_kernel_through_the_batch_norm():
    """The moments feed norm's statistics exactly as conv.py's kernel's do: same statistics."""
    n, c_in, h, w, c_out = 2, 32, 8, 8, 24
    x = randn(n, c_in, h, w, dtype=torch.float16, channels_last=True)
    wt = _weight(c_out, c_in, 3, torch.float16)
    y_tma, tiles_tma = K.conv2d_forward_moments(
        x, wt, None, 1, 1, 1, 1, config=T.pick_tma_config(c_in, c_out)
    )
    y_ptr, tiles_ptr = K.conv2d_forward_moments(x, wt, None, 1, 1, 1, 1)
    assert_close(y_tma, y_ptr.double(), torch.float16, what="TMA vs pointer forward")
    stats = []
    for y, tiles in ((y_tma, tiles_tma), (y_ptr, tiles_ptr)):
        out = norm.batch_norm_forward_train(y, None, None, None, None, None, 0.1, 1e-5,
                                            moments=tiles)  # fmt: skip
        stats.append(out[1:3])
    for a, b in zip(stats[0], stats[1], strict=True):
        assert_close(a, b.double(), torch.float32, tol=1e-3, what="batch statistics")


def test_tile_geometry():
    assert T.tile_geometry(32, 32, 128) == (1, 4, 32)
    assert T.tile_geometry(8, 8, 128) == (2, 8, 8)
    assert T.tile_geometry(4, 4, 64) == (4, 4, 4)
    assert T.tile_geometry(6, 8, 64) is None  # not a power of two
    assert T.tile_geometry(64, 128, 64) is None  # a row wider than the tile


def test_block_k_and_candidates():
    assert T.block_k_for(256) == 64 and T.block_k_for(96) == 32 and T.block_k_for(144) == 16
    assert T.block_k_for(24) is None
    cands = T.tma_candidates(144, 64, 16, 16, smem_limit=200 * 1024)
    assert cands and all(c.BLOCK_K == 16 for c in cands)
    assert all(c.BLOCK_N <= 128 for c in cands)  # 64 channels: no 256-wide column tiles
    assert all(c.smem_bytes() <= 48 * 1024 for c in T.tma_candidates(64, 64, 8, 8, 48 * 1024))
    # the cache tells a TMA tile from a pointer tile of the same numbers
    assert T.TmaConfig(128, 64, 64, 4, 4) != K.ConvConfig(128, 64, 64, 4, 4)


@pytest.mark.parametrize(
    "change",
    ["stride2", "groups2", "fp32", "c_in24", "c_out20", "out6x6", "weight_fp32", "nchw",
     "bf16_interp"],
)  # fmt: skip
def test_tma_not_applicable(change):
    n, c_in, h, w, c_out, dtype = 2, 32, 8, 8, 32, torch.float16
    stride, groups = (1, 1), 1
    if change == "c_in24":
        c_in = 24
    if change == "c_out20":  # output rows of 40 bytes: not whole 16-byte TMA vectors
        c_out = 20
    if change == "out6x6":
        h = w = 6
    if change in ("fp32",):
        dtype = torch.float32
    if change == "bf16_interp":
        if not runtime.INTERPRETED:
            pytest.skip("the interpreter's bf16 rule")
        dtype = torch.bfloat16
    x = randn(n, c_in, h, w, dtype=dtype, channels_last=change != "nchw")
    wt = _weight(c_out, c_in // (2 if change == "groups2" else 1), 3, dtype)
    if change == "weight_fp32":
        wt = wt.float()
    if change == "stride2":
        stride = (2, 2)
    if change == "groups2":
        groups = 2
    ho = h if change != "stride2" else h // 2
    assert not T.tma_applicable(x, wt, stride, (1, 1), groups, ho, ho)


def test_forced_tma_tile_where_it_cannot_run_is_an_error(monkeypatch):
    """A TMA tile asked for a stride-2 conv, or with TRITONCNN_TMA unset, raises rather than
    computing a stride-1 conv."""
    x = randn(2, 32, 8, 8, dtype=torch.float16, channels_last=True)
    wt = _weight(32, 32, 3, torch.float16)
    cfg = T.pick_tma_config(32, 32)
    with pytest.raises(ValueError, match="TMA tile"):
        K.conv2d_forward(x, wt, None, 2, 1, 1, 1, config=cfg)
    go = randn(2, 32, 4, 4, dtype=torch.float16, channels_last=True)
    with pytest.raises(ValueError, match="TMA tile"):
        K.conv2d_dgrad(go, wt, x.shape, 2, 1, 1, 1, config=cfg)
    with pytest.raises(ValueError, match="TMA tile"):
        conv_wgrad.conv2d_wgrad(
            x, go, wt.shape, 2, 1, 1, 1, config=T.pick_tma_wgrad_config(32, 32, 3)
        )
    monkeypatch.setattr(T, "ENABLED", False)
    with pytest.raises(ValueError, match="TMA tile"):
        K.conv2d_forward(x, wt, None, 1, 1, 1, 1, config=cfg)


def test_tma_dgrad_into_a_misaligned_output_takes_the_pointer_kernel(monkeypatch):
    """dx is stored by a TMA copy: an ``out=`` 8 bytes off a 16-byte boundary can't be, so the
    heuristic takes the pointer kernel (right result) and a forced TMA tile raises."""
    monkeypatch.setattr(K, "TMA_CONVS", frozenset({"dgrad"}))
    n, c_in, h, w, c_out, k, pad = SHAPES["3x3_8x8"]
    x = randn(n, c_in, h, w, dtype=torch.float16, channels_last=True)
    wt = _weight(c_out, c_in, k, torch.float16)
    go = randn(n, c_out, h, w, dtype=torch.float16, channels_last=True)
    buf = torch.full((x.numel() + 4,), float("nan"), dtype=torch.float16, device=x.device)
    out = buf[4:].view(n, h, w, c_in).permute(0, 3, 1, 2)
    assert out.is_contiguous(memory_format=torch.channels_last) and out.data_ptr() % 16 == 8
    assert not T.tma_dgrad_applicable(go, wt, (1, 1), (1, 1), 1, h, w, out)
    dx = K.conv2d_dgrad(go, wt, x.shape, 1, pad, 1, 1, out=out)
    assert_close(dx, reference(x, wt.float(), None, go, 1, pad, 1, 1)[1], torch.float16,
                 what="dgrad into a misaligned out")  # fmt: skip
    with pytest.raises(ValueError, match="TMA tile"):
        K.conv2d_dgrad(
            go, wt, x.shape, 1, pad, 1, 1, out=out, config=T.pick_tma_config(24, 32, True)
        )


@pytest.mark.parametrize("ops", [(), ("fwd",), ("dgrad",), ("wgrad",), K.TMA_OPS])
def test_heuristic_takes_the_tma_kernels_for_the_ops_in_tma_convs(monkeypatch, ops):
    """conv.TMA_CONVS names the ops whose heuristic tile is a TMA kernel's; the others keep
    the pointer kernels, and every op's result is the conv's either way."""
    monkeypatch.setattr(K, "TMA_CONVS", frozenset(ops))
    calls = []
    for op, name in (("fwd", "conv2d_forward_tma"), ("dgrad", "conv2d_dgrad_tma"),
                     ("wgrad", "conv2d_wgrad_tma")):  # fmt: skip
        real = getattr(T, name)

        def counted(*args, _real=real, _op=op, **kwargs):
            calls.append(_op)
            return _real(*args, **kwargs)

        monkeypatch.setattr(T, name, counted)
    n, c_in, h, w, c_out, k, pad = SHAPES["3x3_8x8"]
    x = randn(n, c_in, h, w, dtype=torch.float16, channels_last=True)
    wt = _weight(c_out, c_in, k, torch.float16)
    go = randn(n, c_out, h, w, dtype=torch.float16, channels_last=True)
    yr, dxr, dwr, _ = reference(x, wt.float(), None, go, 1, pad, 1, 1)
    assert_close(K.conv2d_forward(x, wt, None, 1, pad, 1, 1), yr, torch.float16, what="fwd")
    dx = K.conv2d_dgrad(go, wt, x.shape, 1, pad, 1, 1)
    assert_close(dx, dxr, torch.float16, what="dgrad")
    dw = conv_wgrad.conv2d_wgrad(x, go, wt.shape, 1, pad, 1, 1)
    assert_close(dw, dwr, tol=1e-4, what="wgrad")
    assert sorted(set(calls)) == sorted(ops)


# --- GPU tier ------------------------------------------------------------------------------

# ResNet-18 (CIFAR) stride-1 forward shapes at batch 64: (c_in, hw, c_out, k)
GPU_SHAPES = [(64, 32, 64, 3), (128, 16, 128, 3), (256, 8, 256, 3), (512, 4, 512, 3),
              (64, 16, 128, 1), (96, 8, 576, 1)]  # fmt: skip


def _gpu_case(shape, dtype):
    """(x, weight, dy, padding) of a GPU_SHAPES conv at batch 64; skips before sm_90."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA needs sm_90")
    c_in, hw, c_out, k = shape
    x = randn(64, c_in, hw, hw, dtype=dtype, channels_last=True)
    go = randn(64, c_out, hw, hw, dtype=dtype, channels_last=True)
    return x, _weight(c_out, c_in, k, dtype), go, k // 2


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}->{s[2]}k{s[3]}")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_tma_every_candidate(shape, dtype):
    x, wt, _, pad = _gpu_case(shape, dtype)
    c_in, hw, c_out, k = shape
    bias = randn(c_out)
    yr = reference(x, wt.float(), bias, None, 1, pad, 1, 1, device="cuda")[0]
    cands = T.tma_candidates(c_in, c_out, hw, hw, conv_configs.operand_smem_limit())
    assert cands
    for cfg in cands:
        y, tiles = K.conv2d_forward_moments(x, wt, bias, 1, pad, 1, 1, config=cfg)
        assert_close(y, yr, dtype, what=f"{cfg}")
        mean_r, m2_r = _moments_reference(y, cfg.BLOCK_M)
        assert_close(tiles.partials[0], mean_r, torch.float32, what=f"{cfg} tile means")
        assert_close(tiles.partials[1], m2_r, torch.float32, what=f"{cfg} tile M2")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}->{s[2]}k{s[3]}")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_tma_dgrad_every_candidate(shape, dtype):
    x, wt, go, pad = _gpu_case(shape, dtype)
    c_in, hw, c_out, k = shape
    add = randn(*x.shape, dtype=dtype, channels_last=True)
    dxr = reference(x, wt.float(), None, go, 1, pad, 1, 1, device="cuda")[1]
    cands = T.tma_candidates(c_out, c_in, hw, hw, conv_configs.operand_smem_limit(), dgrad=True)
    assert cands
    for cfg in cands:
        dx = K.conv2d_dgrad(go, wt, x.shape, 1, pad, 1, 1, config=cfg)
        assert_close(dx, dxr, dtype, what=f"{cfg}")
        dx = K.conv2d_dgrad(go, wt, x.shape, 1, pad, 1, 1, config=cfg, add=add)
        assert_close(dx, dxr + add.double(), dtype, what=f"{cfg} + add")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}->{s[2]}k{s[3]}")
def test_gpu_tma_wgrad_every_candidate(shape):
    x, wt, go, pad = _gpu_case(shape, torch.float16)
    c_in, hw, c_out, k = shape
    dwr = reference(x, wt.float(), None, go, 1, pad, 1, 1, device="cuda")[2]
    cands = T.tma_wgrad_candidates(c_in, c_out, hw, hw, conv_configs.operand_smem_limit(), k)
    assert cands
    for cfg in cands:
        for split in (1, 8):
            dw = conv_wgrad.conv2d_wgrad(x, go, wt.shape, 1, pad, 1, 1, config=cfg, split_k=split)
            assert_close(dw, dwr, tol=1e-4, what=f"{cfg} split {split}")


@pytest.mark.gpu
def test_gpu_tma_forward_in_a_cuda_graph():
    """Descriptors are captured by value with the launch: a replay reads x changed in place."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA needs sm_90")
    x = randn(32, 64, 16, 16, dtype=torch.float16, channels_last=True)
    wt = _weight(64, 64, 3, torch.float16)
    cfg = T.pick_tma_config(64, 64)
    K.conv2d_forward(x, wt, None, 1, 1, 1, 1, config=cfg)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = K.conv2d_forward(x, wt, None, 1, 1, 1, 1, config=cfg)
    x.copy_(randn(32, 64, 16, 16, dtype=torch.float16, channels_last=True))
    graph.replay()
    torch.cuda.synchronize()
    assert_close(y, reference(x, wt.float(), None, None, 1, 1, 1, 1, "cuda")[0], torch.float16)
