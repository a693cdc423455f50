"""How a conv or batch-norm kernel moves memory, read from its compiled PTX: no GPU needed.

Compiles a conv kernel (``--op fwd|dgrad|wgrad``), a batch-norm kernel (``--op
bn_stats|bn_apply|bn_bwd_reduce|bn_bwd_input``) or a rolling-rows depthwise kernel (``--op
dw_rows|dw_rows_dgrad|dw_rows_dgrad_sums|dw_rows_wgrad``: the forward with BN moments, the
dgrad, alone or storing a batch norm's backward sums, and the weight gradient) for one layer
shape (NHWC fp16 activations,
fp32 parameters, the strides, tile and alignment hints the launch helpers would pass) for an
sm_90 target with Triton's own compiler and ptxas, and counts the global-memory and cp.async
instructions by width, the wgmma (tensor-core) instructions and how many stay in flight, and
the registers and spills ptxas reports. 2-byte ``ld.global.b16`` loads of an activation tile
mean it is fetched element by element (for a GEMM operand, outside the cp.async pipeline):
the cause of MobileNetV2's 24-channel 1x1 convs running ~10x slower than their neighbours.

    python benchmarks/ptx_report.py --op fwd --c-in 24 --c-out 144 --kernel 1
    python benchmarks/ptx_report.py --op wgrad --c-in 24 --c-out 48 --kernel 3 --json
    python benchmarks/ptx_report.py --op bn_apply --c-in 24

This runs on the CPU machine: tritoncnn is imported as if a GPU were present (kernels must be
compiled, not interpreted), so the script has to be its own process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

import torch

# Before tritoncnn (and triton) are imported: make runtime take the GPU path, so that
# @triton.jit gives compilable kernels rather than the interpreter's (a parent process running
# the interpreter, e.g. the test suite, passes TRITON_INTERPRET=1 down).
os.environ.pop("TRITON_INTERPRET", None)
torch.cuda.is_available = lambda: True
torch.cuda.get_device_name = lambda *args: "ptx_report (no GPU)"

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from tritoncnn import runtime  # noqa: E402
from tritoncnn.kernels import conv as K  # noqa: E402
from tritoncnn.kernels import (  # noqa: E402
    conv_halo,
    conv_halo_wgrad,
    conv_pointwise,
    conv_tma,
    conv_wgrad,  # noqa: E402
    depthwise,
    depthwise_rows,
    norm,
)
from tritoncnn.kernels.elementwise import ACT_RELU6  # noqa: E402

# The batch-norm row split asks the device for its SMs; an H100 / H200 (sm_90) has 132.
runtime.sm_count = lambda: 132

CONV_POINTERS = {
    "fwd": {
        "x_ptr": "*fp16",
        "w_ptr": "*fp32",
        "b_ptr": "*fp32",
        "y_ptr": "*fp16",
        "pmean_ptr": "*fp32",
        "pm2_ptr": "*fp32",
    },  # fmt: skip
    "dgrad": {
        "dy_ptr": "*fp16",
        "w_ptr": "*fp32",
        "dx_ptr": "*fp16",
        "xn_ptr": "*fp16",
        "nmean_ptr": "*fp32",
        "ninvstd_ptr": "*fp32",
        "nw_ptr": "*fp32",
        "nb_ptr": "*fp32",
        "psum_g_ptr": "*fp32",
        "psum_gx_ptr": "*fp32",
        "add_ptr": "*fp16",
    },  # fmt: skip
    "wgrad": {"x_ptr": "*fp16", "dy_ptr": "*fp16", "dw_ptr": "*fp32"},
}
TMA_OPS = ("fwd_tma", "dgrad_tma", "wgrad_tma")
BN_KERNELS = {
    "bn_stats": norm.bn_stats_kernel,
    "bn_apply": norm.bn_apply_kernel,
    "bn_bwd_reduce": norm.bn_bwd_reduce_kernel,
    "bn_bwd_input": norm.bn_bwd_input_kernel,
}
# activation tensors of the batch-norm kernels; every other pointer is fp32 (int for counters)
BN_ACTIVATIONS = ("x_ptr", "y_ptr", "g_ptr", "dx_ptr", "r_ptr")


def _align(n: int, channels: int, hw: int) -> int:
    """The launch helpers' alignment hint (``conv.vector_align``) for an NHWC fp16 tensor of
    this shape, on a storage-less (meta) tensor."""
    t = torch.empty(n, channels, hw, hw, dtype=torch.float16, device="meta")
    return K.vector_align(t.contiguous(memory_format=torch.channels_last), channels)


def _named(prefix: str, axes: str, strides) -> dict[str, int]:
    """{"sx_n": .., "sx_h": ..}: a kernel's stride arguments by name."""
    return {f"{prefix}_{a}": v for a, v in zip(axes, strides, strict=True)}


