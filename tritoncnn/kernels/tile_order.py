"""Program order of row x channel tiles: the channel blocks of one row tile run side by side.

An NHWC activation is a matrix of rows (pixels) by C channels, and a kernel tiles it into
BLOCK_ROWS x BLOCK_C blocks. With the row tile as the fastest program index (a 2-d grid of
(row tiles, channel blocks)), the programs running at any moment all read the *same* channel
block of many rows: for 144 channels in blocks of 32 that is 64 bytes out of every 288-byte
row, and the other four blocks of those rows are read a whole pass later. With the channel
block fastest, the programs in flight read whole rows, contiguous memory, as a kernel without
channel blocks would. One flat program axis also lifts the 65535 limit of grid axis 1.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def row_channel_tile(C, BLOCK_C: tl.constexpr):
    """(row tile, channel block) of this program in a ``row_channel_grid`` launch."""
    n_cb = tl.cdiv(C, BLOCK_C)
    pid = tl.program_id(0)
    pid_rows = pid // n_cb
    return pid_rows, pid - pid_rows * n_cb


def row_channel_grid(rows: int, block_rows: int, channels: int, block_c: int) -> tuple[int]:
    """The flat grid of ``row_channel_tile``: every (row tile, channel block) once."""
    return (triton.cdiv(rows, block_rows) * triton.cdiv(channels, block_c),)


@triton.jit
def grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program ``pid`` of a GEMM in grouped order: GROUP_M row tiles sweep
    the columns together, so the B tiles they share are reused from L2 (Triton's matmul
    tutorial ordering)."""
    width = GROUP_M * num_pid_n
    first_m = (pid // width) * GROUP_M
    rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % rows
    pid_n = (pid % width) // rows
    return pid_m, pid_n
