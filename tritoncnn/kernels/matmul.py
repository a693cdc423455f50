"""Matrix multiply on tensor cores with a fused epilogue: the engine of Linear.

C[M, N] = act(A[M, K] @ B[K, N] + bias[N])  (+ C if ACCUMULATE)

Layout: every operand is a 2-d view read through its element strides, so A, A^T, B and B^T
(for example ``weight.t()``) are used in place, without a transposing copy. One program computes
one BLOCK_M x BLOCK_N tile of C, walking K in BLOCK_K steps; programs are numbered in groups of
GROUP_M tile-rows so that neighbouring programs share tiles of B in L2.

Precision: both operands are cast to one dot dtype (fp16/bf16 when either operand is half
precision, else fp32), the dot accumulates in fp32 (``input_precision`` from
``runtime.dot_precision``: "ieee" keeps fp32 exact), bias and activation are applied to the fp32
accumulator, and the result is stored in the output's dtype. Master weights stay fp32 in memory
and are cast to the activation dtype as they are loaded.

Linear layer in these terms (x: N x in, W: out x in, both row-major):
  forward  y  = x @ W^T + b      A = x,      B = W.t()
  dgrad    dx = dy @ W           A = dy,     B = W
  wgrad    dW = dy^T @ x         A = dy.t(), B = x     (fp32 output, ACCUMULATE into p.grad)
  bias     db = column sums of dy (``column_sum_kernel``, deterministic, two-stage when tall)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from tritoncnn import runtime
from tritoncnn.kernels.elementwise import ACT_NONE, apply_activation
from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs


class MatmulConfig(NamedTuple):
    """One block-size configuration of ``matmul_kernel`` (every dot dim >= 16)."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int


# Every configuration the launch helpers can choose, largest tile first; the GPU tier forces
# each one. Index with ``config=i`` or pass a MatmulConfig.
CONFIGS: tuple[MatmulConfig, ...] = (
    MatmulConfig(128, 256, 64, 8, 8, 3),  # big fp16/bf16 GEMMs (4096^3): one warpgroup per 64 rows
    MatmulConfig(128, 128, 32, 8, 4, 4),  # large GEMMs with fp32 operands or fewer tiles
    MatmulConfig(64, 128, 32, 8, 4, 4),
    MatmulConfig(64, 64, 32, 8, 4, 4),  # most tiles: small GEMMs (classifier layers at batch 128)
    MatmulConfig(32, 16, 64, 8, 2, 3),  # skinny outputs: N <= 16 (logits) or M <= 16
)
_BIG, _SKINNY = 0, len(CONFIGS) - 1

# Column sums (bias gradient): tile shape and rows per program of the first stage.
SUM_BLOCK_R, SUM_BLOCK_C = 32, 64
SUM_ROWS_PER_PROGRAM = 1024

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def matmul_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, stride_bias,
    alpha,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, ACCUMULATE: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """C = act(A @ B + bias) (+ C): one BLOCK_M x BLOCK_N tile of C per program.

    a_ptr: A, M x K, any float dtype, element (m, k) at m * stride_am + k * stride_ak.
    b_ptr: B, K x N, any float dtype, element (k, n) at k * stride_bk + n * stride_bn.
    c_ptr: C, M x N, element (m, n) at m * stride_cm + n * stride_cn; stored in its own dtype.
    bias_ptr: fp32 vector of N (element n at n * stride_bias), read only when HAS_BIAS.
    M, N, K: problem sizes (any, masked). alpha: ELU alpha / LeakyReLU slope for ACT.
    HAS_BIAS: add bias[n] to every row. ACT: activation code of kernels/elementwise.py,
        applied to the fp32 accumulator after the bias.
    ACCUMULATE: C += result (C is read first; used to add weight gradients into p.grad)
        instead of C = result.
    DOT_DTYPE: the dtype both operands are cast to before the dot (fp32 weights -> activation
        dtype). DOT_PRECISION: tl.dot input_precision ("ieee"/"tf32"; only fp32 uses it).
    UPCAST_DOT: cast the DOT_DTYPE operands on to fp32 for the dot; set only in Triton's
        interpreter for bf16, whose dot multiplies raw bit patterns (triton #11584). The values
        are those of the bf16 dot (products of bf16 are exact in fp32), so results match.
    BLOCK_M, BLOCK_N, BLOCK_K: tile sizes (each >= 16 for tl.dot). GROUP_M: tile-rows per
        group in the program ordering.
    Offsets along M and N are int64 (large activations); K offsets are int32, which the launch
    helper checks (BLOCK_K * stride along K < 2**31).
    """
    wait_for_inputs()
    # Grouped ordering: consecutive program ids sweep GROUP_M tile-rows down one tile-column
    # before moving right, so a group reuses the same B tiles while they are hot in L2.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    programs_per_group = GROUP_M * tiles_n
    group = pid // programs_per_group
    first_m = group * GROUP_M
    rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)  # the last group may be short
    within = pid % programs_per_group
    pid_m = first_m + within % rows_in_group
    pid_n = within // rows_in_group

    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = offs_k < K - k0
        a = tl.load(a_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(DOT_DTYPE)
        b = tl.load(b_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0).to(DOT_DTYPE)
        if UPCAST_DOT:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    # Epilogue on the fp32 accumulator: bias, activation, then (optionally) the old C.
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n * stride_bias, mask=mask_n, other=0.0).to(tl.float32)
        acc += bias[None, :]
    acc = apply_activation(acc, ACT, alpha)
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    mask_c = mask_m[:, None] & mask_n[None, :]
    if ACCUMULATE:
        acc += tl.load(c_ptrs, mask=mask_c, other=0.0).to(tl.float32)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_c)


