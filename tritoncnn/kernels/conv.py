"""2-d convolution by implicit GEMM: forward and input gradient (dgrad); the weight and bias
gradients are in conv_wgrad.py, the specialised kernels (1x1 persistent, 3x3 halo, TMA,
depthwise) in their own files.

Layout: activations are logical N,C,H,W tensors read and written through their element strides
(channels_last NHWC is the fast case: the GEMM's reduction axis is then contiguous); weights are
logical O,I/groups,KH,KW read through strides (the layer stores them channels_last, memory
O,KH,KW,I/g). No im2col buffer is ever built: each program gathers its operand tiles straight
from the activation tensor, and out-of-image taps (padding) are masked loads of zero.

The three GEMMs, per group ``g`` (``Cin_g = C_in / groups``, ``Cout_g = C_out / groups``):

- forward  y[m, o]  = sum_k  x_col[m, k]  * w[o, k]    M = N*HO*WO, N = Cout_g, K = KH*KW*Cin_g
- dgrad    dx[m, c] = sum_k  dy_col[m, k] * w[k, c]    M = N*H*W,   N = Cin_g,  K = KH*KW*Cout_g
- wgrad    dw[o, c] (one tap) = sum_p dy[p, o] * x_tap[p, c]      M = Cout_g, N = Cin_g, K = N*HO*WO

Loops over K are tap-major (for each tap, blocks of channels: 1-d index math per tap). When the
reduced channel count per group is small (the RGB stem, narrow groups) the (tap, channel) axis is
flattened instead (FLAT_K / FLAT_N), so BLOCK_K isn't mostly masked channels. 1x1 stride-1
unpadded convs are plain GEMMs (IS_1X1: no tap or bounds arithmetic at all).

Strided dgrad never inserts zeros: the input pixels are split by stride phase
(h % stride_h, w % stride_w); inside one phase the taps that reach an output pixel are the same
for every pixel, so each program loops over exactly those taps and nothing is masked away.

Precision: operands are fed to ``tl.dot`` in the activation dtype (fp32 weights are cast), the
accumulator is fp32, fp32 dots use ``runtime.dot_precision`` ("ieee" = exact by default).
Parameter gradients (conv_wgrad.py) are fp32 and deterministic: split-K partial sums go to an
fp32 buffer and a second kernel adds them in a fixed order (no atomics).

Loads: NHWC channel runs are fetched as 16-byte vectors (cp.async) when Triton can prove them
aligned; for channel counts of whole vectors that are not multiples of 16 (24, 40, ...) the
launch helpers pass a checked alignment (X_ALIGN / DY_ALIGN) that the kernels turn into hints
(kernels/alignment.py). ``benchmarks/ptx_report.py`` shows the compiled loads without a GPU.

Tiles: on the GPU each launch helper lets ``kernels/autotune.py`` choose among the CONFIGS that
suit the problem (``gemm_candidates``; wgrad also tunes its split-K factor, the bias gradient
its tile and split), timed once per problem and cached on disk; ``config=`` forces one. The
interpreter always uses ``pick_config``'s few large tiles.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from tritoncnn import runtime
from tritoncnn.kernels import (
    alignment,
    autotune,
    conv_configs,
    conv_halo,
    conv_pointwise,
    conv_tma,
)
from tritoncnn.kernels.alignment import below
from tritoncnn.kernels.conv_configs import (  # noqa: F401  (re-exported: conv.CONFIGS, ...)
    CONFIGS,
    ConvConfig,
    gemm_candidates,
    pick_config,
)
from tritoncnn.kernels.elementwise import ACT_NONE, apply_activation
from tritoncnn.kernels.norm_fusion import (
    GradSums,
    PendingNorm,
    TileMoments,
    grad_sums,
    grad_sums_args,
    store_grad_sums,
    store_tile_moments,
    tile_moments,
)
from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs
from tritoncnn.kernels.tile_order import grouped_tile

# Programs that share a band of GROUP_M row tiles run together so their operand tiles stay in L2
# (Triton's matmul tutorial ordering).
GROUP_M = 8

# The ops ("fwd", "dgrad", "wgrad": TMA_OPS) whose heuristic tile is one of conv_tma's TMA
# kernels wherever they apply (stride 1, fp16/bf16, power-of-two output sizes, sm_90+,
# conv_tma.ENABLED); one op can win where another doesn't. None until measured on the GPU;
# with conv_tma.ENABLED the autotuner times the TMA tiles either way.
TMA_OPS: tuple[str, ...] = ("fwd", "dgrad", "wgrad")
TMA_CONVS: frozenset[str] = frozenset()

# Below this many reduced channels per group (C_in_g for the forward and wgrad, C_out_g for dgrad)
# the GEMM flattens (kh, kw, channel) into one axis, so that a small count (the RGB stem) doesn't
# waste most of every BLOCK_K slice on masked channels.
FLAT_MAX_CHANNELS = 16


# --- kernels ---------------------------------------------------------------------------------


@triton.jit
def _dot(a, b, acc, DOT_PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """acc + a @ b, with ``b`` (fp32 weights or the same dtype) rounded to a's dtype first.

    EMULATE_BF16: Triton's interpreter multiplies bf16 operands as their raw uint16 bits, so
    there the rounded bf16 operands are widened to fp32 (exact) and multiplied in ieee fp32,
    which is what a bf16 tensor-core dot with fp32 accumulation computes.
    """
    b = b.to(a.dtype)
    if EMULATE_BF16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def conv2d_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, pmean_ptr, pm2_ptr,
    N, H, W, C_in_g, HO, WO, C_out_g,
    sx_n, sx_h, sx_w, sx_c,
    sw_o, sw_i, sw_h, sw_w,
    sy_n, sy_h, sy_w, sy_c,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    alpha,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    IS_1X1: tl.constexpr, FLAT_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    X_ALIGN: tl.constexpr, MOMENTS: tl.constexpr = False, W_ALIGN: tl.constexpr = 1,
    Y_ALIGN: tl.constexpr = 1,
):  # fmt: skip
    """y = act(conv2d(x, w) + b): one BLOCK_M x BLOCK_N tile of output pixels x out channels.

    Grid: (row tiles * column tiles in grouped order, groups). Row m = (n, ho, wo) of the output;
    column = out channel ``o`` of group ``program_id(1)``.

    x_ptr: input, logical N,C,H,W, element strides sx_* (NHWC memory is the fast case).
    w_ptr: fp32 weight, logical C_out,C_in_g,KH,KW, strides sw_* (o, i, kh, kw).
    b_ptr: fp32 bias (C_out,), read only when HAS_BIAS.
    y_ptr: output, logical N,C_out,HO,WO, strides sy_*; stored in its own dtype.
    pmean_ptr, pm2_ptr: with MOMENTS, fp32 [cdiv(M, BLOCK_M), C_out] per-tile batch-norm
    moments of y as stored (norm_fusion.store_tile_moments: row block pid_m is partial pid_m), so
    the training batch norm that reads y needs no statistics pass of its own.
    N, H, W: input batch and spatial size. C_in_g, C_out_g: channels per group.
    HO, WO: output spatial size. stride_*, pad_* (top/left), dil_*: the convolution geometry.
    alpha: ELU alpha / LeakyReLU slope for the fused activation ``ACT`` (elementwise.py codes).
    KH, KW: kernel size. IS_1X1: 1x1, stride 1, no padding (a plain GEMM, no tap arithmetic).
    FLAT_K: K runs over flattened (kh, kw, c) (small C_in_g); else tap-major, channel blocks.
    DOT_PRECISION: tl.dot input_precision for fp32 operands.
    EMULATE_BF16: bf16 dot done in fp32 (the interpreter can't multiply bf16, see ``_dot``).
    X_ALIGN: x's row offsets and C_in_g are multiples of this many elements (``vector_align``),
    so its channel loads can be 16-byte vectors; 1 when unknown or already visible.
    W_ALIGN: the same for the weight's input-channel runs (X_ALIGN or 1: the fp16 weight copy
    of a 24-channel 1x1 conv has 48-byte rows Triton can't see).
    Y_ALIGN: the same for y's row offsets and C_out_g (a 144 -> 24 projection stores 48-byte
    rows: 16-byte vectors instead of 2-byte stores).
    """
    wait_for_inputs()
    pid = tl.program_id(0)
    g = tl.program_id(1)
    M = N * HO * WO
    pid_m, pid_n = grouped_tile(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(C_out_g, BLOCK_N), GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = below(offs_n, C_out_g, Y_ALIGN)
    n_img = offs_m // (HO * WO)
    rem = offs_m % (HO * WO)
    ho = rem // WO
    wo = rem % WO
    # int64 bases: batch x image offsets can pass 2**31 elements at large batch and resolution.
    x_row = n_img.to(tl.int64) * sx_n + (g * C_in_g).to(tl.int64) * sx_c
    co = g * C_out_g + offs_n
    if Y_ALIGN > 1:  # (see kernels/alignment.py: each run of channels starts aligned)
        co = tl.multiple_of(co, Y_ALIGN)
    w_col = co.to(tl.int64) * sw_o
    if W_ALIGN > 1:
        w_col = tl.multiple_of(w_col, W_ALIGN)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if IS_1X1:
        a_row = x_row + ho * sx_h + wo * sx_w
        if X_ALIGN > 1:
            a_row = tl.multiple_of(a_row, X_ALIGN)
        for k0 in range(0, C_in_g, BLOCK_K):
            kk = k0 + offs_k
            mk = below(kk, C_in_g, X_ALIGN)
            a = tl.load(
                x_ptr + a_row[:, None] + kk[None, :] * sx_c,
                mask=mask_m[:, None] & mk[None, :],
                other=0.0,
            )
            b = tl.load(
                w_ptr + w_col[None, :] + kk[:, None] * sw_i,
                mask=mk[:, None] & mask_n[None, :],
                other=0.0,
            )
            acc = _dot(a, b, acc, DOT_PRECISION, EMULATE_BF16)
    elif FLAT_K:
        K = KH * KW * C_in_g
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            mk = kk < K
            c = kk % C_in_g
            tap = kk // C_in_g
            kh = tap // KW
            kw = tap % KW
            hi = ho[:, None] * stride_h - pad_h + kh[None, :] * dil_h
            wi = wo[:, None] * stride_w - pad_w + kw[None, :] * dil_w
            ok = (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
            a = tl.load(
                x_ptr + x_row[:, None] + hi * sx_h + wi * sx_w + c[None, :] * sx_c,
                mask=mask_m[:, None] & mk[None, :] & ok,
                other=0.0,
            )
            w_k = c * sw_i + kh * sw_h + kw * sw_w
            b = tl.load(
                w_ptr + w_col[None, :] + w_k[:, None],
                mask=mk[:, None] & mask_n[None, :],
                other=0.0,
            )
            acc = _dot(a, b, acc, DOT_PRECISION, EMULATE_BF16)
    else:
        # One flat loop over (tap, channel block) keeps a single pipelinable loop.
        n_cb = tl.cdiv(C_in_g, BLOCK_K)
        for it in range(0, KH * KW * n_cb):
            tap = it // n_cb
            cb = it - tap * n_cb
            kh = tap // KW
            kw = tap - kh * KW
            hi = ho * stride_h - pad_h + kh * dil_h
            wi = wo * stride_w - pad_w + kw * dil_w
            row_ok = mask_m & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
            a_row = x_row + hi * sx_h + wi * sx_w
            if X_ALIGN > 1:
                a_row = tl.multiple_of(a_row, X_ALIGN)
            kk = cb * BLOCK_K + offs_k
            mk = below(kk, C_in_g, X_ALIGN)
            a = tl.load(
                x_ptr + a_row[:, None] + kk[None, :] * sx_c,
                mask=row_ok[:, None] & mk[None, :],
                other=0.0,
            )
            w_tap = kh * sw_h + kw * sw_w
            if W_ALIGN > 1:
                w_tap = tl.multiple_of(w_tap, W_ALIGN)
            b = tl.load(
                w_ptr + w_col[None, :] + w_tap + kk[:, None] * sw_i,
                mask=mk[:, None] & mask_n[None, :],
                other=0.0,
            )
            acc = _dot(a, b, acc, DOT_PRECISION, EMULATE_BF16)

    # Epilogue on the fp32 accumulator: bias, activation, then one rounding to y's dtype.
    if HAS_BIAS:
        bias = tl.load(b_ptr + co, mask=mask_n, other=0.0).to(tl.float32)
        acc += bias[None, :]
    acc = apply_activation(acc, ACT, alpha)
    y_row = n_img.to(tl.int64) * sy_n + ho * sy_h + wo * sy_w
    if Y_ALIGN > 1:
        y_row = tl.multiple_of(y_row, Y_ALIGN)
    y_ptrs = y_ptr + y_row[:, None] + co.to(tl.int64)[None, :] * sy_c
    y = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptrs, y, mask=mask_m[:, None] & mask_n[None, :])
    if MOMENTS:
        # fmt: off
        # (the count reduced from the mask, not computed: ptxas then fits this kernel in
        # fewer registers, 126 against 136 at 128 x 64 x 32 on a 3x3: 4 programs an SM, not 3)
        store_tile_moments(pmean_ptr, pm2_ptr, y.to(tl.float32), mask_m,
                           tl.sum(mask_m.to(tl.float32), axis=0), pid_m, co, mask_n,
                           C_out_g * tl.num_programs(1))
        # fmt: on


@triton.jit
def conv2d_dgrad_kernel(
    dy_ptr, w_ptr, dx_ptr,
    xn_ptr, nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr, psum_g_ptr, psum_gx_ptr, add_ptr,
    N, H, W, C_in_g, HO, WO, C_out_g,
    sdy_n, sdy_h, sdy_w, sdy_c,
    sw_o, sw_i, sw_h, sw_w,
    sdx_n, sdx_h, sdx_w, sdx_c,
    sxn_n, sxn_h, sxn_w, sxn_c,
    sad_n, sad_h, sad_w, sad_c,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    kh_step, kw_step, n_alpha,
    KH: tl.constexpr, KW: tl.constexpr, IS_1X1: tl.constexpr, FLAT_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    DY_ALIGN: tl.constexpr, CI_ALIGN: tl.constexpr,
    GRAD_SUMS: tl.constexpr = False, IN_HAS_W: tl.constexpr = False,
    IN_HAS_B: tl.constexpr = False, IN_ACT: tl.constexpr = 0, ADD_GRAD: tl.constexpr = False,
    RELU_INPUT: tl.constexpr = False,
):  # fmt: skip
    """dx = conv2d's input gradient, gathered: one BLOCK_M x BLOCK_N tile of input pixels of
    one stride phase x input channels of one group.

    Grid: (row tiles * column tiles in grouped order, groups * stride_h * stride_w). The phase
    (ph, pw) holds the pixels h = ph + stride_h*i, w = pw + stride_w*j. Output pixel ho used
    input h through tap kh iff h + pad_h - kh*dil_h = ho*stride_h; within a phase that holds for
    the same taps kh = kh0 + t*kh_step for every pixel, so only those taps are visited. Pixels
    no output touched get exact zeros (their tile accumulates nothing), so all of dx is written.

    dy_ptr: output gradient, logical N,C_out,HO,WO, strides sdy_*.
    w_ptr: fp32 weight, logical C_out,C_in_g,KH,KW, strides sw_* (o, i, kh, kw).
    dx_ptr: input gradient, logical N,C_in,H,W, strides sdx_*; stored in its dtype.
    N, H, W, C_in_g, HO, WO, C_out_g, stride_*, pad_* (top/left), dil_*: as in the forward.
    kh_step, kw_step: stride / gcd(stride, dilation), the spacing of taps valid in one phase.
    KH, KW: kernel size. IS_1X1: 1x1 stride-1 pad-0 conv (plain GEMM with w transposed).
    FLAT_K: K runs over flattened (valid tap, o) (small C_out_g); else tap-major, o blocks.
    DOT_PRECISION: tl.dot input_precision for fp32 operands.
    EMULATE_BF16: bf16 dot done in fp32 (the interpreter can't multiply bf16, see ``_dot``).
    DY_ALIGN: as the forward's X_ALIGN, for dy's row offsets and C_out_g.
    CI_ALIGN: the same for the input-channel runs: C_in_g, dx's row offsets and the weight's
    (o, kh, kw) strides are multiples of it (the B tile's rows and dx's stores).
    GRAD_SUMS: x is a training batch norm's output (after its fused activation IN_ACT,
    n_alpha) and dx that batch norm's output gradient: the epilogue also stores the tile's
    backward sums (norm_fusion.store_grad_sums) as partial phase * cdiv(M0, BLOCK_M) + row tile of
    the fp32 [n_parts, C_in] buffers psum_g_ptr, psum_gx_ptr. xn_ptr (strides sxn_*) is the
    batch norm's input, logical N,C_in,H,W; nmean_ptr, ninvstd_ptr its fp32 batch statistics,
    nw_ptr, nb_ptr its affine parameters (read when IN_HAS_W / IN_HAS_B).
    ADD_GRAD: the tile of add_ptr (logical N,C_in,H,W, strides sad_*: another path's gradient
    of the same input, e.g. a residual block's skip) is added to the fp32 accumulator before
    dx is rounded and stored (and before GRAD_SUMS), so dx is the input's whole gradient.
    RELU_INPUT: the conv's input is a ReLU's output, read through xn_ptr / sxn_* (not with
    GRAD_SUMS): dx (after ADD_GRAD) is zeroed where that input is not > 0, so the kernel
    returns the gradient of the ReLU's input (its backward, as activation_backward does it
    from the output).
    """
    wait_for_inputs()
    pid = tl.program_id(0)
    n_phase = stride_h * stride_w
    g = tl.program_id(1) // n_phase
    phase = tl.program_id(1) % n_phase
    ph = phase // stride_w
    pw = phase % stride_w
    HP = (H - ph + stride_h - 1) // stride_h  # rows of this phase
    WP = (W - pw + stride_w - 1) // stride_w
    M = N * HP * WP
    # The grid is sized for phase (0, 0), the largest; other phases mask their extra rows.
    M0 = N * tl.cdiv(H, stride_h) * tl.cdiv(W, stride_w)
    pid_m, pid_n = grouped_tile(pid, tl.cdiv(M0, BLOCK_M), tl.cdiv(C_in_g, BLOCK_N), GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = below(offs_n, C_in_g, CI_ALIGN)
    n_img = offs_m // tl.maximum(HP * WP, 1)
    rem = offs_m % tl.maximum(HP * WP, 1)
    i = rem // tl.maximum(WP, 1)
    j = rem % tl.maximum(WP, 1)
    dy_row = n_img.to(tl.int64) * sdy_n + (g * C_out_g).to(tl.int64) * sdy_c
    ci = g * C_in_g + offs_n
    w_col = offs_n * sw_i + (g * C_out_g).to(tl.int64) * sw_o  # weight I is per group
    if CI_ALIGN > 1:  # (see kernels/alignment.py: each run of channels starts aligned)
        ci = tl.multiple_of(ci, CI_ALIGN)
        w_col = tl.multiple_of(w_col, CI_ALIGN)

    # First valid tap of this phase along each axis (KH / KW when none is): a few scalar steps.
    # Offsetting by stride*KH*dil keeps every numerator non-negative, so // and % agree between
    # C-style (GPU) and Python-style (interpreter) integer division.
    kh0 = ph * 0 + KH
    for t in tl.static_range(KH):
        hits = (ph + pad_h - t * dil_h + stride_h * KH * dil_h) % stride_h == 0
        kh0 = tl.where(hits & (kh0 == KH), t, kh0)
    kw0 = pw * 0 + KW
    for t in tl.static_range(KW):
        hits = (pw + pad_w - t * dil_w + stride_w * KW * dil_w) % stride_w == 0
        kw0 = tl.where(hits & (kw0 == KW), t, kw0)
    n_th = tl.cdiv(KH - kh0, kh_step)
    n_tw = tl.cdiv(KW - kw0, kw_step)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if IS_1X1:
        a_row = dy_row + i * sdy_h + j * sdy_w
        if DY_ALIGN > 1:
            a_row = tl.multiple_of(a_row, DY_ALIGN)
        for k0 in range(0, C_out_g, BLOCK_K):
            kk = k0 + offs_k
            mk = below(kk, C_out_g, DY_ALIGN)
            a = tl.load(
                dy_ptr + a_row[:, None] + kk[None, :] * sdy_c,
                mask=mask_m[:, None] & mk[None, :],
                other=0.0,
            )
            w_row = kk * sw_o
            if CI_ALIGN > 1:
                w_row = tl.multiple_of(w_row, CI_ALIGN)
            b = tl.load(
                w_ptr + w_col[None, :] + w_row[:, None],
                mask=mk[:, None] & mask_n[None, :],
                other=0.0,
            )
            acc = _dot(a, b, acc, DOT_PRECISION, EMULATE_BF16)
    elif FLAT_K:
        # Small C_out_g: K runs over flattened (valid tap, o) of this phase.
        K = n_th * n_tw * C_out_g
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            mk = kk < K
            o = kk % C_out_g
            tap = kk // C_out_g
            th = tap // n_tw
            kh = kh0 + th * kh_step
            kw = kw0 + (tap - th * n_tw) * kw_step
            dh = (ph + pad_h - kh * dil_h + stride_h * KH * dil_h) // stride_h - KH * dil_h
            dw = (pw + pad_w - kw * dil_w + stride_w * KW * dil_w) // stride_w - KW * dil_w
            ho = i[:, None] + dh[None, :]
            wo = j[:, None] + dw[None, :]
            ok = (ho >= 0) & (ho < HO) & (wo >= 0) & (wo < WO)
            a = tl.load(
                dy_ptr + dy_row[:, None] + ho * sdy_h + wo * sdy_w + o[None, :] * sdy_c,
                mask=mask_m[:, None] & mk[None, :] & ok,
                other=0.0,
            )
            b = tl.load(
                w_ptr + w_col[None, :] + (o * sw_o + kh * sw_h + kw * sw_w)[:, None],
                mask=mk[:, None] & mask_n[None, :],
                other=0.0,
            )
            acc = _dot(a, b, acc, DOT_PRECISION, EMULATE_BF16)
    else:
        n_ob = tl.cdiv(C_out_g, BLOCK_K)
        for it in range(0, n_th * n_tw * n_ob):
            tap = it // n_ob
            ob = it - tap * n_ob
            th = tap // n_tw
            kh = kh0 + th * kh_step
            kw = kw0 + (tap - th * n_tw) * kw_step
            # ho = (h + pad_h - kh*dil_h) / stride_h, exact for this phase.
            ho = i + (ph + pad_h - kh * dil_h + stride_h * KH * dil_h) // stride_h - KH * dil_h
            wo = j + (pw + pad_w - kw * dil_w + stride_w * KW * dil_w) // stride_w - KW * dil_w
            row_ok = mask_m & (ho >= 0) & (ho < HO) & (wo >= 0) & (wo < WO)
            a_row = dy_row + ho * sdy_h + wo * sdy_w
            if DY_ALIGN > 1:
                a_row = tl.multiple_of(a_row, DY_ALIGN)
            kk = ob * BLOCK_K + offs_k
            mk = below(kk, C_out_g, DY_ALIGN)
            a = tl.load(
                dy_ptr + a_row[:, None] + kk[None, :] * sdy_c,
                mask=row_ok[:, None] & mk[None, :],
                other=0.0,
            )
            w_row = (kh * sw_h + kw * sw_w) + kk * sw_o
            if CI_ALIGN > 1:
                w_row = tl.multiple_of(w_row, CI_ALIGN)
            b = tl.load(
                w_ptr + w_col[None, :] + w_row[:, None],
                mask=mk[:, None] & mask_n[None, :],
                other=0.0,
            )
            acc = _dot(a, b, acc, DOT_PRECISION, EMULATE_BF16)

    h = ph + i * stride_h
    w = pw + j * stride_w
    dx_row = n_img.to(tl.int64) * sdx_n + h * sdx_h + w * sdx_w
    if CI_ALIGN > 1:
        dx_row = tl.multiple_of(dx_row, CI_ALIGN)
    dx_ptrs = dx_ptr + dx_row[:, None] + ci.to(tl.int64)[None, :] * sdx_c
    mask = mask_m[:, None] & mask_n[None, :]
    if ADD_GRAD:
        add_row = n_img.to(tl.int64) * sad_n + h * sad_h + w * sad_w
        add_ptrs = add_ptr + add_row[:, None] + ci.to(tl.int64)[None, :] * sad_c
        acc += tl.load(add_ptrs, mask=mask, other=0.0).to(tl.float32)
    if RELU_INPUT:
        x_row = n_img.to(tl.int64) * sxn_n + h * sxn_h + w * sxn_w
        x_ptrs = xn_ptr + x_row[:, None] + ci.to(tl.int64)[None, :] * sxn_c
        x_in = tl.load(x_ptrs, mask=mask, other=0.0)
        acc = tl.where(x_in > 0, acc, 0.0)
    dx = acc.to(dx_ptr.dtype.element_ty)
    tl.store(dx_ptrs, dx, mask=mask)
    if GRAD_SUMS:
        xn_row = n_img.to(tl.int64) * sxn_n + h * sxn_h + w * sxn_w
        xn_ptrs = xn_ptr + xn_row[:, None] + ci.to(tl.int64)[None, :] * sxn_c
        xn = tl.load(xn_ptrs, mask=mask, other=0.0).to(tl.float32)
        # fmt: off
        store_grad_sums(psum_g_ptr, psum_gx_ptr, dx.to(tl.float32), xn, mask,
                        phase * tl.cdiv(M0, BLOCK_M) + pid_m, ci, mask_n,
                        C_in_g * (tl.num_programs(1) // n_phase), nmean_ptr, ninvstd_ptr,
                        nw_ptr, nb_ptr, n_alpha, IN_HAS_W, IN_HAS_B, IN_ACT, BLOCK_N)
        # fmt: on


# --- launch helpers --------------------------------------------------------------------------

IntPair = tuple[int, int]


def _pair(v) -> IntPair:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def _padding4(padding) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from an int, an (h, w) pair or an explicit 4-tuple."""
    if isinstance(padding, int):
        return (padding,) * 4
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        return (padding[0], padding[0], padding[1], padding[1])
    if len(padding) == 4:
        return padding  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, (h, w) or (top, bottom, left, right): {padding}")


