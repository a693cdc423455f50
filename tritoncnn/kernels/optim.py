"""Optimizer kernels: multi-tensor SGD and Adam/AdamW steps, gradient zeroing, LR-schedule step,
and the cast of the layers' 16-bit weight copies (the same multi-tensor tables).

One launch updates every parameter of an optimizer ("multi-tensor" launch). The host builds two
small device tables once (rebuilt only when a parameter or gradient is re-allocated):

- the tensor table, int64 ``[T, TABLE_COLS]``, one row per parameter that has a gradient:
  ``DATA`` (address of ``p.data``), ``GRAD`` (address of ``p.grad``), ``STATE`` (element offset of
  this parameter in each flat state arena), ``NUMEL``, ``GROUP`` (its parameter group),
  ``SLOT`` (its index in the optimizer's per-parameter counters), ``NCHUNKS``;
- the chunk table, int32 ``[C, 2]``: (tensor-table row, chunk index within that tensor).

Program ``pid`` updates ``BLOCK * ITERS`` consecutive elements of one tensor: elementwise over
the dense memory of ``p.data`` / ``p.grad`` (which share strides) and the matching slice of the
flat fp32 state arenas (momentum buffer, exp_avg, ...), so any dense layout (NCHW or NHWC)
works. We chose address tables over re-pointing parameters into one flat arena so that layers
keep owning their ``.data`` / ``.grad`` tensors; the optimizer state is flat.

Hyper-parameters are read from the device, never baked into the launch, so a CUDA graph replays
the step while a schedule changes them: ``hyper`` is fp64 ``[G, N_HYPER]``, one row per
parameter group (columns ``H_LR``, ``H_WD``, ``H_MOMENTUM`` (SGD momentum / Adam beta1),
``H_DAMPENING`` (SGD) or ``H_BETA2`` (Adam), ``H_EPS``). fp64 keeps ``1 - beta**step`` exact
(the bias corrections) where fp32 would lose 1e-5 to cancellation.

Step counters live on the device, one per parameter (torch's ``state["step"]``). Every program of
a tensor reads the old count; the last one to finish (an atomic ticket per tensor) writes
``count + 1`` and re-arms the ticket, so the increment needs no second launch. With
``found_inf`` set (a dynamic-loss-scaling overflow) every load and store is masked off:
parameters, state and counters stay untouched, as when GradScaler skips ``optimizer.step()``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritoncnn import runtime
from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs

# Tensor-table columns (int64). COPY: a 16-bit copy of DATA (cast_tensors' tables).
DATA, GRAD, STATE, NUMEL, GROUP, SLOT, NCHUNKS, COPY = 0, 1, 2, 3, 4, 5, 6, 7
TABLE_COLS = 8  # padded to 8 words per row
_TCOLS = tl.constexpr(TABLE_COLS)

# Hyper-parameter table columns (fp64).
H_LR, H_WD, H_MOMENTUM, H_DAMPENING, H_EPS = 0, 1, 2, 3, 4
H_BETA1, H_BETA2 = H_MOMENTUM, H_DAMPENING
N_HYPER = 8
_NHYPER = tl.constexpr(N_HYPER)

# (BLOCK, ITERS) a launch can use: a program handles BLOCK * ITERS elements of one tensor.
# The first is the GPU's default, the second the interpreter's (same chunks, one loop step: the
# interpreter pays per step, and most parameters of a small net fill a fraction of one chunk);
# tests run each (the last, small one exercises many chunks per tensor).
CONFIGS = ((1024, 4), (4096, 1), (64, 2))
BLOCK, ITERS = CONFIGS[1] if runtime.INTERPRETED else CONFIGS[0]

_FLT_MAX = tl.constexpr(3.4028234663852886e38)


# --- shared pieces ---------------------------------------------------------------------------


@triton.jit
def _chunk(tensors_ptr, chunks_ptr):
    """Where this program works: (tensor-table row pointer, chunk index, numel of the tensor)."""
    pid = tl.program_id(0)
    row = tl.load(chunks_ptr + 2 * pid).to(tl.int64)
    chunk = tl.load(chunks_ptr + 2 * pid + 1).to(tl.int64)
    row_ptr = tensors_ptr + row * _TCOLS
    numel = tl.load(row_ptr + 3)
    return row_ptr, chunk, numel


@triton.jit
def as_mask(cond):
    """A comparison result usable in ``&`` / ``|`` masks. Triton's interpreter stores float
    comparisons as float data, which numpy then refuses to AND with integer masks; the round
    trip through int32 is free on the GPU."""
    return cond.to(tl.int32) != 0


@triton.jit
def _no_overflow(found_inf_ptr, HAS_FOUND_INF: tl.constexpr):
    """True unless the loss scaler flagged inf/NaN gradients for this step."""
    if HAS_FOUND_INF:
        ok = as_mask(tl.load(found_inf_ptr) == 0.0)
    else:
        ok = tl.program_id(0) >= 0  # a scalar True
    return ok


@triton.jit
def _pow(base, n):
    """base ** n for a scalar fp64 base and int n >= 0, by squaring (exact to a few ulps)."""
    result = base * 0.0 + 1.0
    b = base
    e = n
    while e > 0:
        result = tl.where(e % 2 == 1, result * b, result)
        b = b * b
        e = e // 2
    return result


@triton.jit
def _finish_tensor(step_ptr, done_ptr, slot, n_chunks, new_step, ok):
    """Ticket: the last program of a tensor to finish stores its new step count.

    Every program loaded the old count before its (acq_rel) atomic, so the program that sees
    ``n_chunks - 1`` earlier tickets knows all others have read it; it also re-arms the ticket.
    """
    old = tl.atomic_add(done_ptr + slot, 1, mask=ok)
    last = ok & (old == n_chunks - 1)
    tl.store(step_ptr + slot, new_step, mask=last)
    tl.store(done_ptr + slot, 0, mask=last)


# --- kernels ---------------------------------------------------------------------------------


@triton.jit
def sgd_step_kernel(
    tensors_ptr,
    chunks_ptr,
    hyper_ptr,
    buf_ptr,
    step_ptr,
    done_ptr,
    found_inf_ptr,
    USE_MOMENTUM: tl.constexpr,
    NESTEROV: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    BLOCK: tl.constexpr,
    ITERS: tl.constexpr,
):
    """torch.optim.SGD on one chunk of one parameter (fp32 math, in place).

    d = (-)g + wd * p; with momentum m != 0: buf = d on a tensor's first step, else
    buf = m * buf + (1 - dampening) * d; d = d + m * buf (nesterov) or buf; then p -= lr * d.

    tensors_ptr: int64 tensor table [T, TABLE_COLS] (see module docstring).
    chunks_ptr: int32 chunk table [C, 2]; program pid handles chunk pid.
    hyper_ptr: fp64 [G, N_HYPER]: lr, weight_decay, momentum, dampening per group.
    buf_ptr: fp32 momentum-buffer arena (element STATE + i belongs to element i of the tensor).
    step_ptr, done_ptr: int32 per-parameter step counts and tickets (indexed by SLOT).
    found_inf_ptr: fp32 [1] overflow flag (read only when HAS_FOUND_INF).
    USE_MOMENTUM: some group has momentum != 0 (else no buffer is touched).
    NESTEROV, MAXIMIZE: torch's flags (uniform across groups).
    BLOCK, ITERS: the chunk is ITERS blocks of BLOCK elements.
    """
    wait_for_inputs()
    row_ptr, chunk, numel = _chunk(tensors_ptr, chunks_ptr)
    p_ptr = tl.load(row_ptr + 0).to(tl.pointer_type(tl.float32))
    g_ptr = tl.load(row_ptr + 1).to(tl.pointer_type(tl.float32))
    state = tl.load(row_ptr + 2)
    group = tl.load(row_ptr + 4)
    slot = tl.load(row_ptr + 5)
    n_chunks = tl.load(row_ptr + 6)
    ok = _no_overflow(found_inf_ptr, HAS_FOUND_INF)

    h = hyper_ptr + group * _NHYPER
    lr = tl.load(h + 0).to(tl.float32)
    wd = tl.load(h + 1).to(tl.float32)
    mom = tl.load(h + 2).to(tl.float32)
    has_mom = as_mask(mom != 0.0)  # torch keeps no buffer for a group without momentum
    keep = (1.0 - tl.load(h + 3)).to(tl.float32)  # 1 - dampening, rounded once
    step = tl.load(step_ptr + slot)
    first = step == 0  # torch: the momentum buffer starts as a copy of d
    seen = step != 0

    for it in tl.static_range(ITERS):
        offs = (chunk * ITERS + it) * BLOCK + tl.arange(0, BLOCK)
        mask = (offs < numel) & ok
        p = tl.load(p_ptr + offs, mask=mask, other=0.0)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        if MAXIMIZE:
            g = -g
        d = g + wd * p
        if USE_MOMENTUM:
            buf = tl.load(buf_ptr + state + offs, mask=mask & seen, other=0.0)
            buf = tl.where(first, d, mom * buf + keep * d)
            tl.store(buf_ptr + state + offs, buf, mask=mask & has_mom)
            if NESTEROV:
                d_m = d + mom * buf
            else:
                d_m = buf
            d = tl.where(has_mom, d_m, d)
        tl.store(p_ptr + offs, p - lr * d, mask=mask)

    _finish_tensor(step_ptr, done_ptr, slot, n_chunks, step + 1, ok)


@triton.jit
def adam_step_kernel(
    tensors_ptr,
    chunks_ptr,
    hyper_ptr,
    exp_avg_ptr,
    exp_avg_sq_ptr,
    max_exp_avg_sq_ptr,
    step_ptr,
    done_ptr,
    found_inf_ptr,
    DECOUPLED: tl.constexpr,
    AMSGRAD: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    BLOCK: tl.constexpr,
    ITERS: tl.constexpr,
):
    """torch.optim.Adam (DECOUPLED=False) / AdamW (DECOUPLED=True) on one chunk (fp32, in place).

    t = step + 1; g = (-)grad; Adam: g += wd * p; AdamW: p *= 1 - lr * wd;
    m += (1 - b1) (g - m); v = b2 v + (1 - b2) g^2; (amsgrad: vmax = max(vmax, v), use vmax);
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).

    tensors_ptr, chunks_ptr: the multi-tensor tables (module docstring).
    hyper_ptr: fp64 [G, N_HYPER]: lr, weight_decay, beta1, beta2, eps per group.
    exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr: fp32 state arenas (the last only if AMSGRAD).
    step_ptr, done_ptr: int32 per-parameter step counts and tickets (indexed by SLOT).
    found_inf_ptr: fp32 [1] overflow flag (read only when HAS_FOUND_INF).
    BLOCK, ITERS: the chunk is ITERS blocks of BLOCK elements.
    """
    wait_for_inputs()
    row_ptr, chunk, numel = _chunk(tensors_ptr, chunks_ptr)
    p_ptr = tl.load(row_ptr + 0).to(tl.pointer_type(tl.float32))
    g_ptr = tl.load(row_ptr + 1).to(tl.pointer_type(tl.float32))
    state = tl.load(row_ptr + 2)
    group = tl.load(row_ptr + 4)
    slot = tl.load(row_ptr + 5)
    n_chunks = tl.load(row_ptr + 6)
    ok = _no_overflow(found_inf_ptr, HAS_FOUND_INF)

    h = hyper_ptr + group * _NHYPER
    lr64 = tl.load(h + 0)
    wd64 = tl.load(h + 1)
    b1 = tl.load(h + 2)
    b2 = tl.load(h + 3)
    eps = tl.load(h + 4).to(tl.float32)
    new_step = tl.load(step_ptr + slot) + 1
    # Scalars in fp64, each rounded to fp32 once (as torch passes Python floats to fp32 kernels).
    step_size = (lr64 / (1.0 - _pow(b1, new_step))).to(tl.float32)
    # IEEE-rounded sqrt/div: tl.sqrt and "/" lower to approximate instructions on the GPU
    # (~1e-5 relative off on some elements), which torch's Adam does not have.
    bc2_sqrt = tl.sqrt_rn((1.0 - _pow(b2, new_step)).to(tl.float32))
    wd = wd64.to(tl.float32)
    decay = (1.0 - lr64 * wd64).to(tl.float32)
    b1c = (1.0 - b1).to(tl.float32)
    b2f = b2.to(tl.float32)
    b2c = (1.0 - b2).to(tl.float32)

    for it in tl.static_range(ITERS):
        offs = (chunk * ITERS + it) * BLOCK + tl.arange(0, BLOCK)
        mask = (offs < numel) & ok
        p = tl.load(p_ptr + offs, mask=mask, other=0.0)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        m = tl.load(exp_avg_ptr + state + offs, mask=mask, other=0.0)
        v = tl.load(exp_avg_sq_ptr + state + offs, mask=mask, other=0.0)
        if MAXIMIZE:
            g = -g
        if DECOUPLED:
            p = p * decay
        else:
            g = g + wd * p
        m = m + b1c * (g - m)
        v = b2f * v + b2c * g * g
        tl.store(exp_avg_ptr + state + offs, m, mask=mask)
        tl.store(exp_avg_sq_ptr + state + offs, v, mask=mask)
        if AMSGRAD:
            vmax = tl.load(max_exp_avg_sq_ptr + state + offs, mask=mask, other=0.0)
            vmax = tl.maximum(vmax, v)
            tl.store(max_exp_avg_sq_ptr + state + offs, vmax, mask=mask)
            v = vmax
        denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
        tl.store(p_ptr + offs, p - step_size * tl.div_rn(m, denom), mask=mask)

    _finish_tensor(step_ptr, done_ptr, slot, n_chunks, new_step, ok)


@triton.jit
def unscale_grads_kernel(
    tensors_ptr, chunks_ptr, scale_ptr, found_inf_ptr, BLOCK: tl.constexpr, ITERS: tl.constexpr
):
    """Dynamic loss scaling: g *= 1/scale in place over one chunk; flag inf/NaN.

    Like torch's _amp_foreach_non_finite_check_and_unscale_: every element is multiplied (even
    non-finite ones) and found_inf is set to 1.0 if any element was inf or NaN (several programs
    may store the same 1.0; nothing ever stores 0 here).

    tensors_ptr, chunks_ptr: the multi-tensor tables (the GRAD column is used).
    scale_ptr: fp32 [1] current loss scale; found_inf_ptr: fp32 [1] overflow flag.
    """
    wait_for_inputs()
    row_ptr, chunk, numel = _chunk(tensors_ptr, chunks_ptr)
    g_ptr = tl.load(row_ptr + 1).to(tl.pointer_type(tl.float32))
    # torch: scale.double().reciprocal().float()
    inv_scale = (1.0 / tl.load(scale_ptr).to(tl.float64)).to(tl.float32)
    n_bad = 0
    for it in tl.static_range(ITERS):
        offs = (chunk * ITERS + it) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        bad = as_mask(tl.abs(g) > _FLT_MAX) | as_mask(g != g)  # inf or NaN
        n_bad += tl.sum((mask & bad).to(tl.int32), axis=0)
        tl.store(g_ptr + offs, g * inv_scale, mask=mask)
    tl.store(found_inf_ptr, 1.0, mask=n_bad > 0)


@triton.jit
def fill_tensors_kernel(
    tensors_ptr, chunks_ptr, value, COL: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr
):
    """Set every element of the tensors in column COL (GRAD: zero_grad) to ``value``.

    tensors_ptr, chunks_ptr: the multi-tensor tables; value: fp32 scalar.
    """
    wait_for_inputs()
    row_ptr, chunk, numel = _chunk(tensors_ptr, chunks_ptr)
    t_ptr = tl.load(row_ptr + COL).to(tl.pointer_type(tl.float32))
    for it in tl.static_range(ITERS):
        offs = (chunk * ITERS + it) * BLOCK + tl.arange(0, BLOCK)
        v = tl.zeros((BLOCK,), dtype=tl.float32) + value
        tl.store(t_ptr + offs, v, mask=offs < numel)


@triton.jit
def cast_tensors_kernel(
    tensors_ptr, chunks_ptr, BF16: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr
):
    """Round the fp32 tensors of column DATA into their 16-bit copies (column COPY: fp16, or
    bf16 when BF16) over one chunk: the layers' 16-bit weight copies, refreshed in one launch
    (nn.weight_casts). A copy has its tensor's dense memory layout, so the cast is
    elementwise over memory order.

    tensors_ptr, chunks_ptr: the multi-tensor tables (columns DATA, NUMEL, COPY).
    """
    wait_for_inputs()
    row_ptr, chunk, numel = _chunk(tensors_ptr, chunks_ptr)
    src_ptr = tl.load(row_ptr + DATA).to(tl.pointer_type(tl.float32))
    if BF16:
        dst_ptr = tl.load(row_ptr + COPY).to(tl.pointer_type(tl.bfloat16))
    else:
        dst_ptr = tl.load(row_ptr + COPY).to(tl.pointer_type(tl.float16))
    for it in tl.static_range(ITERS):
        offs = (chunk * ITERS + it) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        v = tl.load(src_ptr + offs, mask=mask, other=0.0)
        tl.store(dst_ptr + offs, v.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def lr_schedule_kernel(
    table_ptr,
    n_rows,
    counter_ptr,
    hyper_ptr,
    n_groups,
    ADVANCE: tl.constexpr,
    N_VALUES: tl.constexpr,
    COL1: tl.constexpr,
    GEOMETRIC: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    """One schedule step on the device (a single program): counter += 1 (if ADVANCE), then
    write the hyper-parameters of step ``counter`` into every group's row of ``hyper``.

    table_ptr: fp64 [n_rows, n_groups, N_VALUES]; value 0 goes to column H_LR, value 1 (when
      N_VALUES == 2, e.g. one-cycle's momentum) to column COL1. Steps past the table repeat
      its last row. GEOMETRIC (StepLR): row 0 holds the base lrs, row 1 gamma, and
      lr = base * gamma ** (counter // n_rows): ``n_rows`` is then the step_size.
    counter_ptr: int32 [1] schedule step count (torch's last_epoch).
    hyper_ptr: fp64 [n_groups, N_HYPER] optimizer hyper-parameters.
    BLOCK_G: power of two >= n_groups.
    """
    wait_for_inputs()
    count = tl.load(counter_ptr)
    if ADVANCE:
        count += 1
        tl.store(counter_ptr, count)
    g = tl.arange(0, BLOCK_G)
    gm = g < n_groups
    if GEOMETRIC:
        base = tl.load(table_ptr + g * N_VALUES, mask=gm, other=0.0)
        gamma = tl.load(table_ptr + (n_groups + g) * N_VALUES, mask=gm, other=1.0)
        k = count // n_rows
        # elementwise pow by squaring (k is a scalar, gamma a vector)
        result = gamma * 0.0 + 1.0
        b = gamma
        e = k
        while e > 0:
            result = tl.where(e % 2 == 1, result * b, result)
            b = b * b
            e = e // 2
        tl.store(hyper_ptr + g * _NHYPER, base * result, mask=gm)
    else:
        row = tl.minimum(count, n_rows - 1).to(tl.int64)
        src = table_ptr + (row * n_groups + g) * N_VALUES
        tl.store(hyper_ptr + g * _NHYPER, tl.load(src, mask=gm, other=0.0), mask=gm)
        if N_VALUES == 2:
            tl.store(hyper_ptr + g * _NHYPER + COL1, tl.load(src + 1, mask=gm, other=0.0), mask=gm)


# --- launch helpers --------------------------------------------------------------------------


def _grid(chunks: torch.Tensor):
    return (chunks.shape[0],)


def sgd_step(
    tensors: torch.Tensor,
    chunks: torch.Tensor,
    hyper: torch.Tensor,
    momentum_buffer: torch.Tensor,
    step: torch.Tensor,
    done: torch.Tensor,
    found_inf: torch.Tensor | None = None,
    *,
    use_momentum: bool,
    nesterov: bool = False,
    maximize: bool = False,
    block: int = BLOCK,
    iters: int = ITERS,
) -> None:
    """One fused SGD step over every tensor in the table (see ``sgd_step_kernel``)."""
    if chunks.shape[0] == 0:
        return
    sgd_step_kernel[_grid(chunks)](
        tensors,
        chunks,
        hyper,
        momentum_buffer,
        step,
        done,
        found_inf if found_inf is not None else step,
        USE_MOMENTUM=use_momentum,
        NESTEROV=nesterov,
        MAXIMIZE=maximize,
        HAS_FOUND_INF=found_inf is not None,
        BLOCK=block,
        ITERS=iters,
        launch_pdl=LAUNCH_PDL,
    )


def adam_step(
    tensors: torch.Tensor,
    chunks: torch.Tensor,
    hyper: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    step: torch.Tensor,
    done: torch.Tensor,
    found_inf: torch.Tensor | None = None,
    *,
    decoupled: bool,
    maximize: bool = False,
    block: int = BLOCK,
    iters: int = ITERS,
) -> None:
    """One fused Adam (decoupled=False) or AdamW (decoupled=True) step (``adam_step_kernel``)."""
    if chunks.shape[0] == 0:
        return
    amsgrad = max_exp_avg_sq is not None
    adam_step_kernel[_grid(chunks)](
        tensors,
        chunks,
        hyper,
        exp_avg,
        exp_avg_sq,
        max_exp_avg_sq if amsgrad else exp_avg_sq,
        step,
        done,
        found_inf if found_inf is not None else step,
        DECOUPLED=decoupled,
        AMSGRAD=amsgrad,
        MAXIMIZE=maximize,
        HAS_FOUND_INF=found_inf is not None,
        BLOCK=block,
        ITERS=iters,
        launch_pdl=LAUNCH_PDL,
    )


def unscale_grads(
    tensors: torch.Tensor,
    chunks: torch.Tensor,
    scale: torch.Tensor,
    found_inf: torch.Tensor,
    *,
    block: int = BLOCK,
    iters: int = ITERS,
) -> None:
    """grads *= 1/scale in place for every tensor in the table; found_inf = 1 on inf/NaN."""
    if chunks.shape[0] == 0:
        return
    unscale_grads_kernel[_grid(chunks)](
        tensors, chunks, scale, found_inf, BLOCK=block, ITERS=iters, launch_pdl=LAUNCH_PDL
    )


def fill_grads(
    tensors: torch.Tensor,
    chunks: torch.Tensor,
    value: float = 0.0,
    *,
    block: int = BLOCK,
    iters: int = ITERS,
) -> None:
    """Every gradient in the table set to ``value`` in one launch (zero_grad keeping tensors)."""
    if chunks.shape[0] == 0:
        return
    fill_tensors_kernel[_grid(chunks)](
        tensors, chunks, value, COL=GRAD, BLOCK=block, ITERS=iters, launch_pdl=LAUNCH_PDL
    )


def cast_tensors(
    tensors: torch.Tensor,
    chunks: torch.Tensor,
    dtype: torch.dtype,
    *,
    block: int = BLOCK,
    iters: int = ITERS,
) -> None:
    """Every DATA tensor of the tables rounded into its COPY (fp16 or bf16 ``dtype``), in one
    launch."""
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"cast_tensors: copies are fp16 or bf16, not {dtype}")
    if chunks.shape[0] == 0:
        return
    cast_tensors_kernel[_grid(chunks)](
        tensors, chunks, BF16=dtype == torch.bfloat16, BLOCK=block, ITERS=iters,
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip


def lr_schedule_step(
    table: torch.Tensor,
    counter: torch.Tensor,
    hyper: torch.Tensor,
    *,
    advance: bool = True,
    col1: int = H_MOMENTUM,
    geometric_period: int = 0,
) -> None:
    """Advance a schedule's device counter (if ``advance``) and write its values into ``hyper``.

    ``table`` is fp64 [rows, groups, values] (values 1: lr; 2: lr and column ``col1``).
    ``geometric_period > 0`` selects StepLR's closed form (see ``lr_schedule_kernel``).
    """
    n_rows, n_groups, n_values = table.shape
    if n_groups != hyper.shape[0]:
        raise ValueError(f"schedule has {n_groups} groups, optimizer {hyper.shape[0]}")
    geometric = geometric_period > 0
    lr_schedule_kernel[(1,)](
        table,
        geometric_period if geometric else n_rows,
        counter,
        hyper,
        n_groups,
        ADVANCE=advance,
        N_VALUES=n_values,
        COL1=col1,
        GEOMETRIC=geometric,
        BLOCK_G=max(2, triton.next_power_of_2(n_groups)),
        launch_pdl=LAUNCH_PDL,
    )


def device_tensor(values, dtype: torch.dtype) -> torch.Tensor:
    """A host list/array copied to a new device tensor without a host sync on CUDA
    (pinned staging + non_blocking copy; the caching host allocator keeps the staging buffer
    alive until the copy ran)."""
    host = torch.as_tensor(values, dtype=dtype)
    if runtime.INTERPRETED:
        return host.clone()
    return host.pin_memory().to(runtime.DEVICE, non_blocking=True)


def copy_to_device_(dst: torch.Tensor, values) -> torch.Tensor:
    """dst[...] = host values (a copy engine transfer, no compute kernel, no host sync)."""
    host = torch.as_tensor(values, dtype=dst.dtype).reshape(dst.shape)
    if runtime.INTERPRETED:
        return dst.copy_(host)
    return dst.copy_(host.pin_memory(), non_blocking=True)