@triton.jit
def column_sum_kernel(
    x_ptr, out_ptr,
    R, C, rows_per_program,
    stride_xr, stride_xc, stride_op, stride_oc,
    ACCUMULATE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """out[p, c] (+)= sum of x[r, c] over the rows r of slab p: one column block per program.

    x_ptr: R x C, any float dtype, element (r, c) at r * stride_xr + c * stride_xc.
    out_ptr: fp32, P x C with P = cdiv(R, rows_per_program) slabs, element (p, c) at
        p * stride_op + c * stride_oc. Program (i, p) sums rows [p * rows_per_program,
        (p + 1) * rows_per_program) of columns [i * BLOCK_C, (i + 1) * BLOCK_C) in a fixed
        order, so results are bitwise reproducible (no atomics). With P > 1 the same kernel run
        again over the P x C partials is the second stage.
    rows_per_program: a multiple of BLOCK_R (the launch helper caps it at R rounded up, so a
        short input runs no empty iterations).
    ACCUMULATE: out += sum (adds the bias gradient into an existing p.grad) instead of out = sum.
    """
    wait_for_inputs()
    pid_c = tl.program_id(0)
    pid_p = tl.program_id(1)
    cols = pid_c.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = cols < C
    row_start = pid_p.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, R)
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for r0 in range(0, rows_per_program, BLOCK_R):
        rows = row_start + r0 + tl.arange(0, BLOCK_R)
        mask = (rows < row_end)[:, None] & mask_c[None, :]
        ptrs = x_ptr + rows[:, None] * stride_xr + cols[None, :] * stride_xc
        acc += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    total = tl.sum(acc, axis=0)
    out_ptrs = out_ptr + pid_p * stride_op + cols * stride_oc
    if ACCUMULATE:
        total += tl.load(out_ptrs, mask=mask_c, other=0.0)
    tl.store(out_ptrs, total, mask=mask_c)


# --- launch helpers --------------------------------------------------------------------------

# (config, operand and output dtypes, flags) -> num_stages that fit in shared memory.
_STAGES: dict[tuple, int] = {}


def _tiles(cfg: MatmulConfig, m: int, n: int) -> int:
    return triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)


def pick_config(m: int, n: int, k: int, dot_dtype: torch.dtype) -> MatmulConfig:
    """Shape heuristic: the largest tile that still gives every SM a program.

    Skinny problems (a logits layer, N = 10) take the 32 x 16 tile; the 128 x 256 tile is for
    half-precision operands only (fp32 "ieee" dots run on FMA units, where it spills registers).
    Otherwise the largest tile with at least one program per SM, else the one with most tiles.
    """
    if runtime.INTERPRETED:  # few, large tiles: see runtime.interpreter_block
        ib = runtime.interpreter_block
        return MatmulConfig(ib(m, 1024), ib(n, 256), ib(k, 256), 8, 4, 1)
    if min(m, n) <= 16:
        return CONFIGS[_SKINNY]
    first = _BIG if dot_dtype != torch.float32 else _BIG + 1
    for cfg in CONFIGS[first:_SKINNY]:
        if _tiles(cfg, m, n) >= runtime.sm_count():
            return cfg
    return CONFIGS[_SKINNY - 1]


