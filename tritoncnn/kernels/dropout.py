"""Dropout with a counter-based RNG (Philox): the backward regenerates the forward's mask.

RNG state: a device int64 tensor ``state = [key, step]`` (see ``new_seed_state``). Element
``e`` of a dense buffer is kept iff ``uniform(Philox_key(counter(e), step)) >= p``; kept values
are scaled by 1/(1-p) (inverted dropout, as torch). Nothing random happens on the host per
step: the kernels read ``key`` and ``step`` from device memory, and a training forward bumps
``step`` on the device itself, so a CUDA graph replays with a fresh mask each time. The
backward reads the same state and so rebuilds exactly the forward's mask, which is never
stored.

Launches: a forward with ``advance_seed=k`` (what ``nn.Dropout`` does, k = 1) is one
``dropout_kernel``: every program reads ``step``, draws its mask with ``step + k`` (the mask
that ``advance_seed_(state, k)`` followed by a plain forward used to draw), and the last
program to finish (an atomic ticket, ``kernels/tickets.py``) stores ``step + k`` once every
program has read the old value. A backward is one ``dropout_kernel`` that leaves the state
alone. ``advance_seed_`` (a one-thread ``advance_seed_kernel``) stays for callers that only
want to bump the state.

Layout: tensors are flat dense buffers (contiguous or channels_last); the mask is a function of
the memory position, so the gradient must have the forward input's strides. One program
handles BLOCK consecutive elements as 4 sub-blocks of BLOCK/4: one Philox call yields four
32-bit words, one per sub-block (4x fewer Philox rounds than one call per element). The
counter of element ``e`` is ``(e // BLOCK) * BLOCK/4 + e % (BLOCK/4)`` (64-bit, split across
Philox words c0/c1), its word is ``(e % BLOCK) // (BLOCK/4)``, and ``step`` fills c2/c3, so
masks of different steps come from disjoint counters. BLOCK is fixed: changing it changes which
random word each element gets (masks stay valid, but a given seed gives different ones).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritoncnn import runtime
from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs
from tritoncnn.kernels.tickets import last_to_finish

BLOCK = 4096  # elements per program (4 Philox words x 1024 counters); part of the RNG mapping


@triton.jit
def _scale_kept(src_ptr, dst_ptr, offs, numel, bits, p, scale):
    """dst[offs] = src[offs] * scale where uniform(bits) >= p, else 0 (fp32 math)."""
    mask = offs < numel
    keep = tl.uint_to_uniform_float(bits) >= p
    v = tl.load(src_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.where(keep, v * scale, 0.0)
    tl.store(dst_ptr + offs, v.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def dropout_kernel(
    src_ptr, dst_ptr, state_ptr, tickets_ptr, numel, p, scale, steps,
    ADVANCE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """dst = src * scale on kept elements, 0 on dropped ones, for BLOCK consecutive elements.

    Used for both directions: forward (src = x) and backward (src = grad_out); the mask depends
    only on (key, step, element position), so both see the same one.

    src_ptr, dst_ptr: dense buffers of ``numel`` elements in one layout (may alias: in place).
    state_ptr: int64 [key, step] RNG state on the device (Philox key, and step -> counter).
    tickets_ptr: int32 [1] zero ticket (``runtime.tickets(1)``), used only if ADVANCE; left 0.
    p: drop probability (fp32); an element is kept iff its uniform in [0, 1) is >= p.
    scale: 1/(1-p), or 0 when p == 1.
    steps: if ADVANCE, the mask is drawn with step + steps and the last program to finish
        stores step + steps into state[1] (every program has read the old step by then, so
        all draw the same mask); ignored otherwise (mask of step, state unchanged).
    """
    wait_for_inputs()
    Q: tl.constexpr = BLOCK // 4
    pid = tl.program_id(0).to(tl.int64)
    key = tl.load(state_ptr)
    step = tl.load(state_ptr + 1)
    if ADVANCE:
        step = step + steps
    counter = pid * Q + tl.arange(0, Q)
    zero = counter.to(tl.uint32) * 0
    c0 = counter.to(tl.uint32)
    c1 = (counter >> 32).to(tl.uint32)
    c2 = zero + (step & 0xFFFFFFFF).to(tl.uint32)
    c3 = zero + ((step >> 32) & 0xFFFFFFFF).to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(key, c0, c1, c2, c3)
    offs = pid * BLOCK + tl.arange(0, Q)
    _scale_kept(src_ptr, dst_ptr, offs, numel, r0, p, scale)
    _scale_kept(src_ptr, dst_ptr, offs + Q, numel, r1, p, scale)
    _scale_kept(src_ptr, dst_ptr, offs + 2 * Q, numel, r2, p, scale)
    _scale_kept(src_ptr, dst_ptr, offs + 3 * Q, numel, r3, p, scale)
    if ADVANCE:
        # The step is written only after every program has loaded it (the ticket), so the
        # whole launch draws one mask, and the next launch (the backward) reads step + steps.
        if last_to_finish(tickets_ptr, 0, tl.num_programs(0)):
            tl.store(state_ptr + 1, step)
            tl.store(tickets_ptr, 0)


@triton.jit
def advance_seed_kernel(state_ptr, steps):
    """state[1] += steps (one program), for a caller that bumps the state on its own (a
    training forward folds this into ``dropout_kernel``).

    state_ptr: int64 [key, step] RNG state; steps: how far to advance.
    """
    wait_for_inputs()
    step = tl.load(state_ptr + 1)
    tl.store(state_ptr + 1, step + steps)


# --- launch helpers --------------------------------------------------------------------------

_KEY_MASK = (1 << 63) - 1


def _mix64(x: int) -> int:
    """splitmix64 finaliser: spreads nearby seeds (0, 1, 2...) over distinct 63-bit keys."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & _KEY_MASK


