"""Op-level benchmark: our kernels against torch (cuDNN / cuBLAS) on the same GPU, same run.

Every conv shape of ResNet-18 and MobileNetV2 (CIFAR variants, 32x32 inputs) in fwd, dgrad and
wgrad; linear, batch norm and pooling layers. Prints a table and writes
``benchmarks/results/ops_<gpu>.csv`` (GPU name, torch/triton versions, date in every row),
or under ``$OUT`` when set. ``ours_peak_mib``/``torch_peak_mib``: the GPU memory one call takes
beyond what its inputs already hold (outputs, saved tensors, workspaces such as cuDNN's).

    python benchmarks/ops.py [--batch 128] [--dtype fp16] [--out DIR] [--quick]

Times are medians of ``triton.testing.do_bench`` (CUDA events) after warm-up. torch runs
channels_last with cuDNN autotuning on, its best eager configuration for these shapes.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tritoncnn import nn, runtime  # noqa: E402
from tritoncnn.kernels import conv as conv_k  # noqa: E402
from tritoncnn.kernels import conv_wgrad  # noqa: E402
from tritoncnn.kernels import depthwise as dw_k  # noqa: E402

# H100 SXM dense peaks (tensor-core fp16 with fp32 accumulate, fp32 FMA) and HBM3 bandwidth.
PEAK_TFLOPS = {torch.float16: 989.0, torch.bfloat16: 989.0, torch.float32: 67.0}
PEAK_GBPS = 3350.0

# (name, N-independent conv spec): in, out, kernel, stride, pad, groups, input H=W
RESNET18_CONVS = [
    ("r18.stem", 3, 64, 3, 1, 1, 1, 32),
    ("r18.l1.conv", 64, 64, 3, 1, 1, 1, 32),
    ("r18.l2.conv1", 64, 128, 3, 2, 1, 1, 32),
    ("r18.l2.down", 64, 128, 1, 2, 0, 1, 32),
    ("r18.l2.conv", 128, 128, 3, 1, 1, 1, 16),
    ("r18.l3.conv1", 128, 256, 3, 2, 1, 1, 16),
    ("r18.l3.down", 128, 256, 1, 2, 0, 1, 16),
    ("r18.l3.conv", 256, 256, 3, 1, 1, 1, 8),
    ("r18.l4.conv1", 256, 512, 3, 2, 1, 1, 8),
    ("r18.l4.down", 256, 512, 1, 2, 0, 1, 8),
    ("r18.l4.conv", 512, 512, 3, 1, 1, 1, 4),
]
MOBILENETV2_CONVS = [
    ("mv2.stem", 3, 32, 3, 1, 1, 1, 32),
    ("mv2.dw32", 32, 32, 3, 1, 1, 32, 32),
    ("mv2.proj32-16", 32, 16, 1, 1, 0, 1, 32),
    ("mv2.exp16-96", 16, 96, 1, 1, 0, 1, 32),
    ("mv2.dw96", 96, 96, 3, 1, 1, 96, 32),
    ("mv2.proj96-24", 96, 24, 1, 1, 0, 1, 32),
    ("mv2.exp24-144", 24, 144, 1, 1, 0, 1, 32),
    ("mv2.dw144.s2", 144, 144, 3, 2, 1, 144, 32),
    ("mv2.proj144-32", 144, 32, 1, 1, 0, 1, 16),
    ("mv2.exp32-192", 32, 192, 1, 1, 0, 1, 16),
    ("mv2.dw192", 192, 192, 3, 1, 1, 192, 16),
    ("mv2.dw192.s2", 192, 192, 3, 2, 1, 192, 16),
    ("mv2.exp64-384", 64, 384, 1, 1, 0, 1, 8),
    ("mv2.dw384", 384, 384, 3, 1, 1, 384, 8),
    ("mv2.proj384-96", 384, 96, 1, 1, 0, 1, 8),
    ("mv2.exp96-576", 96, 576, 1, 1, 0, 1, 8),
    ("mv2.dw576.s2", 576, 576, 3, 2, 1, 576, 8),
    ("mv2.exp160-960", 160, 960, 1, 1, 0, 1, 4),
    ("mv2.dw960", 960, 960, 3, 1, 1, 960, 4),
    ("mv2.proj960-320", 960, 320, 1, 1, 0, 1, 4),
    ("mv2.head320-1280", 320, 1280, 1, 1, 0, 1, 4),
]


def bench(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def peak_extra_mib(fn) -> float:
    """GPU memory one call of ``fn`` takes beyond what was allocated before it (its outputs,
    saved tensors and workspaces), MiB; run after ``bench`` so autotuning trials are over."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def conv_rows(spec, batch: int, dtype: torch.dtype):
    name, cin, cout, k, s, p, g, hw = spec
    x = torch.randn(batch, cin, hw, hw, device="cuda", dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    w32 = torch.randn(cout, cin // g, k, k, device="cuda") * 0.1
    w32 = w32.contiguous(memory_format=torch.channels_last)
    w = w32.to(dtype)
    ho = (hw + 2 * p - k) // s + 1
    gy = torch.randn(batch, cout, ho, ho, device="cuda", dtype=dtype)
    gy = gy.contiguous(memory_format=torch.channels_last)
    flops = 2.0 * batch * ho * ho * cout * (cin // g) * k * k
    depthwise = g == cin == cout and g > 1
    pair = (s, s), (p, p), (1, 1)

    if depthwise:
        ours = {
            "fwd": lambda: dw_k.depthwise_conv2d_forward(x, w32, None, *pair),
            "dgrad": lambda: dw_k.depthwise_conv2d_dgrad(gy, w32, x.shape, *pair),
            "wgrad": lambda: dw_k.depthwise_conv2d_wgrad(x, gy, w32.shape, *pair),
        }
    else:
        ours = {
            "fwd": lambda: conv_k.conv2d_forward(x, w32, None, *pair, g),
            "dgrad": lambda: conv_k.conv2d_dgrad(gy, w32, x.shape, *pair, g),
            "wgrad": lambda: conv_wgrad.conv2d_wgrad(x, gy, w32.shape, *pair, g),
        }
    cv = torch.ops.aten.convolution_backward
    theirs = {
        "fwd": lambda: torch.nn.functional.conv2d(x, w, None, s, p, 1, g),
        "dgrad": lambda: cv(
            gy, x, w, None, (s, s), (p, p), (1, 1), False, (0, 0), g, (True, False, False)
        ),
        "wgrad": lambda: cv(
            gy, x, w, None, (s, s), (p, p), (1, 1), False, (0, 0), g, (False, True, False)
        ),
    }
    # depthwise convs are memory-bound: report bandwidth against the bytes each pass must move
    elt = x.element_size()
    bytes_moved = {
        "fwd": (x.numel() + gy.numel()) * elt,
        "dgrad": (x.numel() + gy.numel()) * elt,
        "wgrad": (x.numel() + gy.numel()) * elt,
    }
    for op in ("fwd", "dgrad", "wgrad"):
        t_ours, t_torch = bench(ours[op]), bench(theirs[op])
        yield {
            "op": f"conv.{op}",
            "shape": f"{name} N{batch} {cin}->{cout} k{k} s{s} g{g} {hw}x{hw}",
            "ours_ms": t_ours,
            "torch_ms": t_torch,
            "speedup": t_torch / t_ours,
            "ours_tflops": flops / t_ours / 1e9,
            "ours_gbps": bytes_moved[op] / t_ours / 1e6,
            "roofline_frac": (bytes_moved[op] / t_ours / 1e6 / PEAK_GBPS)
            if depthwise
            else flops / t_ours / 1e9 / PEAK_TFLOPS[dtype],
            "ours_peak_mib": peak_extra_mib(ours[op]),
            "torch_peak_mib": peak_extra_mib(theirs[op]),
        }


def layer_rows(batch: int, dtype: torch.dtype):
    """Whole layers (forward + backward) against torch.nn's twins."""
    cases = [
        (
            "linear 512->256",
            lambda: nn.Linear(512, 256),
            lambda: torch.nn.Linear(512, 256),
            (batch * 4, 512),
        ),
        (
            "bn2d 64@32x32",
            lambda: nn.BatchNorm2d(64),
            lambda: torch.nn.BatchNorm2d(64),
            (batch, 64, 32, 32),
        ),
        (
            "bn2d 256@8x8",
            lambda: nn.BatchNorm2d(256),
            lambda: torch.nn.BatchNorm2d(256),
            (batch, 256, 8, 8),
        ),
        (
            "maxpool2 64@32x32",
            lambda: nn.MaxPool2d(2),
            lambda: torch.nn.MaxPool2d(2),
            (batch, 64, 32, 32),
        ),
        (
            "gap 512@4x4",
            lambda: nn.AdaptiveAvgPool2d(1),
            lambda: torch.nn.AdaptiveAvgPool2d(1),
            (batch, 512, 4, 4),
        ),
    ]
    for name, make_ours, make_torch, shape in cases:
        x = torch.randn(*shape, device="cuda", dtype=dtype)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        ours = make_ours()
        g = torch.randn_like(ours(x))
        ref = make_torch().cuda()
        xr = x.detach().requires_grad_()

        def step_ours(ours=ours, x=x, g=g):
            ours(x)
            ours.backward(g)

        def step_torch(ref=ref, xr=xr, g=g):
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                y = ref(xr)
            y.backward(g)

        ours.zero_grad()
        t_ours, t_torch = bench(step_ours), bench(step_torch)
        nbytes = 3 * x.numel() * x.element_size()  # x read twice + grad written, at least
        yield {
            "op": "layer.fwd+bwd",
            "shape": f"{name} N{shape[0]}",
            "ours_ms": t_ours,
            "torch_ms": t_torch,
            "speedup": t_torch / t_ours,
            "ours_tflops": float("nan"),
            "ours_gbps": nbytes / t_ours / 1e6,
            "roofline_frac": nbytes / t_ours / 1e6 / PEAK_GBPS,
            "ours_peak_mib": peak_extra_mib(step_ours),
            "torch_peak_mib": peak_extra_mib(step_torch),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    ap.add_argument(
        "--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results")
    )
    ap.add_argument("--quick", action="store_true", help="a few shapes only")
    args = ap.parse_args()
    if runtime.INTERPRETED:
        sys.exit("benchmarks/ops.py needs a CUDA GPU")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    torch.backends.cudnn.benchmark = True
    import triton

    meta = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
        "dtype": args.dtype,
    }
    specs = RESNET18_CONVS + MOBILENETV2_CONVS
    if args.quick:
        specs = specs[:3] + specs[-3:]
    rows = []
    for spec in specs:
        for row in conv_rows(spec, args.batch, dtype):
            rows.append({**meta, **row})
            print(
                f"{row['op']:<14} {row['shape']:<48} ours {row['ours_ms']:.4f} ms  "
                f"torch {row['torch_ms']:.4f} ms  x{row['speedup']:.2f}",
                flush=True,
            )
    for row in layer_rows(args.batch, dtype):
        rows.append({**meta, **row})
        print(
            f"{row['op']:<14} {row['shape']:<48} ours {row['ours_ms']:.4f} ms  "
            f"torch {row['torch_ms']:.4f} ms  x{row['speedup']:.2f}",
            flush=True,
        )
    os.makedirs(args.out, exist_ok=True)
    gpu_tag = meta["gpu"].replace(" ", "_")
    path = Path(args.out) / f"ops_{gpu_tag}_{args.dtype}_b{args.batch}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for op in ("conv.fwd", "conv.dgrad", "conv.wgrad"):
        sel = [r["speedup"] for r in rows if r["op"] == op]
        if sel:
            geo = torch.tensor(sel).log().mean().exp().item()
            print(f"{op}: geometric-mean speedup vs torch x{geo:.2f} over {len(sel)} shapes")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