def _resolve_config(config, m: int, n: int, k: int, dot_dtype: torch.dtype) -> MatmulConfig:
    if config is None:
        return pick_config(m, n, k, dot_dtype)
    if isinstance(config, int):
        return CONFIGS[config]
    if isinstance(config, MatmulConfig):
        return config
    raise TypeError(f"config must be None, an index into CONFIGS or a MatmulConfig, got {config!r}")


def _dot_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    """Half precision wins: fp32 weights meet fp16/bf16 activations in the activation dtype."""
    for t in (a, b):
        if t.dtype not in runtime.SUPPORTED_DTYPES:
            raise TypeError(f"matmul supports {runtime.SUPPORTED_DTYPES}, got {t.dtype}")
    halves = {t.dtype for t in (a, b) if t.dtype != torch.float32}
    if len(halves) > 1:
        raise TypeError(f"matmul: cannot mix {a.dtype} and {b.dtype} operands")
    return halves.pop() if halves else torch.float32


def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    act: int = ACT_NONE,
    alpha: float = 0.0,
    accumulate: bool = False,
    out_dtype: torch.dtype | None = None,
    config: int | MatmulConfig | None = None,
) -> torch.Tensor:
    """out = act(a @ b + bias), or out += act(a @ b + bias) with ``accumulate``.

    a: M x K and b: K x N with any strides (transposed views are read in place). Operands are
    cast to fp16/bf16 if either one is, else computed in fp32. bias: fp32 vector of N.
    out: M x N with any strides; allocated (``out_dtype``, default the dot dtype) when None,
    required with ``accumulate``. config: None for the shape heuristic, an index into CONFIGS or
    a MatmulConfig. Returns ``out``.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: shapes {tuple(a.shape)} @ {tuple(b.shape)} do not chain")
    m, k = a.shape
    n = b.shape[1]
    dot_dtype = _dot_dtype(a, b)
    if out is None:
        if accumulate:
            raise ValueError("matmul: accumulate=True needs an existing out")
        out = runtime.empty((m, n), out_dtype or dot_dtype)
    elif tuple(out.shape) != (m, n):
        raise ValueError(f"matmul: out has shape {tuple(out.shape)}, expected {(m, n)}")
    elif out_dtype is not None and out.dtype != out_dtype:
        raise ValueError(f"matmul: out has dtype {out.dtype}, expected {out_dtype}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != n):
        raise ValueError(f"matmul: bias must be a vector of {n}, got {tuple(bias.shape)}")
    if m == 0 or n == 0:
        return out
    cfg = _resolve_config(config, m, n, k, dot_dtype)
    if cfg.block_k * max(abs(a.stride(1)), abs(b.stride(0))) >= 2**31:
        raise ValueError("matmul: stride along K too large for int32 K offsets")
    upcast = runtime.bf16_dot_emulated(dot_dtype)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    key = (cfg, a.dtype, b.dtype, out.dtype, bias is not None, act, accumulate)
    stages = _STAGES.get(key, cfg.num_stages)
    while True:
        try:
            matmul_kernel[grid](
                a, b, out, bias if bias is not None else out,
                m, n, k,
                a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                out.stride(0), out.stride(1), bias.stride(0) if bias is not None else 0,
                float(alpha),
                HAS_BIAS=bias is not None, ACT=act, ACCUMULATE=accumulate,
                DOT_DTYPE=_TL_DTYPES[dot_dtype], DOT_PRECISION=runtime.dot_precision(dot_dtype),
                UPCAST_DOT=upcast,
                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                GROUP_M=cfg.group_m, num_warps=cfg.num_warps, num_stages=stages,
                launch_pdl=LAUNCH_PDL,
            )  # fmt: skip
            break
        except triton.runtime.errors.OutOfResources:
            # fp32 operands (fp32 weights under fp16 activations) double the shared memory of
            # a pipeline stage; drop stages until the tile fits rather than fail.
            if stages <= 1:
                raise
            stages -= 1
    _STAGES[key] = stages
    return out


def linear_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    act: int = ACT_NONE,
    alpha: float = 0.0,
    *,
    config: int | MatmulConfig | None = None,
) -> torch.Tensor:
    """y = act(x @ weight^T + bias): x N x in (any float dtype), weight out x in (fp32),
    bias fp32 (out,). Returns y, N x out, in x.dtype."""
    if weight.dim() != 2 or x.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"linear_forward: input {tuple(x.shape)} does not match weight {tuple(weight.shape)}"
        )
    return matmul(x, weight.t(), bias=bias, act=act, alpha=alpha, out_dtype=x.dtype, config=config)


def linear_dgrad(
    grad_out: torch.Tensor,
    weight: torch.Tensor,
    *,
    out_dtype: torch.dtype | None = None,
    config: int | MatmulConfig | None = None,
) -> torch.Tensor:
    """grad_in = grad_out @ weight: grad_out N x out, weight out x in (fp32). Returns N x in in
    ``out_dtype`` (default grad_out's dtype)."""
    if grad_out.dim() != 2 or grad_out.shape[1] != weight.shape[0]:
        raise ValueError(
            f"linear_dgrad: grad_out {tuple(grad_out.shape)} does not match weight "
            f"{tuple(weight.shape)}"
        )
    return matmul(grad_out, weight, out_dtype=out_dtype or grad_out.dtype, config=config)


def linear_wgrad(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    grad_weight: torch.Tensor | None = None,
    *,
    config: int | MatmulConfig | None = None,
) -> torch.Tensor:
    """grad_weight (+)= grad_out^T @ x, fp32 out x in: written fresh when ``grad_weight`` is
    None, else accumulated into it (the p.grad convention). x N x in, grad_out N x out."""
    if x.dim() != 2 or grad_out.dim() != 2 or x.shape[0] != grad_out.shape[0]:
        raise ValueError(
            f"linear_wgrad: input {tuple(x.shape)} and grad_out {tuple(grad_out.shape)} differ "
            "in batch"
        )
    if grad_weight is not None and grad_weight.dtype != torch.float32:
        raise ValueError(f"linear_wgrad: grad_weight must be fp32, got {grad_weight.dtype}")
    return matmul(
        grad_out.t(),
        x,
        grad_weight,
        accumulate=grad_weight is not None,
        out_dtype=torch.float32,
        config=config,
    )


def column_sum(
    x: torch.Tensor,
    out: torch.Tensor | None = None,
    *,
    rows_per_program: int = SUM_ROWS_PER_PROGRAM,
) -> torch.Tensor:
    """out (+)= x.sum(0) in fp32 for a 2-d x of any strides; deterministic.

    Tall inputs are summed in two stages: slabs of ``rows_per_program`` rows into fp32
    partials, then the partials in order. Written when ``out`` is None, else accumulated.
    """
    if x.dim() != 2:
        raise ValueError(f"column_sum: expected a 2-d tensor, got shape {tuple(x.shape)}")
    r, c = x.shape
    if out is not None and (tuple(out.shape) != (c,) or out.dtype != torch.float32):
        raise ValueError(f"column_sum: out must be fp32 of shape {(c,)}, got {out.dtype} "
                         f"{tuple(out.shape)}")  # fmt: skip
    accumulate = out is not None
    if out is None:
        out = runtime.empty((c,), torch.float32)
    rows_per_program = min(rows_per_program, max(r, 1))
    rows_per_program = triton.cdiv(rows_per_program, SUM_BLOCK_R) * SUM_BLOCK_R
    slabs = max(1, triton.cdiv(r, rows_per_program))
    col_blocks = triton.cdiv(c, SUM_BLOCK_C)
    if c == 0:
        return out
    if slabs == 1:
        column_sum_kernel[(col_blocks, 1)](
            x, out, r, c, rows_per_program, x.stride(0), x.stride(1), 0, out.stride(0),
            ACCUMULATE=accumulate, BLOCK_R=SUM_BLOCK_R, BLOCK_C=SUM_BLOCK_C,
            launch_pdl=LAUNCH_PDL,
        )  # fmt: skip
        return out
    partial = runtime.empty((slabs, c), torch.float32)
    column_sum_kernel[(col_blocks, slabs)](
        x, partial, r, c, rows_per_program, x.stride(0), x.stride(1), *partial.stride(),
        ACCUMULATE=False, BLOCK_R=SUM_BLOCK_R, BLOCK_C=SUM_BLOCK_C,
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    rows2 = triton.cdiv(slabs, SUM_BLOCK_R) * SUM_BLOCK_R
    column_sum_kernel[(col_blocks, 1)](
        partial, out, slabs, c, rows2, *partial.stride(), 0, out.stride(0),
        ACCUMULATE=accumulate, BLOCK_R=SUM_BLOCK_R, BLOCK_C=SUM_BLOCK_C,
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return out


def linear_bias_grad(
    grad_out: torch.Tensor,
    grad_bias: torch.Tensor | None = None,
    *,
    rows_per_program: int = SUM_ROWS_PER_PROGRAM,
) -> torch.Tensor:
    """grad_bias (+)= column sums of grad_out (N x out), fp32 (out,); written when
    ``grad_bias`` is None, else accumulated. Deterministic (no atomics)."""
    return column_sum(grad_out, grad_bias, rows_per_program=rows_per_program)
