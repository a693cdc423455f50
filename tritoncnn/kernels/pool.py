"""Pooling kernels: max pool 2d, avg pool 2d and adaptive (incl. global) average pool.

Layout: activations have torch's logical N,C,H,W shape and are read through their element
strides (so NCHW-contiguous inputs work), but outputs are allocated channels_last (NHWC) and
every program works on a [BLOCK_P pixels, BLOCK_C channels] tile with channels innermost,
so loads and stores of NHWC tensors are coalesced along C.

Backwards are gathers, never scatters with atomics: one program owns a tile of *input*
pixels, visits the few output windows that can contain each of them, and writes its
gradient once (0 where no window routes anything), so results are deterministic.

Max pool saves, per output element, the window index ``kh * KW + kw`` of its argmax (int8
when the window has <= 127 taps, else int32). The forward scans the window in torch's order
(rows, then columns) and keeps the first strict maximum, and a NaN always wins (the last one
seen), as torch does; the backward routes each gradient to that window tap.

Output sizes, padding limits and average-pool divisors follow torch's rules exactly
(``ceil_mode``: the last window must start inside the input or its left padding;
``count_include_pad`` counts padding but not the part of a window beyond it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritoncnn import runtime
from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs

# (BLOCK_P, BLOCK_C, num_warps) tiles of the max/avg/adaptive kernels; the helper picks the one
# whose BLOCK_C fits the channel count (each tile holds 1024 elements).
POOL_CONFIGS = (
    (128, 8, 4),
    (64, 16, 4),
    (32, 32, 4),
    (16, 64, 4),
    (8, 128, 4),
)

# (BLOCK_HW, BLOCK_C, num_warps) tiles of the global-average-pool forward reduction.
GLOBAL_POOL_CONFIGS = (
    (64, 16, 4),
    (32, 32, 4),
    (16, 64, 4),
    (8, 128, 4),
)


# --- max pool ---------------------------------------------------------------------------------


@triton.jit
def max_pool2d_fwd_kernel(
    x_ptr, y_ptr, idx_ptr,
    C, H, W, OH, OW, P,
    sx_n, sx_h, sx_w, sx_c,
    sy_n, sy_h, sy_w, sy_c,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """y[n,c,oh,ow] = max over the (dilated) window; idx = window tap of the argmax.

    One program computes a [BLOCK_P output pixels, BLOCK_C channels] tile; output pixels are
    flattened as p = (n * OH + oh) * OW + ow over P = N * OH * OW.

    x_ptr: input N,C,H,W read through element strides sx_n, sx_h, sx_w, sx_c.
    y_ptr: output N,C,OH,OW written through sy_* (NHWC memory), x's dtype.
    idx_ptr: argmax tap ``kh * KW + kw`` (int8/int32), same strides as y.
    C, H, W: input channels and spatial size; OH, OW: output spatial size; P: N * OH * OW.
    KH, KW: kernel size; SH, SW: stride; PH, PW: padding; DH, DW: dilation.
    BLOCK_P, BLOCK_C: tile size over output pixels and channels.
    """
    wait_for_inputs()
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < P
    c_ok = c < C
    ow = p % OW
    oh = (p // OW) % OH
    n = p // (OW * OH)
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    x_base = x_ptr + n * sx_n
    best = tl.full((BLOCK_P, BLOCK_C), float("-inf"), tl.float32)
    best_k = tl.full((BLOCK_P, BLOCK_C), -1, tl.int32)
    for kh in tl.static_range(KH):
        ih = h0 + kh * DH
        h_ok = p_ok & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = w0 + kw * DW
            ok = h_ok & (iw >= 0) & (iw < W)
            ptrs = x_base[:, None] + (ih * sx_h + iw * sx_w)[:, None] + c[None, :] * sx_c
            v = tl.load(ptrs, mask=ok[:, None] & c_ok[None, :], other=float("-inf"))
            v = v.to(tl.float32)
            # torch: the first valid tap seeds the index; then a strictly greater value or a
            # NaN replaces it (so ties keep the first in scan order, NaN propagates).
            take = ok[:, None] & ((v > best) | (v != v) | (best_k < 0))
            best = tl.where(take, v, best)
            best_k = tl.where(take, kh * KW + kw, best_k)
    y_offs = (n * sy_n + oh * sy_h + ow * sy_w)[:, None] + c[None, :] * sy_c
    mask = p_ok[:, None] & c_ok[None, :]
    tl.store(y_ptr + y_offs, best.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(idx_ptr + y_offs, best_k.to(idx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def max_pool2d_bwd_kernel(
    g_ptr, idx_ptr, dx_ptr,
    C, H, W, OH, OW, Q,
    sg_n, sg_h, sg_w, sg_c,
    si_n, si_h, si_w, si_c,
    sd_n, sd_h, sd_w, sd_c,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """dx[n,c,ih,iw] = sum of g over the output windows whose argmax is (ih, iw) (a gather).

    One program computes a [BLOCK_P input pixels, BLOCK_C channels] tile of dx; input pixels
    are flattened as q = (n * H + ih) * W + iw over Q = N * H * W. For tap (kh, kw) the only
    window that can hold (ih, iw) at that tap starts at ih + PH - kh * DH, so each pixel
    checks KH * KW candidate windows and adds g where the saved argmax is that tap.

    g_ptr: grad of the output, N,C,OH,OW through strides sg_*.
    idx_ptr: argmax taps saved by the forward, N,C,OH,OW through strides si_*.
    dx_ptr: grad of the input, N,C,H,W written through strides sd_* (every element written).
    C, H, W, OH, OW: as in the forward; Q: N * H * W.
    KH, KW, SH, SW, PH, PW, DH, DW: the forward's kernel, stride, padding and dilation.
    BLOCK_P, BLOCK_C: tile size over input pixels and channels.
    """
    wait_for_inputs()
    q = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    q_ok = q < Q
    c_ok = c < C
    iw = q % W
    ih = (q // W) % H
    n = q // (W * H)
    acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for kh in tl.static_range(KH):
        th = ih + PH - kh * DH  # = oh * SH if this tap of window oh covers ih
        oh = th // SH
        h_ok = q_ok & (th >= 0) & (th % SH == 0) & (oh < OH)
        for kw in tl.static_range(KW):
            tw = iw + PW - kw * DW
            ow = tw // SW
            ok = h_ok & (tw >= 0) & (tw % SW == 0) & (ow < OW)
            m = ok[:, None] & c_ok[None, :]
            k = tl.load(
                idx_ptr + (n * si_n + oh * si_h + ow * si_w)[:, None] + c[None, :] * si_c,
                mask=m,
                other=-1,
            )
            g = tl.load(
                g_ptr + (n * sg_n + oh * sg_h + ow * sg_w)[:, None] + c[None, :] * sg_c,
                mask=m,
                other=0.0,
            )
            acc += tl.where(k.to(tl.int32) == kh * KW + kw, g.to(tl.float32), 0.0)
    d_offs = (n * sd_n + ih * sd_h + iw * sd_w)[:, None] + c[None, :] * sd_c
    tl.store(dx_ptr + d_offs, acc.to(dx_ptr.dtype.element_ty), mask=q_ok[:, None] & c_ok[None, :])


# --- average pool -----------------------------------------------------------------------------


@triton.jit
def _avg_pool_divisor(
    oh, ow, H, W, DIVISOR,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, COUNT_INCLUDE_PAD: tl.constexpr,
):  # fmt: skip
    """torch's avg_pool2d divisor of window (oh, ow), as fp32.

    DIVISOR > 0 is divisor_override. Otherwise the window is clipped to the padded input
    (so with ceil_mode the part beyond the right padding never counts) and, without
    count_include_pad, further to the real input.
    """
    hs = oh * SH - PH
    ws = ow * SW - PW
    he = tl.minimum(hs + KH, H + PH)
    we = tl.minimum(ws + KW, W + PW)
    if COUNT_INCLUDE_PAD:
        count = (he - hs) * (we - ws)
    else:
        count = (tl.minimum(he, H) - tl.maximum(hs, 0)) * (tl.minimum(we, W) - tl.maximum(ws, 0))
    count = tl.where(DIVISOR > 0, DIVISOR, count)
    return count.to(tl.float32)


@triton.jit
def avg_pool2d_fwd_kernel(
    x_ptr, y_ptr,
    C, H, W, OH, OW, P, DIVISOR,
    sx_n, sx_h, sx_w, sx_c,
    sy_n, sy_h, sy_w, sy_c,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, COUNT_INCLUDE_PAD: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """y[n,c,oh,ow] = (sum of the window's real inputs) / divisor, summed in fp32.

    One program computes a [BLOCK_P output pixels, BLOCK_C channels] tile (p flattened as
    (n * OH + oh) * OW + ow over P = N * OH * OW).

    x_ptr: input N,C,H,W through strides sx_*; y_ptr: output N,C,OH,OW through sy_* (NHWC).
    C, H, W, OH, OW, P: sizes; DIVISOR: divisor_override, or 0 for torch's count rule.
    KH, KW: kernel; SH, SW: stride; PH, PW: padding; COUNT_INCLUDE_PAD: torch's flag.
    BLOCK_P, BLOCK_C: tile size over output pixels and channels.
    """
    wait_for_inputs()
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < P
    c_ok = c < C
    ow = p % OW
    oh = (p // OW) % OH
    n = p // (OW * OH)
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    x_base = x_ptr + n * sx_n
    acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for kh in tl.static_range(KH):
        ih = h0 + kh
        h_ok = p_ok & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = w0 + kw
            ok = h_ok & (iw >= 0) & (iw < W)
            ptrs = x_base[:, None] + (ih * sx_h + iw * sx_w)[:, None] + c[None, :] * sx_c
            acc += tl.load(ptrs, mask=ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    div = _avg_pool_divisor(oh, ow, H, W, DIVISOR, KH, KW, SH, SW, PH, PW, COUNT_INCLUDE_PAD)
    y = acc / div[:, None]
    y_offs = (n * sy_n + oh * sy_h + ow * sy_w)[:, None] + c[None, :] * sy_c
    tl.store(y_ptr + y_offs, y.to(y_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


@triton.jit
def avg_pool2d_bwd_kernel(
    g_ptr, dx_ptr,
    C, H, W, OH, OW, Q, DIVISOR,
    sg_n, sg_h, sg_w, sg_c,
    sd_n, sd_h, sd_w, sd_c,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, COUNT_INCLUDE_PAD: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """dx[n,c,ih,iw] = sum over windows containing (ih, iw) of g / divisor (a gather).

    One program computes a [BLOCK_P input pixels, BLOCK_C channels] tile of dx (q flattened
    as (n * H + ih) * W + iw over Q = N * H * W); tap (kh, kw) of at most one window covers
    the pixel, the one starting at ih + PH - kh, so each pixel checks KH * KW candidates.

    g_ptr: grad of the output N,C,OH,OW through strides sg_*.
    dx_ptr: grad of the input N,C,H,W through strides sd_* (every element written).
    C, H, W, OH, OW: sizes; Q: N * H * W; DIVISOR: divisor_override or 0.
    KH, KW, SH, SW, PH, PW, COUNT_INCLUDE_PAD: the forward's arguments.
    BLOCK_P, BLOCK_C: tile size over input pixels and channels.
    """
    wait_for_inputs()
    q = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    q_ok = q < Q
    c_ok = c < C
    iw = q % W
    ih = (q // W) % H
    n = q // (W * H)
    acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for kh in tl.static_range(KH):
        th = ih + PH - kh
        oh = th // SH
        h_ok = q_ok & (th >= 0) & (th % SH == 0) & (oh < OH)
        for kw in tl.static_range(KW):
            tw = iw + PW - kw
            ow = tw // SW
            ok = h_ok & (tw >= 0) & (tw % SW == 0) & (ow < OW)
            g = tl.load(
                g_ptr + (n * sg_n + oh * sg_h + ow * sg_w)[:, None] + c[None, :] * sg_c,
                mask=ok[:, None] & c_ok[None, :],
                other=0.0,
            )
            div = _avg_pool_divisor(
                oh, ow, H, W, DIVISOR, KH, KW, SH, SW, PH, PW, COUNT_INCLUDE_PAD
            )
            # masked-out windows may have a bogus divisor; their g is 0, keep it finite
            div = tl.where(ok, div, 1.0)
            acc += g.to(tl.float32) / div[:, None]
    d_offs = (n * sd_n + ih * sd_h + iw * sd_w)[:, None] + c[None, :] * sd_c
    tl.store(dx_ptr + d_offs, acc.to(dx_ptr.dtype.element_ty), mask=q_ok[:, None] & c_ok[None, :])


# --- adaptive average pool --------------------------------------------------------------------


@triton.jit
def adaptive_avg_pool2d_fwd_kernel(
    x_ptr, y_ptr,
    C, H, W, OH, OW, P, MAX_KH, MAX_KW,
    sx_n, sx_h, sx_w, sx_c,
    sy_n, sy_h, sy_w, sy_c,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """y[n,c,oh,ow] = mean of x over rows [floor(oh*H/OH), ceil((oh+1)*H/OH)) and the same
    rule for columns (torch's adaptive windows), summed in fp32.

    One program computes a [BLOCK_P output pixels, BLOCK_C channels] tile (p flattened as
    (n * OH + oh) * OW + ow over P = N * OH * OW) and walks a MAX_KH x MAX_KW box, masking
    the taps beyond each pixel's own window.

    x_ptr: input N,C,H,W through strides sx_*; y_ptr: output N,C,OH,OW through sy_* (NHWC).
    C, H, W, OH, OW, P: sizes; MAX_KH, MAX_KW: the largest window height and width.
    BLOCK_P, BLOCK_C: tile size over output pixels and channels.
    """
    wait_for_inputs()
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < P
    c_ok = c < C
    ow = p % OW
    oh = (p // OW) % OH
    n = p // (OW * OH)
    hs = (oh * H) // OH
    he = ((oh + 1) * H + OH - 1) // OH
    ws = (ow * W) // OW
    we = ((ow + 1) * W + OW - 1) // OW
    x_base = x_ptr + n * sx_n
    acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for kh in range(0, MAX_KH):
        ih = hs + kh
        h_ok = p_ok & (ih < he)
        for kw in range(0, MAX_KW):
            iw = ws + kw
            ok = h_ok & (iw < we)
            ptrs = x_base[:, None] + (ih * sx_h + iw * sx_w)[:, None] + c[None, :] * sx_c
            acc += tl.load(ptrs, mask=ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    div = ((he - hs) * (we - ws)).to(tl.float32)
    y = acc / div[:, None]
    y_offs = (n * sy_n + oh * sy_h + ow * sy_w)[:, None] + c[None, :] * sy_c
    tl.store(y_ptr + y_offs, y.to(y_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


@triton.jit
def adaptive_avg_pool2d_bwd_kernel(
    g_ptr, dx_ptr,
    C, H, W, OH, OW, Q, MAX_RH, MAX_RW,
    sg_n, sg_h, sg_w, sg_c,
    sd_n, sd_h, sd_w, sd_c,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """dx[n,c,ih,iw] = sum over adaptive windows containing (ih, iw) of g / window size.

    Window oh contains row ih exactly for oh in [floor(ih*OH/H), ceil((ih+1)*OH/H) - 1] (and
    likewise for columns); one program computes a [BLOCK_P input pixels, BLOCK_C channels]
    tile (q flattened as (n * H + ih) * W + iw over Q = N * H * W) and visits those windows.
    With OH = OW = 1 this is the global-average-pool backward, g / (H * W) broadcast.

    g_ptr: grad of the output N,C,OH,OW through strides sg_*.
    dx_ptr: grad of the input N,C,H,W through strides sd_* (every element written).
    C, H, W, OH, OW: sizes; Q: N * H * W.
    MAX_RH, MAX_RW: the most windows that share one input row / column.
    BLOCK_P, BLOCK_C: tile size over input pixels and channels.
    """
    wait_for_inputs()
    q = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    q_ok = q < Q
    c_ok = c < C
    iw = q % W
    ih = (q // W) % H
    n = q // (W * H)
    oh0 = (ih * OH) // H
    oh1 = ((ih + 1) * OH + H - 1) // H  # exclusive
    ow0 = (iw * OW) // W
    ow1 = ((iw + 1) * OW + W - 1) // W
    acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for rh in range(0, MAX_RH):
        oh = oh0 + rh
        h_ok = q_ok & (oh < oh1)
        hs = (oh * H) // OH
        he = ((oh + 1) * H + OH - 1) // OH
        for rw in range(0, MAX_RW):
            ow = ow0 + rw
            ok = h_ok & (ow < ow1)
            ws = (ow * W) // OW
            we = ((ow + 1) * W + OW - 1) // OW
            g = tl.load(
                g_ptr + (n * sg_n + oh * sg_h + ow * sg_w)[:, None] + c[None, :] * sg_c,
                mask=ok[:, None] & c_ok[None, :],
                other=0.0,
            )
            div = tl.where(ok, (he - hs) * (we - ws), 1).to(tl.float32)
            acc += g.to(tl.float32) / div[:, None]
    d_offs = (n * sd_n + ih * sd_h + iw * sd_w)[:, None] + c[None, :] * sd_c
    tl.store(dx_ptr + d_offs, acc.to(dx_ptr.dtype.element_ty), mask=q_ok[:, None] & c_ok[None, :])


@triton.jit
def global_avg_pool_fwd_kernel(
    x_ptr, y_ptr,
    C, W, HW, inv_hw,
    sx_n, sx_h, sx_w, sx_c,
    sy_n, sy_c,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """y[n,c,0,0] = mean over h, w of x[n,c,h,w], reduced in fp32.

    One program owns image n = program_id(0) and BLOCK_C channels; it sums [BLOCK_HW
    pixels, BLOCK_C channels] tiles (channels innermost, so NHWC reads are coalesced) into
    an fp32 accumulator and reduces it over pixels once at the end.

    x_ptr: input N,C,H,W through strides sx_*; y_ptr: output N,C,1,1 through sy_n, sy_c.
    C: channels; W: input width (to split the pixel index); HW: H * W; inv_hw: 1 / HW.
    BLOCK_HW, BLOCK_C: tile size over pixels and channels.
    """
    wait_for_inputs()
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    x_base = x_ptr + n * sx_n
    acc = tl.zeros((BLOCK_HW, BLOCK_C), tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        h = hw // W
        w = hw % W
        ptrs = x_base + (h * sx_h + w * sx_w).to(tl.int64)[:, None] + c[None, :] * sx_c
        acc += tl.load(ptrs, mask=(hw < HW)[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    y = tl.sum(acc, axis=0) * inv_hw
    tl.store(y_ptr + n * sy_n + c * sy_c, y.to(y_ptr.dtype.element_ty), mask=c_ok)


# --- launch helpers ---------------------------------------------------------------------------


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _check_input(x: torch.Tensor, op: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{op}: expected an N,C,H,W input, got shape {tuple(x.shape)}")
    if x.dtype not in runtime.SUPPORTED_DTYPES:
        raise TypeError(f"{op}: unsupported dtype {x.dtype}")


def pool_output_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's pooling output length, ceil_mode's rule included: with ceil_mode, a last
    window that would start beyond the input and its left padding is dropped."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, op):
    _check_input(x, op)
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(kernel_size if stride is None or stride == () else stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    if min(kh, kw) <= 0 or min(sh, sw) <= 0 or min(dh, dw) <= 0 or min(ph, pw) < 0:
        raise ValueError(
            f"{op}: kernel_size, stride and dilation must be positive and padding non-negative"
        )
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(
            f"{op}: pad should be smaller than or equal to half of kernel size, but got "
            f"padding=({ph}, {pw}), kernel_size=({kh}, {kw})"
        )
    n, c, h, w = x.shape
    oh = pool_output_size(h, kh, sh, ph, dh, ceil_mode)
    ow = pool_output_size(w, kw, sw, pw, dw, ceil_mode)
    if oh < 1 or ow < 1:
        raise ValueError(f"{op}: input {h}x{w} is too small; output would be {oh}x{ow}")
    return (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow)


def _pick_config(c: int, configs, config):
    """The tile whose BLOCK_C is the smallest power of two >= c (capped at the largest)."""
    if config is not None:
        if tuple(config) not in configs:
            raise ValueError(f"config {config} is not one of {configs}")
        return tuple(config)
    if runtime.INTERPRETED:  # few, large tiles: see runtime.interpreter_block
        block_c = runtime.interpreter_block(c, 128, floor=configs[0][1])
        return (max(configs[0][0], runtime.INTERPRETER_TILE // block_c), block_c, 4)
    for cfg in configs:
        if cfg[1] >= c:
            return cfg
    return configs[-1]


def _tile_grid(pixels: int, c: int, cfg) -> tuple[int, int]:
    return triton.cdiv(pixels, cfg[0]), triton.cdiv(c, cfg[1])


def max_pool2d_forward(
    x: torch.Tensor,
    kernel_size,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode: bool = False,
    config: tuple[int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max pool of an N,C,H,W tensor (any strides).

    Returns ``(y, argmax)``: y is N,C,OH,OW in NHWC memory and x's dtype; argmax (same shape
    and strides) holds the window tap ``kh * KW + kw`` of each maximum (int8 when the kernel
    has <= 127 taps, else int32), for ``max_pool2d_backward``. ``config`` forces one of
    ``POOL_CONFIGS``.
    """
    k, s, p, d, (oh, ow) = _pool_geometry(
        x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d"
    )
    n, c, h, w = x.shape
    y = runtime.empty_nhwc(n, c, oh, ow, x.dtype)
    idx_dtype = torch.int8 if k[0] * k[1] <= 127 else torch.int32
    argmax = runtime.empty_nhwc(n, c, oh, ow, idx_dtype)
    cfg = _pick_config(c, POOL_CONFIGS, config)
    max_pool2d_fwd_kernel[_tile_grid(n * oh * ow, c, cfg)](
        x, y, argmax,
        c, h, w, oh, ow, n * oh * ow,
        *runtime.nhwc_strides(x), *runtime.nhwc_strides(y),
        KH=k[0], KW=k[1], SH=s[0], SW=s[1], PH=p[0], PW=p[1], DH=d[0], DW=d[1],
        BLOCK_P=cfg[0], BLOCK_C=cfg[1], num_warps=cfg[2],
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return y, argmax


def max_pool2d_backward(
    grad_out: torch.Tensor,
    argmax: torch.Tensor,
    input_shape: tuple[int, int, int, int],
    kernel_size,
    stride=None,
    padding=0,
    dilation=1,
    dtype: torch.dtype | None = None,
    config: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Input gradient of ``max_pool2d_forward`` (same geometry arguments; ceil_mode is implied
    by the output size). Returns an N,C,H,W tensor in NHWC memory of ``dtype`` (default
    grad_out's), every element written."""
    n, c, h, w = (int(v) for v in input_shape)
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(kernel_size if stride is None or stride == () else stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    oh, ow = grad_out.shape[2], grad_out.shape[3]
    if tuple(grad_out.shape) != (n, c, oh, ow) or argmax.shape != grad_out.shape:
        raise ValueError(
            f"max_pool2d_backward: grad_out {tuple(grad_out.shape)} / argmax "
            f"{tuple(argmax.shape)} do not match input {tuple(input_shape)}"
        )
    dx = runtime.empty_nhwc(n, c, h, w, dtype or grad_out.dtype)
    cfg = _pick_config(c, POOL_CONFIGS, config)
    max_pool2d_bwd_kernel[_tile_grid(n * h * w, c, cfg)](
        grad_out, argmax, dx,
        c, h, w, oh, ow, n * h * w,
        *runtime.nhwc_strides(grad_out), *runtime.nhwc_strides(argmax),
        *runtime.nhwc_strides(dx),
        KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, DH=dh, DW=dw,
        BLOCK_P=cfg[0], BLOCK_C=cfg[1], num_warps=cfg[2],
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return dx


def _divisor(divisor_override: int | None) -> int:
    if divisor_override is None:
        return 0
    if int(divisor_override) <= 0:
        raise ValueError("divisor_override must be a positive integer")
    return int(divisor_override)


def avg_pool2d_forward(
    x: torch.Tensor,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    config: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Average pool of an N,C,H,W tensor (any strides) with torch's divisor rules; returns
    N,C,OH,OW in NHWC memory and x's dtype (sums in fp32)."""
    k, s, p, _, (oh, ow) = _pool_geometry(
        x, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d"
    )
    n, c, h, w = x.shape
    y = runtime.empty_nhwc(n, c, oh, ow, x.dtype)
    cfg = _pick_config(c, POOL_CONFIGS, config)
    avg_pool2d_fwd_kernel[_tile_grid(n * oh * ow, c, cfg)](
        x, y,
        c, h, w, oh, ow, n * oh * ow, _divisor(divisor_override),
        *runtime.nhwc_strides(x), *runtime.nhwc_strides(y),
        KH=k[0], KW=k[1], SH=s[0], SW=s[1], PH=p[0], PW=p[1],
        COUNT_INCLUDE_PAD=bool(count_include_pad),
        BLOCK_P=cfg[0], BLOCK_C=cfg[1], num_warps=cfg[2],
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return y


def avg_pool2d_backward(
    grad_out: torch.Tensor,
    input_shape: tuple[int, int, int, int],
    kernel_size,
    stride=None,
    padding=0,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    dtype: torch.dtype | None = None,
    config: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Input gradient of ``avg_pool2d_forward`` (ceil_mode is implied by grad_out's size).
    Returns N,C,H,W in NHWC memory of ``dtype`` (default grad_out's), every element written."""
    n, c, h, w = (int(v) for v in input_shape)
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(kernel_size if stride is None or stride == () else stride, "stride")
    ph, pw = _pair(padding, "padding")
    oh, ow = grad_out.shape[2], grad_out.shape[3]
    if tuple(grad_out.shape[:2]) != (n, c):
        raise ValueError(
            f"avg_pool2d_backward: grad_out {tuple(grad_out.shape)} does not match input "
            f"{tuple(input_shape)}"
        )
    dx = runtime.empty_nhwc(n, c, h, w, dtype or grad_out.dtype)
    cfg = _pick_config(c, POOL_CONFIGS, config)
    avg_pool2d_bwd_kernel[_tile_grid(n * h * w, c, cfg)](
        grad_out, dx,
        c, h, w, oh, ow, n * h * w, _divisor(divisor_override),
        *runtime.nhwc_strides(grad_out), *runtime.nhwc_strides(dx),
        KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw,
        COUNT_INCLUDE_PAD=bool(count_include_pad),
        BLOCK_P=cfg[0], BLOCK_C=cfg[1], num_warps=cfg[2],
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return dx


def adaptive_output_size(output_size, h: int, w: int) -> tuple[int, int]:
    """torch's AdaptiveAvgPool2d output size: an int or a pair whose None entries keep the
    input's size."""
    if isinstance(output_size, (tuple, list)):
        oh, ow = output_size
    else:
        oh = ow = output_size
    oh = h if oh is None else int(oh)
    ow = w if ow is None else int(ow)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be positive, got {output_size}")
    return oh, ow


def _max_window(size: int, out: int) -> int:
    """Largest adaptive window length along one axis."""
    return max(-(-((i + 1) * size) // out) - (i * size) // out for i in range(out))


def _max_windows_per_index(size: int, out: int) -> int:
    """Most adaptive windows that contain one input index along one axis."""
    return max(-(-((i + 1) * out) // size) - (i * out) // size for i in range(size))


def adaptive_avg_pool2d_forward(
    x: torch.Tensor,
    output_size,
    config: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Adaptive average pool of an N,C,H,W tensor (any strides) to ``output_size`` with
    torch's windows; returns N,C,OH,OW in NHWC memory and x's dtype (sums in fp32). Output
    1x1 (global average pool) takes a dedicated reduction kernel; ``config`` then forces one
    of ``GLOBAL_POOL_CONFIGS``, else one of ``POOL_CONFIGS``."""
    _check_input(x, "adaptive_avg_pool2d")
    n, c, h, w = x.shape
    oh, ow = adaptive_output_size(output_size, h, w)
    y = runtime.empty_nhwc(n, c, oh, ow, x.dtype)
    sx = runtime.nhwc_strides(x)
    if (oh, ow) == (1, 1):
        cfg = _pick_config(c, GLOBAL_POOL_CONFIGS, config)
        sy_n, _, _, sy_c = runtime.nhwc_strides(y)
        global_avg_pool_fwd_kernel[(n, triton.cdiv(c, cfg[1]))](
            x, y, c, w, h * w, 1.0 / (h * w), *sx, sy_n, sy_c,
            BLOCK_HW=cfg[0], BLOCK_C=cfg[1], num_warps=cfg[2],
            launch_pdl=LAUNCH_PDL,
        )  # fmt: skip
        return y
    cfg = _pick_config(c, POOL_CONFIGS, config)
    adaptive_avg_pool2d_fwd_kernel[_tile_grid(n * oh * ow, c, cfg)](
        x, y,
        c, h, w, oh, ow, n * oh * ow, _max_window(h, oh), _max_window(w, ow),
        *sx, *runtime.nhwc_strides(y),
        BLOCK_P=cfg[0], BLOCK_C=cfg[1], num_warps=cfg[2],
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return y


def adaptive_avg_pool2d_backward(
    grad_out: torch.Tensor,
    input_shape: tuple[int, int, int, int],
    dtype: torch.dtype | None = None,
    config: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Input gradient of ``adaptive_avg_pool2d_forward`` (the output size is grad_out's;
    1x1 is the broadcast g / (H * W)). Returns N,C,H,W in NHWC memory of ``dtype`` (default
    grad_out's), every element written. ``config`` forces one of ``POOL_CONFIGS``."""
    n, c, h, w = (int(v) for v in input_shape)
    oh, ow = grad_out.shape[2], grad_out.shape[3]
    if tuple(grad_out.shape[:2]) != (n, c):
        raise ValueError(
            f"adaptive_avg_pool2d_backward: grad_out {tuple(grad_out.shape)} does not match "
            f"input {tuple(input_shape)}"
        )
    dx = runtime.empty_nhwc(n, c, h, w, dtype or grad_out.dtype)
    cfg = _pick_config(c, POOL_CONFIGS, config)
    adaptive_avg_pool2d_bwd_kernel[_tile_grid(n * h * w, c, cfg)](
        grad_out, dx,
        c, h, w, oh, ow, n * h * w, _max_windows_per_index(h, oh), _max_windows_per_index(w, ow),
        *runtime.nhwc_strides(grad_out), *runtime.nhwc_strides(dx),
        BLOCK_P=cfg[0], BLOCK_C=cfg[1], num_warps=cfg[2],
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return dx
