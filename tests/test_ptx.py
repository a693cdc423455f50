"""Compiled-code checks that need no GPU: conv and batch-norm memory accesses, in sm_90 PTX.

``benchmarks/ptx_report.py`` compiles a kernel with Triton's real compiler (its own process:
this one runs kernels in the interpreter) and counts memory instructions by width. A channel
count of whole 16-byte vectors that is not a multiple of 16 (MobileNetV2's 24) must still be
loaded in 16-byte cp.async copies: without the alignment hints every element of the tile was
a separate 2-byte load, outside the pipeline, and those layers ran ~10x slower on an H200.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tritoncnn.kernels.conv_pointwise import POINTWISE_CONFIGS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ptx_report.py"


def _report(op: str, c_in: int, c_out: int | None = None, kernel: int = 1, *extra: str) -> dict:
    args = ["--op", op, "--c-in", str(c_in), "--kernel", str(kernel), *extra]
    if c_out is not None:
        args += ["--c-out", str(c_out)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


_HALO_BATCH = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("ptx_report", sys.argv[1])
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)
from tritoncnn.kernels.conv_halo import HaloConfig
out = []
for op, c_in, c_out, size, fields, epilogue in json.loads(sys.argv[2]):
    asm = report.compile_halo(op, 512, c_in, c_out, size, HaloConfig(*fields), epilogue)
    out.append({**report.ptxas_usage(asm["ptx"]), "shared_bytes": int(asm["shared"])})
print(json.dumps(out))
"""


def _halo_reports(requests: list[tuple]) -> list[dict]:
    """ptxas_usage and the shared bytes of each (op, c_in, c_out, size, cfg, epilogue) halo
    kernel, all compiled in one fresh process: a process each would cost more than the
    compiles, and a test process where the interpreter has run kernels can't compile Gluon
    kernels for sm_90 (their helpers resolve to interpreted functions)."""
    args = [(op, ci, co, z, dataclasses.astuple(c), ep) for op, ci, co, z, c, ep in requests]
    return _compile_batch(_HALO_BATCH, args)


def _compile_batch(script: str, requests: list) -> list[dict]:
    """Run ``script`` (argv: ptx_report.py's path, the JSON ``requests``) in a process
    outside the interpreter; the JSON list its last line prints."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(SCRIPT), json.dumps(requests)],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _halo_tiles() -> list:
    """Every halo forward / dgrad tile, persistent or not (they compile differently)."""
    from tritoncnn.kernels import conv_halo

    configs = conv_halo.HALO_CONFIGS + conv_halo.HALO_LOADER_WARP_CONFIGS
    return list(dict.fromkeys(dataclasses.replace(c, per_sm=min(c.per_sm, 1)) for c in configs))


def _tile_size(cfg) -> int:
    """An output size the tile covers in whole rows."""
    return 16 if cfg.BLOCK_M == 256 else 32 if cfg.BLOCK_M == 128 else 8


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


@pytest.mark.parametrize("kernel", [1, 3])
def test_fp16_weight_of_24_input_channels_is_16_byte_loads(kernel):
    """The forward's fp16 weight copy (nn.Conv2d's default) of a 24-input-channel conv has
    48-byte rows: without W_ALIGN each weight element was its own 2-byte load."""
    report = _report("fwd", 24, 144, kernel, "--weight", "fp16")
    instructions = report["instructions"]
    assert "ld.global.b16" not in instructions, instructions
    assert report["hints"]["W_ALIGN"] == report["hints"]["X_ALIGN"] == 8


def test_forward_into_24_channels_is_16_byte_stores():
    """A 144 -> 24 projection's output rows (48 bytes) are stored in 16-byte vectors (Y_ALIGN),
    as the dgrad's into 24 channels are."""
    report = _report("fwd", 144, 24, 1, "--config", "64,32,32,4,3", "--weight", "fp16")
    instructions = report["instructions"]
    assert report["hints"]["Y_ALIGN"] == 8
    assert "st.global.b16" not in instructions and "st.global.v4.b32" in instructions


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


