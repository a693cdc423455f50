"""Shared checks: compare with torch in float64 by relative Frobenius error."""

from __future__ import annotations

import torch

from tritoncnn import runtime

# ||out - ref|| / ||ref|| bounds by the dtype the kernel computed in (see design.md).
TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}

DEVICE = runtime.DEVICE


def f64(t: torch.Tensor) -> torch.Tensor:
    """A float64 CPU copy (for the reference computation)."""
    return t.detach().to("cpu", torch.float64)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = f64(out), f64(ref)
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), "output has NaN/inf (an element left unwritten?)"
    denom = ref.norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype=torch.float32, tol=None, what=""):
    """Fail unless out matches ref within the tolerance of ``dtype``."""
    tol = TOL[dtype] if tol is None else tol
    err = rel_err(out, ref)
    assert err < tol, f"{what}: relative error {err:.3e} >= {tol:.1e}"


def randn(*shape, dtype=torch.float32, channels_last=False, seed=None) -> torch.Tensor:
    """Random normal tensor on the kernel device (optionally NHWC memory)."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    t = torch.randn(*shape, generator=g, dtype=torch.float64)
    t = t.to(device=DEVICE, dtype=dtype)
    if channels_last and t.dim() == 4:  # 2-d tensors have no channels_last form
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def rounded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 ``t`` rounded to 16-bit ``dtype`` as our kernels round it: Tensor.to (nearest
    even), except that Triton's interpreter truncates fp32 -> bf16 (it ignores
    fp_downcast_rounding), so on the CPU tier bf16 keeps the high 16 bits."""
    if runtime.INTERPRETED and dtype == torch.bfloat16:
        bits = t.float().contiguous().view(torch.int32) & -65536  # 0xFFFF0000
        return bits.view(torch.float32).reshape(t.shape).to(dtype)
    return t.to(dtype)


def training_step(model, batch: int = 2, size: int = 8, evaluate: bool = False):
    """One training step of ``model`` on seeded random images and logit gradients: (logits,
    parameter gradients, buffers[, eval logits of the same images])."""
    x = randn(batch, 3, size, size, channels_last=True, seed=7)
    model.train()
    logits = model(x)
    model.backward(randn(*logits.shape, seed=8))
    grads = [p.grad.clone() for p in model.parameters()]
    out = (logits, grads, [b.clone() for _, b in model.named_buffers()])
    if evaluate:
        model.eval()
        out += (model(x),)
    return out


def assert_same_step(out, ref, what: str = "") -> None:
    """``training_step`` results of two variants of one model agree: logits and gradients
    within fp32 tolerance, integer buffers exactly, running statistics to 1e-6.

    Each gradient's error is measured against the larger of its own norm and the norm it
    would have at the model's RMS gradient element. Some gradients are exactly zero in exact
    arithmetic, and then computed as summation noise that two summation orders don't share
    (~100% apart): the bias of a BatchNorm whose output reaches the loss only through linear
    layers into another batch-statistics BatchNorm (every MobileNetV2 projection BN: a shift
    cancels in the next BN's mean), or, at the bias-0 init, the weight of a BN -> ReLU6 ->
    depthwise conv -> BN chain (a scale cancels). Those count at the model's gradient scale;
    every gradient at least as large as the RMS element is held to ``TOL`` of its own norm."""
    assert_close(out[0], ref[0], what=f"{what} training logits")
    flat = torch.cat([f64(g).flatten() for g in ref[1]])
    rms = flat.norm().item() / flat.numel() ** 0.5
    for i, (a, b) in enumerate(zip(out[1], ref[1], strict=True)):
        a64, b64 = f64(a), f64(b)
        assert torch.isfinite(a64).all(), f"{what} gradient {i} has NaN/inf"
        denom = max(b64.norm().item(), rms * b64.numel() ** 0.5)
        err = (a64 - b64).norm().item() / denom
        assert err < TOL[torch.float32], f"{what} gradient {i}: relative error {err:.3e}"
    for a, b in zip(out[2], ref[2], strict=True):
        same = torch.equal(a, b) if a.dtype == torch.long else torch.allclose(a, b, atol=1e-6)
        assert same, f"{what}: a buffer differs"
    if len(out) > 3:
        assert_close(out[3], ref[3], what=f"{what} eval logits")


def full_width_step(name: str, **options):
    """``training_step`` of a whole-width model (fp32, batch 16 at 32x32) built with
    ``options``; MobileNetV2 without dropout (each build draws its mask seed from
    nn.dropout's own generator, which torch.manual_seed does not reset)."""
    from tritoncnn import models

    torch.manual_seed(0)
    kw = {"dropout": 0.0} if name == "mobilenetv2" else {}
    model = models.build(name, num_classes=10, image_size=32, **kw, **options)
    return training_step(model, 16, 32)


# Conv input-gradient cases, (n, c_in, size, c_out, kernel, stride, padding, groups): the plain
# GEMM (1x1), stride phases (whose smaller phases mask rows), flattened-K and tap-major 3x3,
# grouped, odd channel counts.
DGRAD_CASES = {
    "1x1": (2, 20, 5, 12, 1, 1, 0, 1),
    "3x3_s2_phases": (2, 18, 7, 20, 3, 2, 1, 1),
    "3x3_flat_k": (1, 6, 6, 5, 3, 1, 1, 1),
    "3x3_tap_major": (1, 12, 5, 40, 3, 1, 1, 1),
    "3x3_groups2": (1, 34, 5, 34, 3, 1, 1, 2),
    "1x1_s2": (2, 17, 7, 19, 1, 2, 0, 1),
}
