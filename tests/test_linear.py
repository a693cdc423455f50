"""Linear and the matmul kernels against torch in float64 (autograd for the gradients)."""

import math

import pytest
import torch
from helpers import DEVICE, assert_close, f64, randn

from tritoncnn import nn
from tritoncnn.kernels import elementwise as ew
from tritoncnn.kernels import matmul as mm

FUSED = [
    (ew.ACT_RELU, 0.0, torch.relu),
    (ew.ACT_ELU, 0.7, lambda t: torch.nn.functional.elu(t, alpha=0.7)),
    (ew.ACT_SILU, 0.0, torch.nn.functional.silu),
]
CONFIG_IDS = list(range(len(mm.CONFIGS)))


def _reference(x, weight, bias, grad_out):
    """y, dx, dW, db of torch's linear in float64 (on the kernel device: fast on the GPU)."""
    xr = x.detach().double().requires_grad_()
    wr = weight.detach().to(x.device, torch.float64).requires_grad_()
    br = bias.detach().to(x.device, torch.float64).requires_grad_() if bias is not None else None
    y = torch.nn.functional.linear(xr, wr, br)
    y.backward(grad_out.double())
    return y, xr.grad, wr.grad, (br.grad if br is not None else None)


def _pair(n_in, n_out, bias=True):
    """Our Linear and torch's with the same fp32 weights."""
    ref = torch.nn.Linear(n_in, n_out, bias=bias)
    ours = nn.Linear(n_in, n_out, bias=bias)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _check_module(batch, n_in, n_out, dtype, bias=True):
    ours, ref = _pair(n_in, n_out, bias)
    x = randn(batch, n_in, dtype=dtype)
    g = randn(batch, n_out, dtype=dtype)
    y = ours(x)
    dx = ours.backward(g)
    assert y.dtype == dtype and dx.dtype == dtype and tuple(dx.shape) == tuple(x.shape)
    assert ours.weight.grad.dtype == torch.float32
    y_r, dx_r, dw_r, db_r = _reference(x, ref.weight, ref.bias, g)
    assert_close(y, y_r, dtype, what="forward")
    assert_close(dx, dx_r, dtype, what="grad input")
    assert_close(ours.weight.grad, dw_r, dtype, what="grad weight")
    if bias:
        assert ours.bias.grad.dtype == torch.float32
        assert_close(ours.bias.grad, db_r, dtype, what="grad bias")
    else:
        assert ours.bias is None


# --- CPU tier ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_module(dtype, bias):
    _check_module(5, 37, 19, dtype, bias)


def test_linear_module_bf16():
    _check_module(7, 21, 17, torch.bfloat16)


