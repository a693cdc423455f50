"""``to_onnx(model, path, input_shape)``: the model as an ONNX graph built with onnx.helper.

The exporter walks our module tree (models are Sequentials of named children; the skip blocks
of ``models/blocks.py`` are expanded into their paths plus an ``Add``) and emits, per module:

    Conv2d -> Conv            BatchNorm -> folded into the preceding Conv/Gemm, or
    Linear -> Gemm (transB)                BatchNormalization (running statistics)
    ReLU -> Relu              ReLU6 -> Clip(0, 6)      ELU -> Elu      LeakyReLU -> LeakyRelu
    SiLU -> Sigmoid, Mul      MaxPool2d -> MaxPool     AvgPool2d -> AveragePool
    AdaptiveAvgPool2d -> GlobalAveragePool (1x1) or AveragePool (sizes that divide)
    Flatten -> Flatten        Dropout -> nothing (inference)
    BasicBlock, InvertedResidual -> their layers + Add (+ Relu)

The graph is fp32, opset 17, with a dynamic batch axis (``input``: batch,C,H,W -> ``logits``:
batch,classes). ``normalize=(mean, std)`` puts ``(x - mean) / std`` in front, so the file takes
raw pixels in [0, 1]. Anything else (an unknown module, return_indices, divisor_override, a
BatchNorm without running statistics, an adaptive pool that does not tile its input) raises
``UnsupportedOpError`` naming the module, before anything is written. The graph passes
``onnx.checker.check_model(full_check=True)``; parity with the tritoncnn model is checked in
onnxruntime before the file is renamed into place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tritoncnn.export import parity as P
from tritoncnn.export.atomic import staged
from tritoncnn.export.errors import ExportError, UnsupportedOpError
from tritoncnn.export.safetensors_io import Exported, input_shape_of
from tritoncnn.kernels import elementwise as ew

OPSET = 17
IR_VERSION = 8  # the IR of opset 17: readable by every onnxruntime since 1.11

Shape = tuple[int, ...]  # per-sample shape: (C, H, W) or (F,)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pool_out(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """torch's pooling output length (ceil mode drops a window that starts in the padding)."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


