"""ResNet-18's 3x3 stride-1 convs (forward with BN moments, dgrad, wgrad) at their heuristic
tiles, each timed replayed in a CUDA graph (no host in the time: what the graphed training
step sees) and launched eagerly (host launch cost included where it exceeds the kernel's).

It imports only the conv launch helpers (``conv2d_forward_moments``, ``conv2d_dgrad``,
``conv2d_wgrad``), whose signatures have not changed, so the same script times an older tree
of the project on the same GPU in the same call (``PYTHONPATH=<old tree>``): how a kernel
regression is found without a step trace. (``conv2d_wgrad`` moved from kernels/conv.py to
kernels/conv_wgrad.py on 2026-12-08: either is found.)

    python3 benchmarks/conv_graphed.py --label head --out $OUT
    PYTHONPATH=/tmp/old python3 benchmarks/conv_graphed.py --label 6d5633d --out $OUT

cuDNN's same conv (torch, fp16, channels_last; its forward without the moments) is timed
graphed beside each: the ratio is cuDNN's time over ours.

Writes (appends) conv_graphed_<gpu>.csv: label, shape, op, graph_us, eager_us, cudnn_graph_us.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
from pathlib import Path

import torch

# (channels, image size) of ResNet-18's 3x3 stride-1 layers at CIFAR size
SHAPES = ((64, 32), (128, 16), (256, 8), (512, 4))


def _cases(batch: int, c: int, size: int) -> dict:
    """op -> (a zero-argument call of that conv at the heuristic tile, cuDNN's)."""
    from tritoncnn.kernels import conv as K

    try:
        from tritoncnn.kernels.conv_wgrad import conv2d_wgrad
    except ImportError:  # a tree from before 2026-12-08 (a name this tree's conv.py lacks)
        conv2d_wgrad = getattr(K, "conv2d_wgrad")  # noqa: B009

    g = torch.Generator(device="cuda").manual_seed(0)

    def nhwc(*shape: int) -> torch.Tensor:
        t = torch.randn(shape, device="cuda", generator=g, dtype=torch.float16)
        return t.contiguous(memory_format=torch.channels_last)

    x, dy = nhwc(batch, c, size, size), nhwc(batch, c, size, size)
    w = (torch.randn(c, c, 3, 3, device="cuda", generator=g) * 0.05).half()
    w = w.contiguous(memory_format=torch.channels_last)
    geometry = ((1, 1), (1, 1), (1, 1), 1)
    dx = torch.empty_like(x)
    gw = torch.zeros(c, c, 3, 3, device="cuda").contiguous(memory_format=torch.channels_last)
    ours = {
        "fwd_moments": lambda: K.conv2d_forward_moments(x, w, None, *geometry),
        "dgrad": lambda: K.conv2d_dgrad(dy, w, x.shape, *geometry, out=dx),
        "wgrad": lambda: conv2d_wgrad(x, dy, w.shape, *geometry, grad_weight=gw),
    }
    backward = torch.ops.aten.convolution_backward
    conv_args = (w, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1)
    cudnn = {  # the same GEMMs in cuDNN (no moments: its forward is the plain conv)
        "fwd_moments": lambda: torch.nn.functional.conv2d(x, w, None, 1, 1),
        "dgrad": lambda: backward(dy, x, *conv_args, (True, False, False)),
        "wgrad": lambda: backward(dy, x, *conv_args, (False, True, False)),
    }
    return {op: (ours[op], cudnn[op]) for op in ours}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True, help="the tree timed (a commit, 'head')")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    import triton
    import triton.testing

    torch.backends.cudnn.benchmark = True  # cuDNN's best algorithm, as the torch rows use
    gpu = torch.cuda.get_device_name()
    path = Path(args.out) / f"conv_graphed_{gpu.replace(' ', '_')}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        out = csv.writer(f)
        if new:
            out.writerow(["gpu", "torch", "triton", "date", "label", "halo", "shape", "op",
                          "graph_us", "eager_us", "cudnn_graph_us"])  # fmt: skip
        for c, size in SHAPES:
            for op, (fn, ref) in _cases(args.batch, c, size).items():
                fn(), ref()  # compile / pick cuDNN's algorithm
                torch.cuda.synchronize()
                graph = triton.testing.do_bench_cudagraph(fn, rep=40, return_mode="median")
                eager = triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")
                cudnn = triton.testing.do_bench_cudagraph(ref, rep=40, return_mode="median")
                shape = f"{c}->{c} k3 s1 {size}x{size} N{args.batch}"
                print(f"{args.label:10s} {shape:26s} {op:12s} graph {graph * 1e3:8.1f} us  "
                      f"eager {eager * 1e3:8.1f} us  cuDNN {cudnn * 1e3:8.1f} us  "
                      f"{cudnn / graph:5.2f}x", flush=True)  # fmt: skip
                out.writerow([gpu, torch.__version__, triton.__version__,
                              datetime.date.today().isoformat(), args.label,
                              os.environ.get("TRITONCNN_HALO", "1"), shape, op,
                              f"{graph * 1e3:.1f}", f"{eager * 1e3:.1f}",
                              f"{cudnn * 1e3:.1f}"])  # fmt: skip


if __name__ == "__main__":
    main()
