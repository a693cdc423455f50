"""Every tile of one conv shape: which CONFIGS entry wins, and how far the heuristic's is off.

For each shape (``in:out:kernel:stride:size``, stride-1 convs padded 'same'), times our fwd,
dgrad and wgrad over every candidate tile (``conv.gemm_candidates``; wgrad at the heuristic
split), with the fp32 master weight and with an fp16 copy, against cuDNN in the same run.
``--ops wgrad_other`` times the wgrad with its other column layout (taps flattened with the
channels, or one tap per program: ``conv2d_wgrad(flat_taps=...)``); ``--ops wgrad_rows`` the
wgrad with one program per filter row (``conv2d_wgrad(row_taps=True)``, 3x3 convs, every
4-warp tile whose KW accumulators take at most 192 registers a thread); ``--ops wgrad_8w`` the
tap-looping wgrad with the 8-warp tiles it is never offered (Triton #1254 miscompiled such
loops in other conv kernels); ``--ops fwd_tma dgrad_tma wgrad_tma`` the forward, dgrad and
wgrad through conv_tma's TMA kernels (stride-1 shapes, fp16 weight copy), every TMA tile
candidate; ``--ops fwd_halo dgrad_halo wgrad_halo`` the 3x3 forward, dgrad and wgrad through
conv_halo's halo kernels (sm_90, fp16 weight copy), every halo tile (" pK": persistent, at
most K programs per SM); ``--ops fwd_pointwise dgrad_pointwise`` the short-K 1x1 forward and
input gradient through conv_pointwise's persistent kernel, every pointwise tile. With
``--moments`` the forwards (fwd, fwd_pointwise, ...) also store the batch-norm moments of their
output, as in the training step (``conv2d_forward_moments``; rows named ``<op>_moments``,
``fwd_pointwise_moments_one_pass`` with TRITONCNN_ONE_PASS_MOMENTS=1; cuDNN's time is its
plain forward). Each timing
row carries its error against cuDNN's result. Prints one line per (shape, op, weight dtype):
the heuristic tile's time, the best tile and its time, cuDNN's time; writes
``conv_tiles_<gpu>.csv`` with every timing under ``--out``. Times are CUDA-graph replays
(``--eager``: launches).

    python benchmarks/conv_tiles.py --batch 512 --shapes 24:144:1:1:32 144:24:1:1:32
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tritoncnn import runtime  # noqa: E402
from tritoncnn.kernels import conv as conv_k  # noqa: E402
from tritoncnn.kernels import (  # noqa: E402
    conv_configs,
    conv_halo,
    conv_halo_wgrad,
    conv_pointwise,
    conv_tma,
    conv_wgrad,  # noqa: E402
)

# Replayed in a CUDA graph unless --eager: the training step is graphed, and eagerly the host
# time of a Gluon launch (its descriptors built in Python) can exceed a 100 us kernel's: on
# 12-07 the same halo tile timed 118 us graphed and 240 us eagerly.
GRAPHED = True
# --splits: the K splits the wgrad_split op times (conv2d_wgrad(split_k=...))
SPLITS: tuple[int, ...] = ()
# --moments: the forwards store the batch-norm moments of their output, as in training
MOMENTS = False


def op_label(op: str) -> str:
    """An op's CSV name: ``<op>_moments`` for a forward under --moments, and
    ``fwd_pointwise_moments_one_pass`` with TRITONCNN_ONE_PASS_MOMENTS=1."""
    if not (MOMENTS and op.startswith("fwd")):
        return op
    one_pass = op == "fwd_pointwise" and conv_pointwise.ONE_PASS_MOMENTS
    return f"{op}_moments" + ("_one_pass" if one_pass else "")


def forward(x, w, pair, cfg) -> torch.Tensor:
    """Our forward of ``x`` at tile ``cfg`` (with the output's BN moments when MOMENTS)."""
    if MOMENTS:
        return conv_k.conv2d_forward_moments(x, w, None, *pair, 1, config=cfg)[0]
    return conv_k.conv2d_forward(x, w, None, *pair, 1, config=cfg)


def tile_label(cfg, tma: bool, halo: bool) -> str:
    """A tile's CSV name: BLOCK_M x BLOCK_N x BLOCK_K, warps, stages, and its kernel (and
    " kN" for a wgrad_split row's N splits)."""
    if isinstance(cfg, tuple):  # wgrad_split: (tile, split; None: the heuristic's)
        split = "" if cfg[1] is None else f" k{cfg[1]}"
        return tile_label(cfg[0], tma, halo) + split
    if isinstance(cfg, conv_pointwise.PointwiseConfig):
        # (its programs per SM depend on the reduction: conv_pointwise.resident_per_sm; the
        # CSVs before 2026-12-08's sixteenth session named the tile's one count, e.g. "p3")
        return f"{cfg.block_m}x{cfg.block_n} w{cfg.num_warps} s{cfg.num_stages} pointwise"
    return (
        f"{cfg.BLOCK_M}x{cfg.BLOCK_N}x{cfg.BLOCK_K} w{cfg.num_warps} s{cfg.num_stages}"
        + (" tma" if tma else "")
        + (" halo" if halo else "")
        + (f" p{cfg.per_sm}" if getattr(cfg, "per_sm", 0) else "")
        + (" lw" if getattr(cfg, "loader_warp", False) else "")
    )


def bench(fn) -> float:
    import triton.testing

    fn()  # compiled before the capture
    if GRAPHED:
        return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.float() - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def parse_shape(text: str) -> tuple[int, int, int, int, int]:
    cin, cout, k, s, hw = (int(v) for v in text.split(":"))
    return cin, cout, k, s, hw


def shape_rows(shape, batch: int, op_names=("fwd", "dgrad", "wgrad"), weights=("fp32", "fp16")):
    cin, cout, k, s, hw = shape
    pad = k // 2
    pair = (s, s), (pad, pad), (1, 1)
    dtype = torch.float16
    x = torch.randn(batch, cin, hw, hw, device="cuda", dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    w32 = (torch.randn(cout, cin, k, k, device="cuda") * 0.1).contiguous(
        memory_format=torch.channels_last
    )
    ho = (hw + 2 * pad - k) // s + 1
    gy = torch.randn(batch, cout, ho, ho, device="cuda", dtype=dtype)
    gy = gy.contiguous(memory_format=torch.channels_last)
    m, is_1x1 = batch * ho * ho, k == 1 and s == 1
    gemm = {  # op -> (M, N, K) of its GEMM
        "fwd": (m, cout, cin * k * k),
        "dgrad": (batch * hw * hw // (s * s), cin, cout * k * k),
        # (wgrad: per tap, unless a small C_in is flattened with the taps)
        "wgrad": (cout, cin * k * k if cin < conv_k.FLAT_MAX_CHANNELS else cin, m),
        # the other column layout of the same wgrad (``conv2d_wgrad(flat_taps=...)``)
        "wgrad_other": (cout, cin if cin < conv_k.FLAT_MAX_CHANNELS else cin * k * k, m),
        "wgrad_rows": (cout, cin, m),
        "wgrad_8w": (cout, cin, m),
        "wgrad_split": (cout, cin * k * k if cin < conv_k.FLAT_MAX_CHANNELS else cin, m),
        "fwd_tma": (m, cout, cin * k * k),
        "dgrad_tma": (batch * hw * hw, cin, cout * k * k),
        "wgrad_tma": (cout, cin, m),
        "fwd_halo": (m, cout, cin * k * k),
        "dgrad_halo": (batch * hw * hw, cin, cout * k * k),
        "wgrad_halo": (cout, cin, m),
        "fwd_pointwise": (m, cout, cin),
        "dgrad_pointwise": (batch * hw * hw, cin, cout),
    }
    other_flat = cin >= conv_k.FLAT_MAX_CHANNELS
    cv = torch.ops.aten.convolution_backward
    w16 = w32.to(dtype)  # cuDNN's weight, cast once: no cast kernel in its time
    for w_name, w in (("fp32", w32), ("fp16", w16)):
        ops = {
            "fwd": lambda cfg, w=w: forward(x, w, pair, cfg),
            "fwd_tma": lambda cfg, w=w: forward(x, w, pair, cfg),
            "fwd_pointwise": lambda cfg, w=w: forward(x, w, pair, cfg),
            "dgrad_pointwise": lambda cfg, w=w: conv_k.conv2d_dgrad(
                gy, w, x.shape, *pair, 1, config=cfg
            ),
            "dgrad_tma": lambda cfg, w=w: conv_k.conv2d_dgrad(gy, w, x.shape, *pair, 1, config=cfg),
            "wgrad_tma": lambda cfg, w=w: conv_wgrad.conv2d_wgrad(
                x, gy, w.shape, *pair, 1, config=cfg
            ),
            "fwd_halo": lambda cfg, w=w: forward(x, w, pair, cfg),
            "dgrad_halo": lambda cfg, w=w: conv_k.conv2d_dgrad(
                gy, w, x.shape, *pair, 1, config=cfg
            ),
            "wgrad_halo": lambda cfg, w=w: conv_wgrad.conv2d_wgrad(
                x, gy, w.shape, *pair, 1, config=cfg
            ),
            "dgrad": lambda cfg, w=w: conv_k.conv2d_dgrad(gy, w, x.shape, *pair, 1, config=cfg),
            "wgrad": lambda cfg, w=w: conv_wgrad.conv2d_wgrad(x, gy, w.shape, *pair, 1, config=cfg),
            # (cfg: (tile, split); split None: the heuristic's)
            "wgrad_split": lambda cfg: conv_wgrad.conv2d_wgrad(
                x, gy, w32.shape, *pair, 1, config=cfg[0], split_k=cfg[1]
            ),
            "wgrad_other": lambda cfg, w=w: conv_wgrad.conv2d_wgrad(
                x, gy, w.shape, *pair, 1, config=cfg, flat_taps=other_flat
            ),
            "wgrad_rows": lambda cfg, w=w: conv_wgrad.conv2d_wgrad(
                x, gy, w.shape, *pair, 1, config=cfg, flat_taps=False, row_taps=True
            ),
            "wgrad_8w": lambda cfg, w=w: conv_wgrad.conv2d_wgrad(
                x, gy, w.shape, *pair, 1, config=cfg, flat_taps=False, row_taps=False
            ),
        }
        cudnn = {
            "fwd": lambda: torch.nn.functional.conv2d(x, w16, None, s, pad),
            "dgrad": lambda: cv(
                gy, x, w16, None, (s, s), (pad, pad), (1, 1), False, (0, 0), 1,
                (True, False, False),
            ),
            "wgrad": lambda: cv(
                gy, x, w16, None, (s, s), (pad, pad), (1, 1), False, (0, 0), 1,
                (False, True, False),
            ),
        }  # fmt: skip
        cudnn["wgrad_other"] = cudnn["wgrad_rows"] = cudnn["wgrad_8w"] = cudnn["wgrad"]
        cudnn["wgrad_split"] = cudnn["wgrad"]
        cudnn["fwd_tma"], cudnn["dgrad_tma"] = cudnn["fwd"], cudnn["dgrad"]
        cudnn["wgrad_tma"] = cudnn["wgrad"]
        cudnn["fwd_halo"], cudnn["dgrad_halo"] = cudnn["fwd"], cudnn["dgrad"]
        cudnn["wgrad_halo"], cudnn["fwd_pointwise"] = cudnn["wgrad"], cudnn["fwd"]
        cudnn["dgrad_pointwise"] = cudnn["dgrad"]
        for op, run in ops.items():
            if op not in op_names or w_name not in weights:
                continue
            if (
                op in ("wgrad_other", "wgrad_rows", "wgrad_8w")
                and is_1x1
                or (op == "wgrad_rows" and k > 3)
            ):
                continue
            if op.startswith("wgrad") and w_name != weights[0]:
                continue  # wgrad never reads the weight: once, under the first weight dtype
            tma = op.endswith("_tma")
            halo = op.endswith("_halo")
            if op == "wgrad_halo" and not conv_halo_wgrad.halo_wgrad_applicable(
                x, gy, w.shape, (s, s), (pad,) * 4, (1, 1), 1
            ):
                continue
            if op in ("fwd_halo", "dgrad_halo") and not conv_halo.halo_applicable(
                x if op == "fwd_halo" else gy, w, (s, s), (pad,) * 4, (1, 1), 1
            ):
                continue  # (an fp32 weight, a stride, a shape the halo kernel can't take)
            if op == "fwd_pointwise" and not conv_pointwise.pointwise_applicable(
                x, w, (s, s), (pad,) * 4, (1, 1), 1
            ):
                continue  # (not a short-K 1x1)
            if op == "dgrad_pointwise" and not conv_pointwise.pointwise_applicable(
                gy, w.transpose(0, 1), (s, s), (pad,) * 4, (1, 1), 1
            ):
                continue
            if op == "fwd_tma" and not conv_tma.tma_applicable(x, w, (s, s), (1, 1), 1, ho, ho):
                continue  # (an fp32 weight, a stride, a channel count TMA can't take)
            if op == "dgrad_tma" and not conv_tma.tma_dgrad_applicable(
                gy, w, (s, s), (1, 1), 1, hw, hw
            ):
                continue
            mm, nn_, kk = gemm[op]
            b_bytes = 2 if op.startswith("wgrad") else w.element_size()
            # (the weight gradient's K, the pixels, is split: conv2d_wgrad picks with split_k;
            # a 1x1's tiles have rules of their own)
            heuristic = conv_k.pick_config(
                mm, nn_, kk, dtype, split_k=op.startswith("wgrad"),
                is_1x1=is_1x1 and op in ("fwd", "dgrad", "wgrad", "wgrad_split"),
                dgrad=op == "dgrad",
            )  # fmt: skip
            cands = conv_k.gemm_candidates(mm, nn_, kk, 2, b_bytes, is_1x1)
            if op == "wgrad_rows":  # KW x tiles staged per K step, KW accumulators
                cands = conv_k.gemm_candidates(mm, nn_, kk, 2, k * b_bytes, is_1x1)
                cands = [c for c in cands if c.BLOCK_M * c.BLOCK_N * k <= 192 * 32 * c.num_warps]
                heuristic = cands[0] if heuristic not in cands else heuristic
            if op == "wgrad_split":  # the heuristic tile at each split
                cands = [(heuristic, split) for split in SPLITS]
                heuristic = (heuristic, None)
            if op == "wgrad_8w":  # tap-looping 8-warp tiles: never candidates (Triton #1254)
                cands = [c for c in conv_k.CONFIGS if c.num_warps == 8]
                cands = [
                    c for c in cands if c.smem_bytes(2, 2) <= conv_configs.operand_smem_limit()
                ]
                heuristic = cands[0]
            if op == "wgrad_tma":
                if not conv_tma.tma_wgrad_applicable(x, gy, (s, s), (1, 1), 1):
                    continue
                cands = conv_tma.tma_wgrad_candidates(
                    cin, cout, ho, ho, conv_configs.operand_smem_limit(), k
                )
                heuristic = conv_tma.pick_tma_wgrad_config(cin, cout, k)
            elif op == "wgrad_halo":
                smem = conv_configs.operand_smem_limit()
                cands = conv_halo_wgrad.halo_wgrad_candidates(cin, cout, hw, hw, smem)
                heuristic = conv_halo_wgrad.pick_halo_wgrad_config(hw, hw)
            elif halo:
                cols = cin if op == "dgrad_halo" else cout
                cands = conv_halo.halo_candidates(cols, hw, hw, conv_configs.smem_optin(), 1)
                heuristic = conv_halo.pick_halo_config(hw, hw, op == "dgrad_halo")
            elif op in ("fwd_pointwise", "dgrad_pointwise"):
                cands = list(conv_pointwise.POINTWISE_CONFIGS)
                heuristic = conv_pointwise.pick_pointwise_config(
                    cout if op == "fwd_pointwise" else cin
                )
            elif tma:
                dgrad = op == "dgrad_tma"
                red, cols = (cout, cin) if dgrad else (cin, cout)
                smem = conv_configs.operand_smem_limit()
                cands = conv_tma.tma_candidates(red, cols, hw, hw, smem, dgrad)
                heuristic = conv_tma.pick_tma_config(red, cols, dgrad)
            t_cudnn = bench(cudnn[op])
            reference = cudnn[op]()  # convolution_backward: (grad_input, grad_weight, None)
            if isinstance(reference, tuple):
                reference = reference[1] if op.startswith("wgrad") else reference[0]
            reference = reference.float()
            for cfg in dict.fromkeys([heuristic, *cands]):
                try:
                    us = 1e3 * bench(lambda cfg=cfg, run=run: run(cfg))
                    err = relative_error(run(cfg), reference)
                except Exception as e:  # a tile that doesn't compile for this op: report it
                    print(f"{op} {cfg}: {type(e).__name__}: {str(e)[:200]}")
                    continue
                yield {
                    "shape": f"{cin}->{cout} k{k} s{s} {hw}x{hw} N{batch}",
                    "op": op_label(op),
                    "weight": w_name,
                    "tile": tile_label(cfg, tma, halo),
                    "heuristic": cfg == heuristic,
                    "us": us,
                    "cudnn_us": 1e3 * t_cudnn,
                    # max |ours - cuDNN| / max |cuDNN|: ~1e-3 from fp16 rounding; a
                    # miscompiled tile (Triton #1254) gives O(1)
                    "max_rel_err": err,
                }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--shapes", nargs="+", type=parse_shape, required=True)
    ap.add_argument("--ops", nargs="+", default=["fwd", "dgrad", "wgrad"])
    ap.add_argument("--weights", nargs="+", default=["fp32", "fp16"], help="weight dtypes")
    ap.add_argument(
        "--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results")
    )
    ap.add_argument("--eager", action="store_true", help="time eager launches, not graphs")
    ap.add_argument(
        "--splits", nargs="+", type=int, default=[], help="the K splits wgrad_split times"
    )
    ap.add_argument(
        "--moments",
        action="store_true",
        help="the forwards also store their output's BN moments (the training step's form)",
    )
    args = ap.parse_args()
    global GRAPHED, SPLITS, MOMENTS
    GRAPHED = not args.eager
    SPLITS = tuple(args.splits)
    MOMENTS = args.moments
    conv_tma.ENABLED = True  # the TMA ops are what this measures (off by default elsewhere)
    conv_halo.ENABLED = True  # so are the halo ops
    if runtime.INTERPRETED:
        sys.exit("benchmarks/conv_tiles.py needs a CUDA GPU")
    rows = []
    for shape in args.shapes:
        part = list(shape_rows(shape, args.batch, args.ops, args.weights))
        rows += part
        if not part:
            continue
        for key in dict.fromkeys((r["op"], r["weight"]) for r in part):
            group = [r for r in part if (r["op"], r["weight"]) == key]
            heur = next((r for r in group if r["heuristic"]), group[0])
            best = min(group, key=lambda r: r["us"])
            print(
                f"{heur['shape']:<28} {key[0]:<5} w={key[1]}  heuristic {heur['tile']:<18} "
                f"{heur['us']:8.1f} us  best {best['tile']:<18} {best['us']:8.1f} us  "
                f"cuDNN {heur['cudnn_us']:8.1f} us  worst error "
                f"{max(r['max_rel_err'] for r in group):.1e}"
            )
    gpu = torch.cuda.get_device_name()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"conv_tiles_{gpu.replace(' ', '_')}.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["gpu", "torch", *rows[0].keys()])
        writer.writeheader()
        for r in rows:
            writer.writerow({"gpu": gpu, "torch": torch.__version__, **r})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