class _Graph:
    """Nodes and initializers of the graph under construction, with unique tensor names."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self._names: set[str] = set()

    def name(self, hint: str) -> str:
        base = hint or "t"
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def const(self, hint: str, value) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str, **attrs) -> str:
        from onnx import helper

        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out


Emitter = Callable[["_Exporter", Any, str, Shape, str], tuple[str, Shape]]
_EMITTERS: dict[str, Emitter] = {}


def _emits(*class_names: str) -> Callable[[Emitter], Emitter]:
    def deco(fn: Emitter) -> Emitter:
        for n in class_names:
            _EMITTERS[n] = fn
        return fn

    return deco


def _kind(module) -> str | None:
    """The registered class name of one of our modules (first match along its MRO)."""
    for cls in type(module).__mro__:
        if cls.__name__ in _EMITTERS and cls.__module__.startswith("tritoncnn"):
            return cls.__name__
    return None


class _Exporter:
    def __init__(self, fold_bn: bool) -> None:
        self.g = _Graph()
        self.fold_bn = fold_bn

    def emit(self, module, x: str, shape: Shape, path: str) -> tuple[str, Shape]:
        kind = _kind(module)
        if kind is None:
            supported = ", ".join(sorted(_EMITTERS))
            raise UnsupportedOpError(
                f"to_onnx: module {path or '(root)'} is a {type(module).__name__}, which has no "
                f"ONNX mapping (supported: {supported}); nothing was written"
            )
        return _EMITTERS[kind](self, module, x, shape, path)

    def emit_chain(self, pairs: list[tuple[str, Any]], x: str, shape: Shape, prefix: str):
        """Children in order; a BatchNorm right after a Conv2d/Linear is folded into it."""
        paths = [f"{prefix}.{name}" if prefix else name for name, _ in pairs]
        i = 0
        while i < len(pairs):
            m, path = pairs[i][1], paths[i]
            nxt = pairs[i + 1][1] if i + 1 < len(pairs) else None
            if self.fold_bn and nxt is not None and _foldable(m, nxt):
                x, shape = self.affine(m, x, shape, path, bn=nxt)
                x, shape = self.bn_activation(nxt, x, shape, paths[i + 1])
                i += 2
                continue
            x, shape = self.emit(m, x, shape, path)
            i += 1
        return x, shape

    def affine(self, m, x: str, shape: Shape, path: str, bn=None) -> tuple[str, Shape]:
        """Conv or Gemm for ``m`` (Conv2d / Linear), with ``bn``'s eval transform folded in."""
        w = _np(m.weight.data)
        b = _np(m.bias.data) if m._parameters.get("bias") is not None else None
        if bn is not None:
            scale, shift = _bn_affine(bn, path)
            w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
            b = shift if b is None else b * scale + shift
        if _is(m, "Linear"):
            if len(shape) != 1 or shape[0] != m.in_features:
                raise UnsupportedOpError(
                    f"to_onnx: {path} (Linear {m.in_features} -> {m.out_features}) gets "
                    f"per-sample shape {shape}; flatten first"
                )
            inputs = [x, self.g.const(f"{path}.weight", w)]
            if b is not None:
                inputs.append(self.g.const(f"{path}.bias", b))
            return self.g.op("Gemm", inputs, path, transB=1), (m.out_features,)
        return self.conv(m, x, shape, path, w, b)

    def conv(self, m, x, shape, path, w, b) -> tuple[str, Shape]:
        if len(shape) != 3 or shape[0] != m.in_channels:
            raise UnsupportedOpError(
                f"to_onnx: {path} (Conv2d with {m.in_channels} input channels) gets per-sample "
                f"shape {shape}"
            )
        pt, pb, pl, pr = _conv_pads(m)
        (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
        inputs = [x, self.g.const(f"{path}.weight", w)]
        if b is not None:
            inputs.append(self.g.const(f"{path}.bias", b))
        y = self.g.op("Conv", inputs, path, kernel_shape=[kh, kw], strides=[sh, sw],
                      pads=[pt, pl, pb, pr], dilations=[dh, dw], group=m.groups)  # fmt: skip
        h = (shape[1] + pt + pb - dh * (kh - 1) - 1) // sh + 1
        wd = (shape[2] + pl + pr - dw * (kw - 1) - 1) // sw + 1
        return y, (m.out_channels, h, wd)

    def bn_activation(self, bn, x: str, shape: Shape, path: str) -> tuple[str, Shape]:
        """The activation a fusion pass may have put inside a BatchNorm (``bn.act``)."""
        code = getattr(bn, "act", ew.ACT_NONE)
        if code == ew.ACT_NONE:
            return x, shape
        return self.activation(code, getattr(bn, "act_alpha", 0.0), x, f"{path}.act"), shape

    def activation(self, code: int, alpha: float, x: str, path: str) -> str:
        g = self.g
        if code == ew.ACT_RELU:
            return g.op("Relu", [x], path)
        if code == ew.ACT_RELU6:
            return g.op("Clip", [x, g.const(f"{path}.min", 0.0), g.const(f"{path}.max", 6.0)],
                        path)  # fmt: skip
        if code == ew.ACT_ELU:
            return g.op("Elu", [x], path, alpha=float(alpha))
        if code == ew.ACT_LEAKY_RELU:
            return g.op("LeakyRelu", [x], path, alpha=float(alpha))
        if code == ew.ACT_SILU:
            return g.op("Mul", [x, g.op("Sigmoid", [x], f"{path}.sigmoid")], path)
        raise UnsupportedOpError(f"to_onnx: {path}: activation code {code} has no ONNX mapping")


def _is(module, name: str) -> bool:
    """Whether ``module`` is (a subclass of) our class ``name``."""
    return any(c.__name__ == name for c in type(module).__mro__)


def _foldable(m, nxt) -> bool:
    conv_bn = _is(m, "Conv2d") and _is(nxt, "BatchNorm2d")
    lin_bn = _is(m, "Linear") and _is(nxt, "BatchNorm1d")
    return (conv_bn or lin_bn) and nxt._buffers.get("running_mean") is not None


def _bn_params(bn, path: str) -> tuple[np.ndarray, ...]:
    """(gamma, beta, running_mean, running_var) of a BatchNorm in float64 (ones/zeros when
    it has no affine parameters)."""
    if bn._buffers.get("running_mean") is None:
        raise UnsupportedOpError(
            f"to_onnx: {path} is a BatchNorm without running statistics "
            "(track_running_stats=False uses batch statistics at inference); nothing was written"
        )
    mean, var = _np(bn.running_mean), _np(bn.running_var)
    c = mean.shape[0]
    gamma = _np(bn.weight.data) if bn._parameters.get("weight") is not None else np.ones(c)
    beta = _np(bn.bias.data) if bn._parameters.get("bias") is not None else np.zeros(c)
    return gamma, beta, mean, var


def _bn_affine(bn, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of an eval-mode BatchNorm: y = x * scale + shift, in float64."""
    gamma, beta, mean, var = _bn_params(bn, path)
    scale = gamma / np.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def _conv_pads(m) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding of a Conv2d (ints, pairs, 'valid' or 'same';
    'same' puts the odd pixel at the bottom/right, as torch does)."""
    if m.padding == "valid":
        return (0, 0, 0, 0)
    if m.padding == "same":
        out = []
        for d, k in zip(m.dilation, m.kernel_size, strict=True):
            total = d * (k - 1)
            out += [total // 2, total - total // 2]
        return tuple(out)  # type: ignore[return-value]
    ph, pw = _pair(m.padding)
    return (ph, ph, pw, pw)


# --- emitters ------------------------------------------------------------------------------


@_emits("Sequential")
def _sequential(ex: _Exporter, m, x, shape, path):
    pairs = [(n, c) for n, c in m._modules.items() if c is not None]
    return ex.emit_chain(pairs, x, shape, path)


@_emits("Conv2d", "Linear")
def _affine(ex: _Exporter, m, x, shape, path):
    return ex.affine(m, x, shape, path)


@_emits("BatchNorm2d", "BatchNorm1d")
def _batchnorm(ex: _Exporter, m, x, shape, path):
    g = ex.g
    names = ("weight", "bias", "running_mean", "running_var")
    params = [g.const(f"{path}.{k}", v) for k, v in zip(names, _bn_params(m, path), strict=True)]
    y = g.op("BatchNormalization", [x, *params], path, epsilon=float(m.eps))
    return ex.bn_activation(m, y, shape, path)


def _act(code: int, alpha_attr: str | None = None) -> Emitter:
    def fn(ex: _Exporter, m, x, shape, path):
        if getattr(m, "fused", False):  # the BatchNorm before it applied it (bn_activation)
            return x, shape
        alpha = getattr(m, alpha_attr) if alpha_attr else 0.0
        return ex.activation(code, alpha, x, path), shape

    return fn


_emits("ReLU")(_act(ew.ACT_RELU))
_emits("ReLU6")(_act(ew.ACT_RELU6))
_emits("ELU")(_act(ew.ACT_ELU, "alpha"))
_emits("LeakyReLU")(_act(ew.ACT_LEAKY_RELU, "negative_slope"))
_emits("SiLU")(_act(ew.ACT_SILU))


@_emits("Dropout")
def _dropout(ex: _Exporter, m, x, shape, path):
    return x, shape  # the identity at inference


@_emits("Flatten")
def _flatten(ex: _Exporter, m, x, shape, path):
    return ex.g.op("Flatten", [x], path, axis=1), (int(np.prod(shape)),)


def _check_4d(shape: Shape, path: str, what: str) -> None:
    if len(shape) != 3:
        raise UnsupportedOpError(f"to_onnx: {path} ({what}) gets per-sample shape {shape}")


@_emits("MaxPool2d")
def _maxpool(ex: _Exporter, m, x, shape, path):
    _check_4d(shape, path, "MaxPool2d")
    if getattr(m, "return_indices", False):
        raise UnsupportedOpError(f"to_onnx: {path}: MaxPool2d(return_indices=True) is not "
                                 "an inference op; nothing was written")  # fmt: skip
    k, s, p = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)
    d, ceil = _pair(getattr(m, "dilation", 1)), bool(m.ceil_mode)
    y = ex.g.op("MaxPool", [x], path, kernel_shape=list(k), strides=list(s),
                pads=[p[0], p[1], p[0], p[1]], dilations=list(d), ceil_mode=int(ceil))  # fmt: skip
    hw = [_pool_out(shape[1 + i], k[i], s[i], p[i], d[i], ceil) for i in range(2)]
    return y, (shape[0], *hw)


@_emits("AvgPool2d")
def _avgpool(ex: _Exporter, m, x, shape, path):
    _check_4d(shape, path, "AvgPool2d")
    if getattr(m, "divisor_override", None):
        raise UnsupportedOpError(f"to_onnx: {path}: AvgPool2d(divisor_override=...) has no "
                                 "ONNX equivalent; nothing was written")  # fmt: skip
    k, s, p = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)
    ceil = bool(getattr(m, "ceil_mode", False))
    y = ex.g.op("AveragePool", [x], path, kernel_shape=list(k), strides=list(s),
                pads=[p[0], p[1], p[0], p[1]], ceil_mode=int(ceil),
                count_include_pad=int(getattr(m, "count_include_pad", True)))  # fmt: skip
    hw = [_pool_out(shape[1 + i], k[i], s[i], p[i], 1, ceil) for i in range(2)]
    return y, (shape[0], *hw)


@_emits("AdaptiveAvgPool2d")
def _adaptive_avgpool(ex: _Exporter, m, x, shape, path):
    _check_4d(shape, path, "AdaptiveAvgPool2d")
    c, h, w = shape
    size = m.output_size
    oh, ow = (size, size) if isinstance(size, int) else tuple(size)
    oh, ow = oh or h, ow or w  # None keeps the input size, as in torch
    if (oh, ow) == (1, 1):
        return ex.g.op("GlobalAveragePool", [x], path), (c, 1, 1)
    if h % oh or w % ow:
        raise UnsupportedOpError(
            f"to_onnx: {path}: AdaptiveAvgPool2d({size}) on {h}x{w} inputs has uneven windows, "
            "which ONNX pools cannot express; nothing was written"
        )
    kh, kw = h // oh, w // ow
    y = ex.g.op("AveragePool", [x], path, kernel_shape=[kh, kw], strides=[kh, kw])
    return y, (c, oh, ow)


@_emits("BasicBlock")
def _basic_block(ex: _Exporter, m, x, shape, path):
    main = [(n, getattr(m, n)) for n in ("conv1", "bn1", "relu", "conv2", "bn2")]
    y, out_shape = ex.emit_chain(main, x, shape, path)
    skip = x
    if m.downsample is not None:
        skip, skip_shape = ex.emit(m.downsample, x, shape, f"{path}.downsample")
        assert skip_shape == out_shape, (path, skip_shape, out_shape)
    s = ex.g.op("Add", [y, skip], f"{path}.add")
    return ex.g.op("Relu", [s], f"{path}.relu_out"), out_shape


@_emits("InvertedResidual")
def _inverted_residual(ex: _Exporter, m, x, shape, path):
    y, out_shape = ex.emit(m.conv, x, shape, f"{path}.conv")
    if m.use_res_connect:
        y = ex.g.op("Add", [y, x], f"{path}.add")
    return y, out_shape


# --- the public function --------------------------------------------------------------------


def build_onnx(
    model,
    input_shape: Sequence[int],
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    fold_bn: bool = True,
    metadata: dict[str, Any] | None = None,
):
    """The checked ``onnx.ModelProto`` of ``model`` (nothing is written)."""
    import onnx
    from onnx import TensorProto, helper

    import tritoncnn

    if len(input_shape) != 4:
        raise ExportError(f"input_shape must be (N, C, H, W), got {tuple(input_shape)}")
    _, c, h, w = (int(v) for v in input_shape)
    ex = _Exporter(fold_bn)
    x = "input"
    ex.g.name(x)
    if normalize is not None:
        mean, std = (np.asarray(v, dtype=np.float64).reshape(-1) for v in normalize)
        if mean.shape != (c,) or std.shape != (c,) or (std <= 0).any():
            raise ExportError(f"normalize needs {c} means and {c} positive stds, got {normalize}")
        x = ex.g.op("Sub", [x, ex.g.const("normalize.mean", mean.reshape(1, c, 1, 1))],
                    "normalize.sub")  # fmt: skip
        x = ex.g.op("Div", [x, ex.g.const("normalize.std", std.reshape(1, c, 1, 1))],
                    "normalize.div")  # fmt: skip
    y, out_shape = ex.emit(model, x, (c, h, w), "")
    if len(out_shape) != 1:
        raise UnsupportedOpError(f"to_onnx: the model ends in shape {out_shape}, not logits")
    ex.g.nodes.append(helper.make_node("Identity", [y], ["logits"], name="logits"))
    graph = helper.make_graph(
        ex.g.nodes,
        type(model).__name__,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", c, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", out_shape[0]])],
        initializer=ex.g.inits,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="tritoncnn",
        producer_version=tritoncnn.__version__,
        doc_string="input: batch,C,H,W fp32 "
        + ("pixels in [0, 1] (normalised inside)" if normalize else "normalised images"),
    )
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), json.dumps(value)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:  # a bug of this exporter, not of the user's input
        raise ExportError(f"to_onnx built an invalid graph: {e}") from None
    return proto


