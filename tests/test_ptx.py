"""Compiled-code checks that need no GPU: conv and batch-norm memory accesses, in sm_90 PTX.

``benchmarks/ptx_report.py`` compiles a kernel with Triton's real compiler (its own process:
this one runs kernels in the interpreter) and counts memory instructions by width. A channel
count of whole 16-byte vectors that is not a multiple of 16 (MobileNetV2's 24) must still be
loaded in 16-byte cp.async copies: without the alignment hints every element of the tile was
a separate 2-byte load, outside the pipeline, and those layers ran ~10x slower on an H200.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ptx_report.py"


def _report(op: str, c_in: int, c_out: int | None = None, kernel: int = 1) -> dict:
    args = ["--op", op, "--c-in", str(c_in), "--kernel", str(kernel)]
    if c_out is not None:
        args += ["--c-out", str(c_out)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    "op,c_in,c_out,kernel",
    [
        ("fwd", 24, 144, 1),  # x has 24 channels
        ("fwd", 24, 48, 3),
        ("dgrad", 144, 24, 1),  # dy has 24 channels
        ("wgrad", 24, 144, 1),
        ("wgrad", 144, 24, 1),
        ("fwd", 32, 144, 1),  # a multiple of 16: Triton sees it itself, no hint
    ],
)
def test_channel_loads_are_16_byte_copies(op, c_in, c_out, kernel):
    report = _report(op, c_in, c_out, kernel)
    instructions = report["instructions"]
    assert "ld.global.b16" not in instructions, instructions
    assert instructions.get("cp.async.cg.shared.global", 0) > 0, instructions  # 16-byte copies
    if c_in % 16 and c_out % 16 == 0 and op != "dgrad":
        assert report["hints"]["X_ALIGN"] == 8
    if c_in % 16 == 0 and c_out % 16 == 0:
        assert set(report["hints"].values()) == {1}


def test_dgrad_into_24_channels_is_16_byte_accesses():
    """dgrad of a 24 -> 144 1x1 conv: the fp32 weight rows (24 channels) are 16-byte copies and
    dx's 24-channel rows are stored in 16-byte vectors."""
    report = _report("dgrad", 24, 144, 1)
    instructions = report["instructions"]
    assert report["hints"]["CI_ALIGN"] == 8
    assert "cp.async.ca.shared.global" not in instructions, instructions  # 4-byte copies
    assert "st.global.b16" not in instructions and "st.global.v4.b32" in instructions


@pytest.mark.parametrize("op", ["bn_stats", "bn_apply", "bn_bwd_reduce", "bn_bwd_input"])
def test_batch_norm_rows_are_16_byte_accesses(op):
    """The batch-norm kernels read (and write) 24-channel NHWC rows in 16-byte vectors."""
    report = _report(op, 24)
    instructions = report["instructions"]
    assert report["hints"]["ALIGN"] == 8
    assert "ld.global.b16" not in instructions and "st.global.b16" not in instructions
    assert instructions.get("ld.global.v4.b32", 0) > 0, instructions
