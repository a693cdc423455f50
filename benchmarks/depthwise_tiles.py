"""MobileNetV2's depthwise convs at their real shapes: tile shape vs speed.

The forward (with the batch-norm moments epilogue, as in training), the input gradient and the
weight gradient are memory-bound: each reads one or two activations and writes one (or a few
KB). This times them (replayed in CUDA graphs) over every depthwise layer of MobileNetV2-CIFAR
at ``--batch``: the default pick (rolling rows for the 3x3 stride-1 forward and dgrad, the flat
kernels elsewhere; the all-taps flat weight gradient unless ``WGRAD_ROLLING_ROWS``), each
``--tiles`` tile (BLOCK_P x BLOCK_C on WARPS warps for the flat kernels, or a rolling-rows
tile: depthwise_rows.py), and for 'rows' the rolling-rows weight gradient at each
``--wgrad-programs`` count, against cuDNN on the same tensors. Prints each variant's total over
the network (each layer counted as often as the network has it) with its achieved DRAM-level
bandwidth (bytes read + written once) and writes every timing to
``depthwise_tiles_<gpu>.csv`` under ``--out``.

    python benchmarks/depthwise_tiles.py --batch 512 --tiles 128x32x4 rows r32x16x4x3
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reduction_tiles import bench, mobilenetv2_layers, nhwc, write_csv  # noqa: E402

from tritoncnn import runtime  # noqa: E402
from tritoncnn.kernels import depthwise  # noqa: E402

DEFAULT_TILES = ["128x32x4", "rows", "r32x16x4x3", "r32x16x4x5", "r64x16x4x4"]


def parse_tile(text: str) -> depthwise.DepthwiseConfig | depthwise.RowsConfig:
    """'64x32x4' -> DepthwiseConfig(block_p=64, block_c=32, num_warps=4); 'r64x32x4x2' ->
    RowsConfig(pixels=64, block_c=32, num_warps=4, stages=2) (the rolling-rows kernel,
    depthwise_rows.py: stride-1 layers only); 'rows': depthwise.pick_rows_config's tile."""
    if text.startswith("r"):
        return depthwise.RowsConfig(*(int(v) for v in text[1:].split("x")))
    block_p, block_c, warps = (int(v) for v in text.split("x"))
    return depthwise.DepthwiseConfig(block_p, block_c, warps)


def layer_rows(
    batch: int, c: int, hw: int, stride: int, count: int, tiles: list[str], wgrad_programs
):
    ho = hw // stride
    x, gy = nhwc(batch, c, hw, hw), nhwc(batch, c, ho, ho)
    w = torch.randn(c, 1, 3, 3, device="cuda")
    w16 = w.half()
    conv_args = ((stride, stride), (1, 1), (1, 1), False, (0, 0), c)

    def torch_grad(mask):
        return lambda: torch.ops.aten.convolution_backward(gy, x, w16, None, *conv_args, mask)

    t_torch = {
        "fwd": bench(lambda: torch.ops.aten.convolution(x, w16, None, *conv_args)),
        "dgrad": bench(torch_grad((True, False, False))),
        "wgrad": bench(torch_grad((False, True, False))),
    }
    gb = (x.numel() + gy.numel()) * x.element_size() / 1e9
    for name in ["default", *tiles]:
        cfg = layer_config(name, c, hw, stride)
        if cfg is False:
            continue
        ours = {
            "fwd": lambda cfg=cfg: depthwise.depthwise_conv2d_forward_moments(
                x, w, None, stride, 1, 1, config=cfg
            ),
            "dgrad": lambda cfg=cfg: depthwise.depthwise_conv2d_dgrad(
                gy, w, x.shape, stride, 1, 1, config=cfg
            ),
        }
        # the weight gradient: the default (flat all-taps unless WGRAD_ROLLING_ROWS) and the
        # rolling-rows pick at each program count
        variants = {name: None} if name == "default" else {}
        if name == "rows":
            variants = {f"rows p{p}": p for p in wgrad_programs}
        for op, fn in ours.items():
            yield _row(op, c, hw, stride, batch, count, name, cfg, bench(fn), t_torch, gb)
        for label, programs in variants.items():
            if programs is not None:
                depthwise._WGRAD_ROWS_PROGRAMS = programs
            ms = bench(
                lambda cfg=cfg: depthwise.depthwise_conv2d_wgrad(
                    x, gy, w.shape, stride, 1, 1, config=cfg
                )
            )
            yield _row("wgrad", c, hw, stride, batch, count, label, cfg, ms, t_torch, gb)