def test_wgrad_row_taps_share_the_dy_tile():
    """The wgrad's row form (one program per filter row of a 3x3 conv) issues 3x the
    tensor-core instructions of one tap per program from the same K loop, keeps 16-byte
    copies, and its three 64 x 64 accumulators stay in registers."""
    tile = ("--config", "64,64,64,4,3")
    per_tap = _report("wgrad", 64, 64, 3, *tile)
    rows = _report("wgrad", 64, 64, 3, *tile, "--row-taps")
    assert per_tap["wgmma"] > 0 and rows["wgmma"] == 3 * per_tap["wgmma"], (per_tap, rows)
    assert "ld.global.b16" not in rows["instructions"], rows["instructions"]
    assert rows["spill_bytes"] == 0 and per_tap["spill_bytes"] == 0, (per_tap, rows)


def test_wgrad_row_taps_largest_tile_does_not_spill():
    """The largest tile use_row_taps allows (3 accumulators of 64 x 128, 192 fp32 registers a
    thread) compiles without spilling; the rule's bound is what keeps 128 x 128 out (it spills)."""
    report = _report("wgrad", 128, 128, 3, "--config", "64,128,64,4,3", "--row-taps")
    assert report["registers"] <= 255 and report["spill_bytes"] == 0, report


@pytest.mark.parametrize("op", ["fwd", "dgrad", "wgrad"])
def test_3x3_conv_mma_stays_asynchronous(op):
    """The 3x3 conv GEMMs keep a tensor-core MMA in flight across loop iterations (wgmma
    wait depth >= 1): both operands reach shared memory as they are, with the layer's 16-bit
    weight copy (nn.Conv2d's default) for fwd and dgrad. (fp32 weights, converted to 16 bits
    in registers, compile to a synchronous MMA in triton 3.6: the reason for that copy.)"""
    report = _report(op, 128, 128, 3, "--config", "128,128,32,4,3", "--weight", "fp16")
    assert report["wgmma_in_flight"] >= 1, report


def test_dgrad_skip_epilogue_reads_16_byte_vectors():
    """The dgrad epilogue's skip-gradient add (ADD_GRAD) and input-ReLU mask (RELU_INPUT) read
    their NHWC tiles in 16-byte vectors, leave the tensor-core mainloop as it is and fit in
    registers (3x3 64 -> 64, ResNet-18's layer1 tile)."""
    tile = ("--config", "128,64,64,4,3", "--weight", "fp16")
    plain = _report("dgrad", 64, 64, 3, *tile)
    vectors = {}
    for epilogue in ("add", "add_relu"):
        report = _report("dgrad", 64, 64, 3, *tile, "--epilogue", epilogue)
        instructions = report["instructions"]
        assert "ld.global.b16" not in instructions, instructions
        vectors[epilogue] = instructions.get("ld.global.v4.b32", 0)
        assert report["wgmma"] == plain["wgmma"], (epilogue, report)
        assert report["wgmma_in_flight"] == plain["wgmma_in_flight"], (epilogue, report)
        assert report["spill_bytes"] == 0, (epilogue, report)
    assert plain["instructions"].get("ld.global.v4.b32", 0) < vectors["add"] < vectors["add_relu"]


def test_dense_row_decode_keeps_the_reduction_in_registers():
    """Dense NHWC rows are decoded with HW = W = 1 (norm._row_decode): no int64 divisions per
    row, so bn_bwd_reduce_kernel's pipelined 4-warp tile takes ~100 registers (156 with the
    general decode: 3 programs per SM where 4 are launched per SM)."""
    report = _report("bn_bwd_reduce", 64, None, 1, "--size", "8")
    assert report["registers"] <= 128 and report["spill_bytes"] == 0, report


