"""Where kernels run, and how tensors are allocated for them.

Imported first by the package: when no CUDA device is present it sets ``TRITON_INTERPRET=1``
*before* triton is imported, so every ``@triton.jit`` kernel runs in Triton's interpreter on
the CPU. That path exists for tests and for learning; it is slow (~0.1-0.4 GFLOP/s).

Dtype policy: master weights are fp32. Activations follow the dtype of the model's input
(fp32, fp16 or bf16); kernels load fp32 weights and cast them to the activation dtype for the
tensor-core dot, accumulate in fp32, and keep batch-norm statistics and the loss in fp32.

Layout policy: tensors keep torch's logical shapes (N,C,H,W activations, O,I/g,KH,KW conv
weights) with channels_last memory (NHWC, OHWI), the natural implicit-GEMM layout.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

import torch

log = logging.getLogger("tritoncnn")

_HAS_CUDA = torch.cuda.is_available() and os.environ.get("TRITONCNN_FORCE_CPU", "0") != "1"
if not _HAS_CUDA:
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "triton was imported before tritoncnn on a machine without CUDA; import tritoncnn "
            "first (or set TRITON_INTERPRET=1) so its kernels run in Triton's interpreter"
        )
    os.environ["TRITON_INTERPRET"] = "1"

DEVICE = torch.device("cuda" if _HAS_CUDA else "cpu")
INTERPRETED = not _HAS_CUDA

if INTERPRETED:
    log.info("tritoncnn: no CUDA device; Triton kernels run in the interpreter on the CPU")
else:
    log.info("tritoncnn: Triton kernels run on %s", torch.cuda.get_device_name(DEVICE))

# Tests set this to fill every freshly allocated output with NaN, so an element a kernel
# forgets to write shows up in the comparison instead of hiding behind a zero.
POISON_OUTPUTS = os.environ.get("TRITONCNN_POISON", "0") == "1"

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def sm_count() -> int:
    """Streaming multiprocessors of the GPU (1 in the interpreter, which runs programs one at a
    time): for grids of a few programs per SM."""
    if INTERPRETED:
        return 1
    return torch.cuda.get_device_properties(DEVICE).multi_processor_count


def bf16_dot_emulated(dtype: torch.dtype) -> bool:
    """Whether a tl.dot of ``dtype`` operands must run in fp32: the interpreter can't multiply
    bf16 (the kernels' EMULATE_BF16 / upcast flags)."""
    return INTERPRETED and dtype == torch.bfloat16


def bf16_supported() -> bool:
    """bf16 needs sm_80+ on the GPU; the interpreter emulates it through numpy."""
    if INTERPRETED:
        return True
    return torch.cuda.get_device_capability(DEVICE)[0] >= 8


# Elements per 2-d tile that the row-slab pickers (norm, pool) aim for in the interpreter: there a
# program costs ~100 numpy calls whatever its size, and numpy on 32K elements still costs about
# what the call does.
INTERPRETER_TILE = 32768


def interpreter_block(n: int, cap: int, floor: int = 16) -> int:
    """A tile extent for the interpreter: the interpreter pays per program and per loop step,
    not per element, so it wants few, large tiles (the power of two >= n, within [floor, cap])."""
    b = floor
    while b < n and b < cap:
        b *= 2
    return b


def _poison(t: torch.Tensor) -> torch.Tensor:
    if POISON_OUTPUTS and t.is_floating_point():
        t.fill_(float("nan"))
    return t


def empty(shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uninitialised contiguous tensor on the kernel device."""
    return _poison(torch.empty(shape, dtype=dtype, device=DEVICE))


def empty_nhwc(n: int, c: int, h: int, w: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uninitialised N,C,H,W tensor with channels_last (NHWC) memory."""
    t = torch.empty((n, c, h, w), dtype=dtype, device=DEVICE, memory_format=torch.channels_last)
    return _poison(t)


def empty_like(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Uninitialised tensor with ``t``'s shape and strides (dense layouts are preserved)."""
    return _poison(torch.empty_like(t, dtype=dtype))


_TICKETS: torch.Tensor | None = None
TICKET_SLOTS = 4096


def tickets(n: int) -> torch.Tensor:
    """n int32 zeros for "the last program to finish does the rest" reductions (an atomic
    ticket per group of programs). Every kernel that takes them re-arms its tickets to zero
    before it returns, so one buffer serves every launch: launches on one stream never overlap.

    Allocated once and never freed (CUDA graphs keep its address), by a host-to-device copy
    (no kernel), before any graph capture: the trainer's eager warm-up steps reach every caller.
    """
    global _TICKETS
    if n > TICKET_SLOTS:
        raise ValueError(f"runtime.tickets: {n} tickets asked, at most {TICKET_SLOTS}")
    if _TICKETS is None:
        if DEVICE.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "runtime.tickets: first use inside a CUDA-graph capture; run the step once "
                "eagerly before capturing it"
            )
        _TICKETS = torch.zeros(TICKET_SLOTS, dtype=torch.int32).to(DEVICE)
    return _TICKETS[:n]


def nhwc_strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    """Element strides of a 4-d N,C,H,W tensor in the order (n, h, w, c) kernels index by."""
    sn, sc, sh, sw = t.stride()
    return sn, sh, sw, sc


# fp32 dots: "ieee" keeps fp32 training exact (the reference path); "tf32" trades ~3e-4
# relative error for tensor-core speed, like cuDNN's default for convolutions.
FP32_DOT_PRECISION = os.environ.get("TRITONCNN_FP32_DOT", "ieee")


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` for tl.dot on operands of ``dtype`` (only fp32 has a choice)."""
    return FP32_DOT_PRECISION if dtype == torch.float32 else "tf32"
