"""Which layer launched each kernel of a step: every Triton launch of a call, in order, with the
module whose ``forward`` or ``backward`` was running at the time.

``profile_step.py --trace`` pairs these with the profiler's kernels (the step has no other GPU
work, so the two lists name the same kernels in the same order) and writes each kernel's layer,
phase and input shape beside its time. Reading the 12-06 trace without them meant matching
kernels to MobileNetV2's 52 batch norms by position, by hand.

    with record_launches(model) as launches:
        step()
    launches[0]  # Launch(kernel='gather_augment_kernel', layer='', kind='', phase='', shape='')

Works in the interpreter too (its kernels are launched the same way), which is how the CPU
tier tests it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from triton.runtime.jit import KernelInterface


class Launch(NamedTuple):
    """One kernel launch: the kernel's name, and the innermost module call it happened in (its
    path in ``named_modules``, class name, "forward" / "backward", and the shape of the call's
    tensor argument); empty strings outside every module (loader, loss, optimizer)."""

    kernel: str
    layer: str = ""
    kind: str = ""
    phase: str = ""
    shape: str = ""


def kernel_name(kernel: KernelInterface) -> str:
    """The name a launch of ``kernel`` has in a profiler (its Python function's)."""
    return getattr(kernel, "fn", kernel).__name__


@contextmanager
def record_launches(model) -> Iterator[list[Launch]]:
    """Within the block, every ``kernel[grid](...)`` launch is appended to the yielded list,
    with the innermost call of one of ``model``'s modules (``named_modules``) running then.
    The modules' methods and Triton's launch path are restored on exit."""
    calls: list[tuple[str, str, str, str]] = []  # the module calls now running, innermost last
    launches: list[Launch] = []
    launch_with = KernelInterface.__getitem__

    def logged_getitem(kernel, grid):
        launch = launch_with(kernel, grid)

        def logged(*args, **kwargs):
            launches.append(Launch(kernel_name(kernel), *(calls[-1] if calls else ())))
            return launch(*args, **kwargs)

        return logged

    wrapped = []  # (module, phase, the instance's own attribute there, if it had one)
    seen = set()
    for path, module in model.named_modules():
        if id(module) in seen:  # one module at two paths: wrapped once, under its first
            continue
        seen.add(id(module))
        for phase in ("forward", "backward"):
            own = vars(module).get(phase)
            method = getattr(module, phase)
            setattr(module, phase, _in_call(method, calls, (path, type(module).__name__, phase)))
            wrapped.append((module, phase, own))
    KernelInterface.__getitem__ = logged_getitem
    try:
        yield launches
    finally:
        KernelInterface.__getitem__ = launch_with
        for module, phase, own in wrapped:
            if own is None:
                delattr(module, phase)  # the class's method shows again
            else:
                setattr(module, phase, own)


def _in_call(method: Callable, calls: list, where: tuple[str, str, str]) -> Callable:
    """``method`` pushing (path, class, phase, its tensor argument's shape) on ``calls`` while
    it runs."""

    def call(*args, **kwargs):
        shape = next((tuple(a.shape) for a in args if isinstance(a, torch.Tensor)), "")
        calls.append((*where, str(shape)))
        try:
            return method(*args, **kwargs)
        finally:
            calls.pop()

    return call


def with_layers(kernels: list[tuple[str, float]], launches: list[Launch]) -> list[dict] | None:
    """The profiler's ``kernels`` ([(name, us)] in start order) with each one's ``Launch``
    fields, or None when the two lists don't name the same kernels in the same order (then
    which layer a kernel belongs to is not known)."""
    if [name for name, _ in kernels] != [launch.kernel for launch in launches]:
        return None
    return [
        {**launch._asdict(), "us": us} for (_, us), launch in zip(kernels, launches, strict=True)
    ]


def first_difference(kernels: list[tuple[str, float]], launches: list[Launch]) -> str:
    """Where the profiler's kernels and the recorded launches part (for the warning)."""
    names = [name for name, _ in kernels]
    logged = [launch.kernel for launch in launches]
    for i, (a, b) in enumerate(zip(names, logged, strict=False)):
        if a != b:
            return f"kernel {i}: profiler {a!r}, launch {b!r}"
    return f"{len(names)} kernels in the profiler, {len(logged)} launches"
