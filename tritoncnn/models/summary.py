"""A torchinfo-like summary: layers, output shapes, parameter counts and FLOPs per image.

Shapes are inferred from each layer's arguments, not by running the model, so a summary of
a large model costs nothing even in the interpreter. FLOPs count convolutions and linear
layers only, as 2 x multiply-adds (BN, activations, pools and adds are a few percent).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tritoncnn.models.blocks import conv_out
from tritoncnn.nn.module import Module

Shape = tuple[int, ...]


@dataclass
class Row:
    """One module of the tree: its depth, name, type, output shape and the subtree's totals."""

    depth: int
    name: str
    kind: str
    shape: Shape
    params: int = 0
    flops: int = 0


@dataclass
class Summary:
    """Rows in call order plus the model's totals (``str()`` renders the table)."""

    rows: list[Row] = field(default_factory=list)
    input_shape: Shape = ()
    max_depth: int = 3

    @property
    def root(self) -> Row:
        return self.rows[0]

    @property
    def total_params(self) -> int:
        return self.root.params

    @property
    def flops(self) -> int:
        return self.root.flops

    def __str__(self) -> str:
        header = f"{'Layer (type)':<48}{'Output shape':<22}{'Param #':>14}{'FLOPs':>12}"
        bar = "=" * len(header)
        lines = [bar, header, bar]
        for r in self.rows:
            if r.depth > self.max_depth:
                continue
            indent = "" if r.depth == 0 else "  " * (r.depth - 1) + "└─"
            label = (
                f"{indent}{r.name.rsplit('.', 1)[-1] or r.kind} ({r.kind})" if r.depth else r.kind
            )
            shape = "[" + ", ".join(str(s) for s in r.shape) + "]"
            params = f"{r.params:,}" if r.params else "--"
            flops = _human(r.flops) if r.flops else "--"
            lines.append(f"{label:<48}{shape:<22}{params:>14}{flops:>12}")
        lines += [
            bar,
            f"Input shape (per image): {list(self.input_shape)}",
            f"Total params: {self.total_params:,}",
            f"FLOPs per image (2 x conv/linear multiply-adds): {_human(self.flops)}",
            f"Parameter memory (fp32): {self.total_params * 4 / 2**20:.2f} MiB",
            bar,
        ]
        return "\n".join(lines)


def _human(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _own_params(m: Module) -> int:
    return sum(p.numel() for p in m._parameters.values() if p is not None)


def _leaf(m: Module, shape: Shape) -> tuple[Shape, int]:
    """Output shape and FLOPs of one leaf layer for a per-image input ``shape``."""
    kind = type(m).__name__
    if kind == "Conv2d":
        (kh, kw), (sh, sw) = _pair(m.kernel_size), _pair(m.stride)
        (ph, pw), (dh, dw) = _pair(m.padding), _pair(getattr(m, "dilation", 1))
        ho = conv_out(shape[1], dh * (kh - 1) + 1, sh, ph)
        wo = conv_out(shape[2], dw * (kw - 1) + 1, sw, pw)
        macs = m.out_channels * ho * wo * (m.in_channels // m.groups) * kh * kw
        return (m.out_channels, ho, wo), 2 * macs
    if kind == "Linear":
        return (*shape[:-1], m.out_features), 2 * m.in_features * m.out_features
    if kind in ("MaxPool2d", "AvgPool2d"):
        (kh, kw), (sh, sw) = _pair(m.kernel_size), _pair(m.stride)
        (ph, pw) = _pair(m.padding)
        d = _pair(getattr(m, "dilation", 1))
        ho = conv_out(shape[1], d[0] * (kh - 1) + 1, sh, ph)
        wo = conv_out(shape[2], d[1] * (kw - 1) + 1, sw, pw)
        if getattr(m, "ceil_mode", False):
            raise NotImplementedError("summary: ceil_mode pools")
        return (shape[0], ho, wo), 0
    if kind == "AdaptiveAvgPool2d":
        return (shape[0], *_pair(m.output_size)), 0
    if kind == "Flatten":
        n = 1
        for s in shape:
            n *= s
        return (n,), 0
    return shape, 0  # BN, activations, dropout keep the shape


def _trace(m: Module, name: str, depth: int, shape: Shape, rows: list[Row]) -> Shape:
    row = Row(depth, name, type(m).__name__, shape, params=_own_params(m))
    rows.append(row)
    kind_mro = [c.__name__ for c in type(m).__mro__]
    sub = lambda child, nm, s: _trace(child, f"{name}.{nm}" if name else nm, depth + 1, s, rows)
    first = len(rows)
    if "BasicBlock" in kind_mro:
        out = shape
        for nm in ("conv1", "bn1", "relu", "conv2", "bn2"):
            out = sub(getattr(m, nm), nm, out)
        if m.downsample is not None:
            sub(m.downsample, "downsample", shape)
    elif "InvertedResidual" in kind_mro:
        out = sub(m.conv, "conv", shape)
    elif "Sequential" in kind_mro:
        out = shape
        for nm, child in m._modules.items():
            if child is not None:
                out = sub(child, nm, out)
    elif m._modules:
        raise NotImplementedError(f"summary: no shape rule for container {type(m).__name__}")
    else:
        out, row.flops = _leaf(m, shape)
    for r in rows[first:]:
        if r.depth == depth + 1:
            row.params += r.params
            row.flops += r.flops
    row.shape = out
    return out


def summary(model: Module, input_size: Shape, depth: int = 3) -> Summary:
    """Summary of ``model`` for one image of ``input_size`` = (C, H, W)."""
    s = Summary(input_shape=tuple(input_size), max_depth=depth)
    _trace(model, "", 0, tuple(input_size), s.rows)
    return s
