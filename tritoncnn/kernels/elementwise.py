"""Elementwise kernels: activations (forward and backward), residual add, fill.

Layout: every tensor here is treated as a flat, dense buffer of ``numel`` elements; the
caller passes tensors that share one dense memory layout (outputs come from
``runtime.empty_like`` of the input, which preserves channels_last strides). One program
handles ``BLOCK`` consecutive elements; math is done in fp32 and stored in the output dtype.

Activation codes (``ACT``) are shared with the fused epilogues of conv/linear kernels through
``apply_activation`` / ``activation_grad``, so ``ACT`` means the same thing everywhere.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritoncnn import runtime
from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs

# Activation codes: the ``ACT`` constexpr of every kernel that can fuse one.
ACT_NONE, ACT_RELU, ACT_RELU6, ACT_ELU, ACT_LEAKY_RELU, ACT_SILU = 0, 1, 2, 3, 4, 5
ACTIVATIONS = {
    "none": ACT_NONE,
    "identity": ACT_NONE,
    "relu": ACT_RELU,
    "relu6": ACT_RELU6,
    "elu": ACT_ELU,
    "leaky_relu": ACT_LEAKY_RELU,
    "silu": ACT_SILU,
}

# elements per program; the interpreter pays per program, so it takes far larger blocks
BLOCK = 1 << 16 if runtime.INTERPRETED else 1024


@triton.jit
def apply_activation(x, ACT: tl.constexpr, alpha):
    """y = act(x) on an fp32 block. ``alpha`` is ELU's alpha or LeakyReLU's negative slope."""
    if ACT == 1:  # relu
        x = tl.maximum(x, 0.0)
    elif ACT == 2:  # relu6
        x = tl.minimum(tl.maximum(x, 0.0), 6.0)
    elif ACT == 3:  # elu
        x = tl.where(x > 0.0, x, alpha * (tl.exp(tl.minimum(x, 0.0)) - 1.0))
    elif ACT == 4:  # leaky relu
        x = tl.where(x > 0.0, x, alpha * x)
    elif ACT == 5:  # silu
        x = x * tl.sigmoid(x)
    return x


@triton.jit
def activation_grad(g, x, ACT: tl.constexpr, alpha):
    """dL/dx = g * act'(x) on fp32 blocks, with ``x`` the activation's *input*.

    Derivatives at the kinks follow torch: relu'(0) = 0, relu6'(0) = relu6'(6) = 0,
    elu'(0) = alpha (torch uses the negative branch at 0), leaky'(0) = slope.
    """
    if ACT == 1:
        g = tl.where(x > 0.0, g, 0.0)
    elif ACT == 2:
        g = tl.where((x > 0.0) & (x < 6.0), g, 0.0)
    elif ACT == 3:
        g = tl.where(x > 0.0, g, g * alpha * tl.exp(tl.minimum(x, 0.0)))
    elif ACT == 4:
        g = tl.where(x > 0.0, g, g * alpha)
    elif ACT == 5:
        s = tl.sigmoid(x)
        g = g * s * (1.0 + x * (1.0 - s))
    return g


@triton.jit
def activation_fwd_kernel(x_ptr, y_ptr, numel, alpha, ACT: tl.constexpr, BLOCK: tl.constexpr):
    """y[i] = act(x[i]) for i in this program's BLOCK.

    x_ptr, y_ptr: dense buffers of ``numel`` elements (same layout, any float dtype).
    alpha: ELU alpha / LeakyReLU slope (ignored by other activations).
    """
    wait_for_inputs()
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = apply_activation(x, ACT, alpha)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def activation_bwd_kernel(
    g_ptr, x_ptr, dx_ptr, numel, alpha, ACT: tl.constexpr, BLOCK: tl.constexpr
):
    """dx[i] = g[i] * act'(x[i]) for this program's BLOCK (x is the forward input)."""
    wait_for_inputs()
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dx = activation_grad(g, x, ACT, alpha)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def add_kernel(a_ptr, b_ptr, out_ptr, numel, ACT: tl.constexpr, BLOCK: tl.constexpr):
    """out[i] = act(a[i] + b[i]): the residual join, optionally with its activation fused."""
    wait_for_inputs()
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = apply_activation(a + b, ACT, 0.0)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def accumulate_kernel(acc_ptr, x_ptr, numel, BLOCK: tl.constexpr):
    """acc[i] += x[i]: sums the gradients of two paths that met at a fork (skip connections)."""
    wait_for_inputs()
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    a = tl.load(acc_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(acc_ptr + offs, (a + x).to(acc_ptr.dtype.element_ty), mask=mask)


@triton.jit
def fill_kernel(out_ptr, numel, value, BLOCK: tl.constexpr):
    """out[i] = value: our zero-fill, so no torch kernel runs in the training step."""
    wait_for_inputs()
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    v = tl.zeros((BLOCK,), dtype=tl.float32) + value
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def cast_kernel(x_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    """out[i] = x[i] rounded to out's dtype (round to nearest even, as ``Tensor.to``)."""
    wait_for_inputs()
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, x.to(out_ptr.dtype.element_ty), mask=mask)


