"""Softmax cross-entropy (forward, backward) and an on-device correct-prediction count.

Layout: logits are a 2-d (N, K) tensor of any float dtype, read through their element strides
(row stride ``s_n``, class stride ``s_k``), so a transposed or sliced view works without a
copy; targets are an int64 (N,) tensor read through its stride. All math is fp32.

Forward (one launch, deterministic, no atomics on the loss): ``ce_forward_kernel``, one
program per block of ``BLOCK_N`` rows, walks the classes in chunks of ``BLOCK_K`` with an
online (max-subtracted) log-sum-exp, writes each row's ``lse`` (kept for the backward) and one
partial loss sum, valid-row count and bad-target count per program. The last program to finish
(an atomic ticket, ``kernels/tickets.py``) then sums the partials in a fixed order, whichever
program it is, and writes the 0-dim loss, ``1/denominator`` (the backward's scale: 1/valid
rows for 'mean', 1 for 'sum') and the number of out-of-range targets.

Backward (one launch): ``ce_backward_kernel``, one program per (row block, class block) tile.

Label smoothing follows torch exactly: loss_i = (1-eps) * (lse_i - x_i[t_i]) + eps * (lse_i -
mean_k x_ik). Rows whose target equals ``ignore_index`` contribute 0 and are left out of the
mean (all rows ignored: the mean is NaN and the gradient 0, as torch).

Out-of-range targets (not ``ignore_index``, outside [0, K)) are never read out of bounds: the
row's loss and gradient become NaN (so the loss shows it without a host sync) and the forward
counts them in ``CrossEntropyContext.n_bad`` for a caller that wants to check.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from tritoncnn import runtime
from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs
from tritoncnn.kernels.tickets import last_to_finish

# Row tiles: BLOCK_K = next power of two >= K, clamped to [16, MAX_BLOCK_K] (wider rows loop
# over chunks); BLOCK_N rows per program so a tile holds ~TILE_ELEMS fp32 values.
MAX_BLOCK_K = 1024
TILE_ELEMS = 4096
MAX_BLOCK_N = 64
BLOCK_P = 1024  # partials summed per step by the forward's last program
# Every BLOCK_K the helpers can pick (the GPU tier runs each one).
BLOCK_K_CHOICES = tuple(2**i for i in range(4, MAX_BLOCK_K.bit_length()))


@triton.jit
def _argmax_update(x, kk, K, best, best_idx):
    """Fold one (BLOCK_N, BLOCK_K) chunk into the running (max, first argmax) of each row.

    ``x`` holds -inf where masked; ``kk`` are the chunk's class indices. The first index of the
    chunk's max is taken, and a later chunk only wins with a strictly larger value, so ties go
    to the lowest index like torch.argmax.
    """
    cm = tl.max(x, axis=1)
    idx = tl.min(tl.where(x == cm[:, None], kk[None, :], K), axis=1)
    better = cm > best
    return tl.where(better, cm, best), tl.where(better, idx, best_idx)


@triton.jit
def _finish_loss(
    part_loss_ptr, part_count_ptr, P, loss_ptr, inv_denom_ptr, n_bad_ptr,
    MEAN: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Reduce the P partials of ce_forward_kernel in a fixed order (run by its last program),
    the same sum whichever program that is, so the loss is bitwise repeatable.

    part_loss_ptr: (P,) fp32 partial loss sums; part_count_ptr: (2, P) int32 valid / bad counts.
    loss_ptr: 0-dim fp32 out, the loss (sum / valid rows when MEAN, NaN if no row is valid;
        plain sum otherwise).
    inv_denom_ptr: 0-dim fp32 out, 1/valid rows (MEAN) or 1 (sum): the backward's scale.
    n_bad_ptr: 0-dim int32 out, the number of out-of-range targets.
    """
    offs = tl.arange(0, BLOCK_P)
    acc = tl.zeros([BLOCK_P], tl.float32)
    cnt = tl.zeros([BLOCK_P], tl.int32)
    bad = tl.zeros([BLOCK_P], tl.int32)
    for p0 in range(0, P, BLOCK_P):
        msk = p0 + offs < P
        # .cg: other programs wrote these; read them from L2, never from a stale L1 line
        acc += tl.load(part_loss_ptr + p0 + offs, mask=msk, other=0.0, cache_modifier=".cg")
        cnt += tl.load(part_count_ptr + p0 + offs, mask=msk, other=0, cache_modifier=".cg")
        bad += tl.load(part_count_ptr + P + p0 + offs, mask=msk, other=0, cache_modifier=".cg")
    total = tl.sum(acc, axis=0)
    count = tl.sum(cnt, axis=0)
    if MEAN:
        denom = tl.maximum(count, 1).to(tl.float32)
        loss = tl.where(count > 0, total / denom, float("nan"))
    else:
        denom = 1.0
        loss = total
    tl.store(loss_ptr, loss)
    tl.store(inv_denom_ptr, 1.0 / denom)
    tl.store(n_bad_ptr, tl.sum(bad, axis=0))


