"""Whole training step, tritoncnn against torch.nn on the same GPU in the same run.

For each model and batch size: ms/step, images/s, achieved TFLOP/s and peak GPU memory of
  - tritoncnn fp16: eager launches from Python (``tritoncnn_fp16``) and the same step captured
    in a CUDA graph (``tritoncnn_fp16_graph``, ``tritoncnn.train.cuda_graph.CudaGraphStep``;
    ``--no-graph`` skips it). Our step starts from the GPU-resident loader's gather
    (``GPULoader.next_batch``: uint8 -> normalised fp16 batch) as the trainer's does;
  - torch eager fp32, torch eager AMP + channels_last,
  - torch.compile of the whole step (default), with --reduce-overhead
    torch.compile(mode="reduce-overhead") (its CUDA graphs), and with --max-autotune
    torch.compile(mode="max-autotune"),
all with SGD(momentum). With TRITONCNN_PDL=1 (kernels/pdl.py; sm_90+) our rows are named
``..._pdl``: run once without and once with to compare. Torch's batch is already a float
tensor on the GPU. Writes ``train_step_<gpu>.csv`` (GPU, versions, date in every row) and a bar
chart to ``--out`` (default ``$OUT``, else ``benchmarks/results/``).

TFLOP/s counts 3x the forward's conv/linear FLOPs (forward + the two backward GEMMs).
``peak_mem_mib`` is ``torch.cuda.max_memory_allocated`` while that configuration alone is built
and run (the previous one freed, the counter reset): parameters, optimizer state, activations,
workspaces, the CUDA graph's pool, plus the few MiB of the shared input batch.

    python benchmarks/train_step.py [--models baseline resnet18 mobilenetv2] [--batches 128 512]
                                    [--reduce-overhead] [--max-autotune] [--no-compile]
                                    [--no-graph] [--unfused] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import gc
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tritoncnn import models, nn, runtime  # noqa: E402
from tritoncnn.export import to_torch  # noqa: E402
from tritoncnn.kernels import conv as conv_k  # noqa: E402
from tritoncnn.kernels import (  # noqa: E402
    conv_configs,
    conv_wgrad,  # noqa: E402
    pdl,
)
from tritoncnn.optim import SGD, GradScaler  # noqa: E402


def bench(fn, steps: int = 30, warmup: int = 5) -> float:
    """Median ms per call of fn (CUDA events around each call, after warm-up)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def flops_per_image(model, image_size: int, channels: int) -> float:
    """Forward FLOPs per image (2 x conv/linear multiply-adds) from the model summary."""
    from tritoncnn.models.summary import summary

    return float(summary(model, (channels, image_size, image_size)).flops)


def graph_step_class():
    """``CudaGraphStep`` if this checkout has it and CUDA graphs can run, else None (with why)."""
    try:
        from tritoncnn.train import cuda_graph
    except ImportError:
        return None, "tritoncnn.train.cuda_graph not found"
    if not cuda_graph.enabled():
        return None, "cuda_graph.enabled() is False"
    return cuda_graph.CudaGraphStep, ""


