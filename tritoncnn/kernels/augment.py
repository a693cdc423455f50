"""The input pipeline on the GPU: epoch permutation, per-sample augmentation draws, and one
gather kernel that cuts a batch out of the uint8 dataset, augments, normalises and writes the
model's input.

Dataset layout: uint8 N,H,W,C (as the readers return it), resident on the device.
Batch layout: N,C,H,W logical with NHWC memory, fp32/fp16/bf16.

Randomness is counter-based (Triton's Philox ``tl.rand``): every draw is a function of
(seed, epoch, sample position in the epoch, draw number), so a run is reproducible and the
host draws nothing per step. The current step and the epoch's draw seed live in device
scalars that the kernels read (``advance_step_kernel`` bumps the step, ``set_position_kernel``
starts an epoch), so the whole sequence can be captured once in a CUDA graph and replayed
across steps and epochs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from tritoncnn.kernels.pdl import wait_for_inputs

# Columns of the per-sample parameter table written by augment_params_kernel.
P_DY, P_DX, P_FLIP, P_ANGLE, P_BRIGHT, P_CONTRAST, P_SAT, P_CUT_Y, P_CUT_X = range(9)
N_PARAMS = 9
N_DRAWS = 9  # random numbers reserved per sample (one per column)
# the same numbers as compile-time constants for the kernels (plain globals can't be read there)
_N_PARAMS = tl.constexpr(N_PARAMS)
_N_DRAWS = tl.constexpr(N_DRAWS)


@triton.jit
def _mix32(x):
    """A 32-bit integer hash (xorshift-multiply) on int64 lanes holding values < 2**32: the
    Feistel round function. Products wrap mod 2**64; masking keeps the low 32 bits."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x = x ^ (x >> 16)
    return x


@triton.jit(do_not_specialize=["key"])  # key == 1 would otherwise become a Python constant
def epoch_permutation_kernel(perm_ptr, n, key, HALF_BITS: tl.constexpr, BLOCK: tl.constexpr):
    """perm[i] for i in this program's BLOCK: a seeded bijection of [0, n).

    A 4-round Feistel network permutes [0, 4**HALF_BITS) (the smallest even power of two
    >= n); values that land >= n are walked through the network again until they fall inside
    (cycle walking), which keeps it a bijection on [0, n). ``key`` mixes seed and epoch.
    """
    wait_for_inputs()
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = offs.to(tl.int64)
    lo_mask = (1 << HALF_BITS) - 1
    todo = mask
    while tl.max(todo.to(tl.int32), axis=0) > 0:
        y = x
        for r in tl.static_range(4):
            left = y >> HALF_BITS
            right = y & lo_mask
            f = _mix32(right ^ ((key.to(tl.int64) + r * 0x3C6EF372) & 0xFFFFFFFF)) & lo_mask
            y = (right << HALF_BITS) | (left ^ f)
        x = tl.where(todo, y, x)
        todo = todo & (x >= n)
    tl.store(perm_ptr + offs, x.to(tl.int32), mask=mask)


@triton.jit
def augment_params_kernel(
    params_ptr,
    step_ptr,
    seed_ptr,
    batch,
    pad,
    max_angle,
    bright,
    contrast,
    sat,
    flip_p,
    cut_len,
    H,
    W,
    BLOCK: tl.constexpr,
):
    """Draw every sample's augmentation: one row of N_PARAMS fp32 per sample of the batch.

    params[j] = (dy, dx, flip, angle_rad, brightness, contrast, saturation, cut_y, cut_x):
    crop offsets in [0, 2*pad], flip in {0, 1} with probability flip_p, angle uniform in
    [-max_angle, max_angle] (radians), jitter factors uniform in [1-a, 1+a], cutout centre
    uniform over the image (or -1e4 when cut_len == 0). Draw k of sample j is Philox output
    (seed, (step*batch + j) * N_DRAWS + k). The step and the seed (int64 [1], which mixes
    the epoch) are read from the device, so a captured graph follows epochs and steps.
    """
    wait_for_inputs()
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = j < batch
    step = tl.load(step_ptr).to(tl.int64)
    seed = tl.load(seed_ptr)
    base = (step * batch + j) * _N_DRAWS
    u_dy = tl.rand(seed, base + 0)
    u_dx = tl.rand(seed, base + 1)
    u_fl = tl.rand(seed, base + 2)
    u_an = tl.rand(seed, base + 3)
    u_br = tl.rand(seed, base + 4)
    u_co = tl.rand(seed, base + 5)
    u_sa = tl.rand(seed, base + 6)
    u_cy = tl.rand(seed, base + 7)
    u_cx = tl.rand(seed, base + 8)
    span = 2 * pad + 1
    dy = tl.minimum(tl.floor(u_dy * span), span - 1)
    dx = tl.minimum(tl.floor(u_dx * span), span - 1)
    flip = (u_fl < flip_p).to(tl.float32)
    angle = (2.0 * u_an - 1.0) * max_angle
    br = 1.0 + (2.0 * u_br - 1.0) * bright
    co = 1.0 + (2.0 * u_co - 1.0) * contrast
    sa = 1.0 + (2.0 * u_sa - 1.0) * sat
    has_cut = cut_len > 0
    cy = tl.where(has_cut, tl.minimum(tl.floor(u_cy * H), H - 1), -1e4)
    cx = tl.where(has_cut, tl.minimum(tl.floor(u_cx * W), W - 1), -1e4)
    row = params_ptr + j * _N_PARAMS
    tl.store(row + 0, dy, mask=mask)
    tl.store(row + 1, dx, mask=mask)
    tl.store(row + 2, flip, mask=mask)
    tl.store(row + 3, angle, mask=mask)
    tl.store(row + 4, br, mask=mask)
    tl.store(row + 5, co, mask=mask)
    tl.store(row + 6, sa, mask=mask)
    tl.store(row + 7, cy, mask=mask)
    tl.store(row + 8, cx, mask=mask)