# --- launch helpers --------------------------------------------------------------------------


def _grid(numel: int):
    return (triton.cdiv(numel, BLOCK),)


def _check_dense(*ts: torch.Tensor) -> None:
    for t in ts:
        if not (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)):
            raise ValueError("elementwise kernels need dense (contiguous or channels_last) tensors")
    if len({t.stride() for t in ts}) > 1:
        strides = [t.stride() for t in ts]
        raise ValueError(f"elementwise operands must share a layout, got strides {strides}")


def activation_forward(x: torch.Tensor, act: int, alpha: float = 0.0) -> torch.Tensor:
    """act(x) into a new tensor with x's shape, dtype and layout."""
    _check_dense(x)
    y = runtime.empty_like(x)
    activation_fwd_kernel[_grid(x.numel())](
        x, y, x.numel(), alpha, ACT=act, BLOCK=BLOCK, launch_pdl=LAUNCH_PDL
    )
    return y


def activation_backward(
    grad_out: torch.Tensor, x: torch.Tensor, act: int, alpha: float = 0.0
) -> torch.Tensor:
    """Gradient of act at input ``x``, times ``grad_out``."""
    _check_dense(grad_out, x)
    dx = runtime.empty_like(x)
    activation_bwd_kernel[_grid(x.numel())](
        grad_out, x, dx, x.numel(), alpha, ACT=act, BLOCK=BLOCK, launch_pdl=LAUNCH_PDL
    )
    return dx


def add(a: torch.Tensor, b: torch.Tensor, act: int = ACT_NONE) -> torch.Tensor:
    """act(a + b) for same-shape, same-layout tensors."""
    if a.shape != b.shape:
        raise ValueError(f"add: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    _check_dense(a, b)
    out = runtime.empty_like(a)
    add_kernel[_grid(a.numel())](a, b, out, a.numel(), ACT=act, BLOCK=BLOCK, launch_pdl=LAUNCH_PDL)
    return out


def accumulate_(acc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """acc += x in place (same shape and layout)."""
    _check_dense(acc, x)
    accumulate_kernel[_grid(acc.numel())](acc, x, acc.numel(), BLOCK=BLOCK, launch_pdl=LAUNCH_PDL)
    return acc


def fill_(out: torch.Tensor, value: float) -> torch.Tensor:
    """Set every element of a dense tensor to ``value``."""
    _check_dense(out)
    fill_kernel[_grid(out.numel())](out, out.numel(), value, BLOCK=BLOCK, launch_pdl=LAUNCH_PDL)
    return out


def cast_(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """out = x in out's dtype, in place (same shape and layout)."""
    if out.shape != x.shape:
        raise ValueError(f"cast_: shapes differ {tuple(out.shape)} vs {tuple(x.shape)}")
    _check_dense(out, x)
    cast_kernel[_grid(x.numel())](x, out, x.numel(), BLOCK=BLOCK, launch_pdl=LAUNCH_PDL)
    return out
