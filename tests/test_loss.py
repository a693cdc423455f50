"""Softmax cross-entropy and the correct-prediction count against torch in float64."""

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_close, f64, randn

from tritoncnn import nn, runtime
from tritoncnn.kernels import loss as kl


def _targets(n, k, seed=0, ignore=None, ignore_index=-100):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, k, (n,), generator=g)
    if ignore is not None:
        t[ignore] = ignore_index
    return t.to(DEVICE)


def _reference(logits, target, eps, ignore_index=-100, reduction="mean", grad_scale=1.0):
    xr = f64(logits).requires_grad_()
    loss = F.cross_entropy(
        xr, target.cpu(), ignore_index=ignore_index, reduction=reduction, label_smoothing=eps
    )
    (loss * grad_scale).backward()
    return loss.detach(), xr.grad


def _check(logits, target, eps, dtype, ignore_index=-100, reduction="mean", grad_scale=None):
    m = nn.CrossEntropyLoss(ignore_index=ignore_index, reduction=reduction, label_smoothing=eps)
    loss = m(logits, target)
    dx = m.backward(grad_scale)
    assert loss.shape == () and loss.dtype == torch.float32
    assert dx.dtype == logits.dtype and dx.shape == logits.shape
    assert dx.stride() == logits.stride() or not logits.is_contiguous()
    scale = 1.0 if grad_scale is None else float(grad_scale)
    ref_loss, ref_dx = _reference(logits, target, eps, ignore_index, reduction, scale)
    # the loss is computed in fp32 from the (already rounded) inputs, whatever their dtype
    assert_close(loss, ref_loss, torch.float32, what="loss")
    assert_close(dx, ref_dx, dtype, what="grad")