def new_seed_state(seed: int) -> torch.Tensor:
    """A fresh int64 [key, step=0] RNG state on the kernel device (setup time, not per step)."""
    return torch.tensor([_mix64(int(seed)), 0], dtype=torch.int64, device=runtime.DEVICE)


def reseed_(state: torch.Tensor, seed: int) -> torch.Tensor:
    """Reset ``state`` in place to [key(seed), 0] (same storage, so captured graphs see it)."""
    state.copy_(new_seed_state(seed))
    return state


def advance_seed_(state: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """Bump the step counter of ``state`` on the device (no host sync)."""
    _check_state(state)
    advance_seed_kernel[(1,)](state, int(steps), launch_pdl=LAUNCH_PDL)
    return state


def _check_state(state: torch.Tensor) -> None:
    if state.dtype != torch.int64 or state.numel() != 2 or not state.is_contiguous():
        raise ValueError("dropout RNG state must be a contiguous int64 [key, step] tensor")


def _check_dense(t: torch.Tensor) -> None:
    if not (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError("dropout needs a dense (contiguous or channels_last) tensor")


def _launch(
    src: torch.Tensor, p: float, state: torch.Tensor, out: torch.Tensor | None, steps: int = 0
) -> torch.Tensor:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    _check_dense(src)
    _check_state(state)
    if out is None:
        out = runtime.empty_like(src)
    elif out.shape != src.shape or out.stride() != src.stride() or out.dtype != src.dtype:
        raise ValueError("dropout: `out` must match the input's shape, strides and dtype")
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    n = src.numel()
    # At least one program, so an empty input still advances the state when asked to.
    grid = (max(triton.cdiv(n, BLOCK), 1),)
    dropout_kernel[grid](
        src, out, state, runtime.tickets(1), n, float(p), scale, int(steps),
        ADVANCE=steps != 0, BLOCK=BLOCK,
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return out


def dropout_forward(
    x: torch.Tensor,
    p: float,
    state: torch.Tensor,
    out: torch.Tensor | None = None,
    *,
    advance_seed: int = 0,
) -> torch.Tensor:
    """Inverted dropout of ``x`` with the mask of ``state``'s current (key, step).

    Returns ``x`` itself when p == 0. ``out`` (e.g. ``x`` for in-place) must share x's shape,
    strides and dtype; by default a new tensor with x's layout is returned. A forward that needs
    a fresh mask passes ``advance_seed=1``: the same launch first bumps ``state``'s step, exactly
    as ``advance_seed_(state, 1)`` followed by a forward would (same mask, same final state).
    """
    if p == 0.0:
        if advance_seed:
            advance_seed_(state, advance_seed)
        return x
    return _launch(x, p, state, out, advance_seed)


def dropout_backward(
    grad_out: torch.Tensor, p: float, state: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """grad_in = grad_out * mask / (1-p), the mask regenerated from the unchanged ``state``.

    ``grad_out`` must have the forward input's strides (the mask follows memory positions).
    """
    if p == 0.0:
        return grad_out
    return _launch(grad_out, p, state, out)