def to_onnx(
    model,
    path: str | os.PathLike,
    input_shape: Sequence[int] | None = None,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    fold_bn: bool = True,
    *,
    metadata: dict[str, Any] | None = None,
    parity: bool = True,
    parity_input: torch.Tensor | None = None,
    rtol: float = P.RTOL,
    atol: float = P.ATOL,
) -> Exported:
    """Write ``model`` (eval-mode semantics) as an ONNX file at ``path`` (atomically).

    ``input_shape``: (N, C, H, W) of one input (N is ignored: the batch axis is dynamic);
    default from the model's ``build_config``. ``normalize=(mean, std)`` adds the per-channel
    normalisation as the first nodes (then the input is raw pixels in [0, 1]). ``fold_bn``
    folds each BatchNorm into the Conv/Gemm before it. ``metadata`` goes into the model's
    metadata_props as JSON. With ``parity`` a batch (``parity_input``, else 4 seeded random
    images) runs through onnxruntime and the tritoncnn model before the file is renamed into
    place; a mismatch raises ``ParityError`` and leaves nothing at ``path``.
    """
    if input_shape is None:
        spec = getattr(model, "build_config", None)
        if not spec:
            raise ExportError("to_onnx needs input_shape=(1, C, H, W) for this model")
        input_shape = input_shape_of(spec)
    proto = build_onnx(model, input_shape, normalize, fold_bn, metadata)
    report = None
    with staged(path) as tmp:
        tmp.write_bytes(proto.SerializeToString())
        if parity:
            x = parity_input
            if x is None:
                x = P.random_input((4, *input_shape[1:]), unit=normalize is not None)
            ours_in = P.normalize_input(x, *normalize) if normalize is not None else x
            report = P.compare(P.tritoncnn_logits(model, ours_in), P.onnx_logits(tmp, x),
                               "onnxruntime", rtol, atol)  # fmt: skip
    return Exported(Path(path), report)
