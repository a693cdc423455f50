"""Layout copies between torch's NCHW order and our channels_last (NHWC) memory.

Only used at the edges: Flatten before a classifier, and inputs that arrive in a layout a
kernel can't take by strides. One program copies BLOCK elements of the *destination* in its
memory order, reading the source through its strides.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritoncnn import runtime
from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs

BLOCK = 1 << 16 if runtime.INTERPRETED else 1024  # the interpreter pays per program


@triton.jit
def strided_copy_4d_kernel(
    src_ptr,
    dst_ptr,
    numel,
    C,
    H,
    W,
    s_n,
    s_c,
    s_h,
    s_w,
    d_n,
    d_c,
    d_h,
    d_w,
    DST_NHWC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """dst[n,c,h,w] = src[n,c,h,w] for BLOCK flat destination indices.

    The flat index is decoded in the destination's memory order (NHWC when DST_NHWC, else
    NCHW) so that stores are coalesced; the source is read through its element strides
    (s_*) and the destination written through d_*.
    """
    wait_for_inputs()
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    if DST_NHWC:
        c = offs % C
        w = (offs // C) % W
        h = (offs // (C * W)) % H
        n = offs // (C * W * H)
    else:
        w = offs % W
        h = (offs // W) % H
        c = (offs // (W * H)) % C
        n = offs // (W * H * C)
    v = tl.load(src_ptr + n * s_n + c * s_c + h * s_h + w * s_w, mask=mask)
    tl.store(dst_ptr + n * d_n + c * d_c + h * d_h + w * d_w, v, mask=mask)


def _copy(x: torch.Tensor, out: torch.Tensor, dst_nhwc: bool) -> torch.Tensor:
    n, c, h, w = x.shape
    grid = (triton.cdiv(x.numel(), BLOCK),)
    strided_copy_4d_kernel[grid](
        x, out, x.numel(), c, h, w, *x.stride(), *out.stride(),
        DST_NHWC=dst_nhwc, BLOCK=BLOCK, launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return out


def to_contiguous(x: torch.Tensor) -> torch.Tensor:
    """N,C,H,W tensor in NCHW (torch-contiguous) memory; returns x itself if already so."""
    if x.is_contiguous():
        return x
    return _copy(x, runtime.empty(x.shape, x.dtype), dst_nhwc=False)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """N,C,H,W tensor in NHWC memory; returns x itself if already so."""
    if x.is_contiguous(memory_format=torch.channels_last):
        return x
    return _copy(x, runtime.empty_nhwc(*x.shape, dtype=x.dtype), dst_nhwc=True)