@pytest.mark.parametrize("act,alpha,fn", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_epilogue(act, alpha, fn, dtype):
    x = randn(5, 37, dtype=dtype)
    w, b = randn(19, 37), randn(19)
    y = mm.linear_forward(x, w, b, act=act, alpha=alpha)
    assert y.dtype == dtype
    assert_close(y, fn(f64(x) @ f64(w).T + f64(b)), dtype, what="fused forward")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_helpers_direct(dtype):
    """dgrad, wgrad and bias grad of the functional helpers, written fresh."""
    x, g, w = randn(9, 37, dtype=dtype), randn(9, 19, dtype=dtype), randn(19, 37)
    _, dx_r, dw_r, db_r = _reference(x, w, randn(19), g)
    dx = mm.linear_dgrad(g, w)
    assert dx.dtype == dtype
    assert_close(dx, dx_r, dtype, what="dgrad")
    dw = mm.linear_wgrad(x, g)
    assert dw.dtype == torch.float32 and tuple(dw.shape) == (19, 37)
    assert_close(dw, dw_r, dtype, what="wgrad")
    db = mm.linear_bias_grad(g)
    assert db.dtype == torch.float32
    assert_close(db, db_r, dtype, what="bias grad")


def test_gradients_accumulate():
    """A second backward adds into p.grad (weight, bias); the helpers add into what they get."""
    ours, ref = _pair(37, 19)
    x1, g1 = randn(5, 37), randn(5, 19)
    x2, g2 = randn(3, 37), randn(3, 19)
    ours(x1)
    ours.backward(g1)
    grad_w = ours.weight.grad
    ours(x2)
    ours.backward(g2)
    assert ours.weight.grad is grad_w  # added in place, not reallocated
    _, _, dw1, db1 = _reference(x1, ref.weight, ref.bias, g1)
    _, _, dw2, db2 = _reference(x2, ref.weight, ref.bias, g2)
    assert_close(ours.weight.grad, dw1 + dw2, what="accumulated grad weight")
    assert_close(ours.bias.grad, db1 + db2, what="accumulated grad bias")
    ours.zero_grad()
    ours(x2)
    ours.backward(g2)
    assert_close(ours.weight.grad, dw2, what="grad weight after zero_grad")

    # fp16 activations accumulate into fp32 gradients too
    xh, gh = randn(6, 37, dtype=torch.float16), randn(6, 19, dtype=torch.float16)
    start_w, start_b = randn(19, 37), randn(19)
    dw, db = start_w.clone(), start_b.clone()
    assert mm.linear_wgrad(xh, gh, dw) is dw
    assert mm.linear_bias_grad(gh, db) is db
    assert_close(dw, f64(start_w) + f64(gh).T @ f64(xh), torch.float16, what="wgrad accumulate")
    assert_close(db, f64(start_b) + f64(gh).sum(0), torch.float16, what="bias accumulate")


def test_bias_grad_two_stage_deterministic():
    g = randn(100, 70)
    # 32-row slabs: four partial rows, then the second stage
    db = mm.linear_bias_grad(g, rows_per_program=32)
    assert_close(db, f64(g).sum(0), what="two-stage bias grad")
    assert torch.equal(db, mm.linear_bias_grad(g, rows_per_program=32))
    acc = randn(70)
    expect = f64(acc) + f64(g).sum(0)
    mm.linear_bias_grad(g, acc, rows_per_program=32)
    assert_close(acc, expect, what="two-stage accumulate")
    # strided (transposed) input
    gt = randn(70, 100).T
    assert_close(mm.column_sum(gt, rows_per_program=32), f64(gt).sum(0), what="strided sums")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_strided_operands(dtype):
    """A^T, B^T, sliced (non-unit-stride) views and a transposed output, without copies."""
    m, k, n = 13, 41, 22
    a_t = randn(k, m, dtype=dtype).T  # A^T view: stride (1, m)
    b_t = randn(n, k, dtype=dtype).T  # B^T view
    ref = f64(a_t) @ f64(b_t)
    assert_close(mm.matmul(a_t, b_t), ref, dtype, what="transposed operands")
    a_s = randn(m, 2 * k + 3, dtype=dtype)[:, 3::2]  # column stride 2
    b_s = randn(2 * k, n + 5, dtype=dtype)[::2, 5:]  # row stride 2 (n + 5)
    out_t = mm.matmul(a_s, b_s, out=torch.full((n, m), float("nan"), dtype=dtype, device=DEVICE).T)
    assert out_t.stride() == (1, m)
    assert_close(out_t, f64(a_s) @ f64(b_s), dtype, what="sliced operands, transposed out")
    # a linear layer fed a strided view (columns of a wider buffer)
    x = randn(5, 50, dtype=dtype)[:, 7:44]
    ours, ref_l = _pair(37, 19)
    g = randn(5, 19, dtype=dtype)
    y = ours(x)
    dx = ours.backward(g)
    y_r, dx_r, dw_r, db_r = _reference(x, ref_l.weight, ref_l.bias, g)
    assert_close(y, y_r, dtype, what="strided input forward")
    assert_close(dx, dx_r, dtype, what="strided input dgrad")
    assert_close(ours.weight.grad, dw_r, dtype, what="strided input wgrad")


def test_matmul_general():
    """Mixed fp32/fp16 operands compute in fp16; accumulate with a fused bias and activation."""
    a, b = randn(6, 20, dtype=torch.float16), randn(20, 11)
    bias = randn(11)
    out = mm.matmul(a, b, out_dtype=torch.float32)
    assert out.dtype == torch.float32
    b16 = f64(b.to(torch.float16))
    assert_close(out, f64(a) @ b16, torch.float16, what="mixed operands")
    start = randn(6, 11)
    acc = start.clone()
    mm.matmul(a, b, acc, bias=bias, act=ew.ACT_RELU, accumulate=True)
    expect = f64(start) + torch.relu(f64(a) @ b16 + f64(bias))
    assert_close(acc, expect, torch.float16, what="accumulate after epilogue")
    with pytest.raises(ValueError):
        mm.matmul(a, randn(21, 11))
    with pytest.raises(ValueError):
        mm.matmul(a, b, accumulate=True)


@pytest.mark.parametrize("cfg", CONFIG_IDS)
def test_each_config(cfg):
    """Every shipped config, with several tiles, partial tiles, a partial group and K tails."""
    c = mm.CONFIGS[cfg]
    m, n, k = c.block_m * 2 + 3, c.block_n + 5, c.block_k * 2 + 7
    x, g = randn(m, k, dtype=torch.float16), randn(m, n, dtype=torch.float16)
    w, b = randn(n, k), randn(n)
    y_r, dx_r, dw_r, _ = _reference(x, w, b, g)
    assert_close(mm.linear_forward(x, w, b, config=cfg), y_r, torch.float16, what="forward")
    assert_close(mm.linear_dgrad(g, w, config=cfg), dx_r, torch.float16, what="dgrad")
    assert_close(mm.linear_wgrad(x, g, config=cfg), dw_r, torch.float16, what="wgrad")
    x32 = randn(5, 37)
    w32 = randn(19, 37)
    y32 = mm.linear_forward(x32, w32, config=cfg)
    assert_close(y32, f64(x32) @ f64(w32).T, what="fp32 forward")


def test_pick_config(monkeypatch):
    monkeypatch.setattr(mm.runtime, "INTERPRETED", False)  # the GPU heuristic
    monkeypatch.setattr(mm.runtime, "sm_count", lambda: 132)  # an H100's, without a GPU
    assert mm.pick_config(512, 10, 512, torch.float16) is mm.CONFIGS[-1]
    assert mm.pick_config(10, 256, 512, torch.float16) is mm.CONFIGS[-1]
    assert mm.pick_config(4096, 4096, 4096, torch.float16) in mm.CONFIGS
    assert mm.pick_config(4096, 4096, 4096, torch.float32) is not mm.CONFIGS[0]
    for c in mm.CONFIGS:
        assert min(c.block_m, c.block_n, c.block_k) >= 16


def test_state_dict_and_init_match_torch():
    torch.manual_seed(3)
    ours = nn.Linear(37, 19)
    torch.manual_seed(3)
    ref = torch.nn.Linear(37, 19)
    sd = ours.state_dict()
    assert list(sd) == list(ref.state_dict()) == ["weight", "bias"]
    for key, t in ref.state_dict().items():
        assert sd[key].shape == t.shape and sd[key].dtype == torch.float32
        assert sd[key].device.type == DEVICE.type
        assert torch.equal(sd[key].cpu(), t), key  # same draws from torch's generator
    assert ours.bias.no_weight_decay and not ours.weight.no_weight_decay
    bound = 1 / math.sqrt(37)
    assert ours.bias.data.abs().max() <= bound
    no_bias = nn.Linear(37, 19, bias=False)
    assert list(no_bias.state_dict()) == list(torch.nn.Linear(37, 19, bias=False).state_dict())
    assert [n for n, _ in no_bias.named_parameters()] == ["weight"]
    assert repr(ours) == repr(ref)


def test_wrong_input_is_a_clear_error():
    layer = nn.Linear(37, 19)
    with pytest.raises(ValueError, match="in_features=37"):
        layer(randn(5, 36))
    with pytest.raises(ValueError, match="2-d"):
        layer(randn(2, 5, 37))
    with pytest.raises(RuntimeError):
        nn.Linear(3, 4).backward(randn(2, 4))


# --- GPU tier ---------------------------------------------------------------------------------

# (in, out): the seed net's classifier (2048 -> 512 -> 256 -> 10), ResNet-18's head (512 -> 10),
# MobileNetV2's head (1280 -> 10), VGG-style 4608 -> 512 (512 x 3 x 3 flattened), 4096 -> 4096.
GPU_SHAPES = [(2048, 512), (512, 256), (256, 10), (512, 10), (1280, 10), (4608, 512), (4096, 4096)]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("n_in,n_out", GPU_SHAPES)
@pytest.mark.parametrize("batch", [128, 512])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_linear_module_gpu(n_in, n_out, batch, dtype):
    _check_module(batch, n_in, n_out, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", CONFIG_IDS)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("batch,n_in,n_out", [(128, 2048, 512), (512, 512, 10), (512, 4608, 512)])
def test_each_config_gpu(cfg, dtype, batch, n_in, n_out):
    """Each config on real shapes, including wgrad accumulation and a fused activation."""
    x, g = randn(batch, n_in, dtype=dtype), randn(batch, n_out, dtype=dtype)
    w, b = randn(n_out, n_in) / math.sqrt(n_in), randn(n_out)
    y_r, dx_r, dw_r, _ = _reference(x, w, b, g)
    y = mm.linear_forward(x, w, b, act=ew.ACT_SILU, config=cfg)
    assert_close(y, torch.nn.functional.silu(y_r), dtype, what="fused forward")
    assert_close(mm.linear_dgrad(g, w, config=cfg), dx_r, dtype, what="dgrad")
    dw = mm.linear_wgrad(x, g, config=cfg)
    assert_close(dw, dw_r, dtype, what="wgrad")
    mm.linear_wgrad(x, g, dw, config=cfg)
    assert_close(dw, 2 * dw_r, dtype, what="wgrad accumulate")


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [None, *CONFIG_IDS])
def test_square_4096_fp16_gpu(cfg):
    size = 4096
    a = randn(size, size, dtype=torch.float16, seed=1)
    b = randn(size, size, dtype=torch.float16, seed=2)
    ref = a.double() @ b.double()  # float64 on the GPU, compared on the CPU
    out = mm.matmul(a, b, config=cfg)
    assert out.dtype == torch.float16
    assert_close(out, ref, torch.float16, what=f"4096^3 fp16 config={cfg}")
    # the same through the transposed views a linear layer uses (B = W^T)
    out_t = mm.matmul(a, b.T, config=cfg)
    assert_close(out_t, a.double() @ b.double().T, torch.float16, what="B^T")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_bias_grad_tall_gpu(dtype):
    g = randn(5000, 1280, dtype=dtype)  # five slabs: the two-stage path
    db = mm.linear_bias_grad(g)
    assert_close(db, f64(g).sum(0), dtype, what="tall bias grad")
    assert torch.equal(db, mm.linear_bias_grad(g))  # deterministic