@triton.jit
def _source_pixel(h, w, dy, dx, flip, cos_a, sin_a, H, W, pad, REFLECT: tl.constexpr):
    """Where output pixel (h, w) comes from in the source image, and whether it exists.

    Inverse of: crop (offset dy-pad, dx-pad) -> horizontal flip -> rotation about the centre
    (nearest neighbour, fill 0 outside). Crop padding is zeros or a reflection of the image.
    """
    cyf = (H - 1) * 0.5
    cxf = (W - 1) * 0.5
    hf = h.to(tl.float32) - cyf
    wf = w.to(tl.float32) - cxf
    # inverse rotation of the output coordinates (rotation by +angle maps source -> output)
    r_h = cos_a * hf - sin_a * wf + cyf
    r_w = sin_a * hf + cos_a * wf + cxf
    ph = tl.floor(r_h + 0.5).to(tl.int32)
    pw = tl.floor(r_w + 0.5).to(tl.int32)
    inside = (ph >= 0) & (ph < H) & (pw >= 0) & (pw < W)
    pw = tl.where(flip > 0.5, W - 1 - pw, pw)
    sh = ph + dy.to(tl.int32) - pad
    sw = pw + dx.to(tl.int32) - pad
    if REFLECT:
        sh = tl.where(sh < 0, -sh, sh)
        sh = tl.where(sh >= H, 2 * (H - 1) - sh, sh)
        sw = tl.where(sw < 0, -sw, sw)
        sw = tl.where(sw >= W, 2 * (W - 1) - sw, sw)
    else:
        inside = inside & (sh >= 0) & (sh < H) & (sw >= 0) & (sw < W)
    return sh, sw, inside