@pytest.mark.parametrize("n,k", [(7, 10), (7, 37), (1, 10)])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cross_entropy(n, k, eps, dtype):
    logits = randn(n, k, dtype=dtype) * 3
    _check(logits, _targets(n, k), eps, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cross_entropy_large_logits(dtype):
    """1e4-magnitude logits: the max-subtracted log-sum-exp must not overflow."""
    logits = randn(7, 37, dtype=dtype) * 1e4
    _check(logits, _targets(7, 37), 0.1, dtype)


def test_cross_entropy_wide_rows_loop_over_chunks():
    """K > MAX_BLOCK_K: the online log-sum-exp carries across chunks."""
    k = kl.MAX_BLOCK_K + 77
    logits = randn(3, k) * 5
    _check(logits, _targets(3, k), 0.1, torch.float32)


def test_cross_entropy_strided_logits():
    """Logits read through strides: a transposed view works without a copy."""
    logits = randn(37, 7).t()
    assert not logits.is_contiguous()
    _check(logits, _targets(7, 37), 0.1, torch.float32)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_ignore_index(eps, reduction):
    logits = randn(7, 10)
    _check(logits, _targets(7, 10, ignore=[1, 4]), eps, torch.float32, reduction=reduction)
    t = _targets(7, 10, ignore=[0, 6], ignore_index=3)
    _check(logits, t, eps, torch.float32, ignore_index=3, reduction=reduction)


def test_cross_entropy_all_ignored():
    """Like torch: the mean is NaN and the gradient is zero; the sum is 0."""
    logits = randn(5, 10)
    t = _targets(5, 10, ignore=slice(None))
    m = nn.CrossEntropyLoss(label_smoothing=0.1)
    assert torch.isnan(m(logits, t))
    assert torch.count_nonzero(m.backward()) == 0
    m = nn.CrossEntropyLoss(reduction="sum")
    assert m(logits, t).item() == 0.0
    assert torch.count_nonzero(m.backward()) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cross_entropy_grad_scale(dtype):
    logits = randn(7, 37, dtype=dtype)
    scale = torch.tensor(1024.0, device=DEVICE)
    _check(logits, _targets(7, 37), 0.1, dtype, grad_scale=scale)


def test_cross_entropy_sum_reduction():
    logits = randn(7, 10, dtype=torch.float16)
    _check(logits, _targets(7, 10), 0.1, torch.float16, reduction="sum")


def _assert_tickets_rearmed():
    """The forward's last program re-armed the shared ticket it took."""
    assert not runtime.tickets(runtime.TICKET_SLOTS).any()


def test_cross_entropy_deterministic():
    logits = randn(7, 37)
    t = _targets(7, 37)
    m = nn.CrossEntropyLoss(label_smoothing=0.1)
    a, da = m(logits, t), m.backward()
    b, db = m(logits, t), m.backward()
    assert torch.equal(a, b) and torch.equal(da, db)
    _assert_tickets_rearmed()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_many_partials(monkeypatch, reduction):
    """More partials than the last program adds per step (BLOCK_P shrunk to 4; 10 programs,
    the last step partly full), with ignored rows and a bad target counted across programs."""
    monkeypatch.setattr(kl, "BLOCK_P", 4)
    n, k = 9 * kl.MAX_BLOCK_N + 5, 10
    assert kl._blocks(n, k)[0] == kl.MAX_BLOCK_N
    logits = randn(n, k)
    t = _targets(n, k, ignore=[0, 100, n - 1])
    _check(logits, t, 0.1, torch.float32, reduction=reduction)
    t[n - 2] = k
    loss, ctx = kl.cross_entropy_forward(logits, t, reduction=reduction)
    assert torch.isnan(loss) and ctx.n_bad.item() == 1
    _assert_tickets_rearmed()


def test_cross_entropy_empty_batch():
    """N == 0 still runs one program, which writes the loss: NaN mean, zero sum."""
    logits, t = randn(0, 10), _targets(0, 10)
    assert torch.isnan(kl.cross_entropy_forward(logits, t)[0])
    loss, ctx = kl.cross_entropy_forward(logits, t, reduction="sum")
    assert loss.item() == 0.0 and ctx.n_bad.item() == 0
    _assert_tickets_rearmed()


def test_cross_entropy_bad_target():
    """Out-of-range targets: NaN loss and row gradient (no host sync), counted in n_bad;
    the opt-in check raises ValueError."""
    logits = randn(5, 10)
    t = torch.tensor([1, 10, 2, -1, -100], device=DEVICE)
    loss, ctx = kl.cross_entropy_forward(logits, t)
    assert torch.isnan(loss) and ctx.n_bad.item() == 2
    dx = kl.cross_entropy_backward(logits, t, ctx)
    assert torch.isnan(dx[1]).all() and torch.isnan(dx[3]).all()
    assert torch.isfinite(dx[[0, 2]]).all() and torch.count_nonzero(dx[4]) == 0
    m = nn.CrossEntropyLoss()
    m.check_targets = True
    with pytest.raises(ValueError, match="outside"):
        m(logits, t)
    m(logits, torch.tensor([1, 9, 2, 0, -100], device=DEVICE))  # in range: no error


def test_cross_entropy_unsupported_arguments():
    with pytest.raises(NotImplementedError):
        nn.CrossEntropyLoss(weight=torch.ones(10))
    with pytest.raises(NotImplementedError):
        nn.CrossEntropyLoss(reduction="none")
    with pytest.raises(ValueError):
        nn.CrossEntropyLoss(reduction="avg")
    with pytest.raises(RuntimeError):
        nn.CrossEntropyLoss().backward()
    with pytest.raises(ValueError):
        nn.CrossEntropyLoss()(randn(2, 3, 4), _targets(2, 3))


def _counter(dtype=torch.int64):
    return kl.zero_counter_(torch.empty((), dtype=dtype, device=DEVICE))


@pytest.mark.parametrize("counter_dtype", [torch.int64, torch.int32])
def test_count_correct_ties_and_accumulation(counter_dtype):
    # rows with ties: argmax is the first maximum (index 1 in row 0, index 0 in row 2)
    logits = torch.tensor(
        [[0.0, 3.0, 3.0, 1.0], [2.0, 1.0, 0.0, 5.0], [4.0, 4.0, 4.0, 4.0], [1.0, 0.0, 7.0, 7.0]],
        device=DEVICE,
    )
    target = torch.tensor([1, 3, 1, 3], device=DEVICE)  # hits: rows 0 and 1 only
    assert (torch.argmax(logits, 1) == target).sum().item() == 2
    c = _counter(counter_dtype)
    kl.count_correct(logits, target, c)
    assert c.item() == 2
    kl.count_correct(logits, torch.tensor([2, 3, 0, 2], device=DEVICE), c)  # +3
    assert c.item() == 5 and c.dtype == counter_dtype
    # the forward's fused count agrees, and accumulates into the same counter
    kl.cross_entropy_forward(logits.half(), target, correct=c)
    assert c.item() == 7


def test_count_correct_ties_across_chunks():
    """A tie between two class chunks goes to the earlier one; a later strict max wins."""
    k = kl.MAX_BLOCK_K + 40
    logits = torch.zeros(3, k, device=DEVICE)
    logits[0, 5] = logits[0, k - 3] = 2.0  # tie across chunks -> 5
    logits[1, 5], logits[1, k - 3] = 2.0, 2.5  # later chunk strictly larger -> k-3
    logits[2, 0] = logits[2, 1] = -1.0  # row of zeros with ties everywhere -> 2
    target = torch.tensor([5, k - 3, 2], device=DEVICE)
    assert kl.count_correct(logits, target).item() == 3
    assert kl.count_correct(logits, torch.tensor([k - 3, 5, 0], device=DEVICE)).item() == 0


def test_count_correct_random():
    logits = randn(37, 11, dtype=torch.float16)
    t = _targets(37, 11)
    t[:12] = torch.argmax(logits[:12].float(), 1)  # make sure some are hits
    ref = (torch.argmax(logits.float(), 1) == t).sum().item()
    assert kl.count_correct(logits, t).item() == ref


# --- GPU tier ------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("n", [128, 512])
@pytest.mark.parametrize("k", [10, 100, 1000, 3001])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_gpu(n, k, dtype, eps):
    logits = randn(n, k, dtype=dtype, seed=n + k) * 4
    t = _targets(n, k, ignore=slice(0, 3))
    scale = torch.tensor(65536.0, device=DEVICE)
    _check(logits, t, eps, dtype, grad_scale=scale)
    _check(logits, t, eps, dtype, reduction="sum")
    ref = (torch.argmax(logits.float(), 1) == t).sum().item()
    c = _counter()
    kl.cross_entropy_forward(logits, t, eps, correct=c)
    kl.count_correct(logits, t, c)
    assert c.item() == 2 * ref


@pytest.mark.gpu
@pytest.mark.parametrize("block_k", kl.BLOCK_K_CHOICES)
@pytest.mark.parametrize("n", [1, 257])
def test_cross_entropy_every_block_config_gpu(block_k, n):
    k = block_k - 3 if block_k > 16 else 13  # picks exactly this BLOCK_K
    assert kl._blocks(n, k)[1] == block_k
    logits = randn(n, k, dtype=torch.float16, seed=block_k) * 4
    _check(logits, _targets(n, k), 0.1, torch.float16)


@pytest.mark.gpu
def test_cross_entropy_large_logits_gpu():
    logits = randn(512, 100, dtype=torch.float16, seed=1) * 1e4
    _check(logits, _targets(512, 100), 0.1, torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(512, 100), (70_000, 10)])  # 16 and 1094 (> BLOCK_P) programs
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_forward_repeatable_gpu(n, k, reduction):
    """On the GPU the last ticket goes to a different program each time; it adds the partials
    in a fixed order, so 50 repeats agree bit for bit (loss, scale, bad count, lse, argmax
    count), and every launch re-arms the ticket."""
    logits = randn(n, k, dtype=torch.float16, seed=k) * 4
    t = _targets(n, k, ignore=slice(0, 3))
    outs = []
    for _ in range(50):
        c = _counter()
        loss, ctx = kl.cross_entropy_forward(logits, t, 0.1, reduction=reduction, correct=c)
        outs.append((loss, ctx.inv_denom, ctx.n_bad, ctx.lse, c))
    for out in outs[1:]:
        for a, b in zip(outs[0], out, strict=True):
            assert torch.equal(a, b)
    ref_loss, _ = _reference(logits, t, 0.1, reduction=reduction)
    assert_close(outs[0][0], ref_loss, torch.float32, what="loss")
    _assert_tickets_rearmed()
