"""Shared checks: compare with torch in float64 by relative Frobenius error."""

from __future__ import annotations

import torch

from tritoncnn import runtime

# ||out - ref|| / ||ref|| bounds by the dtype the kernel computed in (see design.md).
TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}

DEVICE = runtime.DEVICE


def f64(t: torch.Tensor) -> torch.Tensor:
    """A float64 CPU copy (for the reference computation)."""
    return t.detach().to("cpu", torch.float64)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = f64(out), f64(ref)
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), "output has NaN/inf (an element left unwritten?)"
    denom = ref.norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype=torch.float32, tol=None, what=""):
    """Fail unless out matches ref within the tolerance of ``dtype``."""
    tol = TOL[dtype] if tol is None else tol
    err = rel_err(out, ref)
    assert err < tol, f"{what}: relative error {err:.3e} >= {tol:.1e}"


def randn(*shape, dtype=torch.float32, channels_last=False, seed=None) -> torch.Tensor:
    """Random normal tensor on the kernel device (optionally NHWC memory)."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    t = torch.randn(*shape, generator=g, dtype=torch.float64)
    t = t.to(device=DEVICE, dtype=dtype)
    if channels_last and t.dim() == 4:  # 2-d tensors have no channels_last form
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def rounded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 ``t`` rounded to 16-bit ``dtype`` as our kernels round it: Tensor.to (nearest
    even), except that Triton's interpreter truncates fp32 -> bf16 (it ignores
    fp_downcast_rounding), so on the CPU tier bf16 keeps the high 16 bits."""
    if runtime.INTERPRETED and dtype == torch.bfloat16:
        bits = t.float().contiguous().view(torch.int32) & -65536  # 0xFFFF0000
        return bits.view(torch.float32).reshape(t.shape).to(dtype)
    return t.to(dtype)