@triton.jit
def gather_augment_kernel(
    images_ptr,
    labels_ptr,
    perm_ptr,
    params_ptr,
    mean_ptr,
    std_ptr,
    step_ptr,
    out_ptr,
    out_labels_ptr,
    batch,
    H,
    W,
    C,
    pad,
    cut_len,
    o_n,
    o_c,
    o_h,
    o_w,
    AUGMENT: tl.constexpr,
    REFLECT: tl.constexpr,
    COLOR: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """BLOCK_S samples of the batch per program: out[j] = normalise(augment(images[perm[k]]))
    with k = step*batch + j, the sample's position in this epoch.

    images: uint8 N_total,H,W,C contiguous. out: N,C,H,W through strides o_* (NHWC memory).
    A block is BLOCK_S*BLOCK_P rows (sample, pixel) x BLOCK_C channels; the program walks
    the image in BLOCK_P-pixel chunks. With COLOR, a first pass computes each image's mean
    grayscale after brightness, which contrast blends towards (torchvision's ColorJitter);
    then brightness, contrast, saturation in that order, each clamped to [0, 1]; then the
    mean/std normalisation; cutout zeroes a cut_len square in normalised space.
    Also writes out_labels[j] = labels[perm[k]].
    """
    wait_for_inputs()
    rows = tl.arange(0, BLOCK_S * BLOCK_P)
    j = tl.program_id(0) * BLOCK_S + rows // BLOCK_P  # sample of each row
    smask = j < batch
    step = tl.load(step_ptr).to(tl.int64)
    src = tl.load(perm_ptr + step * batch + j, mask=smask, other=0).to(tl.int64)
    first = smask & (rows % BLOCK_P == 0)
    tl.store(out_labels_ptr + j, tl.load(labels_ptr + src, mask=first, other=0), mask=first)
    img = images_ptr + src * H * W * C
    cs = tl.arange(0, BLOCK_C)
    cmask = cs < C
    mean = tl.load(mean_ptr + cs, mask=cmask, other=0.0)
    inv_std = 1.0 / tl.load(std_ptr + cs, mask=cmask, other=1.0)
    if AUGMENT:
        prow = params_ptr + j * _N_PARAMS
        dy = tl.load(prow + 0, mask=smask, other=0.0)
        dx = tl.load(prow + 1, mask=smask, other=0.0)
        flip = tl.load(prow + 2, mask=smask, other=0.0)
        angle = tl.load(prow + 3, mask=smask, other=0.0)
        bright = tl.load(prow + 4, mask=smask, other=1.0)
        contrast = tl.load(prow + 5, mask=smask, other=1.0)
        sat = tl.load(prow + 6, mask=smask, other=1.0)
        cut_y = tl.load(prow + 7, mask=smask, other=-1e4)
        cut_x = tl.load(prow + 8, mask=smask, other=-1e4)
        cos_a = tl.cos(angle)
        sin_a = tl.sin(angle)
    gray_mean = 0.0
    if COLOR:
        acc = tl.zeros((BLOCK_S * BLOCK_P,), dtype=tl.float32)
        for p0 in range(0, H * W, BLOCK_P):
            ps = p0 + rows % BLOCK_P
            pmask = smask & (ps < H * W)
            sh, sw, ok = _source_pixel(
                ps // W, ps % W, dy, dx, flip, cos_a, sin_a, H, W, pad, REFLECT
            )
            m2 = (pmask & ok)[:, None] & cmask[None, :]
            v = tl.load(img[:, None] + (sh * W + sw)[:, None] * C + cs[None, :], mask=m2, other=0)
            v = tl.minimum(v.to(tl.float32) * (bright[:, None] / 255.0), 1.0)
            acc += _gray(v, cs, C)
        per_sample = tl.sum(tl.reshape(acc, (BLOCK_S, BLOCK_P)), axis=1) / (H * W)
        gray_mean = tl.reshape(
            tl.broadcast_to(per_sample[:, None], (BLOCK_S, BLOCK_P)), (BLOCK_S * BLOCK_P,)
        )[:, None]
    for p0 in range(0, H * W, BLOCK_P):
        ps = p0 + rows % BLOCK_P
        pmask = smask & (ps < H * W)
        h = ps // W
        w = ps % W
        if AUGMENT:
            sh, sw, ok = _source_pixel(h, w, dy, dx, flip, cos_a, sin_a, H, W, pad, REFLECT)
        else:
            sh, sw, ok = h, w, pmask
        m2 = (pmask & ok)[:, None] & cmask[None, :]
        v = tl.load(img[:, None] + (sh * W + sw)[:, None] * C + cs[None, :], mask=m2, other=0)
        v = v.to(tl.float32) * (1.0 / 255.0)
        if COLOR:
            v = tl.minimum(v * bright[:, None], 1.0)
            v = (v - gray_mean) * contrast[:, None] + gray_mean
            v = tl.minimum(tl.maximum(v, 0.0), 1.0)
            g = _gray(v, cs, C)[:, None]
            v = tl.minimum(tl.maximum((v - g) * sat[:, None] + g, 0.0), 1.0)
        v = (v - mean[None, :]) * inv_std[None, :]
        if AUGMENT:
            top = cut_y - cut_len // 2
            left = cut_x - cut_len // 2
            hf = h.to(tl.float32)
            wf = w.to(tl.float32)
            in_cut = (hf >= top) & (hf < top + cut_len) & (wf >= left) & (wf < left + cut_len)
            v = tl.where(in_cut[:, None], 0.0, v)
        dst = out_ptr + j.to(tl.int64)[:, None] * o_n + (h * o_h + w * o_w)[:, None]
        dst += cs[None, :] * o_c
        tl.store(dst, v.to(out_ptr.dtype.element_ty), mask=pmask[:, None] & cmask[None, :])


@triton.jit
def _gray(v, cs, C):
    """ITU-R 601 luma of RGB rows (torchvision's rgb_to_grayscale); the value itself if C==1."""
    wts = tl.where(cs == 0, 0.299, tl.where(cs == 1, 0.587, tl.where(cs == 2, 0.114, 0.0)))
    wts = tl.where(C == 1, tl.where(cs == 0, 1.0, 0.0), wts)
    return tl.sum(v * wts[None, :], axis=1)


@triton.jit
def advance_step_kernel(step_ptr, reset):
    """step += 1, or step = 0 when reset (a new epoch); keeps the host out of the loop."""
    wait_for_inputs()
    s = tl.load(step_ptr)
    tl.store(step_ptr, tl.where(reset != 0, 0, s + 1))


@triton.jit(do_not_specialize=["step", "seed"])
def set_position_kernel(step_ptr, seed_ptr, step, seed):
    """step = ``step``, draw seed = ``seed``: the start of an epoch (or a resume point inside
    one). Launched between steps, outside any captured graph."""
    wait_for_inputs()
    tl.store(step_ptr, step.to(tl.int64))
    tl.store(seed_ptr, seed.to(tl.int64))


def permutation_bits(n: int) -> int:
    """HALF_BITS for epoch_permutation_kernel: smallest h with 4**h >= n (h >= 1)."""
    h = 1
    while (1 << (2 * h)) < n:
        h += 1
    return h


def launch_grid(n: int, block: int) -> tuple[int]:
    return (triton.cdiv(n, block),)
