"""Dynamic loss scaling kernels: scale a gradient by the device loss scale, update the scale.

All scaler state is on the device, so a training step never reads it back to the host:
``scale`` fp32 [1], ``growth_tracker`` int32 [1] (clean steps since the last change),
``found_inf`` fp32 [1] (set by ``kernels.optim.unscale_grads``, read by the optimizer step,
cleared here), ``skipped`` int32 [1] (steps skipped so far) and ``factors`` fp64 [2]
(growth_factor, backoff_factor: fp64 like the doubles torch's kernel takes).

Unscaling the gradients is a multi-tensor launch and lives with the optimizer kernels
(``kernels.optim.unscale_grads``), since it walks the optimizer's tensor table.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritoncnn import runtime
from tritoncnn.kernels.optim import as_mask
from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs

BLOCK = 1024


@triton.jit
def update_scale_kernel(
    scale_ptr, growth_tracker_ptr, found_inf_ptr, skipped_ptr, factors_ptr, growth_interval
):
    """torch's _amp_update_scale_ (one program, scalars), plus skip counting and flag reset.

    found_inf: scale *= backoff_factor, tracker = 0, skipped += 1.
    clean step: tracker += 1; when it reaches growth_interval, scale *= growth_factor (kept
    only if finite) and tracker = 0. Finally found_inf = 0 for the next step.

    scale_ptr: fp32 [1]; growth_tracker_ptr, skipped_ptr: int32 [1]; found_inf_ptr: fp32 [1];
    factors_ptr: fp64 [2] (growth_factor, backoff_factor); growth_interval: int.
    """
    wait_for_inputs()
    scale = tl.load(scale_ptr)
    tracker = tl.load(growth_tracker_ptr)
    found = (tl.load(found_inf_ptr) != 0.0).to(tl.int32)  # 0/1 (int: see optim.as_mask)
    growth = tl.load(factors_ptr)
    backoff = tl.load(factors_ptr + 1)

    successful = tracker + 1
    grow = (found == 0) & (successful == growth_interval)
    grown = (scale.to(tl.float64) * growth).to(tl.float32)
    grown_ok = as_mask(tl.abs(grown) <= 3.4028234663852886e38)  # isfinite
    backed = (scale.to(tl.float64) * backoff).to(tl.float32)
    new_scale = tl.where(found != 0, backed, tl.where(grow & grown_ok, grown, scale))
    new_tracker = tl.where((found != 0) | grow, 0, successful)

    tl.store(scale_ptr, new_scale)
    tl.store(growth_tracker_ptr, new_tracker)
    tl.store(skipped_ptr, tl.load(skipped_ptr) + found)
    tl.store(found_inf_ptr, 0.0)


@triton.jit
def scale_kernel(x_ptr, out_ptr, scale_ptr, numel, BLOCK: tl.constexpr):
    """out[i] = x[i] * scale (fp32 math, stored in out's dtype); x, out dense, same layout.

    scale_ptr: fp32 [1] loss scale. One program scales BLOCK consecutive elements.
    """
    wait_for_inputs()
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    s = tl.load(scale_ptr)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (x * s).to(out_ptr.dtype.element_ty), mask=mask)


# --- launch helpers --------------------------------------------------------------------------


def update_scale(
    scale: torch.Tensor,
    growth_tracker: torch.Tensor,
    found_inf: torch.Tensor,
    skipped: torch.Tensor,
    factors: torch.Tensor,
    growth_interval: int,
) -> None:
    """Adjust the loss scale after a step, on the device (see ``update_scale_kernel``)."""
    update_scale_kernel[(1,)](
        scale, growth_tracker, found_inf, skipped, factors, growth_interval, launch_pdl=LAUNCH_PDL
    )


def _check_dense(*ts: torch.Tensor) -> None:
    for t in ts:
        if not (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)):
            raise ValueError("scale: needs a dense (contiguous or channels_last) tensor")
    if len({t.stride() for t in ts}) > 1:
        raise ValueError("scale: operands must share a layout")


def scale(x: torch.Tensor, loss_scale: torch.Tensor) -> torch.Tensor:
    """x * loss_scale into a new tensor (x's shape, dtype, layout); loss_scale fp32 [1]."""
    _check_dense(x)
    out = runtime.empty_like(x)
    scale_kernel[(triton.cdiv(x.numel(), BLOCK),)](
        x, out, loss_scale, x.numel(), BLOCK=BLOCK, launch_pdl=LAUNCH_PDL
    )
    return out


def scale_(x: torch.Tensor, loss_scale: torch.Tensor) -> torch.Tensor:
    """x *= loss_scale in place (e.g. the loss gradient before the backward pass)."""
    _check_dense(x)
    scale_kernel[(triton.cdiv(x.numel(), BLOCK),)](
        x, x, loss_scale, x.numel(), BLOCK=BLOCK, launch_pdl=LAUNCH_PDL
    )
    return x
