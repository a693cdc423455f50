"""The row-reduction kernels of MobileNetV2 at their real shapes: loads in flight vs speed.

Batch-norm statistics (``bn_stats_kernel``), the batch-norm backward (``bn_bwd_reduce_kernel``
+ ``bn_bwd_input_kernel``) and the depthwise weight gradient (``depthwise_wgrad_taps_kernel``
+ its stage 2) each loop over a slab of rows per program. This times them (replayed in CUDA
graphs, as in the training step) over every layer of MobileNetV2-CIFAR at ``--batch`` with
each number of pipelined loop stages (``norm.LOOP_STAGES``, ``depthwise.WGRAD_STAGES``) and of
stage-1 programs (``norm.PROGRAMS_PER_SM``, ``depthwise._WGRAD_ALL_TAPS_PROGRAMS``), and the
batch-norm apply (``bn_apply_kernel``, elementwise) with each ``--bn-elementwise-tiles`` tile
(which the backward's input kernel takes too), against torch (cuDNN batch norm, cuDNN
depthwise wgrad) on the same tensors. Prints each variant's total over the network (each layer
counted as often as the network has it) and writes every timing to
``reduction_tiles_<gpu>.csv`` under ``--out``.

    python benchmarks/reduction_tiles.py --batch 512
    python benchmarks/reduction_tiles.py --kernels bn --stages 3 --bn-programs 4 \
        --bn-elementwise-tiles default c32 c64
    python benchmarks/reduction_tiles.py --kernels bn --bn-ops bwd_reduce --stages 2 3 4
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tritoncnn import runtime  # noqa: E402
from tritoncnn.kernels import depthwise, norm  # noqa: E402
from tritoncnn.models.mobilenetv2 import SETTINGS  # noqa: E402


def bench(fn) -> float:
    """Median ms of ``fn``, replayed in a CUDA graph as the training step runs it: eager
    launches cost 50-80 us on the host, more than a small layer's kernels (the eager BN rows of
    2026-12-06 were launch-bound). Eager timing where ``fn`` can't be captured."""
    import triton.testing

    fn()  # allocations that must precede a capture (runtime.tickets)
    try:
        return triton.testing.do_bench_cudagraph(fn, rep=40, return_mode="median")
    except RuntimeError as e:
        print(f"note: timed eagerly ({str(e)[:80]})", flush=True)
        return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


def write_csv(rows: list[dict], out: Path, stem: str) -> None:
    """rows to ``<stem>_<gpu>.csv`` under ``out``, each with the GPU name and torch / triton
    versions (the tile benchmarks' shared writer)."""
    import triton

    gpu = torch.cuda.get_device_name()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}_{gpu.replace(' ', '_')}.csv"
    with path.open("w", newline="") as f:
        fields = ["gpu", "torch", "triton", *dict.fromkeys(k for r in rows for k in r)]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {"gpu": gpu, "torch": torch.__version__, "triton": triton.__version__, **r}
            )
    print(f"wrote {path}")


def mobilenetv2_layers(size: int = 32) -> tuple[Counter, Counter]:
    """(batch-norm (channels, size) counts, depthwise (channels, input size, stride) counts)
    of MobileNetV2-CIFAR (stride-1 stem and first stride-2 stage) on size x size images."""
    bn, dw = Counter(), Counter()
    cin, hw = 32, size
    bn[(32, hw)] += 1  # stem
    first_s2 = True
    for t, c, n, s in SETTINGS:
        if s == 2 and first_s2:
            s, first_s2 = 1, False
        for j in range(n):
            stride = s if j == 0 else 1
            hidden = cin * t
            if t != 1:
                bn[(hidden, hw)] += 1  # expand
            dw[(hidden, hw, stride)] += 1
            hw //= stride
            bn[(hidden, hw)] += 1  # depthwise
            bn[(c, hw)] += 1  # project
            cin = c
    bn[(1280, hw)] += 1  # last 1x1
    return bn, dw


def nhwc(*shape: int, dtype=torch.float16) -> torch.Tensor:
    x = torch.randn(*shape, device="cuda", dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last)


