"""Programmatic dependent launch (PDL, Hopper and later): overlap a launch with the tail of the
kernel before it.

On one stream a kernel normally starts only after the previous one has finished and flushed
its writes: every boundary costs the launch, the scheduling of the first programs and the
previous kernel's last, half-empty wave. A step of MobileNetV2 is ~480 kernels, so those
microseconds add up even inside a CUDA graph. With PDL (``launch_pdl=True``, the CUDA launch
attribute "programmatic stream serialization") the next kernel may be launched as soon as every
program of the running one has said so (``gdc_launch_dependents``, or by exiting); its programs
then take the SM slots the running kernel leaves free and block in ``gdc_wait`` until the
previous kernel has completed and its memory is visible.

The contract that keeps this correct, for every kernel of the package:

- ``wait_for_inputs()`` is the first statement of the kernel, before any load, store or atomic
  (tests/test_pdl.py checks this on the source). So no kernel touches memory before the one
  before it has finished: not its inputs, not its outputs (which the previous kernel may still
  read), not the shared ticket buffer.
- It lets the next kernel launch only after that wait. So "kernel k has finished" still implies
  "every kernel before k has finished", and a kernel sees the writes of all earlier kernels, not
  only of its direct predecessor.

On the interpreter, on GPUs before sm_90 and with ``TRITONCNN_PDL=0`` the calls compile to
nothing and launches are ordinary. It is off by default until measured on the GPU
(``benchmarks/train_step.py`` rows with TRITONCNN_PDL=1).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from tritoncnn import runtime


def _enabled() -> bool:
    if runtime.INTERPRETED or os.environ.get("TRITONCNN_PDL", "0") != "1":
        return False
    return torch.cuda.get_device_capability(runtime.DEVICE)[0] >= 9


# Pass as ``launch_pdl=LAUNCH_PDL`` to every kernel launch (the interpreter ignores it).
LAUNCH_PDL: bool = _enabled()
_PDL = tl.constexpr(LAUNCH_PDL)


@triton.jit
def wait_for_inputs():
    """Block until the previous kernel on the stream has completed (its writes visible), then
    let the next kernel launch. First statement of every kernel; nothing without PDL."""
    if _PDL:
        gdc_wait()
        gdc_launch_dependents()


@gluon.jit
def wait_for_inputs_gluon():
    """``wait_for_inputs`` for Gluon kernels (kernels/conv_halo.py), which call only Gluon
    functions; they import it as ``wait_for_inputs``, so the contract reads the same."""
    if _PDL:
        gdc_wait()
        gdc_launch_dependents()