def _resolve_config(
    config, m: int, n: int, k: int, dtype: torch.dtype, split_k: bool = False
) -> ConvConfig:
    if config is None:
        return pick_config(m, n, k, dtype, split_k)
    if isinstance(config, int):
        return CONFIGS[config]
    return config


def _tuned(op: str, problem: dict, candidates, default, make_runner, reference=None):
    """The autotuner's choice for ``problem`` (``default`` included among the candidates).
    ``candidates`` is a zero-argument function so a cache hit doesn't build the list.
    ``reference``: the tile every candidate's result is checked against (the pointer kernel's
    heuristic, even where the TMA kernel's is the default; None: the default)."""

    def with_default():
        cands = list(candidates())
        return cands if default in cands else [default, *cands]

    return autotune.default_tuner().choose(
        op, problem, with_default, default, make_runner, reference=reference
    )


def _check_tma_config(cfg, tma: bool, op: str) -> None:
    """A forced conv_tma tile runs only where its kernel applies: elsewhere (a stride, a
    group, a layout, TRITONCNN_TMA unset) it would compute the wrong conv, not fail."""
    if isinstance(cfg, conv_tma.TmaConfig) and not tma:
        raise ValueError(
            f"{op}: config {cfg} is a TMA tile, but the TMA kernels can't run this conv "
            "(stride 1, no dilation, one group, fp16/bf16 dense channels_last operands, "
            "power-of-two output sizes, sm_90+, TRITONCNN_TMA=1: see kernels/conv_tma.py)"
        )