def kernel_args(
    op: str,
    n: int,
    c_in: int,
    c_out: int,
    hw: int,
    k: int,
    cfg: K.ConvConfig,
    rows: bool = False,
    epilogue: str = "none",
):
    """(kernel, runtime integer arguments, constexpr arguments) of a stride-1 'same' conv;
    ``rows``: the wgrad's one program per filter row (ROW_TAPS); ``epilogue``: the dgrad's
    skip-gradient add ("add", ADD_GRAD) and the input ReLU's backward too ("add_relu")."""
    x = (hw * hw * c_in, hw * c_in, c_in, 1)  # NHWC strides (n, h, w, c)
    y = (hw * hw * c_out, hw * c_out, c_out, 1)
    w = (k * k * c_in, 1, k * c_in, c_in)  # channels_last weight (o, i, kh, kw)
    geometry = dict(N=n, H=hw, W=hw, C_in_g=c_in, HO=hw, WO=hw, C_out_g=c_out)
    conv = dict(stride_h=1, stride_w=1, pad_h=k // 2, pad_w=k // 2, dil_h=1, dil_w=1)
    tile = dict(BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K, GROUP_M=K.GROUP_M)
    common = dict(KH=k, KW=k, IS_1X1=k == 1, DOT_PRECISION="ieee", EMULATE_BF16=False, **tile)
    flat = k > 1 and (c_out if op == "dgrad" else c_in) < K.FLAT_MAX_CHANNELS
    if op == "fwd":
        ints = dict(geometry, **conv, alpha=0.0)
        ints.update(_named("sx", "nhwc", x))
        ints.update(_named("sw", "oihw", w))
        ints.update(_named("sy", "nhwc", y))
        # the channels_last weight's input-channel runs align as x's (conv._input_channel_align)
        x_align = _align(n, c_in, hw)
        const = dict(
            common, HAS_BIAS=False, ACT=0, FLAT_K=flat, X_ALIGN=x_align, MOMENTS=False,
            W_ALIGN=x_align, Y_ALIGN=_align(n, c_out, hw),
        )  # fmt: skip
        return K.conv2d_fwd_kernel, ints, const
    if op == "dgrad":
        ints = dict(geometry, **conv, kh_step=1, kw_step=1, n_alpha=0.0)
        ints.update(_named("sdy", "nhwc", y))
        ints.update(_named("sw", "oihw", w))
        ints.update(_named("sdx", "nhwc", x))
        ints.update(_named("sxn", "nhwc", x))
        ints.update(_named("sad", "nhwc", x))
        const = dict(
            common, FLAT_K=flat, DY_ALIGN=_align(n, c_out, hw), CI_ALIGN=_align(n, c_in, hw),
            GRAD_SUMS=False, IN_HAS_W=False, IN_HAS_B=False, IN_ACT=0,
            ADD_GRAD=epilogue != "none", RELU_INPUT=epilogue == "add_relu",
        )  # fmt: skip
        return K.conv2d_dgrad_kernel, ints, const
    ints = dict(geometry, **conv, pix_per_split=4096, sdw_split=c_out * k * k * c_in)
    ints.update(_named("sx", "nhwc", x))
    ints.update(_named("sdy", "nhwc", y))
    ints.update(_named("sdw", "oihw", w))
    x_align = 1 if flat else _align(n, c_in, hw)
    const = dict(common, FLAT_N=flat, ACCUMULATE=False, X_ALIGN=x_align,
                 DY_ALIGN=_align(n, c_out, hw), ROW_TAPS=rows)  # fmt: skip
    return conv_wgrad.conv2d_wgrad_kernel, ints, const


def tma_args(
    op: str, n: int, c_in: int, c_out: int, hw: int, k: int, cfg: conv_tma.TmaConfig, epilogue: str
):
    """(kernel, descriptor types, pointer types, runtime arguments, constexpr arguments) of a
    stride-1 'same' conv through kernels/conv_tma.py: the forward with the batch-norm moments
    (as in training), the dgrad with ``epilogue`` ("add", "add_relu"), or the wgrad (one tap, or
    a filter row with cfg.row_taps) unsplit."""
    box_rows = cfg.BLOCK_K if op == "wgrad_tma" else cfg.BLOCK_M
    bimg, bh, bw = conv_tma.tile_geometry(hw, hw, box_rows)
    box = f"{bimg},{bh},{bw}"
    ints = dict(N=n, H=hw, W=hw, HO=hw, WO=hw, pad_h=k // 2, pad_w=k // 2, alpha=0.0)
    tile = dict(BIMG=bimg, BH=bh, BW=bw, BLOCK_N=cfg.BLOCK_N, GROUP_M=conv_tma.GROUP_M)
    if op == "wgrad_tma":
        descs = {
            "x_desc": f"tensordesc<fp16[{box},{cfg.BLOCK_N}]>",
            "dy_desc": f"tensordesc<fp16[{box},{cfg.BLOCK_M}]>",
        }
        ints.update(C_in=c_in, C_out=c_out, per_split=4096, s_split=c_out * k * k * c_in,
                    s_o=k * k * c_in, s_tap=c_in)  # fmt: skip
        const = dict(tile, KW=k, ACCUMULATE=False, ROW_TAPS=cfg.row_taps, BLOCK_M=cfg.BLOCK_M)
        return conv_tma.conv2d_wgrad_tma_kernel, descs, {"dw_ptr": "*fp32"}, ints, const
    dgrad = op == "dgrad_tma"
    c_red, c_cols = (c_out, c_in) if dgrad else (c_in, c_out)
    out_box = f"tensordesc<fp16[{cfg.BLOCK_M},{cfg.BLOCK_N}]>"
    w_box = (cfg.BLOCK_K, cfg.BLOCK_N) if dgrad else (cfg.BLOCK_N, cfg.BLOCK_K)
    descs = {
        "a_desc": f"tensordesc<fp16[{box},{cfg.BLOCK_K}]>",
        "w_desc": f"tensordesc<fp16[{w_box[0]},{w_box[1]}]>",
        "out_desc": out_box, "add_desc": out_box, "relu_desc": out_box,
    }  # fmt: skip
    ints.update(C_red=c_red, C_cols=c_cols, C_in_w=c_in)
    const = dict(
        tile, KH=k, KW=k, DGRAD=dgrad, HAS_BIAS=False, ACT=0, MOMENTS=not dgrad,
        ADD_GRAD=dgrad and epilogue != "none", RELU_INPUT=dgrad and epilogue == "add_relu",
        BLOCK_K=cfg.BLOCK_K,
    )  # fmt: skip
    pointers = {"b_ptr": "*fp32", "pmean_ptr": "*fp32", "pm2_ptr": "*fp32"}
    return conv_tma.conv2d_tma_kernel, descs, pointers, ints, const


HALO_OPS = ("fwd_halo", "dgrad_halo", "wgrad_halo")
POINTWISE_OPS = ("fwd_pointwise",)


def pointwise_args(
    batch: int, c_in: int, c_out: int, size: int, cfg, sums: bool = False, one_pass=False
):
    """(kernel, pointer types, runtime arguments, constexpr arguments) of conv_pointwise's
    forward (with the BN moments, as in training; ``one_pass``: in one reduction,
    ONE_PASS_MOMENTS) of dense NHWC fp16 tensors; ``sums``: the dgrad use instead (c_in,
    c_out: the GEMM's), no moments but a ReLU6 batch norm's backward sums of the output
    (GRAD_SUMS)."""
    kernel = conv_pointwise.pointwise_fwd_kernel
    pointers = {
        name: "*fp16" if name in ("x_ptr", "w_ptr", "y_ptr", "xn_ptr") else "*fp32"
        for name in kernel.arg_names
        if name.endswith("_ptr")
    }
    m = batch * size * size
    ints = dict(M=m, C_in=c_in, C_out=c_out, sw_o=c_in, sw_i=1, alpha=0.0, n_alpha=0.0)
    const = dict(
        HAS_BIAS=False, ACT=0, MOMENTS=not sums, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        BLOCK_K=conv_pointwise.reduction_block(c_in), STAGES=cfg.num_stages,
        X_ALIGN=_align(batch, c_in, size * size), Y_ALIGN=_align(batch, c_out, size * size),
        EMULATE_BF16=False, IN_HAS_W=sums, IN_HAS_B=sums, IN_ACT=ACT_RELU6 if sums else 0,
        GRAD_SUMS=sums, ONE_PASS=one_pass and not sums,
    )  # fmt: skip
    return kernel, pointers, ints, const


def compile_halo(
    op: str, n: int, c_in: int, c_out: int, hw: int, cfg: conv_halo.HaloConfig, epilogue: str
) -> dict[str, str]:
    """Compiled forms ("ttgir", "llir", "ptx") of a Gluon halo kernel for sm_90: the forward
    with the batch-norm moments (as in training), the dgrad with ``epilogue``, or the weight
    gradient (unsplit)."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
    from triton.runtime.jit import mangle_type

    def desc(shape: list[int], box: list[int]) -> str:
        strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
        base = torch.empty(0, dtype=torch.float16)  # only its dtype and alignment are read
        layout = gl.NVMMASharedLayout.get_default_for(box, gl.float16)
        return mangle_type(GluonDescriptor(base, shape, strides, box, layout))

    if op == "wgrad_halo":  # BLOCK_M o x BLOCK_N c tiles, K steps of BLOCK_K pixels
        bh = conv_halo.rows_per_tile(hw, hw, cfg.BLOCK_K)
        if bh is None:
            raise SystemExit(f"{cfg} can't step over a {hw}x{hw} output in whole rows")
        types = {
            "dy_desc": desc([n, hw, hw, c_out], [1, bh, hw, cfg.BLOCK_M]),
            "body_desc": desc([n, hw, hw, c_in], [1, bh, hw, cfg.BLOCK_N]),
            "edge_desc": desc([n, hw, hw, c_in], [1, 2, hw, cfg.BLOCK_N]),
            "dw_ptr": "*fp32",
        }
        const = dict(ACCUMULATE=False, BH=bh, W=hw, STAGES=cfg.num_stages,
                     LOADER_WARP=cfg.loader_warp, num_warps=cfg.num_warps)  # fmt: skip
        smem = conv_halo_wgrad.wgrad_smem_bytes(cfg, hw)
        options = conv_halo.launch_options(cfg, smem, conv_halo.H100_SM_SHARED_BYTES)
        return _compile_gluon(conv_halo_wgrad.conv3x3_halo_wgrad_kernel, types, const, options)
    dgrad = op == "dgrad_halo"
    c_red, c_cols = (c_out, c_in) if dgrad else (c_in, c_out)
    bh = conv_halo.rows_per_tile(hw, hw, cfg.BLOCK_M)
    if bh is None:
        raise SystemExit(f"{cfg} can't tile a {hw}x{hw} output in whole rows")
    w_box = [cfg.BLOCK_K, cfg.BLOCK_N] if dgrad else [cfg.BLOCK_N, cfg.BLOCK_K]
    matrix = desc([n * hw * hw, c_cols], [cfg.BLOCK_M, cfg.BLOCK_N])
    types = {
        "body_desc": desc([n, hw, hw, c_red], [1, bh, hw, cfg.BLOCK_K]),
        "edge_desc": desc([n, hw, hw, c_red], [1, 2, hw, cfg.BLOCK_K]),
        "w_desc": desc([c_out, 9 * c_in], w_box),
        "out_desc": matrix, "add_desc": matrix, "in_desc": matrix,
        "part0_ptr": "*fp32", "part1_ptr": "*fp32", "nmean_ptr": "*fp32",
        "ninvstd_ptr": "*fp32", "nw_ptr": "*fp32", "nb_ptr": "*fp32",
    }  # fmt: skip
    const = dict(
        C_red=c_red, DGRAD=dgrad, MOMENTS=not dgrad,
        ADD_GRAD=dgrad and epilogue in ("add", "add_relu"),
        RELU_INPUT=dgrad and epilogue == "add_relu", GRAD_SUMS=dgrad and epilogue == "bn_sums",
        IN_HAS_W=True, IN_HAS_B=True, IN_ACT=1, BH=bh, W=hw, STAGES=cfg.num_stages,
        LOADER_WARP=cfg.loader_warp, PERSISTENT=cfg.per_sm > 0, num_warps=cfg.num_warps,
    )  # fmt: skip
    tiles = 1 + dgrad * ((epilogue in ("add", "add_relu")) + (epilogue in ("add_relu", "bn_sums")))
    smem = cfg.smem_bytes(hw, tiles)
    options = conv_halo.launch_options(cfg, smem, conv_halo.H100_SM_SHARED_BYTES)
    return _compile_gluon(conv_halo.conv3x3_halo_kernel, types, const, options)


def _compile_gluon(
    kernel, types: dict[str, str], const: dict, options: dict | None = None
) -> dict[str, str]:
    """Compile a Gluon kernel for sm_90: ``types`` of its descriptor / pointer arguments (the
    others i32), ``const`` its constexprs (num_warps among them); integers and pointers
    marked 16-divisible as a launch with ResNet's shapes would; ``options``: the launch's
    compiler options. Its compiled forms, and "shared": the bytes of shared memory it asks
    for at launch."""
    from triton.experimental.gluon._runtime import GluonASTSource

    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in const:
            signature[name], constexprs[(i,)] = "constexpr", const[name]
        else:
            signature[name] = types.get(name, "i32")
            if not signature[name].startswith("tensordesc"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = GluonASTSource(kernel, signature, constexprs, attrs)
    options = {**(options or {}), "num_warps": const["num_warps"]}
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    return {**compiled.asm, "shared": str(compiled.metadata.shared)}


def shared_offsets(llir: str) -> list[int]:
    """Constant byte offsets added to shared-memory pointers in LLVM IR (e.g. the halo
    kernel's kernel-row sub-views, kh * W rows into the halo buffer)."""
    found = re.findall(r"getelementptr i8, ptr addrspace\(3\) %[\w.]+, i32 (\d+)", llir)
    return sorted({int(v) for v in found})


def bn_args(op: str, n: int, c: int, hw: int):
    """(kernel, pointer types, runtime arguments, constexpr arguments, warps) of a training-mode
    batch norm of an N x C x hw x hw NHWC tensor with a fused ReLU."""
    kernel = BN_KERNELS[op]
    elementwise = op in ("bn_apply", "bn_bwd_input")
    cfg = norm.pick_config(c, elementwise=elementwise)
    t = torch.empty(n, c, hw, hw, dtype=torch.float16, device="meta")
    t = t.contiguous(memory_format=torch.channels_last)
    # the row decode the launch helpers pass (dense NHWC rows: HW = W = 1, s_n = C)
    row_hw, row_w, (strides,) = norm._row_decode(t)
    ints = dict(M=n * hw * hw, C=c, HW=row_hw, W=row_w, eps=1e-5, alpha=0.0, momentum=0.1)
    for prefix in ("s", "sx", "sy", "sg", "sd", "sr"):
        ints.update(_named(prefix, "nhwc", strides))
    ints["ROWS"], ints["n_parts"] = norm._split_rows(n * hw * hw, c, cfg)
    ints["GROUP"], ints["n_groups"] = norm.reduce_groups(ints["n_parts"], cfg)
    flags = {
        "STAT_IS_VAR": False, "HAS_WEIGHT": True, "HAS_BIAS": True, "ACT": 1, "INC_NBT": False,
        "UPDATE_RUNNING": True, "CUMULATIVE": False, "STORE_M2": False, "BATCH_STATS": True,
        "WRITE_GRAD_W": True, "WRITE_GRAD_B": True, "ACCUMULATE_W": False, "ACCUMULATE_B": False,
        "HAS_RESIDUAL": False, "RES_ACT": 0,
    }  # fmt: skip
    tile = dict(
        BLOCK_M=cfg.block_m,
        BLOCK_C=cfg.block_c,
        BLOCK_P=norm.stage2_block(cfg),
        STAGES=norm.LOOP_STAGES,
    )
    const = {k: v for k, v in {**flags, **tile}.items() if k in kernel.arg_names}
    const["ALIGN"] = norm._align(c, t)
    pointers = {}
    for name in kernel.arg_names:
        if name.endswith("_ptr"):
            kind = "*i32" if name == "tickets_ptr" else "*i64" if name == "nbt_ptr" else "*fp32"
            pointers[name] = "*fp16" if name in BN_ACTIVATIONS else kind
    return kernel, pointers, ints, const, cfg.num_warps


DEPTHWISE_ROWS = {
    "dw_rows": depthwise_rows.depthwise_rows_kernel,
    "dw_rows_dgrad": depthwise_rows.depthwise_rows_kernel,  # rotated taps, no moments
    "dw_rows_dgrad_sums": depthwise_rows.depthwise_rows_kernel,  # + a ReLU6 BN's sums
    "dw_rows_wgrad": depthwise_rows.depthwise_rows_wgrad_kernel,
}


def depthwise_rows_args(op: str, n: int, c: int, hw: int):
    """(kernel, pointer types, runtime arguments, constexpr arguments, warps, stages) of the
    rolling-rows depthwise forward (with the batch-norm moments, as in training), dgrad (the
    rotated taps: negative weight strides; ``dw_rows_dgrad_sums`` also stores a ReLU6 batch
    norm's backward sums, as with ``bn_grad_sums``) or weight gradient of an N x C x hw x hw
    NHWC fp16 tensor, with depthwise.pick_rows_config's tile."""
    kernel = DEPTHWISE_ROWS[op]
    cfg = depthwise.pick_rows_config(c, hw)
    block_w = triton.next_power_of_2(hw)
    strides = (hw * hw * c, hw * c, c, 1)
    dgrad, sums = op.startswith("dw_rows_dgrad"), op == "dw_rows_dgrad_sums"
    taps = (9, -3, -1) if dgrad else (9, 3, 1)
    ints = dict(N=n, C=c, H=hw, W=hw, GROUPS=4, alpha=0.0, n_alpha=0.0)
    ints.update(zip(("sw_c", "sw_h", "sw_w"), taps, strict=True))
    for prefix in ("sx", "sy", "sg", "sn"):
        ints.update(_named(prefix, "nhwc", strides))
    const = dict(
        HAS_BIAS=False, ACT=0, MOMENTS=not dgrad, BLOCK_N=max(1, cfg.pixels // block_w),
        BLOCK_W=block_w, BLOCK_C=cfg.block_c, STAGES=cfg.stages,
        IN_NORM=False, IN_HAS_W=sums, IN_HAS_B=sums, IN_ACT=ACT_RELU6 if sums else 0,
        GRAD_SUMS=sums,
    )  # fmt: skip
    const = {k: v for k, v in const.items() if k in kernel.arg_names}
    ints = {k: v for k, v in ints.items() if k in kernel.arg_names}
    pointers = {
        name: "*fp16" if name in ("x_ptr", "y_ptr", "go_ptr", "xn_ptr") else "*fp32"
        for name in kernel.arg_names
        if name.endswith("_ptr")
    }
    return kernel, pointers, ints, const, cfg.num_warps


def compile_ptx(*args, **kwargs) -> str:
    """PTX of a kernel for sm_90: ``compile_kernel``'s arguments."""
    return compile_kernel(*args, **kwargs).asm["ptx"]


def compile_kernel(
    kernel,
    pointers: dict,
    ints: dict,
    const: dict,
    num_warps: int,
    num_stages: int = 3,
    descriptors: dict | None = None,
):
    """``kernel`` compiled for sm_90, specialised as a launch would be: pointers 16-byte
    aligned, integers equal to 1 folded in, integers divisible by 16 marked so;
    ``descriptors``: the TMA descriptor arguments' types (``tensordesc<fp16[box]>``). Its
    ``asm`` has the PTX, its ``metadata.shared`` the shared bytes it asks for at launch."""
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(kernel.arg_names):
        if descriptors and name in descriptors:
            signature[name] = descriptors[name]
        elif name in const:
            signature[name], constexprs[(i,)] = "constexpr", const[name]
        elif name in pointers:
            signature[name], attrs[(i,)] = pointers[name], [["tt.divisibility", 16]]
        elif isinstance(ints[name], float):
            signature[name] = "fp32"
        elif ints[name] == 1:
            signature[name], constexprs[(i,)] = "constexpr", 1
        else:
            signature[name] = "i32"
            if ints[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def memory_instructions(ptx: str) -> dict[str, int]:
    """{instruction with its width: count} for global loads/stores and cp.async copies."""
    counts: dict[str, int] = {}
    for match in re.finditer(r"\b(?:ld|st|cp\.async)\.[\w.:]*", ptx):
        op = re.sub(r"\.L[12]::\w+", "", match.group(0))
        if ".global" in op or op.startswith("cp.async.c"):
            counts[op] = counts.get(op, 0) + 1
    return dict(sorted(counts.items()))


def ptxas_usage(ptx: str) -> dict[str, int]:
    """Registers per thread and spill bytes (stores + loads) of the PTX, from Triton's own
    ptxas for sm_90a: a kernel whose accumulators outgrow the register file spills.
    ``wgmma_serialized``: 1 where ptxas serialized the kernel's wgmmas: the PTX waits with
    wgmmas still in flight (``wgmma.wait_group`` N > 0) but the machine code
    (``WARPGROUP.DEPBAR.LE gsb0, N``) never does, so each wgmma waits for the last (its
    C7514 note says so only sometimes). The halo forward ran at 60% of its speed so."""
    import subprocess
    import tempfile

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = Path(tmp) / "kernel.ptx", Path(tmp) / "k.cubin"
        src.write_text(ptx)
        done = subprocess.run(
            [str(bin_dir / "ptxas"), "-v", "--gpu-name", "sm_90a", str(src), "-o", str(cubin)],
            capture_output=True,
            text=True,
            check=True,
        )
        sass = subprocess.run(
            [str(bin_dir / "cuobjdump"), "-sass", str(cubin)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    log = done.stdout + done.stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", log)
    ptx_waits = {int(n) for n in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)}
    sass_waits = {
        int(n, 16) for n in re.findall(r"WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*(0x[0-9a-f]+)", sass)
    }
    serialized = "wgmma.mma_async instructions are serialized" in log or (
        max(ptx_waits, default=0) > 0 and max(sass_waits, default=0) == 0
    )
    return {
        "registers": int(regs.group(1)) if regs else -1,
        "spill_bytes": sum(map(int, spills)),
        "wgmma_serialized": int(serialized),
        # wgmma groups the PTX lets stay in flight at its waits (0 only: never pipelined)
        "wgmma_waits": sorted(ptx_waits),
    }


def tma_load_barriers(ptx: str) -> dict[str, int]:
    """{the barrier instruction last before a TMA load: how many loads}: ``bar.sync`` waits
    for all the warps of the program (or of its partition), ``bar.warp.sync`` for one warp.
    Triton 3.6 puts one before every TMA copy it emits (the halo kernels' reason for a loader
    warp)."""
    counts: dict[str, int] = {}
    barrier = "none"
    for line in ptx.splitlines():
        found = re.search(r"\b(bar\.warp\.sync|bar\.sync|barrier\.sync)\b", line)
        if found:
            barrier = found.group(1)
        elif re.search(r"cp\.async\.bulk\.tensor\.\w+\.shared::cluster\.global", line):
            counts[barrier] = counts.get(barrier, 0) + 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ops = (*CONV_POINTERS, *TMA_OPS, *HALO_OPS, *POINTWISE_OPS, *BN_KERNELS, *DEPTHWISE_ROWS)
    ap.add_argument("--op", choices=ops, default="fwd")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--c-in", type=int, required=True)
    ap.add_argument("--c-out", type=int, help="conv output channels")
    ap.add_argument("--size", type=int, default=32, help="image height = width")
    ap.add_argument("--kernel", type=int, default=1, help="square kernel, stride 1, 'same'")
    ap.add_argument("--config", default="128,64,32,4,3", help="BLOCK_M,N,K,warps,stages")
    ap.add_argument(
        "--row-taps", action="store_true", help="wgrad, wgrad_tma: a program per filter row"
    )
    ap.add_argument(
        "--epilogue",
        choices=("none", "add", "add_relu", "bn_sums", "one_pass_moments"),
        default="none",
        help="dgrad, dgrad_tma: add a skip gradient (and apply the input ReLU's backward) in "
        "the epilogue; dgrad_halo also bn_sums: store a ReLU batch norm's backward sums "
        "(fwd_pointwise: its dgrad use with a ReLU6 batch norm's sums; one_pass_moments: the "
        "forward's moments in one reduction)",
    )
    ap.add_argument(
        "--weight",
        choices=("fp32", "fp16"),
        default="fp32",
        help="fwd/dgrad weight dtype (fp16: the layer's 16-bit copy, nn.Conv2d's default)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.op in BN_KERNELS:
        kernel, pointers, ints, const, warps = bn_args(args.op, args.batch, args.c_in, args.size)
        compiled = compile_kernel(kernel, pointers, ints, const, warps)
        ptx, shared_bytes = compiled.asm["ptx"], compiled.metadata.shared
        shape = f"{args.c_in} channels, tile {const['BLOCK_M']}x{const['BLOCK_C']}"
    elif args.op in TMA_OPS:
        if args.c_out is None:
            ap.error("--c-out is required for a conv kernel")
        fields = [int(v) for v in args.config.split(",")]
        cfg = conv_tma.TmaConfig(*fields, row_taps=args.row_taps)
        kernel, descs, pointers, ints, const = tma_args(
            args.op, args.batch, args.c_in, args.c_out, args.size, args.kernel, cfg,
            args.epilogue,
        )  # fmt: skip
        ptx = compile_ptx(kernel, pointers, ints, const, cfg.num_warps, cfg.num_stages, descs)
        shape = f"{args.c_in}->{args.c_out} k{args.kernel} {args.size}x{args.size} {cfg}"
    elif args.op in HALO_OPS:
        if args.c_out is None:
            ap.error("--c-out is required for a conv kernel")
        fields = [int(v) for v in args.config.split(",")]
        cfg = conv_halo.HaloConfig(*fields[:6], *(bool(v) for v in fields[6:7]))
        asm = compile_halo(args.op, args.batch, args.c_in, args.c_out, args.size, cfg,
                           args.epilogue)  # fmt: skip
        ptx, const = asm["ptx"], {"shared_offsets": shared_offsets(asm["llir"])}
        const["shared_bytes"] = int(asm["shared"])
        kernel = conv_halo_wgrad.conv3x3_halo_wgrad_kernel if args.op == "wgrad_halo" else None
        kernel = kernel or conv_halo.conv3x3_halo_kernel
        shape = f"{args.c_in}->{args.c_out} 3x3 {args.size}x{args.size} {cfg}"
    elif args.op in POINTWISE_OPS:  # --config: an index into POINTWISE_CONFIGS
        if args.c_out is None:
            ap.error("--c-out is required for a conv kernel")
        cfg = conv_pointwise.POINTWISE_CONFIGS[int(args.config)]
        kernel, pointers, ints, const = pointwise_args(
            args.batch, args.c_in, args.c_out, args.size, cfg, args.epilogue == "bn_sums",
            args.epilogue == "one_pass_moments",
        )  # fmt: skip
        compiled = compile_kernel(kernel, pointers, ints, const, cfg.num_warps, cfg.num_stages)
        ptx, const["shared_bytes"] = compiled.asm["ptx"], compiled.metadata.shared
        shape = f"{args.c_in}->{args.c_out} 1x1 {args.size}x{args.size} {cfg}"
    elif args.op in DEPTHWISE_ROWS:
        kernel, pointers, ints, const, warps = depthwise_rows_args(
            args.op, args.batch, args.c_in, args.size
        )
        ptx = compile_ptx(kernel, pointers, ints, const, warps)
        tile = f"{const['BLOCK_N']}x{const['BLOCK_W']}x{const['BLOCK_C']}"
        shape = f"{args.c_in} channels {args.size}x{args.size}, row tile {tile}"
    else:
        if args.c_out is None:
            ap.error("--c-out is required for a conv kernel")
        cfg = K.ConvConfig(*(int(v) for v in args.config.split(",")))
        kernel, ints, const = kernel_args(
            args.op, args.batch, args.c_in, args.c_out, args.size, args.kernel, cfg,
            args.row_taps, args.epilogue,
        )  # fmt: skip
        pointers = dict(CONV_POINTERS[args.op])
        if "w_ptr" in pointers:
            pointers["w_ptr"] = f"*{args.weight}"
        ptx = compile_ptx(kernel, pointers, ints, const, cfg.num_warps, cfg.num_stages)
        shape = f"{args.c_in}->{args.c_out} k{args.kernel} {cfg}"
    counts = memory_instructions(ptx)
    hints = {k: v for k, v in const.items() if k.endswith("ALIGN")}
    mma = len(re.findall(r"\bwgmma\.mma_async\b", ptx))  # Hopper tensor-core instructions
    # Deepest wgmma.wait_group: 0 everywhere means each MMA is waited for before the next
    # iteration (synchronous: e.g. an operand converted in registers); 1+ keeps MMAs in flight.
    waits = [int(n) for n in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)]
    usage = {**ptxas_usage(ptx), "wgmma_in_flight": max(waits, default=0)}
    usage["tma_copies"] = len(re.findall(r"\bcp\.async\.bulk\.tensor\b", ptx))
    usage["tma_load_barriers"] = tma_load_barriers(ptx)
    # Deepest cp.async.wait_group: the copy groups a loop leaves in flight while it waits for
    # its oldest (a pipelined row loop: two groups a tile, g and x, in the BN backward).
    groups = [int(n) for n in re.findall(r"cp\.async\.wait_group\s+(\d+)", ptx)]
    usage["cp_async_groups_in_flight"] = max(groups, default=0)
    if "shared_offsets" in const:
        usage["shared_offsets"] = const["shared_offsets"]
        usage["shared_bytes"] = const["shared_bytes"]
    if args.op in BN_KERNELS:
        usage["shared_bytes"] = shared_bytes
    if args.op in POINTWISE_OPS:
        usage["shared_bytes"] = const["shared_bytes"]
    if args.json:
        print(json.dumps({"instructions": counts, "hints": hints, "wgmma": mma, **usage}))
        return
    print(f"{kernel.__name__} {shape} hints {hints} wgmma {mma} {usage}")
    for op, n in counts.items():
        print(f"  {op:<32} {n}")


if __name__ == "__main__":
    main()