@pytest.mark.parametrize("channels,size", [(576, 8), (64, 8), (144, 32)])
def test_batch_norm_backward_reduction_keeps_row_tiles_in_flight(channels, size):
    """bn_bwd_reduce_kernel's row loop waits for its oldest tile with LOOP_STAGES - 2 more of
    g and x in flight (two cp.async groups a tile), and PROGRAMS_PER_SM programs fit an H100
    SM: registers for 4-warp programs and shared memory (plus the 1 KiB a resident program
    costs). The GPU timings of LOOP_STAGES and PROGRAMS_PER_SM assume both."""
    from tritoncnn.kernels import norm

    report = _report("bn_bwd_reduce", channels, None, 1, "--size", str(size))
    assert report["cp_async_groups_in_flight"] == 2 * (norm.LOOP_STAGES - 2), report
    assert report["spill_bytes"] == 0, report
    threads = 4 * 32  # pick_config's 4 warps
    registers = -(-report["registers"] // 8) * 8  # allocated in steps of 8
    assert norm.PROGRAMS_PER_SM * threads * registers <= 65536, report
    assert norm.PROGRAMS_PER_SM * (report["shared_bytes"] + 1024) <= 228 * 1024, report


@pytest.mark.parametrize("op", ["dw_rows", "dw_rows_wgrad"])
@pytest.mark.parametrize("channels,size", [(144, 32), (384, 8)])
def test_rolling_rows_depthwise_is_pipelined_in_few_registers(op, channels, size):
    """The rolling-rows depthwise forward (with the BN moments) and weight gradient load their
    rows through cp.async (tl.range pipelining: a loop whose loaded values are carried into
    the next iteration got none) and keep to 96 registers: 5 four-warp programs per SM, the
    loads in flight that reach ~2.5 TB/s (4 elements per thread: 36 weight registers)."""
    report = _report(op, channels, None, 1, "--size", str(size))
    assert report["instructions"].get("cp.async.commit_group", 0) > 0, report
    assert report["registers"] <= 96 and report["spill_bytes"] == 0, report


@pytest.mark.parametrize("op,max_registers", [("dw_rows_dgrad", 96), ("dw_rows_dgrad_sums", 128)])
@pytest.mark.parametrize("channels,size", [(144, 32), (960, 4)])
def test_rolling_rows_depthwise_dgrad_compiles_pipelined(op, max_registers, channels, size):
    """The rolling-rows dgrad (rotated taps: negative weight strides), MobileNetV2's default
    for its stride-1 depthwise layers, and its variant that also stores a ReLU6 batch norm's
    backward sums (``bn_grad_sums``; it reads the batch norm's input rows too) compile for
    sm_90 with their rows in the cp.async pipeline and no spills; the sums variant in at most
    128 registers (4 four-warp programs per SM; 116 on 2026-12-07), the plain one in 96."""
    report = _report(op, channels, None, 1, "--size", str(size))
    assert report["instructions"].get("cp.async.commit_group", 0) > 0, report
    assert report["registers"] <= max_registers and report["spill_bytes"] == 0, report


_POINTWISE_BATCH = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("ptx_report", sys.argv[1])
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)
from tritoncnn.kernels.conv_pointwise import POINTWISE_CONFIGS
out = []
for config, c_in, c_out, epilogue in json.loads(sys.argv[2]):
    cfg = POINTWISE_CONFIGS[config]
    kernel, ptrs, ints, const = report.pointwise_args(512, c_in, c_out, 32, cfg,
                                                      one_pass=epilogue == "one_pass")
    const["MOMENTS"] = epilogue != "plain"
    compiled = report.compile_kernel(kernel, ptrs, ints, const, cfg.num_warps, cfg.num_stages)
    ptx = compiled.asm["ptx"]
    out.append({**report.ptxas_usage(ptx), "shared_bytes": compiled.metadata.shared,
                "cp_async": "cp.async.commit_group" in ptx, "wgmma": "wgmma.mma_async" in ptx})