@triton.jit
def ce_forward_kernel(
    logits_ptr, target_ptr, lse_ptr, part_loss_ptr, part_count_ptr, correct_ptr, tickets_ptr,
    loss_ptr, inv_denom_ptr, n_bad_ptr,
    N, K, s_n, s_k, s_t, smoothing, ignore_index, P,
    COUNT_CORRECT: tl.constexpr, MEAN: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Per-row log-sum-exp and per-program partial losses for rows [pid*BLOCK_N, +BLOCK_N);
    the last of the P programs to finish reduces the partials into the loss (``_finish_loss``).

    logits_ptr: (N, K) logits, element strides (s_n, s_k), any float dtype.
    target_ptr: (N,) int64 class indices, element stride s_t.
    lse_ptr: (N,) fp32 out, log(sum_k exp(x_k)) of each row (saved for the backward).
    part_loss_ptr: (P,) fp32 out, this program's sum of row losses (ignored rows count 0).
    part_count_ptr: (2, P) int32 out: [0, pid] rows not ignored, [1, pid] out-of-range targets.
    correct_ptr: int32/int64 counter; if COUNT_CORRECT, the number of rows whose argmax equals
        the target is atomically added (integer sums are exact, so the result is deterministic).
    tickets_ptr: int32 [1] zero ticket (``runtime.tickets(1)``); left 0.
    loss_ptr, inv_denom_ptr, n_bad_ptr: 0-dim outputs of the last program (see _finish_loss).
    smoothing: label smoothing eps in [0, 1]. ignore_index: target value meaning "skip row".
    P: number of programs (stride of the count partials). MEAN: 'mean' (else 'sum') reduction.
    """
    wait_for_inputs()
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    row_ptr = logits_ptr + rows.to(tl.int64) * s_n
    cols = tl.arange(0, BLOCK_K)

    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    xsum = tl.zeros([BLOCK_N], tl.float32)
    best = tl.full([BLOCK_N], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_N], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + cols
        msk = row_ok[:, None] & (kk < K)[None, :]
        ptrs = row_ptr[:, None] + kk.to(tl.int64)[None, :] * s_k
        x = tl.load(ptrs, mask=msk, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=1))
        # A fully masked row keeps m = -inf; shifting by 0 instead avoids (-inf) - (-inf).
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(x - shift[:, None]), axis=1)
        m = m_new
        xsum += tl.sum(tl.where(msk, x, 0.0), axis=1)
        if COUNT_CORRECT:
            best, best_idx = _argmax_update(x, kk, K, best, best_idx)
    # Padding rows get lse = 0 (not -inf) so no inf * 0 appears below; they are masked anyway.
    lse = tl.where(row_ok, m, 0.0) + tl.log(tl.where(row_ok, s, 1.0))
    tl.store(lse_ptr + rows, lse, mask=row_ok)

    t = tl.load(target_ptr + rows.to(tl.int64) * s_t, mask=row_ok, other=ignore_index)
    valid = row_ok & (t != ignore_index)
    in_range = (t >= 0) & (t < K)
    x_t = tl.load(row_ptr + t * s_k, mask=valid & in_range, other=0.0).to(tl.float32)
    row_loss = (1.0 - smoothing) * (lse - x_t) + smoothing * (lse - xsum / K)
    bad = valid & (~in_range)
    row_loss = tl.where(bad, float("nan"), row_loss)
    row_loss = tl.where(valid, row_loss, 0.0)

    tl.store(part_loss_ptr + pid, tl.sum(row_loss, axis=0))
    tl.store(part_count_ptr + pid, tl.sum(valid.to(tl.int32), axis=0))
    tl.store(part_count_ptr + P + pid, tl.sum(bad.to(tl.int32), axis=0))
    if COUNT_CORRECT:
        hits = tl.sum((row_ok & (best_idx.to(tl.int64) == t)).to(tl.int32), axis=0)
        tl.atomic_add(correct_ptr, hits.to(correct_ptr.dtype.element_ty))

    if last_to_finish(tickets_ptr, 0, P):
        _finish_loss(part_loss_ptr, part_count_ptr, P, loss_ptr, inv_denom_ptr, n_bad_ptr,
                     MEAN, BLOCK_P)  # fmt: skip
        tl.store(tickets_ptr, 0)


@triton.jit
def ce_backward_kernel(
    logits_ptr, target_ptr, lse_ptr, inv_denom_ptr, grad_scale_ptr, dx_ptr,
    N, K, s_n, s_k, s_t, d_n, d_k, smoothing, ignore_index,
    HAS_SCALE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """dx = (softmax(x) - smoothed_onehot(t)) * grad_scale * inv_denom on one (BLOCK_N, BLOCK_K)
    tile (grid axis 0: row blocks, axis 1: class blocks).

    logits_ptr: (N, K) forward logits, strides (s_n, s_k); target_ptr: (N,) int64, stride s_t.
    lse_ptr: (N,) fp32 row log-sum-exp saved by the forward (softmax = exp(x - lse)).
    inv_denom_ptr: 0-dim fp32, 1/valid rows for 'mean', 1 for 'sum' (written by the forward).
    grad_scale_ptr: 0-dim fp32 multiplier read on the device (e.g. the loss scale) if HAS_SCALE.
    dx_ptr: (N, K) out in its own strides (d_n, d_k) and dtype. Ignored rows get 0, rows with an
        out-of-range target get NaN. smoothed_onehot = (1-eps)*onehot + eps/K.
    """
    wait_for_inputs()
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    kk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < N
    msk = row_ok[:, None] & (kk < K)[None, :]
    rows64 = rows.to(tl.int64)
    kk64 = kk.to(tl.int64)
    x = tl.load(logits_ptr + rows64[:, None] * s_n + kk64[None, :] * s_k, mask=msk, other=0.0)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    t = tl.load(target_ptr + rows64 * s_t, mask=row_ok, other=ignore_index)
    scale = tl.load(inv_denom_ptr)
    if HAS_SCALE:
        scale = scale * tl.load(grad_scale_ptr).to(tl.float32)

    p = tl.exp(x.to(tl.float32) - lse[:, None])
    onehot = kk64[None, :] == t[:, None]
    g = p - smoothing / K - tl.where(onehot, 1.0 - smoothing, 0.0)
    g = g * scale
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= K))
    g = tl.where(bad[:, None], float("nan"), g)
    g = tl.where(valid[:, None], g, 0.0)
    dx_ptrs = dx_ptr + rows64[:, None] * d_n + kk64[None, :] * d_k
    tl.store(dx_ptrs, g.to(dx_ptr.dtype.element_ty), mask=msk)


# --- launch helpers --------------------------------------------------------------------------


class CrossEntropyContext(NamedTuple):
    """What the backward needs from a forward (all on the device; nothing read back)."""

    lse: torch.Tensor  # (N,) fp32 row log-sum-exp
    inv_denom: torch.Tensor  # 0-dim fp32: 1/valid rows ('mean') or 1 ('sum')
    n_bad: torch.Tensor  # 0-dim int32: targets outside [0, K) that are not ignore_index
    label_smoothing: float
    ignore_index: int


def _blocks(n: int, k: int) -> tuple[int, int]:
    block_k = min(max(triton.next_power_of_2(k), 16), MAX_BLOCK_K)
    block_n = min(max(triton.next_power_of_2(n), 2), max(TILE_ELEMS // block_k, 2), MAX_BLOCK_N)
    return block_n, block_k


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"cross entropy expects (N, K) logits, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor, got {logits.dtype}")
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"target must be (N,) = ({logits.shape[0]},), got shape {tuple(target.shape)}"
        )
    if target.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"target must hold class indices (int64), got {target.dtype}")


def _check_counter(out: torch.Tensor) -> None:
    if out.dtype not in (torch.int32, torch.int64) or out.numel() != 1:
        raise ValueError("the correct-prediction counter must be one int32/int64 element")


def cross_entropy_forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    correct: torch.Tensor | None = None,
) -> tuple[torch.Tensor, CrossEntropyContext]:
    """Softmax cross-entropy of (N, K) logits against (N,) class indices.

    Returns the 0-dim fp32 loss ('mean' over non-ignored rows, or 'sum') and the context the
    backward needs. If ``correct`` (an int32/int64 device counter) is given, the number of
    rows whose argmax equals the target is added into it in the same pass.
    """
    _check(logits, target)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if correct is not None:
        _check_counter(correct)
    n, k = logits.shape
    block_n, block_k = _blocks(n, k)
    p = max(triton.cdiv(n, block_n), 1)  # one program even for N == 0: it writes the loss
    lse = runtime.empty((n,))
    part_loss = runtime.empty((p,))
    part_count = runtime.empty((2, p), torch.int32)
    loss = runtime.empty(())
    inv_denom = runtime.empty(())
    n_bad = runtime.empty((), torch.int32)
    ce_forward_kernel[(p,)](
        logits, target, lse, part_loss, part_count, correct if correct is not None else lse,
        runtime.tickets(1), loss, inv_denom, n_bad,
        n, k, logits.stride(0), logits.stride(1), target.stride(0),
        float(label_smoothing), int(ignore_index), p,
        COUNT_CORRECT=correct is not None, MEAN=reduction == "mean",
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_P=BLOCK_P,
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    ctx = CrossEntropyContext(lse, inv_denom, n_bad, float(label_smoothing), int(ignore_index))
    return loss, ctx


def cross_entropy_backward(
    logits: torch.Tensor,
    target: torch.Tensor,
    ctx: CrossEntropyContext,
    grad_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient of the forward's loss w.r.t. the logits, times ``grad_scale`` if given.

    ``grad_scale`` is a 0-dim (or 1-element) fp32 device tensor read by the kernel, so a loss
    scale can change on the device without a host sync. The result has the logits' shape,
    dtype and (dense) layout.
    """
    _check(logits, target)
    if grad_scale is not None and grad_scale.numel() != 1:
        raise ValueError("grad_scale must be a one-element device tensor")
    n, k = logits.shape
    block_n, block_k = _blocks(n, k)
    dx = runtime.empty_like(logits)
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    ce_backward_kernel[grid](
        logits, target, ctx.lse, ctx.inv_denom,
        grad_scale if grad_scale is not None else ctx.inv_denom, dx,
        n, k, logits.stride(0), logits.stride(1), target.stride(0), dx.stride(0), dx.stride(1),
        ctx.label_smoothing, ctx.ignore_index,
        HAS_SCALE=grad_scale is not None, BLOCK_N=block_n, BLOCK_K=block_k,
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return dx


@triton.jit
def count_correct_kernel(
    logits_ptr, target_ptr, correct_ptr, N, K, s_n, s_k, s_t,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """correct += #rows in [pid*BLOCK_N, +BLOCK_N) whose argmax (first max) equals the target.

    logits_ptr: (N, K), strides (s_n, s_k), any float dtype; target_ptr: (N,) int, stride s_t.
    correct_ptr: one int32/int64 counter, added to with an integer atomic (exact, so the final
        count does not depend on program order).
    """
    wait_for_inputs()
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    row_ptr = logits_ptr + rows.to(tl.int64) * s_n
    cols = tl.arange(0, BLOCK_K)
    best = tl.full([BLOCK_N], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_N], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + cols
        msk = row_ok[:, None] & (kk < K)[None, :]
        ptrs = row_ptr[:, None] + kk.to(tl.int64)[None, :] * s_k
        x = tl.load(ptrs, mask=msk, other=float("-inf")).to(tl.float32)
        best, best_idx = _argmax_update(x, kk, K, best, best_idx)
    t = tl.load(target_ptr + rows.to(tl.int64) * s_t, mask=row_ok, other=-1)
    hits = tl.sum((row_ok & (best_idx.to(tl.int64) == t)).to(tl.int32), axis=0)
    tl.atomic_add(correct_ptr, hits.to(correct_ptr.dtype.element_ty))


def count_correct(
    logits: torch.Tensor, target: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Add the number of rows with argmax(logits) == target into ``out`` and return it.

    ``out`` is a one-element int32/int64 device counter (accumulate-into, so a trainer can sum
    over an epoch without host syncs); if None, a fresh int64 counter is allocated and zeroed.
    Ties go to the first maximum, as torch.argmax.
    """
    _check(logits, target)
    if out is None:
        out = runtime.empty((), torch.int64)
        zero_counter_(out)
    _check_counter(out)
    n, k = logits.shape
    block_n, block_k = _blocks(n, k)
    count_correct_kernel[(triton.cdiv(n, block_n),)](
        logits, target, out, n, k, logits.stride(0), logits.stride(1), target.stride(0),
        BLOCK_N=block_n, BLOCK_K=block_k,
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return out


@triton.jit
def zero_counter_kernel(ptr, numel, BLOCK: tl.constexpr):
    """ptr[i] = 0 for an integer buffer of ``numel`` elements (one program per BLOCK)."""
    wait_for_inputs()
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(ptr + offs, tl.zeros([BLOCK], ptr.dtype.element_ty), mask=offs < numel)


def zero_counter_(counter: torch.Tensor) -> torch.Tensor:
    """Reset an integer counter (e.g. at the start of an epoch) with our kernel."""
    zero_counter_kernel[(triton.cdiv(counter.numel(), 256),)](
        counter, counter.numel(), BLOCK=256, launch_pdl=LAUNCH_PDL
    )
    return counter