def _row(op, c, hw, stride, batch, count, tile, cfg, ms, t_torch, gb) -> dict:
    ho = hw // stride
    picked = cfg or depthwise.pick_config(c, batch * (ho * ho if op == "fwd" else hw * hw))
    if cfg is None and op != "wgrad" and depthwise.ROLLING_ROWS and stride == 1:
        picked = depthwise.pick_rows_config(c, hw)  # what the default runs there
    return {
        "kernel": f"dw_{op}",
        "layer": f"C{c} {hw}x{hw} s{stride} N{batch}",
        "stride": stride,
        "count": count,
        "tile": tile,
        "config": "x".join(str(v) for v in picked) if op != "wgrad" or cfg else "default",
        "us": 1e3 * ms,
        "torch_us": 1e3 * t_torch[op],
        "GB/s": gb / ms * 1e3,
    }


def layer_config(name: str, c: int, hw: int, stride: int):
    """The config ``name`` gives a layer: None for the default pick (flat kernels unless
    depthwise.ROLLING_ROWS), pick_rows_config's for 'rows', False where a rolling-rows tile
    doesn't apply (stride 2)."""
    if name == "default":
        return None
    if name.startswith("r") and stride != 1:
        return False
    return depthwise.pick_rows_config(c, hw) if name == "rows" else parse_tile(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--tiles", nargs="+", default=DEFAULT_TILES, help="BLOCK_PxBLOCK_CxWARPS")
    ap.add_argument(
        "--wgrad-programs",
        nargs="+",
        type=int,
        default=[512, 1024, 2048],
        help="rolling-rows weight gradient: programs in all ('rows' tile)",
    )
    ap.add_argument(
        "--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results")
    )
    args = ap.parse_args()
    if runtime.INTERPRETED:
        sys.exit("benchmarks/depthwise_tiles.py needs a CUDA GPU")
    for tile in args.tiles:
        if tile != "rows":
            parse_tile(tile)  # a malformed tile fails before any timing
    _, layers = mobilenetv2_layers()
    rows = []
    for (c, hw, stride), count in layers.items():
        for row in layer_rows(args.batch, c, hw, stride, count, args.tiles, args.wgrad_programs):
            rows.append(row)
            print(
                f"{row['kernel']:<9} {row['layer']:<22} {row['tile']:<11} {row['config']:<10} "
                f"{row['us']:8.1f} us "
                f"{row['GB/s']:7.0f} GB/s   cuDNN {row['torch_us']:8.1f} us",
                flush=True,
            )
    totals: dict[tuple, list[float]] = {}
    for r in rows:
        keys = [(r["kernel"], r["tile"])]
        if r["tile"] == "default" and r["stride"] == 1:  # what the rolling-rows tiles cover
            keys.append((r["kernel"], "default s1"))
        for key in keys:
            t = totals.setdefault(key, [0.0, 0.0])
            t[0] += r["count"] * r["us"]
            t[1] += r["count"] * r["torch_us"]
    print(f"MobileNetV2-CIFAR, batch {args.batch}: totals over the network (rolling rows and")
    print("'default s1': the stride-1 layers only)")
    for (kernel, tile), (ours, ref) in totals.items():
        ratio = ref / ours
        print(f"{kernel:<9} {tile:<11} {ours:9.1f} us   cuDNN {ref:9.1f} us   ratio {ratio:5.2f}")
    write_csv(rows, Path(args.out), "depthwise_tiles")


if __name__ == "__main__":
    main()