print(json.dumps(out))
"""


def test_pointwise_tiles_fit_their_programs_per_sm():
    """conv_pointwise's tiles compile for sm_90, at every BLOCK_K the kernel takes (16 to
    128), as the forward with its BN moments in two passes and in one (ONE_PASS_MOMENTS)
    and as the dgrad (no moments), with their row tiles in the cp.async pipeline, no spills
    and no more shared memory than PointwiseConfig.smem_bytes counts (what the launch
    divides the SM's by). ``resident_per_sm``'s count for each use before shared memory is
    exactly the programs its registers leave room for (one more would be a second wave of
    persistent programs, one fewer an idle share of the SM). All compiled in one fresh
    process (see ``_halo_reports``)."""
    from tritoncnn.kernels import conv_pointwise

    cases = [
        (config, c_in, 144, epilogue)
        for config in range(len(POINTWISE_CONFIGS))
        for c_in in (16, 24, 64, 128)
        for epilogue in ("moments", "one_pass", "plain")
    ]
    reports = _compile_batch(_POINTWISE_BATCH, cases)
    failed = []
    for (config, c_in, _, epilogue), report in zip(cases, reports, strict=True):
        cfg = POINTWISE_CONFIGS[config]
        per_sm = conv_pointwise.resident_per_sm(cfg, c_in, epilogue)
        registers = -(-report["registers"] // 8) * 8  # allocated in steps of 8
        room = 65536 // (32 * cfg.num_warps * registers)
        smem = cfg.smem_bytes(conv_pointwise.reduction_block(c_in))
        if not (
            report["cp_async"]
            and report["wgmma"]
            and report["spill_bytes"] == 0
            and per_sm == room
            and report["shared_bytes"] <= smem
        ):
            failed.append((config, c_in, epilogue, per_sm, room, report))
    assert not failed, failed


@pytest.mark.parametrize("k,cols", [(24, 144), (96, 576)])
def test_pointwise_dgrad_bn_sums_tile_does_not_spill(k, cols):
    """The pointwise kernel's dgrad with a batch norm's backward sums in its epilogue
    (GRAD_SUMS, ``bn_grad_sums`` on MobileNetV2's projections: K = the conv's 24 / 96 output
    channels, 144 / 576 columns): the tiles it may run (SUMS_CONFIGS) compile for sm_90 without
    spills, in the registers and shared memory their per_sm_sums and smem_bytes(sums=True)
    count (the 128-row tiles spilled: 136 and 216 bytes)."""
    from tritoncnn.kernels import conv_pointwise

    for cfg in conv_pointwise.SUMS_CONFIGS:
        index = str(conv_pointwise.POINTWISE_CONFIGS.index(cfg))
        report = _report("fwd_pointwise", k, cols, 1, "--config", index, "--epilogue", "bn_sums")
        assert report["wgmma"] > 0 and report["spill_bytes"] == 0, report
        registers = -(-report["registers"] // 8) * 8
        per_sm = conv_pointwise.resident_per_sm(cfg, k, "sums")
        assert per_sm * 32 * cfg.num_warps * registers <= 65536, report
        smem = cfg.smem_bytes(conv_pointwise.reduction_block(k), sums=True)
        assert report["shared_bytes"] <= smem, report


@pytest.mark.parametrize("config,max_registers", [("128,64,64,4,4", 160), ("256,128,64,8,3", 224)])
def test_tma_dgrad_epilogue_is_tma_copies(config, max_registers):
    """The TMA dgrad (kernels/conv_tma.py) stores its output tile and reads the skip-gradient
    and ReLU tiles as TMA copies: no per-element global loads or stores, so 3x3 64 -> 64 with
    the add + ReLU epilogue fits without spills (with pointer tensors the 128 x 64 tile took
    237 registers and 256 x 128 spilled 808 bytes); its MMAs stay in flight."""
    report = _report("dgrad_tma", 64, 64, 3, "--config", config, "--epilogue", "add_relu")
    ins = report["instructions"]
    assert not any(op.startswith(("ld.global", "st.global")) for op in ins), ins
    assert any(op.startswith("cp.async.bulk.tensor.2d.global.shared") for op in ins), ins
    assert report["spill_bytes"] == 0 and report["registers"] <= max_registers, report
    assert report["wgmma_in_flight"] >= 1, report


@pytest.mark.parametrize(
    "op,config,extra",
    [
        ("fwd_tma", "256,128,64,8,3", ()),  # the largest 3x3 forward tile, with BN moments
        ("wgrad_tma", "128,64,64,8,3", ("--row-taps",)),  # three 128 x 64 accumulators
    ],
)
def test_tma_largest_tiles_do_not_spill(op, config, extra):
    """The largest TMA tiles the autotuner may time compile without spilling (3x3, 128
    channels at 16x16)."""
    report = _report(op, 128, 128, 3, "--size", "16", "--config", config, *extra)
    assert report["spill_bytes"] == 0, report


@pytest.mark.parametrize(
    "op,config,epilogue,rows",
    [
        ("fwd_halo", "128,64,64,4,2", "none", (1, 2)),
        ("dgrad_halo", "128,64,32,4,4", "add_relu", (1, 2)),
    ],
)
def test_halo_kernel_rows_are_sub_views_of_one_halo_box(op, config, epilogue, rows):
    """The Gluon halo kernel (kernels/conv_halo.py; no interpreter runs it) at 3x3 64 -> 64,
    32x32: kernel rows 1 and 2 read the halo buffer at W * BLOCK_K * 2 bytes per row (the
    sub-views, not new loads), operands and output move by TMA copies only (5 per K step: body,
    edge, three weight boxes), three wgmmas stay in flight while the next stage loads, and it
    fits without spills."""
    report = _report(op, 64, 64, 3, "--config", config, "--epilogue", epilogue)
    block_k = int(config.split(",")[2])
    row_bytes = 32 * block_k * 2
    assert {r * row_bytes for r in rows} <= set(report["shared_offsets"]), report
    ins = report["instructions"]
    assert not any(op.startswith("ld.global") for op in ins), ins
    boxes = "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
    halos = "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
    epilogue_tiles = {"none": 0, "add": 1, "add_relu": 2}[epilogue]  # [M, C] boxes too
    weight_boxes = ins[boxes] - epilogue_tiles
    assert ins[halos] % 2 == 0 and weight_boxes == 3 * ins[halos] // 2, ins
    assert report["wgmma_in_flight"] == 3, report
    assert report["spill_bytes"] == 0 and report["registers"] <= 160, report


@pytest.mark.parametrize("config", ["64,64,32,4,4", "128,64,32,4,2"])
def test_halo_dgrad_bn_sums_epilogue_does_not_spill(config):
    """The dgrad's batch-norm sums (the batch norm's input tile by TMA, its statistics and
    affine parameters per column): 128 x 64 on 4 warps holds the accumulator and the input
    tile in registers without spilling (128 x 128 spills: conv_halo.GRAD_SUMS_MAX_PER_THREAD
    keeps it out of the candidates)."""
    report = _report("dgrad_halo", 128, 128, 3, "--size", "16", "--config", config,
                     "--epilogue", "bn_sums")  # fmt: skip
    assert report["spill_bytes"] == 0, report
    assert report["wgmma_in_flight"] == 3, report


def test_every_halo_tile_compiles_without_spills_in_the_shared_memory_it_counts():
    """Every tile the autotuner may time, on a shape it fits (forward, the largest: 128
    output channels where the tile is 128 wide), compiles without spills and asks for exactly
    the shared memory HaloConfig.smem_bytes counts: the candidates are filtered by it against
    the whole opt-in limit, so a byte it misses could make a launch fail."""

    cfgs = _halo_tiles()
    reports = _halo_reports([("fwd_halo", 64, 128, _tile_size(c), c, "none") for c in cfgs])
    for cfg, report in zip(cfgs, reports, strict=True):
        assert report["spill_bytes"] == 0, (cfg, report)
        smem = cfg.smem_bytes(_tile_size(cfg), epilogue_tiles=1)
        assert report["shared_bytes"] == smem, (cfg, report)
        assert not report["wgmma_serialized"], (cfg, report)


@pytest.mark.parametrize("epilogue", ["none", "add", "add_relu", "bn_sums"])
def test_halo_wgmmas_stay_pipelined(epilogue):
    """ptxas keeps one K step's wgmmas in flight while the next stage's loads are issued in
    every halo tile the dgrad may run, with each epilogue (and the forward, above). It
    serializes them, silently but for the machine code's waits, when some code shapes reach
    it: on 12-07 the forward's moments read from the accumulator (147 -> 244 us for 64
    channels at 32x32 on an H100), and, in a loop of runtime length, a lean refill."""
    from tritoncnn.kernels import conv_halo

    limit = conv_halo.GRAD_SUMS_MAX_PER_THREAD * 32  # (a tile over it is not a candidate)
    cfgs = [
        c
        for c in _halo_tiles()
        if epilogue != "bn_sums" or c.BLOCK_M * c.BLOCK_N <= limit * c.num_warps
    ]
    reports = _halo_reports([("dgrad_halo", 64, 128, _tile_size(c), c, epilogue) for c in cfgs])
    for cfg, report in zip(cfgs, reports, strict=True):
        assert not report["wgmma_serialized"], (cfg, epilogue, report)


@pytest.mark.parametrize(
    "op,epilogue,tile",
    [
        ("fwd_halo", "none", "64,64,32,4,4"),
        ("dgrad_halo", "add_relu", "64,64,32,4,4"),
        ("wgrad_halo", "none", "64,64,64,4,4"),
    ],
)
def test_halo_loader_warp_issues_the_loads_behind_warp_barriers(op, epilogue, tile):
    """Triton 3.6 puts a barrier before each TMA copy it emits: in the warpgroup's loop one of
    all its warps per copy (5 a forward / dgrad K step, 3 a weight-gradient step), in the
    loader warp's partition (HaloConfig.loader_warp) a warp barrier. Only the dgrad's
    epilogue tiles (2 a tile) stay in the warpgroup; a loader-warp program of which two fit
    an SM's shared memory stays within 128 registers a thread, without spills."""
    plain = _report(op, 64, 64, 3, "--config", f"{tile},0,0", "--epilogue", epilogue)
    assert set(plain["tma_load_barriers"]) == {"bar.sync"}, plain
    report = _report(op, 64, 64, 3, "--config", f"{tile},0,1", "--epilogue", epilogue)
    barriers = report["tma_load_barriers"]
    assert barriers.get("bar.sync", 0) == (2 if epilogue == "add_relu" else 0), report
    assert barriers["bar.warp.sync"] >= 3, report
    assert report["registers"] <= 128 and report["spill_bytes"] == 0, report
    assert report["wgmma_in_flight"] == 3, report