def ours_step(
    name: str,
    batch: int,
    dtype,
    graph: bool,
    fuse: bool = True,
    cast_weights: bool = True,
    conv_bn_moments: bool = True,
    wgrad_row_taps: bool = True,
    bn_into_depthwise: bool = False,
    bn_grad_sums: bool = False,
    fuse_residual: bool = True,
    dw_wgrad_all_taps: bool = True,
    dw_wgrad_rows: bool = True,
    skip_grad_in_dgrad: bool = True,
    relu_grad_in_dgrad: bool = False,
    tma: tuple[str, ...] = (),
    halo: bool | None = None,
    loader_warp: bool | None = None,
    loader_warp_wgrad: bool = False,
    pointwise: bool | None = None,
    wgrad_max_splits: int = conv_configs.MAX_SPLITS,
    weight_casts: bool = True,
):
    """A fresh tritoncnn model's training step on the loader's gathered batch; the whole call
    captured in a CUDA graph when ``graph`` (after two eager steps, as the trainer does).
    ``fuse``: BN -> activation pairs in one kernel (models.build's default). ``cast_weights``
    False: the conv GEMMs read the fp32 master weights (nn.Conv2d.cast_weights).
    ``conv_bn_moments``: BN statistics from the conv epilogues (models.build's default).
    ``wgrad_row_taps``: conv weight gradients with one program per filter row where the tile
    allows (kernels.conv_wgrad.WGRAD_ROW_TAPS, the default, read at every launch: set for this
    variant's run).
    ``bn_into_depthwise``: BatchNorms before depthwise convs applied in those convs' loads.
    ``bn_grad_sums``: BatchNorms before convs take their backward sums from the dgrads.
    ``fuse_residual``: residual blocks add their skip tensor in their last BN's apply
    (models.build's default).
    ``dw_wgrad_rows``: 3x3 stride-1 depthwise weight gradients by rolling rows
    (kernels.depthwise.WGRAD_ROLLING_ROWS, the default, read at every launch).
    ``dw_wgrad_all_taps``: 3x3 depthwise weight gradients with all nine taps in one program
    (kernels.depthwise.WGRAD_ALL_TAPS, the default, read at every launch).
    ``skip_grad_in_dgrad``: residual blocks add their skip gradient in their first conv's dgrad
    epilogue (models.build's default).
    ``relu_grad_in_dgrad``: ... and apply the previous block's ReLU backward there too.
    ``tma``: the conv ops ("fwd", "dgrad", "wgrad") that take kernels/conv_tma.py's TMA
    kernels where they apply (kernels.conv.TMA_CONVS and conv_tma.ENABLED, read at every
    launch; rows without leave conv_tma.ENABLED to TRITONCNN_TMA).
    ``halo``: whether 3x3 stride-1 convs take kernels/conv_halo.py's halo kernels where they
    apply (conv_halo.ENABLED; None: as TRITONCNN_HALO says, on unless it is 0).
    ``loader_warp``: whether the halo kernels' heuristic tiles (and candidates) are their
    loader-warp versions (conv_halo.LOADER_WARP; None: as TRITONCNN_HALO_LOADER_WARP says).
    ``loader_warp_wgrad``: the halo weight gradient's alone (conv_halo_wgrad.LOADER_WARP;
    False: as TRITONCNN_HALO_WGRAD_LOADER_WARP says).
    ``pointwise``: whether short-K 1x1 forwards and plain dgrads take
    kernels/conv_pointwise.py's persistent kernel (conv_pointwise.ENABLED; None: as
    TRITONCNN_POINTWISE says: on the GPU unless it is 0).
    ``wgrad_max_splits``: the most K splits of a conv weight gradient (conv_configs.MAX_SPLITS,
    read at every launch).
    ``weight_casts``: the convs' 16-bit weight copies refreshed in one launch before the
    forward, as the trainer does (nn.weight_casts; False, or a tree without it: each conv
    casts its own)."""
    from tritoncnn.data.loader import GPULoader
    from tritoncnn.kernels import conv_halo, conv_halo_wgrad, conv_pointwise, conv_tma
    from tritoncnn.kernels import depthwise as depthwise_k

    conv_wgrad.WGRAD_ROW_TAPS = wgrad_row_taps
    depthwise_k.WGRAD_ALL_TAPS = dw_wgrad_all_taps
    depthwise_k.WGRAD_ROLLING_ROWS = dw_wgrad_rows
    conv_k.TMA_CONVS = frozenset(tma)
    conv_tma.ENABLED = bool(tma) or conv_tma.env_enabled()
    conv_halo.ENABLED = conv_halo.env_enabled() if halo is None else halo
    conv_halo.LOADER_WARP = (
        conv_halo.loader_warp_env_enabled() if loader_warp is None else loader_warp
    )
    env_wgrad = conv_halo_wgrad.wgrad_loader_warp_env_enabled()
    conv_halo_wgrad.LOADER_WARP = True if loader_warp_wgrad or env_wgrad else None
    conv_pointwise.ENABLED = conv_pointwise.env_enabled() if pointwise is None else pointwise
    conv_configs.MAX_SPLITS = wgrad_max_splits

    torch.manual_seed(0)
    model = models.build(
        name, num_classes=10, in_channels=3, image_size=32, fuse=fuse,
        conv_bn_moments=conv_bn_moments, bn_into_depthwise=bn_into_depthwise,
        bn_grad_sums=bn_grad_sums, fuse_residual=fuse_residual,
        skip_grad_in_dgrad=skip_grad_in_dgrad, relu_grad_in_dgrad=relu_grad_in_dgrad,
    )  # fmt: skip
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.cast_weights = cast_weights
    loss_fn = nn.CrossEntropyLoss()
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = GradScaler() if dtype == torch.float16 else None
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    loader = GPULoader(images, labels, batch, (0.5,) * 3, (0.25,) * 3, shuffle=False, dtype=dtype)
    refreshed = _weight_casts(model) if weight_casts else None

    def step():
        loader.set_epoch(0)  # back to batch 0 (one tiny launch): every call trains one batch
        x, y = loader.next_batch()
        if refreshed is None:
            logits = model(x)
        else:
            with refreshed(x.dtype):
                logits = model(x)
        loss_fn(logits, y)
        model.backward(loss_fn.backward(scaler.scale_tensor if scaler else None))
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=False)

    step.model = model  # (for profile_step.py's launch log)
    if not graph:
        return step
    cls, why = graph_step_class()
    if cls is None:
        raise RuntimeError(f"no CUDA-graph step: {why}")
    return cls(step, warmup=2)