def _check_pointwise_config(cfg, pointwise: bool, op: str) -> None:
    """A forced conv_pointwise tile runs only where its kernel applies (as _check_tma_config)."""
    if isinstance(cfg, conv_pointwise.PointwiseConfig) and not pointwise:
        raise ValueError(
            f"{op}: config {cfg} is a pointwise tile, but the pointwise kernel can't run this "
            f"conv (1x1, stride 1, no padding, one group, at most {conv_pointwise.MAX_C_IN} "
            "reduced channels, fp16/bf16 dense channels_last operands, no added gradient or "
            "ReLU mask in a dgrad: see kernels/conv_pointwise.py)"
        )


def _check_halo_config(cfg, halo: bool, op: str) -> None:
    """A forced conv_halo tile runs only where its kernel applies (as _check_tma_config)."""
    if isinstance(cfg, conv_halo.HaloConfig) and not halo:
        raise ValueError(
            f"{op}: config {cfg} is a halo tile, but the halo kernel can't run this conv "
            "(3x3, stride 1, padding 1, no bias or activation, 64k channels, fp16/bf16 dense "
            "channels_last operands, sm_90, not TRITONCNN_HALO=0: see kernels/conv_halo.py)"
        )


def _check_act(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-d N,C,H,W, got shape {tuple(x.shape)}")
    if x.dtype not in runtime.SUPPORTED_DTYPES:
        raise ValueError(f"{name}: unsupported dtype {x.dtype}")


def conv_output_size(size: int, k: int, stride: int, pad_lo: int, pad_hi: int, dil: int) -> int:
    """Output extent of one spatial axis (torch's formula, padding split into low/high sides)."""
    return (size + pad_lo + pad_hi - dil * (k - 1) - 1) // stride + 1


def vector_align(t: torch.Tensor, channels_per_group: int) -> int:
    """X_ALIGN / DY_ALIGN (kernels/alignment.py) for runs of ``channels_per_group`` channels of
    NHWC ``t``."""
    return alignment.tensor_align(t, runtime.nhwc_strides(t), channels_per_group)


def conv2d_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: IntPair,
    padding,
    dilation: IntPair,
    groups: int,
    act: int = ACT_NONE,
    alpha: float = 0.0,
    config: ConvConfig | int | None = None,
) -> torch.Tensor:
    """act(conv2d(x, weight) + bias) as torch.nn.functional.conv2d, into a new NHWC tensor of
    x's dtype. ``padding`` is an int, an (h, w) pair, or (top, bottom, left, right) for the
    asymmetric padding of padding='same' with even kernels. ``weight`` may be fp32 or already
    in x's dtype (half the operand traffic and shared memory). ``config``
    forces a tile; None lets the autotuner choose (the heuristic in the interpreter)."""
    y, _ = _forward(x, weight, bias, stride, padding, dilation, groups, act, alpha, config, False)
    return y