def test_halo_wgrad_reads_x_once_per_k_step_for_three_kernel_rows():
    """The halo weight gradient (3x3 64 -> 64, 32x32, 64 x 64 tiles, 128-pixel steps): kernel
    rows 1 and 2's x operands are sub-views of the halo buffer (W * 64 * 2 = 4096 bytes per
    row), three TMA copies per K step (dy, halo body, halo edge), three wgmmas in flight, three
    accumulators without spills."""
    report = _report("wgrad_halo", 64, 64, 3, "--config", "64,64,128,4,4")
    assert {4096, 8192} <= set(report["shared_offsets"]), report
    ins = report["instructions"]
    assert not any(op.startswith("ld.global") for op in ins), ins
    assert report["tma_copies"] % 3 == 0, report
    assert report["wgmma_in_flight"] == 3, report
    assert report["spill_bytes"] == 0 and report["registers"] <= 168, report


def test_halo_sub_views_of_rows_wider_than_the_swizzle_do_not_compile():
    """A halo buffer of 128 fp16 channels (256-byte rows) is stored as two 128-byte column
    blocks, which a re-viewed sub-tile can't follow: the 64 x 128 weight-gradient tile computed
    wrong gradients on an H100. Such a tile must fail to compile, with the reason."""
    args = ["--op", "wgrad_halo", "--c-in", "128", "--c-out", "128", "--size", "16"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--config", "64,128,128,8,2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert "halo sub-views need rows of at most 128 bytes" in done.stderr


@pytest.mark.parametrize(
    "op,c_in,c_out,kernel,size",
    [
        ("fwd", 64, 64, 3, 32),
        ("dgrad", 64, 64, 3, 32),
        ("wgrad", 64, 64, 3, 32),
        ("fwd", 24, 144, 1, 32),
        ("dgrad", 144, 24, 1, 32),
        ("wgrad_tma", 64, 64, 3, 32),
    ],
)
def test_pointer_conv_wgmmas_stay_pipelined(op, c_in, c_out, kernel, size):
    """The pointer conv kernels at their heuristic tiles, with the layers' fp16 weight copy
    (nn.Conv2d's default), and the TMA weight gradient let the last K step's wgmma run on
    while the next is issued: the PTX waits with one in flight and ptxas keeps it so. (fp32
    weights, cast in registers each step, make Triton wait for every wgmma: one reason the
    copy is the default. The TMA forward and dgrad, off by default, are serialized: with
    their K loop's length a constexpr they were pipelined but computed wrong tiles on an
    H100 on 2026-12-07, benchmarks/README.md.)"""
    extra = ("--weight", "fp16") if op in ("fwd", "dgrad") else ()
    report = _report(op, c_in, c_out, kernel, "--size", str(size), *extra)
    assert max(report["wgmma_waits"]) > 0 and not report["wgmma_serialized"], report
