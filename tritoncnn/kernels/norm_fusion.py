"""The batch norm's pieces that live inside other kernels: the moments a producer stores in
its epilogue, the norm a consumer applies as it loads, the backward sums a dgrad stores.

nn.fusion links a conv (or depthwise conv) with the batch norm before or after it; the
kernels in conv.py, conv_pointwise.py, conv_halo.py, depthwise.py and depthwise_rows.py then
call these helpers, and norm.py's launchers take what they stored:

- ``TileMoments``: a kernel whose output feeds a training batch norm stores each tile's
  per-channel (mean, M2) (``store_tile_moments``); ``bn_stats_from_tiles_kernel`` merges them
  instead of reading the output again.
- ``PendingNorm``: a training batch norm (+ activation) whose apply is left to the kernel
  that reads its output (``load_pending_norm`` / ``apply_pending_norm``: bn_apply_kernel's
  expression and rounding), so the normalised tensor is never stored.
- ``GradSums``: the dgrad that computes a batch norm's output gradient stores each tile's
  sum(g') and sum(g' * xhat) (``store_grad_sums``); ``bn_bwd_sums_from_tiles_kernel`` adds
  them instead of reading g and x in a reduction pass.

Layouts as in norm.py: an activation is an M x C row matrix, channels innermost.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from tritoncnn import runtime
from tritoncnn.kernels.elementwise import activation_grad, apply_activation


class TileMoments(NamedTuple):
    """Per-tile batch-norm moments a producer kernel stored in its epilogue: ``partials`` is
    fp32 [2, n_parts, C] (mean, M2), tile p covering rows [p*rows, (p+1)*rows) of the output's
    M x C row matrix (module docstring). ``batch_norm_forward_train(moments=...)`` merges them
    instead of reading the output again."""

    partials: torch.Tensor
    rows: int


def tile_moments(m: int, c: int, rows: int) -> TileMoments:
    """Buffers for the moments of an M x C output produced in tiles of ``rows`` rows."""
    return TileMoments(runtime.empty((2, triton.cdiv(m, rows), c)), rows)


class PendingNorm(NamedTuple):
    """A training batch norm (+ fused activation) left for the consumer of its input to apply
    as it loads: a = act((x - mean) * (invstd * weight) + bias), rounded to x's dtype, which is
    what ``bn_apply_kernel`` would have stored (``load_pending_norm`` / ``apply_pending_norm``;
    nn.fusion.defer_bn_into_depthwise). weight / bias None: 1 / 0."""

    mean: torch.Tensor
    invstd: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    act: int
    alpha: float


class GradSums(NamedTuple):
    """Per-tile backward sums of a training batch norm that the kernel computing its output
    gradient stored in its epilogue (``store_grad_sums``): ``partials`` is fp32
    [2, n_parts, C], sum(g') and sum(g' * xhat) over disjoint sets of rows (g' is the
    gradient through the fused activation). ``batch_norm_backward(sums=...)`` adds them
    instead of reading g and x in a reduction pass."""

    partials: torch.Tensor


def grad_sums(n_parts: int, c: int) -> GradSums:
    """Buffers for ``n_parts`` partial backward sums of a batch norm over ``c`` channels."""
    return GradSums(runtime.empty((2, n_parts, c)))


def pending_norm_args(pending: PendingNorm | None, c: int, dummy: torch.Tensor, what: str):
    """A kernel's arguments for the batch norm of its input (``PendingNorm``: applied as it
    loads, or recomputed for ``store_grad_sums``): the (mean, invstd, weight, bias) pointers
    (``dummy`` for those absent), alpha, and the IN_HAS_W, IN_HAS_B, IN_ACT constexprs."""
    if pending is None:
        return (dummy,) * 4, 0.0, {}
    for name in ("mean", "invstd", "weight", "bias"):
        t = getattr(pending, name)
        if t is not None and (t.shape != (c,) or t.dtype != torch.float32):
            raise ValueError(
                f"{what} batch-norm {name} must be fp32 ({c},), got {tuple(t.shape)} {t.dtype}"
            )
    w, b = pending.weight, pending.bias
    ptrs = (pending.mean, pending.invstd, dummy if w is None else w, dummy if b is None else b)
    flags = dict(IN_HAS_W=w is not None, IN_HAS_B=b is not None, IN_ACT=pending.act)
    return ptrs, float(pending.alpha), flags


def grad_sums_args(
    bn: PendingNorm | None, bn_input: torch.Tensor | None, shape, dummy: torch.Tensor, what: str
):
    """A dgrad kernel's arguments for ``store_grad_sums``: the batch norm's input (``dummy``
    without ``bn``; else it must have the conv input's ``shape``), then pending_norm_args'."""
    if bn is None:
        return (dummy, *pending_norm_args(None, 0, dummy, what))
    if bn_input is None or tuple(bn_input.shape) != tuple(shape):
        got = None if bn_input is None else tuple(bn_input.shape)
        raise ValueError(
            f"{what} the batch norm's input must have the conv input's shape {tuple(shape)}, "
            f"got {got}"
        )
    return (bn_input, *pending_norm_args(bn, shape[1], dummy, what))


# --- per-channel parameters -------------------------------------------------------------


@triton.jit
def channel_stats(mean_ptr, stat_ptr, offs_c, mask_c, eps, STAT_IS_VAR: tl.constexpr):
    """(mean, invstd) per channel: stat is invstd itself, or a variance when STAT_IS_VAR."""
    mean = tl.load(mean_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    stat = tl.load(stat_ptr + offs_c, mask=mask_c, other=1.0).to(tl.float32)
    if STAT_IS_VAR:
        stat = 1.0 / tl.sqrt_rn(stat + eps)
    return mean, stat


@triton.jit
def affine_params(
    w_ptr,
    b_ptr,
    offs_c,
    mask_c,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """(weight, bias) per channel in fp32; 1 and 0 stand in for parameters the layer lacks."""
    if HAS_WEIGHT:
        w = tl.load(w_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    else:
        w = tl.full((BLOCK_C,), 1.0, tl.float32)
    if HAS_BIAS:
        b = tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    else:
        b = tl.zeros((BLOCK_C,), tl.float32)
    return w, b


@triton.jit
def merge_lanes(lane_cnt, lane_mean, lane_m2):
    """(mean, M2) per column of lanes (rows) that each hold a (count, mean, M2) triple, by
    Chan's formula for all lanes at once: M2 = sum(M2_i) + sum(n_i * (mean_i - mean)**2).
    lane_cnt: [L] counts (a lane may be empty); lane_mean, lane_m2: [L, BLOCK_C]."""
    n = tl.sum(lane_cnt, axis=0)
    mean = tl.sum(lane_cnt[:, None] * lane_mean, axis=0) / n
    spread = lane_mean - mean[None, :]
    m2 = tl.sum(lane_m2 + lane_cnt[:, None] * spread * spread, axis=0)
    return mean, m2


# --- the moments a producer stores -------------------------------------------------------


@triton.jit
def store_tile_moments(pmean_ptr, pm2_ptr, y, mask_rows, n_rows, part, cols, mask_cols, C):
    """Epilogue of a kernel whose output tile ``y`` (rows x columns, fp32 values as stored)
    feeds a training batch norm: store the tile's per-column (mean, M2) over its valid rows
    (``mask_rows``: the tile's first ``n_rows``, a scalar) as partial ``part`` of [n_parts, C]
    buffers, columns ``cols``. The tile is in registers, so M2 is taken about the tile's own
    mean (two passes, no cancellation); ``bn_stats_from_tiles_kernel`` merges the partials
    instead of reading the tensor again.

    The count is the caller's: the persistent pointwise kernel computes it, which saves a
    cross-warp reduction per row tile (ptxas sm_90, its 128 x 128 tile at K = 16: 17
    barriers -> 14, 175 registers -> 128); conv.py's pointer kernel reduces mask_rows, which
    ptxas schedules in fewer registers there (126 against 136 at 128 x 64 x 32 on a 3x3)."""
    valid = mask_rows[:, None]
    mean = tl.sum(tl.where(valid, y, 0.0), axis=0) / n_rows.to(tl.float32)
    dev = tl.where(valid, y - mean[None, :], 0.0)
    m2 = tl.sum(dev * dev, axis=0)
    out = part.to(tl.int64) * C + cols
    tl.store(pmean_ptr + out, mean, mask=mask_cols)
    tl.store(pm2_ptr + out, m2, mask=mask_cols)


@triton.jit
def _chan_combine(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al.'s merge of two (count, mean, M2) groups; an empty group adds nothing."""
    n = n_a + n_b
    share_b = tl.where(n > 0, n_b / tl.maximum(n, 1.0), 0.0)
    delta = mean_b - mean_a
    return n, mean_a + delta * share_b, m2_a + m2_b + delta * delta * n_a * share_b


@triton.jit
def store_tile_moments_one_pass(pmean_ptr, pm2_ptr, y, mask_rows, part, cols, mask_cols, C):
    """``store_tile_moments`` in one reduction: every valid element starts as a group of one
    (count 1, mean y, M2 0) and ``tl.reduce`` merges the groups down the rows with
    ``_chan_combine`` (as stable as the two passes), so the tile's mean and M2 need one
    cross-warp exchange instead of two dependent ones. For a persistent kernel, whose few
    programs an SM have no other work to hide that latency behind (conv_pointwise's
    ONE_PASS_MOMENTS)."""
    valid = tl.broadcast_to(mask_rows[:, None], y.shape)
    count = valid.to(tl.float32)
    first = tl.where(valid, y, 0.0)
    _, mean, m2 = tl.reduce((count, first, tl.zeros_like(first)), 0, _chan_combine)
    out = part.to(tl.int64) * C + cols
    tl.store(pmean_ptr + out, mean, mask=mask_cols)
    tl.store(pm2_ptr + out, m2, mask=mask_cols)


# --- the norm a consumer applies as it loads ---------------------------------------------


@triton.jit
def load_pending_norm(
    mean_ptr, invstd_ptr, w_ptr, b_ptr, offs_c, mask_c, IN_NORM: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """(mean, scale = invstd * weight, bias) per channel of a ``PendingNorm``, in fp32; scalar
    stand-ins (nothing loaded) when not IN_NORM, for a kernel whose input needs no apply."""
    mean, scale, b = 0.0, 0.0, 0.0
    if IN_NORM:
        mean, invstd = channel_stats(mean_ptr, invstd_ptr, offs_c, mask_c, 0.0, False)
        w, b = affine_params(w_ptr, b_ptr, offs_c, mask_c, HAS_WEIGHT, HAS_BIAS, BLOCK_C)
        scale = invstd * w
    return mean, scale, b


@triton.jit
def apply_pending_norm(x, mean, scale, b, ACT: tl.constexpr, alpha, DTYPE: tl.constexpr):
    """The values bn_apply_kernel would have stored for the [rows, channels] tile x (fp32):
    its expression, its activation, its rounding to DTYPE (the activation dtype), as fp32."""
    z = (x - mean[None, :]) * scale[None, :] + b[None, :]
    return apply_activation(z, ACT, alpha).to(DTYPE).to(tl.float32)


# --- the backward sums a dgrad stores ----------------------------------------------------


@triton.jit
def store_grad_sums(
    psum_g_ptr, psum_gx_ptr, g, x, valid, part, cols, mask_cols, C,
    mean_ptr, invstd_ptr, w_ptr, b_ptr, alpha,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Epilogue of a kernel whose output tile ``g`` (rows x columns, fp32 values as stored) is
    the gradient of a training batch norm's output (``GradSums``): store the tile's
    per-column sum(g') and sum(g' * xhat) over the ``valid`` [rows, columns] entries as
    partial ``part`` of two fp32 [n_parts, C] buffers, columns ``cols``.

    x: the batch norm's input at the same positions (fp32). g' = g * act'(z) with z and xhat
    recomputed from x exactly as bn_bwd_reduce_kernel does; mean_ptr, invstd_ptr (fp32 [C]
    batch statistics), w_ptr, b_ptr (read only with HAS_WEIGHT / HAS_BIAS), ACT, alpha: the
    batch norm's. ``bn_bwd_sums_from_tiles_kernel`` adds the partials, so the backward needs
    no reduction pass over g and x."""
    mean, invstd, w, b = load_grad_sums_norm(
        mean_ptr, invstd_ptr, w_ptr, b_ptr, cols, mask_cols, HAS_WEIGHT, HAS_BIAS, ACT, BLOCK_C
    )
    g, gx = grad_sums_terms(g, x, valid, mean, invstd, w, b, alpha, ACT)
    out = part.to(tl.int64) * C + cols
    tl.store(psum_g_ptr + out, tl.sum(g, axis=0), mask=mask_cols)
    tl.store(psum_gx_ptr + out, tl.sum(gx, axis=0), mask=mask_cols)


@triton.jit
def load_grad_sums_norm(
    mean_ptr, invstd_ptr, w_ptr, b_ptr, cols, mask_cols,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """The batch norm's (mean, invstd, weight, bias) for ``grad_sums_terms``, fp32 per column
    (the affine parameters only matter, and are only read, with an activation)."""
    mean, invstd = channel_stats(mean_ptr, invstd_ptr, cols, mask_cols, 0.0, False)
    if ACT != 0:
        w, b = affine_params(w_ptr, b_ptr, cols, mask_cols, HAS_WEIGHT, HAS_BIAS, BLOCK_C)
    else:
        w, b = invstd, invstd  # (unused)
    return mean, invstd, w, b


@triton.jit
def grad_sums_terms(g, x, valid, mean, invstd, w, b, alpha, ACT: tl.constexpr):
    """Per element of a [rows, columns] tile: g' and g' * xhat (zero where not ``valid``), the
    terms whose column sums store_grad_sums stores; g' = g * act'(z), z and xhat recomputed
    from the batch norm's input x as bn_bwd_reduce_kernel does."""
    diff = x - mean[None, :]
    if ACT != 0:
        z = diff * (invstd * w)[None, :] + b[None, :]
        g = activation_grad(g, z, ACT, alpha)
    g = tl.where(valid, g, 0.0)
    xhat = tl.where(valid, diff * invstd[None, :], 0.0)
    return g, g * xhat
