"""16-byte vector loads of channel runs whose alignment Triton cannot see for itself.

The conv and batch-norm kernels read NHWC tensors as runs of channels: contiguous, and
vectorised into 16-byte loads (cp.async copies for GEMM operands) when the compiler can prove
each run starts 16-byte aligned and its mask is constant over whole vectors. Triton
specialises a runtime integer argument only on divisibility by 16, so a channel count or row
stride that is a multiple of 8 but not of 16 (MobileNetV2's 24 channels: 48-byte rows) makes
it assume nothing, and every element becomes its own 2-byte access: ~10x slower 1x1 convs on
an H200.

The host checks the facts (``vector_align``) and passes an ALIGN constexpr; a kernel then
(1) marks its row offsets with ``tl.multiple_of(offsets, ALIGN)`` in its own body, or builds
them as ``(strides // ALIGN) * ALIGN`` products (norm.py): the hint is an attribute of the op
that computed the offsets, so a hint on a helper's argument, or on a multiply by a stride that
folds away, is silently dropped; and (2) builds its channel mask with ``below(idx, C,
ALIGN)``. ``benchmarks/ptx_report.py`` shows the compiled loads.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def vector_align(element_size: int, data_ptr: int, strides: tuple[int, ...], channels: int) -> int:
    """ALIGN for runs of ``channels`` contiguous channels (``strides``: the other axes' element
    strides, then the channel stride) of a tensor at ``data_ptr``: the elements of a 16-byte
    vector when every run starts 16-byte aligned and holds whole vectors but Triton can't
    see it (a count or stride not a multiple of 16); else 1."""
    vec = 16 // element_size
    *rows, s_c = strides
    runs = (*rows, channels)
    if s_c != 1 or data_ptr % 16 or any(v % vec for v in runs):
        return 1
    return 1 if all(v % 16 == 0 for v in runs) else vec


def common_align(*aligns: int) -> int:
    """One ALIGN for a kernel that loads several tensors: theirs if they agree, else 1."""
    return aligns[0] if len(set(aligns)) == 1 else 1


def tensor_align(t: torch.Tensor, strides: tuple[int, ...], channels: int) -> int:
    """``vector_align`` of tensor ``t`` viewed through ``strides``."""
    return vector_align(t.element_size(), t.data_ptr(), strides, channels)


@triton.jit
def below(idx, bound, ALIGN: tl.constexpr):
    """idx < bound, for a bound that is a multiple of ALIGN, written so that the compiler sees
    the mask is constant over aligned runs of ALIGN elements."""
    if ALIGN > 1:
        return (idx // ALIGN) * ALIGN < bound
    return idx < bound