# The row-slab reductions' tile (bn_stats_kernel, bn_bwd_reduce_kernel) against the one
# norm.pick_config gives: 8 warps, or half the rows. ptxas gives bn_bwd_reduce_kernel 146-156
# registers on 4 warps with pipelined loads (3 programs per SM), ~110 on 8 warps or half the
# rows (results/bn_bwd_reduce_registers_sm90.txt). "wide" / "c64": the elementwise kernels'
# channel block (128 beyond 128 channels) or 64, where the default pads at most 1/8 (144
# channels: 5 blocks of 32, rows read as 64-byte runs): the 12-06 H100 trace had the reduce
# of the 144-channel 32x32 layers at ~1.5 TB/s, the 96-channel ones (one 128-wide block) at
# ~1.9, and the 144-channel input gradient (128-wide blocks) at ~2.1; bn_apply went 162 ->
# 122 us from blocks of 32 to 128 (H200).
REDUCE_TILES = {
    "default": lambda cfg, c: cfg,
    "w8": lambda cfg, c: cfg._replace(num_warps=8),
    "half": lambda cfg, c: cfg._replace(block_m=cfg.block_m // 2),
    "half_w8": lambda cfg, c: cfg._replace(block_m=cfg.block_m // 2, num_warps=8),
    "wide": lambda cfg, c: norm.NormConfig(16, 128, 4) if c > 64 else cfg,
    "c64": lambda cfg, c: norm.NormConfig(32, 64, 4) if c > 32 else cfg,
}


# The elementwise kernels' tile (bn_apply_kernel, bn_bwd_input_kernel) against the one
# norm.pick_config gives (for more than 128 channels: 16 rows x 128 channels, picked when the
# row tile was the fastest program index; tile_order puts a row's channel blocks side by
# side now, so narrower blocks no longer split rows across passes).
ELEMENTWISE_TILES = {
    "default": lambda cfg, c: cfg,
    "c32": lambda cfg, c: norm.NormConfig(64, 32, 4) if c > 32 else cfg,
    "c64": lambda cfg, c: norm.NormConfig(32, 64, 4) if c > 64 else cfg,
}


def bn_rows(
    batch: int,
    stages: list[int],
    programs: list[int],
    tiles: list[str],
    ew_tiles: list[str],
    ops: list[str],
):
    layers, _ = mobilenetv2_layers()
    pick = norm.pick_config
    try:
        for tile in tiles:
            for ew_tile in ew_tiles:
                change, ew_change = REDUCE_TILES[tile], ELEMENTWISE_TILES[ew_tile]
                norm.pick_config = lambda c, elementwise=False, change=change, ew=ew_change: (
                    ew(pick(c, True), c) if elementwise else change(pick(c), c)
                )
                for (c, hw), count in layers.items():
                    for row in bn_layer_rows(batch, c, hw, count, stages, programs, ops):
                        yield {**row, "tile": f"{tile}/{ew_tile}"}
    finally:
        norm.pick_config = pick


def bn_layer_rows(batch: int, c: int, hw: int, count: int, stages, programs, ops):
    x, gy = nhwc(batch, c, hw, hw), nhwc(batch, c, hw, hw)
    w = torch.rand(c, device="cuda") + 0.5
    b = torch.randn(c, device="cuda")
    mean, invstd = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
    xr = x.detach().requires_grad_()
    wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
    yr = torch.nn.functional.batch_norm(xr, None, None, wr, br, training=True)
    rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
    torch_ops = {
        "stats": lambda: torch.batch_norm_stats(x, 1e-5),
        "apply": lambda: torch.nn.functional.batch_norm(x, rm, rv, w, b, training=False),
        "backward": lambda: torch.autograd.grad(yr, (xr, wr, br), gy, retain_graph=True),
    }
    # only the ops asked for; cuDNN's backward is one call, with no reduction of its own
    t_torch = {op: bench(fn) if op in ops else float("nan") for op, fn in torch_ops.items()}
    t_torch["bwd_reduce"] = float("nan")
    backward = lambda: norm.batch_norm_backward(gy, x, w, mean, invstd, bias=b)  # noqa: E731
    ours = {
        "stats": lambda: norm.batch_norm_local_moments(x),
        # bn_apply_kernel alone (the training step's apply after the conv-epilogue moments)
        "apply": lambda: norm.batch_norm_forward_eval(x, w, b, rm, rv, 1e-5),
        "backward": backward,
        "bwd_reduce": lambda: _without_input_grad(backward),
    }
    ours = {op: fn for op, fn in ours.items() if op in ops}
    one_pass = x.numel() * x.element_size() / 1e9  # GB
    for st in stages:
        for pps in programs:
            norm.LOOP_STAGES, norm.PROGRAMS_PER_SM = st, pps
            for op, fn in ours.items():
                us = 1e3 * bench(fn)
                yield {
                    "kernel": f"bn_{op}",
                    "layer": f"C{c} {hw}x{hw} N{batch}",
                    "count": count,
                    "stages": st,
                    "programs": pps,
                    "us": us,
                    "torch_us": 1e3 * t_torch[op],
                    # stats read x; apply reads x and writes y; the backward reads g and x
                    # twice and writes dx, its reductions read g and x once
                    "GB/s": {"stats": 1, "apply": 2, "backward": 5, "bwd_reduce": 2}[op]
                    * one_pass
                    / (us * 1e-6),
                }


class _NoLaunch:
    """Stands in for a @triton.jit kernel: ``kernel[grid](...)`` launches nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _without_input_grad(backward) -> None:
    """``backward`` with bn_bwd_input_kernel not launched: bn_bwd_reduce_kernel's time alone."""
    kernel, norm.bn_bwd_input_kernel = norm.bn_bwd_input_kernel, _NoLaunch()
    try:
        backward()
    finally:
        norm.bn_bwd_input_kernel = kernel


def dw_rows(batch: int, stages: list[int], programs: list[int]):
    _, layers = mobilenetv2_layers()
    for (c, hw, stride), count in layers.items():
        yield from dw_layer_rows(batch, c, hw, stride, count, stages, programs)


def dw_layer_rows(batch: int, c: int, hw: int, stride: int, count: int, stages, programs):
    ho = hw // stride
    x, gy = nhwc(batch, c, hw, hw), nhwc(batch, c, ho, ho)
    wr = torch.randn(c, 1, 3, 3, device="cuda", dtype=torch.float16)
    t_torch = bench(
        lambda: torch.ops.aten.convolution_backward(
            gy, x, wr, None, (stride, stride), (1, 1), (1, 1), False, (0, 0), c,
            (False, True, False),
        )
    )  # fmt: skip
    for st in stages:
        for target in programs:
            depthwise.WGRAD_STAGES, depthwise._WGRAD_TARGET_PROGRAMS = st, target
            depthwise._WGRAD_ALL_TAPS_PROGRAMS = target  # the 3x3 (all-taps) kernel's
            us = 1e3 * bench(
                lambda: depthwise.depthwise_conv2d_wgrad(x, gy, (c, 1, 3, 3), stride, 1, 1)
            )
            gb = (x.numel() + gy.numel()) * x.element_size() / 1e9
            yield {
                "kernel": "dw_wgrad",
                "layer": f"C{c} {hw}x{hw} s{stride} N{batch}",
                "count": count,
                "stages": st,
                "programs": target,
                "us": us,
                "torch_us": 1e3 * t_torch,
                "GB/s": gb / (us * 1e-6),
            }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--stages", nargs="+", type=int, default=[1, 3])
    ap.add_argument("--bn-programs", nargs="+", type=int, default=[3, 4, 8], help="per SM")
    ap.add_argument("--bn-tiles", nargs="+", default=["default"], choices=REDUCE_TILES)
    ap.add_argument(
        "--bn-elementwise-tiles",
        nargs="+",
        default=["default"],
        choices=ELEMENTWISE_TILES,
        help="bn_apply / bn_bwd_input tile: the pick, or channel blocks of 32 / 64",
    )
    ap.add_argument(
        "--dw-programs",
        nargs="+",
        type=int,
        default=[264, 396, 512, 1024],
        help="in all (3x3: all taps; 146 registers and 60 KB of pipelined tiles each: 3 per SM)",
    )
    ap.add_argument(
        "--bn-ops",
        nargs="+",
        default=["stats", "apply", "backward"],
        choices=["stats", "apply", "backward", "bwd_reduce"],
        help="bwd_reduce: bn_bwd_reduce_kernel alone (the backward without its input grad)",
    )
    ap.add_argument("--kernels", nargs="+", default=["bn", "dw"])
    ap.add_argument(
        "--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results")
    )
    args = ap.parse_args()
    if runtime.INTERPRETED:
        sys.exit("benchmarks/reduction_tiles.py needs a CUDA GPU")
    rows = []
    if "bn" in args.kernels:
        rows += list(
            bn_rows(
                args.batch, args.stages, args.bn_programs, args.bn_tiles,
                args.bn_elementwise_tiles, args.bn_ops,
            )
        )  # fmt: skip
    if "dw" in args.kernels:
        rows += list(dw_rows(args.batch, args.stages, args.dw_programs))
    totals: dict[tuple, list[float]] = {}
    for r in rows:
        key = (r["kernel"], r["stages"], r["programs"], r.get("tile", "-"))
        t = totals.setdefault(key, [0.0, 0.0])
        t[0] += r["count"] * r["us"]
        t[1] += r["count"] * r["torch_us"]
    print(f"MobileNetV2-CIFAR, batch {args.batch}: totals over the network")
    for (kernel, st, progs, tile), (ours, ref) in totals.items():
        print(
            f"{kernel:<12} stages {st}  programs {progs:<5} tile {tile:<8} {ours:9.1f} us   "
            f"torch {ref:9.1f} us   ratio {ref / ours:5.2f}"
        )
    write_csv(rows, Path(args.out), "reduction_tiles")


if __name__ == "__main__":
    main()