def conv2d_forward_moments(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: IntPair,
    padding,
    dilation: IntPair,
    groups: int,
    config: ConvConfig | int | None = None,
) -> tuple[torch.Tensor, TileMoments]:
    """``conv2d_forward`` for a conv that feeds a training batch norm: also returns the
    per-tile moments of the output that its epilogue stored (norm_fusion.TileMoments), for
    ``norm.batch_norm_forward_train(moments=...)``."""
    y, moments = _forward(
        x, weight, bias, stride, padding, dilation, groups, ACT_NONE, 0.0, config, True
    )
    assert moments is not None
    return y, moments


def _forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: IntPair,
    padding,
    dilation: IntPair,
    groups: int,
    act: int,
    alpha: float,
    config: ConvConfig | int | None,
    moments: bool,
) -> tuple[torch.Tensor, TileMoments | None]:
    """The forward launch; with ``moments``, also the output's per-tile moments."""
    _check_act(x, "input")
    n, c_in, h, w = x.shape
    c_out, c_in_g, kh, kw = weight.shape
    sh, sw = _pair(stride)
    pt, pb, pl, pr = _padding4(padding)
    dh, dw = _pair(dilation)
    if c_in != c_in_g * groups or c_out % groups:
        raise ValueError(
            f"conv2d: input has {c_in} channels, weight {tuple(weight.shape)} with groups={groups}"
        )
    ho = conv_output_size(h, kh, sh, pt, pb, dh)
    wo = conv_output_size(w, kw, sw, pl, pr, dw)
    if ho <= 0 or wo <= 0:
        raise ValueError(f"conv2d: input {h}x{w} is too small for the kernel, output {ho}x{wo}")
    c_out_g = c_out // groups
    y = runtime.empty_nhwc(n, c_out, ho, wo, x.dtype)
    m, k = n * ho * wo, kh * kw * c_in_g
    is_1x1 = kh == kw == 1 and sh == sw == 1 and pt == pl == 0

    tma = conv_tma.tma_applicable(x, weight, (sh, sw), (dh, dw), groups, ho, wo)
    halo = (
        bias is None
        and act == ACT_NONE
        and conv_halo.halo_applicable(x, weight, (sh, sw), (pt, pb, pl, pr), (dh, dw), groups, y)
    )

    pointwise = conv_pointwise.pointwise_applicable(
        x, weight, (sh, sw), (pt, pb, pl, pr), (dh, dw), groups
    )

    def launch(out: torch.Tensor, cfg) -> TileMoments | None:
        if isinstance(cfg, conv_halo.HaloConfig):
            return conv_halo.launch_halo(x, weight, out, cfg, dgrad=False, moments=moments)
        if isinstance(cfg, conv_pointwise.PointwiseConfig):
            return conv_pointwise.conv2d_forward_pointwise(
                x, weight, bias, out, act, alpha, moments, cfg
            )
        if isinstance(cfg, conv_tma.TmaConfig):
            return conv_tma.conv2d_forward_tma(
                x, weight, bias, out, (pt, pl), act, alpha, moments, cfg
            )
        # the moments' tile is the launch's BLOCK_M: a tuning candidate gets buffers of its own
        tiles = tile_moments(m, c_out, cfg.BLOCK_M) if moments else None
        parts = tiles.partials if tiles is not None else (out, out)
        grid = (triton.cdiv(m, cfg.BLOCK_M) * triton.cdiv(c_out_g, cfg.BLOCK_N), groups)
        conv2d_fwd_kernel[grid](
            x, weight, weight if bias is None else bias, out, parts[0], parts[1],
            n, h, w, c_in_g, ho, wo, c_out_g,
            *runtime.nhwc_strides(x), *weight.stride(), *runtime.nhwc_strides(out),
            sh, sw, pt, pl, dh, dw,
            float(alpha),
            KH=kh, KW=kw, HAS_BIAS=bias is not None, ACT=act,
            IS_1X1=is_1x1, FLAT_K=(not is_1x1) and c_in_g < FLAT_MAX_CHANNELS,
            DOT_PRECISION=runtime.dot_precision(x.dtype),
            EMULATE_BF16=runtime.bf16_dot_emulated(x.dtype),
            BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K, GROUP_M=GROUP_M,
            X_ALIGN=vector_align(x, c_in_g), MOMENTS=moments,
            W_ALIGN=_input_channel_align(x, weight), Y_ALIGN=vector_align(out, c_out_g),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            launch_pdl=LAUNCH_PDL,
        )  # fmt: skip
        return tiles

    heuristic = pointer_heuristic = pick_config(m, c_out_g, k, x.dtype, is_1x1=is_1x1)
    if tma and "fwd" in TMA_CONVS:
        heuristic = conv_tma.pick_tma_config(c_in, c_out)
    if halo:
        heuristic = conv_halo.pick_halo_config(ho, wo)
    if pointwise and conv_pointwise.ENABLED:
        heuristic = conv_pointwise.pick_pointwise_config(c_out)
    if config is not None or runtime.INTERPRETED:
        cfg = heuristic if config is None else _resolve_config(config, m, c_out_g, k, x.dtype)
        _check_tma_config(cfg, tma, "conv2d_forward")
        _check_halo_config(cfg, halo, "conv2d_forward")
        _check_pointwise_config(cfg, pointwise, "conv2d_forward")
    else:
        problem = dict(
            n=n, c_in=c_in, h=h, w=w, c_out=c_out, k=(kh, kw), stride=(sh, sw),
            pad=(pt, pb, pl, pr), dil=(dh, dw), groups=groups, bias=bias is not None, act=act,
            x=autotune.tensor_flag(x), weight=autotune.tensor_flag(weight),
        )  # fmt: skip
        if moments:  # the epilogue's reductions shift the best tile; older keys stay valid
            problem["moments"] = True

        def candidates():
            out = gemm_candidates(m, c_out_g, k, x.element_size(), weight.element_size(), is_1x1)
            if tma:  # the TMA kernel's tiles are timed beside the pointer kernel's
                out += conv_tma.tma_candidates(
                    c_in, c_out, ho, wo, conv_configs.operand_smem_limit()
                )
            if halo:
                out += conv_halo.halo_candidates(c_out, ho, wo, conv_configs.smem_optin(), 1)
            if pointwise and conv_pointwise.ENABLED:
                out += list(conv_pointwise.POINTWISE_CONFIGS)
            return out

        cfg = _tuned(
            "conv2d_fwd",
            problem,
            candidates,
            heuristic,
            lambda: _scratch_runner(launch, runtime.empty_like(y)),
            reference=pointer_heuristic,
        )
    return y, launch(y, cfg)