def _weight_casts(model):
    """``WeightCasts(model).refreshed`` where this tree has it (nn/weight_casts.py, 12-08),
    else None: the step then runs as the trees before it did."""
    try:
        from tritoncnn.nn.weight_casts import WeightCasts
    except ImportError:
        return None
    return WeightCasts(model).refreshed


def torch_step(twin, x, y, mode: str):
    """The torch twin's step in ``mode`` (eager fp32, eager AMP + channels_last, compiled)."""
    twin = copy.deepcopy(twin).cuda()
    amp = mode != "eager_fp32"
    if amp:
        twin = twin.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=True)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = loss_fn(twin(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    if mode == "compile":
        return torch.compile(step)
    if mode == "compile_reduce_overhead":
        compiled = torch.compile(step, mode="reduce-overhead")

        def graphed_step():
            # each call is a new iteration: without the mark, cudagraph trees treat the
            # optimizer's reads of the last replay's outputs as use-after-overwrite
            torch.compiler.cudagraph_mark_step_begin()
            compiled()

        return graphed_step
    if mode == "compile_max_autotune":
        return torch.compile(step, mode="max-autotune")
    return step


def _free() -> None:
    """Release the previous configuration's memory and reset the peak counter."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["baseline", "resnet18", "mobilenetv2"])
    ap.add_argument("--batches", nargs="+", type=int, default=[128, 512])
    ap.add_argument("--reduce-overhead", action="store_true")
    ap.add_argument("--max-autotune", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--ours-only", action="store_true", help="no torch rows")
    ap.add_argument("--no-graph", action="store_true", help="tritoncnn eager launches only")
    ap.add_argument(
        "--unfused", action="store_true", help="add a graph row without the BN->activation fusion"
    )
    ap.add_argument(
        "--fp32-conv-weights",
        action="store_true",
        help="add a graph row whose conv GEMMs read the fp32 master weights",
    )
    ap.add_argument(
        "--without-moments",
        action="store_true",
        help="add a graph row whose BatchNorms run their own statistics pass (not the conv "
        "epilogues')",
    )
    ap.add_argument(
        "--bn-into-depthwise",
        action="store_true",
        help="add a graph row whose BatchNorms before depthwise convs are applied in the "
        "convs' loads",
    )
    ap.add_argument(
        "--bn-grad-sums",
        action="store_true",
        help="add a graph row whose BatchNorms before convs take their backward sums from "
        "the convs' dgrad epilogues (and one with --bn-into-depthwise too)",
    )
    ap.add_argument(
        "--without-fuse-residual",
        action="store_true",
        help="add a graph row whose residual blocks add their skip tensor in a kernel of its "
        "own (not in the last BN's apply pass)",
    )
    ap.add_argument("--graph-only", action="store_true", help="no eager tritoncnn row")
    ap.add_argument(
        "--without-row-taps",
        action="store_true",
        help="add a graph row whose 3x3 weight gradients run one program per tap (not per row)",
    )
    ap.add_argument(
        "--without-skip-grad-in-dgrad",
        action="store_true",
        help="add a graph row whose residual blocks add their skip gradient in a kernel of "
        "its own (not in the first conv's dgrad epilogue)",
    )
    ap.add_argument(
        "--relu-grad-in-dgrad",
        action="store_true",
        help="add a graph row whose residual blocks also apply the previous block's ReLU "
        "backward in that epilogue (no ReLU backward kernel)",
    )
    ap.add_argument(
        "--dw-wgrad-flat",
        action="store_true",
        help="add a graph row whose 3x3 stride-1 depthwise weight gradients take the flat "
        "all-taps kernel (not depthwise_rows_wgrad_kernel)",
    )
    ap.add_argument(
        "--dw-wgrad-per-tap",
        action="store_true",
        help="add a graph row whose 3x3 depthwise weight gradients run one program per tap "
        "(not all nine taps per program)",
    )
    ap.add_argument(
        "--tma",
        action="store_true",
        help="add a graph row whose stride-1 conv forwards, dgrads and wgrads take the TMA "
        "kernels (kernels/conv_tma.py)",
    )
    ap.add_argument(
        "--tma-each",
        action="store_true",
        help="add a graph row per conv op (fwd, dgrad, wgrad) that alone takes the TMA kernels",
    )
    ap.add_argument(
        "--halo",
        action="store_true",
        help="add a graph row whose 3x3 stride-1 convs take the halo kernels "
        "(kernels/conv_halo.py, sm_90) even where TRITONCNN_HALO=0",
    )
    ap.add_argument(
        "--loader-warp",
        action="store_true",
        help="add a graph row whose halo kernels have a loader warp (HaloConfig.loader_warp)",
    )
    ap.add_argument(
        "--loader-warp-wgrad",
        action="store_true",
        help="add a graph row where only the halo weight gradient has a loader warp",
    )
    ap.add_argument(
        "--pointwise",
        action="store_true",
        help="add a graph row whose short-K 1x1 forwards and plain dgrads take the persistent "
        "pointwise kernel (kernels/conv_pointwise.py) even where TRITONCNN_POINTWISE=0",
    )
    ap.add_argument(
        "--without-pointwise",
        action="store_true",
        help="add a graph row without the pointwise kernel (the default rows have it)",
    )
    ap.add_argument(
        "--per-conv-casts",
        action="store_true",
        help="add a graph row whose convs cast their own 16-bit weight copies (one launch "
        "each) instead of one launch for all (nn/weight_casts.py, the default rows)",
    )
    ap.add_argument(
        "--wgrad-max-splits",
        type=int,
        help="add a graph row whose conv weight gradients take at most this many K splits "
        f"(kernels/conv_configs.MAX_SPLITS, {conv_configs.MAX_SPLITS} by default)",
    )
    ap.add_argument(
        "--without-halo",
        action="store_true",
        help="add a graph row without the halo kernels (the default rows have them on sm_90)",
    )
    ap.add_argument(
        "--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results")
    )
    args = ap.parse_args()
    if runtime.INTERPRETED:
        sys.exit("benchmarks/train_step.py needs a CUDA GPU")
    import triton

    torch.backends.cudnn.benchmark = True
    meta = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.date.today().isoformat(),
        "autotune": os.environ.get("TRITONCNN_AUTOTUNE", "1") != "0",
        "pdl": pdl.LAUNCH_PDL,  # programmatic dependent launch (TRITONCNN_PDL=1, sm_90+)
    }
    # variant: ours_step's keyword arguments (the defaults where not given)
    ours = {} if args.graph_only else {"tritoncnn_fp16": {"graph": False}}
    if not args.no_graph:
        cls, why = graph_step_class()
        if cls is None:
            print(f"note: no CUDA-graph row ({why}); tritoncnn runs eager only", flush=True)
        else:
            graph = {"graph": True}
            ours["tritoncnn_fp16_graph"] = graph
            if args.unfused:
                ours["tritoncnn_fp16_graph_unfused"] = {**graph, "fuse": False}
            if args.fp32_conv_weights:
                ours["tritoncnn_fp16_graph_fp32w"] = {**graph, "cast_weights": False}
            if args.without_moments:
                ours["tritoncnn_fp16_graph_no_moments"] = {**graph, "conv_bn_moments": False}
            if args.bn_into_depthwise:
                ours["tritoncnn_fp16_graph_deferred"] = {**graph, "bn_into_depthwise": True}
            if args.bn_grad_sums:
                ours["tritoncnn_fp16_graph_grad_sums"] = {**graph, "bn_grad_sums": True}
                both = {**graph, "bn_grad_sums": True, "bn_into_depthwise": True}
                ours["tritoncnn_fp16_graph_grad_sums_deferred"] = both
            if args.without_fuse_residual:
                ours["tritoncnn_fp16_graph_unfused_residual"] = {**graph, "fuse_residual": False}
            if args.without_row_taps:
                ours["tritoncnn_fp16_graph_tap_wgrad"] = {**graph, "wgrad_row_taps": False}
            if args.without_skip_grad_in_dgrad:
                no_skip = {**graph, "skip_grad_in_dgrad": False}
                ours["tritoncnn_fp16_graph_skip_grad_accumulate"] = no_skip
            if args.relu_grad_in_dgrad:
                ours["tritoncnn_fp16_graph_relu_grad_dgrad"] = {**graph, "relu_grad_in_dgrad": True}
            if args.dw_wgrad_per_tap:
                ours["tritoncnn_fp16_graph_dw_tap_wgrad"] = {**graph, "dw_wgrad_all_taps": False}
            if args.dw_wgrad_flat:
                ours["tritoncnn_fp16_graph_dw_flat_wgrad"] = {**graph, "dw_wgrad_rows": False}
            if args.tma:
                ours["tritoncnn_fp16_graph_tma"] = {**graph, "tma": conv_k.TMA_OPS}
            for op in conv_k.TMA_OPS if args.tma_each else ():
                ours[f"tritoncnn_fp16_graph_tma_{op}"] = {**graph, "tma": (op,)}
            if args.halo:
                ours["tritoncnn_fp16_graph_halo"] = {**graph, "halo": True}
            if args.without_halo:
                ours["tritoncnn_fp16_graph_no_halo"] = {**graph, "halo": False}
            if args.loader_warp:
                ours["tritoncnn_fp16_graph_loader_warp"] = {**graph, "loader_warp": True}
            if args.loader_warp_wgrad:
                lw_wgrad = {**graph, "loader_warp_wgrad": True}
                ours["tritoncnn_fp16_graph_loader_warp_wgrad"] = lw_wgrad
            if args.pointwise:
                ours["tritoncnn_fp16_graph_pointwise"] = {**graph, "pointwise": True}
            if args.without_pointwise:
                ours["tritoncnn_fp16_graph_no_pointwise"] = {**graph, "pointwise": False}
            if args.per_conv_casts:
                ours["tritoncnn_fp16_graph_per_conv_casts"] = {**graph, "weight_casts": False}
            if args.wgrad_max_splits:
                row = f"tritoncnn_fp16_graph_max_splits_{args.wgrad_max_splits}"
                ours[row] = {**graph, "wgrad_max_splits": args.wgrad_max_splits}
    if pdl.LAUNCH_PDL:  # its own rows, next to a run without it
        ours = {f"{v}_pdl": kw for v, kw in ours.items()}
    modes = [] if args.ours_only else ["eager_fp32", "eager_amp_cl"]
    if not (args.no_compile or args.ours_only):
        modes.append("compile")
    if args.reduce_overhead:
        modes.append("compile_reduce_overhead")
    if args.max_autotune:
        modes.append("compile_max_autotune")
    rows = []
    csv_path = Path(args.out) / f"train_step_{meta['gpu'].replace(' ', '_')}.csv"
    for name in args.models:
        for batch in args.batches:
            torch.manual_seed(0)
            proto = models.build(name, num_classes=10, in_channels=3, image_size=32)
            fpi = 3 * flops_per_image(proto, 32, 3)  # forward + two backward GEMMs
            twin = to_torch(proto)  # on the CPU: each torch mode copies it to the GPU
            del proto
            x = torch.randn(batch, 3, 32, 32, device="cuda")
            y = torch.randint(0, 10, (batch,), device="cuda")
            variants = {
                v: partial(ours_step, name, batch, torch.float16, **kw) for v, kw in ours.items()
            }
            for mode in modes:  # a fresh twin per mode: each has its own optimizer state
                variants[f"torch_{mode}"] = partial(torch_step, twin, x, y, mode)
            for variant, make in variants.items():
                _free()
                try:
                    t0 = time.perf_counter()
                    fn = make()
                    fn()  # compiles (and, with the autotuner on, tunes) everything
                    torch.cuda.synchronize()
                    setup_s = time.perf_counter() - t0
                    ms = bench(fn)
                except Exception as e:  # noqa: BLE001 - record and go on with the next mode
                    print(f"{name} b{batch} {variant}: failed: {e!r}"[:300], flush=True)
                    continue
                finally:
                    fn = None
                    if "compile" in variant:
                        torch._dynamo.reset()  # drop compiled graphs holding the twin
                peak = torch.cuda.max_memory_allocated() / 2**20
                rows.append(
                    {
                        **meta,
                        "model": name,
                        "batch": batch,
                        "variant": variant,
                        "ms_per_step": ms,
                        "images_per_s": batch / ms * 1e3,
                        "tflops": fpi * batch / ms / 1e9,
                        "peak_mem_mib": peak,
                        "setup_s": setup_s,
                    }
                )
                _write_csv(rows, csv_path)
                print(
                    f"{name:<12} b{batch:<4} {variant:<28} {ms:8.3f} ms  "
                    f"{batch / ms * 1e3:9.0f} img/s  {fpi * batch / ms / 1e9:7.2f} TFLOP/s  "
                    f"peak {peak:8.1f} MiB  setup {setup_s:6.1f} s",
                    flush=True,
                )
    if not rows:
        sys.exit("no configuration ran")
    print(f"wrote {csv_path}")
    _plot(rows, csv_path.with_suffix(".png"))


def _write_csv(rows: list[dict], path: Path) -> None:
    """All rows so far, rewritten after each one: a run cut off by a time limit keeps them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["batch"]) for r in rows})
    variants = sorted({r["variant"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(6, 2 * len(groups)), 4))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        ms = [
            next(
                (
                    r["ms_per_step"]
                    for r in rows
                    if (r["model"], r["batch"]) == g and r["variant"] == v
                ),
                0,
            )
            for g in groups
        ]
        ax.bar([j + i * width for j in range(len(groups))], ms, width, label=v)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
    ax.set_xticklabels([f"{m}\nb{b}" for m, b in groups])
    ax.set_ylabel("ms per training step (lower is better)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
