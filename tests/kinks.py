"""Kink matching: make a torch twin take the same branch as our model at every ReLU / ReLU6 /
LeakyReLU / MaxPool2d, so that a float64 reference differentiates the same piece of a
piecewise function.

Why: a network of ReLUs and max pools is piecewise smooth. An element whose exact value lies
within rounding distance of a kink (0 for ReLU, a near-tie in a pool window) can land on
either side in fp32, and the gradient then routes differently at that element. At full size
(ResNet-18, batch 128: a million elements per layer, relative rounding ~1e-6) about one such
element per layer is expected, and one flip moves a whole gradient tensor by ~1/sqrt(numel)
(~1e-3): far above fp32 rounding, and torch's own fp32 run suffers it too, at other elements.
Comparing against a twin that follows *our* branches removes that luck, so the comparison
measures only rounding and can be held to a tight tolerance.

``KinkRecorder(model)`` records, in call order, the decision inputs of our kinked layers
(the input of each activation / max pool, and the output of ``BasicBlock``'s fused add+ReLU).
An activation fused into the BatchNorm before it (``nn.fusion``) decides on the BN's fp32
result z inside the BN kernel. Its pass-through input act(z) shows that decision exactly in
fp32, but a 16-bit rounding of act(z) can sit on a kink the kernel's z was not on (6.0 for z in
[5.998, 6)). There, and only there (output exactly 0 or 6 in 16 bits), the recorder rebuilds z
from what the BN keeps (``_saved``) with the kernel's expression. Rebuilding z everywhere would
not do: torch's rounding of that expression differs from the kernel's (which contracts into
FMAs), so in fp32 an element within an ulp of 0 could flip.
``replay_kinks(twin, decisions)`` installs forward hooks on the twin that rebuild each kinked
layer's output from its own (float64) input and our decision; every recorded decision must be
consumed exactly once (``assert_consumed``).
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F

KINKED = ("ReLU", "ReLU6", "LeakyReLU", "MaxPool2d")


class KinkRecorder:
    """Wraps the kinked layers of one of our models; ``decisions()`` hands out what one
    forward recorded, keyed by the twin's module name, and starts a new recording."""

    def __init__(self, model) -> None:
        from tritoncnn.nn.fusion import fused_pairs

        self._queues: dict[str, list[tuple[str, torch.Tensor]]] = defaultdict(list)
        self._wrapped = []
        bn_of = {id(act): bn for bn, act in fused_pairs(model)}
        for name, m in model.named_modules():
            kind = type(m).__name__
            if kind in KINKED and id(m) in bn_of:
                bn = bn_of[id(m)]
                self._wrap(m, name, kind, lambda x, y, bn=bn: _fused_decision(bn, x))
            elif kind in KINKED:
                self._wrap(m, name, kind, lambda x, y: x)
            elif kind == "BasicBlock":
                # the twin applies the block's ReLU module to out + identity; ours fuses it
                self._wrap(m, f"{name}.relu" if name else "relu", "ReLU", lambda x, y: y)

    def _wrap(self, m, twin_name: str, kind: str, decided_on) -> None:
        original = m.forward
        queue = self._queues

        def forward(x, *args, **kwargs):
            y = original(x, *args, **kwargs)
            queue[twin_name].append((kind, decided_on(x, y).detach().clone(), m))
            return y

        m.forward = forward
        self._wrapped.append(m)

    def decisions(self) -> dict[str, list]:
        out = {k: list(v) for k, v in self._queues.items()}
        self._queues.clear()
        return out

    def remove(self) -> None:
        for m in self._wrapped:
            del m.forward  # the instance attribute; the class method shows again
        self._wrapped.clear()


def _fused_decision(bn, out: torch.Tensor) -> torch.Tensor:
    """What a fused BN -> activation decided on: its output ``out`` = act(z) where that is
    unambiguous (always in fp32), the rebuilt z where a 16-bit rounding landed on a kink.
    A BN whose apply was deferred to the conv after it (nn.fusion.defer_bn_into_depthwise)
    passed its input through: that conv decided on z as it loaded, so the
    rebuilt z is all there is (an element within an fp32 ulp of a kink could be decided the
    other way there: rare enough at test sizes)."""
    if bn.pending_link is not None and bn._saved is not None and out is bn._saved[0]:
        return _pre_activation(bn)
    if out.dtype == torch.float32:
        return out
    at_kink = (out == 0) | (out == 6)
    return torch.where(at_kink, _pre_activation(bn), out.float())


def _pre_activation(bn) -> torch.Tensor:
    """z = (x - mean) * (invstd * weight) + bias in fp32, as ``bn_apply_kernel`` computes it
    before a fused activation, from the BN's last forward (batch or running statistics)."""
    x, batch_stats, mean, stat = bn._saved
    invstd = stat if batch_stats else 1.0 / torch.sqrt(stat.float() + bn.eps)
    scale = invstd * (bn.weight.data if bn.weight is not None else 1.0)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    z = (x.float() - mean.float().view(shape)) * scale.view(shape)
    return z + bn.bias.data.view(shape) if bn.bias is not None else z


def _rebuild(kind: str, x: torch.Tensor, rec: torch.Tensor, ours, like: torch.Tensor):
    """The kinked layer's output from the twin's input ``x`` on our branch ``rec``."""
    rec = rec.to(device=x.device, dtype=torch.float64)
    if kind == "ReLU":
        return x * (rec > 0).to(x.dtype)
    if kind == "LeakyReLU":
        return x * torch.where(rec > 0, 1.0, ours.negative_slope).to(x.dtype)
    if kind == "ReLU6":
        inside, top = (rec > 0) & (rec < 6), rec >= 6
        return x * inside.to(x.dtype) + 6.0 * top.to(x.dtype)
    if kind == "MaxPool2d":
        _, idx = F.max_pool2d(
            rec,
            ours.kernel_size,
            ours.stride,
            ours.padding,
            ours.dilation,
            ours.ceil_mode,
            return_indices=True,
        )
        return x.flatten(2).gather(2, idx.flatten(2)).view_as(like)
    raise AssertionError(kind)


def replay_kinks(twin: torch.nn.Module, decisions: dict[str, list]) -> list:
    """Forward hooks on ``twin`` replaying ``decisions`` (consumed in call order)."""
    queues = {k: list(v) for k, v in decisions.items()}
    handles = []
    for name, m in twin.named_modules():
        if type(m).__name__ not in KINKED:
            continue

        def hook(mod, inputs, output, _name=name):
            queue = queues.get(_name)
            assert queue, f"{_name}: the twin ran a kinked layer that our model did not record"
            kind, rec, ours = queue.pop(0)
            assert kind == type(mod).__name__, f"{_name}: {kind} recorded, twin has {mod}"
            return _rebuild(kind, inputs[0], rec, ours, output)

        handles.append(m.register_forward_hook(hook))
    handles.append(_Leftovers(queues))
    return handles


class _Leftovers:
    """Last handle of ``replay_kinks``: ``remove()`` asserts every decision was replayed."""

    def __init__(self, queues) -> None:
        self.queues = queues

    def remove(self) -> None:
        left = {k: len(v) for k, v in self.queues.items() if v}
        assert not left, f"recorded kinks never replayed by the twin: {left}"


def assert_consumed(handles: list) -> None:
    """Remove the hooks; fails if any recorded decision was not used."""
    for h in handles:
        h.remove()