def _scratch_runner(launch, scratch: torch.Tensor) -> autotune.CheckedRunner:
    """runner(candidate) for the tuner: launch into ``scratch``, never the real output; the
    tuner checks each candidate's scratch against the pointer kernel's heuristic tile's."""
    return autotune.CheckedRunner(lambda cand: launch(scratch, cand), scratch)


def _input_channel_align(t: torch.Tensor, weight: torch.Tensor) -> int:
    """CI_ALIGN of conv2d_dgrad_kernel (``t`` = dx) and W_ALIGN of conv2d_fwd_kernel (``t`` =
    x): t's alignment (``vector_align``), if the weight's input-channel runs (any dtype) are
    aligned to the same element count, else 1."""
    align = vector_align(t, weight.shape[1])
    s_o, s_i, s_h, s_w = weight.stride()
    misaligned = s_i != 1 or weight.data_ptr() % 16 or any(v % align for v in (s_o, s_h, s_w))
    return 1 if align > 1 and misaligned else align


def conv2d_dgrad(
    grad_out: torch.Tensor,
    weight: torch.Tensor,
    input_shape,
    stride: IntPair,
    padding,
    dilation: IntPair,
    groups: int,
    config: ConvConfig | int | None = None,
    out: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
    relu_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient of conv2d with respect to its input (shape ``input_shape`` = N,C,H,W), in
    grad_out's dtype. Written into ``out`` (any strides) when given, else a new NHWC tensor.
    Only the top/left padding matters here (the output size comes from grad_out). ``weight``
    may be fp32 or in grad_out's dtype; ``config`` as in conv2d_forward. ``add``: a gradient
    of the same input from another path (any strides, grad_out's dtype), added in the
    epilogue: the result is the input's whole gradient, with no separate accumulate pass.
    ``relu_out``: the conv's input when it is a ReLU's output: the result (after ``add``) is
    the gradient of that ReLU's input, zero where ``relu_out`` is not > 0."""
    args = (grad_out, weight, input_shape, stride, padding, dilation, groups, config, out)
    return _dgrad(*args, None, None, add, relu_out)[0]


def conv2d_dgrad_grad_sums(
    grad_out: torch.Tensor,
    weight: torch.Tensor,
    input_shape,
    stride: IntPair,
    padding,
    dilation: IntPair,
    groups: int,
    bn_input: torch.Tensor,
    bn: PendingNorm,
    config: ConvConfig | int | None = None,
    out: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
) -> tuple[torch.Tensor, GradSums]:
    """``conv2d_dgrad`` for a conv whose input is a training batch norm's output: ``bn`` holds
    that batch norm's batch statistics, affine parameters and fused activation, ``bn_input``
    its input. Also returns the batch norm's backward sums that the epilogue stored
    (norm_fusion.GradSums), for ``norm.batch_norm_backward(sums=...)``; with ``add`` (as in
    conv2d_dgrad) they are the sums of the whole gradient."""
    args = (grad_out, weight, input_shape, stride, padding, dilation, groups, config, out)
    grad_in, sums = _dgrad(*args, bn_input, bn, add)
    assert sums is not None
    return grad_in, sums


def _dgrad(
    grad_out: torch.Tensor,
    weight: torch.Tensor,
    input_shape,
    stride: IntPair,
    padding,
    dilation: IntPair,
    groups: int,
    config: ConvConfig | int | None,
    out: torch.Tensor | None,
    bn_input: torch.Tensor | None,
    bn: PendingNorm | None,
    add: torch.Tensor | None = None,
    relu_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, GradSums | None]:
    """The dgrad launch; with ``bn``, also the batch norm's per-tile backward sums; ``add``
    added to the gradient in the epilogue, then ``relu_out``'s ReLU backward applied."""
    _check_act(grad_out, "grad_out")
    n, c_in, h, w = (int(s) for s in input_shape)
    c_out, c_in_g, kh, kw = weight.shape
    _, c_out2, ho, wo = grad_out.shape
    if c_out2 != c_out or c_in != c_in_g * groups:
        raise ValueError(
            f"conv2d_dgrad: grad_out {tuple(grad_out.shape)}, weight {tuple(weight.shape)}, "
            f"input {tuple(input_shape)} and groups={groups} disagree"
        )
    sh, sw = _pair(stride)
    pt, _, pl, _ = _padding4(padding)
    dh, dw = _pair(dilation)
    if out is None:
        out = runtime.empty_nhwc(n, c_in, h, w, grad_out.dtype)
    if add is not None and (tuple(add.shape) != (n, c_in, h, w) or add.dtype != grad_out.dtype):
        raise ValueError(
            f"conv2d_dgrad: add {tuple(add.shape)} ({add.dtype}) must match the input "
            f"{(n, c_in, h, w)} in grad_out's dtype {grad_out.dtype}"
        )
    c_out_g = c_out // groups
    m0, k = n * triton.cdiv(h, sh) * triton.cdiv(w, sw), kh * kw * c_out_g
    is_1x1 = kh == kw == 1 and sh == sw == 1 and pt == pl == 0
    xn, norm_ptrs, norm_alpha, norm_flags = grad_sums_args(
        bn, bn_input, (n, c_in, h, w), out, "conv2d_dgrad:"
    )
    if relu_out is not None:  # (conv2d_dgrad only: no batch-norm sums, whose input slot it takes)
        if tuple(relu_out.shape) != (n, c_in, h, w):
            raise ValueError(
                f"conv2d_dgrad: relu_out {tuple(relu_out.shape)} must have the input's shape "
                f"{(n, c_in, h, w)}"
            )
        xn = relu_out

    tma = bn is None and conv_tma.tma_dgrad_applicable(
        grad_out, weight, (sh, sw), (dh, dw), groups, h, w, out, add, relu_out
    )
    halo = conv_halo.grad_sums_supported(bn) and conv_halo.halo_applicable(
        grad_out, weight, (sh, sw), _padding4(padding), (dh, dw), groups, out, add, relu_out,
        bn_input,
    )  # fmt: skip
    pointwise = (
        (bn is None or bn_input.is_contiguous(memory_format=torch.channels_last))
        and add is None
        and relu_out is None
        and out.is_contiguous(memory_format=torch.channels_last)
        and conv_pointwise.pointwise_applicable(
            grad_out, weight.transpose(0, 1), (sh, sw), _padding4(padding), (dh, dw), groups
        )
    )

    def launch(dst: torch.Tensor, cfg) -> GradSums | None:
        if isinstance(cfg, conv_halo.HaloConfig):
            return conv_halo.launch_halo(
                grad_out, weight, dst, cfg, True, add=add, relu_out=relu_out, bn=bn,
                bn_input=bn_input,
            )  # fmt: skip
        if isinstance(cfg, conv_tma.TmaConfig):
            conv_tma.conv2d_dgrad_tma(grad_out, weight, dst, (pt, pl), cfg, add, relu_out)
            return None
        if isinstance(cfg, conv_pointwise.PointwiseConfig):
            return conv_pointwise.conv2d_dgrad_pointwise(grad_out, weight, dst, cfg, bn, bn_input)
        # partials per (stride phase, row tile): a tuning candidate gets buffers of its own
        row_tiles = triton.cdiv(m0, cfg.BLOCK_M)
        sums = grad_sums(sh * sw * row_tiles, c_in) if bn is not None else None
        parts = (sums.partials[0], sums.partials[1]) if sums is not None else (dst, dst)
        grid = (row_tiles * triton.cdiv(c_in_g, cfg.BLOCK_N), groups * sh * sw)
        conv2d_dgrad_kernel[grid](
            grad_out, weight, dst, xn, *norm_ptrs, *parts, dst if add is None else add,
            n, h, w, c_in_g, ho, wo, c_out_g,
            *runtime.nhwc_strides(grad_out), *weight.stride(), *runtime.nhwc_strides(dst),
            *runtime.nhwc_strides(xn), *runtime.nhwc_strides(dst if add is None else add),
            sh, sw, pt, pl, dh, dw,
            sh // math.gcd(sh, dh), sw // math.gcd(sw, dw), norm_alpha,
            KH=kh, KW=kw, IS_1X1=is_1x1, FLAT_K=(not is_1x1) and c_out_g < FLAT_MAX_CHANNELS,
            DOT_PRECISION=runtime.dot_precision(grad_out.dtype),
            EMULATE_BF16=runtime.bf16_dot_emulated(grad_out.dtype),
            BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K, GROUP_M=GROUP_M,
            DY_ALIGN=vector_align(grad_out, c_out_g), CI_ALIGN=_input_channel_align(dst, weight),
            GRAD_SUMS=bn is not None, **norm_flags, ADD_GRAD=add is not None,
            RELU_INPUT=relu_out is not None,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            launch_pdl=LAUNCH_PDL,
        )  # fmt: skip
        return sums

    heuristic = pointer_heuristic = pick_config(
        m0, c_in_g, k, grad_out.dtype, is_1x1=is_1x1, dgrad=True
    )
    if tma and "dgrad" in TMA_CONVS:
        heuristic = conv_tma.pick_tma_config(c_out, c_in, dgrad=True)
    if halo:
        heuristic = conv_halo.pick_halo_config(h, w, dgrad=True)
    if pointwise and conv_pointwise.ENABLED:
        heuristic = conv_pointwise.pick_pointwise_config(c_in, sums=bn is not None)
    if config is not None or runtime.INTERPRETED:
        cfg = (
            heuristic if config is None else _resolve_config(config, m0, c_in_g, k, grad_out.dtype)
        )
        _check_tma_config(cfg, tma, "conv2d_dgrad")
        _check_halo_config(cfg, halo, "conv2d_dgrad")
        _check_pointwise_config(cfg, pointwise, "conv2d_dgrad")
    else:
        problem = dict(
            n=n, c_in=c_in, h=h, w=w, c_out=c_out, ho=ho, wo=wo, k=(kh, kw), stride=(sh, sw),
            pad=(pt, pl), dil=(dh, dw), groups=groups, grad_out=autotune.tensor_flag(grad_out),
            weight=autotune.tensor_flag(weight), out=autotune.tensor_flag(out),
        )  # fmt: skip
        if bn is not None:  # the epilogue's reductions shift the best tile; older keys stay valid
            problem["grad_sums"] = True
        if add is not None:  # so does the epilogue's extra read
            problem["add_grad"] = True
        if relu_out is not None:
            problem["relu_input"] = True
        a_bytes, b_bytes = grad_out.element_size(), weight.element_size()

        def candidates():
            out = gemm_candidates(m0, c_in_g, k, a_bytes, b_bytes, is_1x1)
            if tma:  # the TMA kernel's tiles are timed beside the pointer kernel's
                out += conv_tma.tma_candidates(
                    c_out, c_in, h, w, conv_configs.operand_smem_limit(), True
                )
            if halo:
                tiles = 1 + (add is not None) + (relu_out is not None or bn is not None)
                out += conv_halo.halo_candidates(
                    c_in, h, w, conv_configs.smem_optin(), tiles, bn is not None
                )
            if pointwise and conv_pointwise.ENABLED:
                sums_tiles = conv_pointwise.SUMS_CONFIGS if bn is not None else None
                out += list(sums_tiles or conv_pointwise.POINTWISE_CONFIGS)
            return out

        cfg = _tuned(
            "conv2d_dgrad",
            problem,
            candidates,
            heuristic,
            lambda: _scratch_runner(launch, runtime.empty_like(out)),
            reference=pointer_heuristic,
        )
    return out, launch(out, cfg)
