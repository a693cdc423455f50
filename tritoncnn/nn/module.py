"""Module and Parameter: torch.nn's bookkeeping without autograd.

A module computes ``forward(x)`` and, from what it kept of that call, ``backward(grad_out)``,
which returns the gradient of its input and *accumulates* the gradients of its parameters into
``p.grad`` (allocated on first use, so ``zero_grad()`` just drops them, like torch's
``set_to_none=True``). Names, key order and tensor shapes of ``state_dict`` are torch.nn's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping

import torch

from tritoncnn import runtime


class Parameter:
    """A trainable tensor: fp32 master ``data`` and its accumulated ``grad`` (or None)."""

    __slots__ = ("data", "grad", "no_weight_decay")

    def __init__(self, data: torch.Tensor, no_weight_decay: bool = False):
        self.data = data
        self.grad: torch.Tensor | None = None
        # BN affine parameters and biases are kept out of weight decay by default (optim groups).
        self.no_weight_decay = no_weight_decay

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def numel(self) -> int:
        return self.data.numel()

    def __repr__(self) -> str:
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


class Module:
    """Base class: registers parameters, buffers and children in assignment order."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # --- registration -------------------------------------------------------------------------
    def __setattr__(self, name: str, value) -> None:
        params, modules = self.__dict__.get("_parameters"), self.__dict__.get("_modules")
        if params is None:
            raise AttributeError("call Module.__init__() before assigning attributes")
        for table in (params, modules, self._buffers):
            table.pop(name, None)
        if isinstance(value, Parameter):
            params[name] = value
        elif isinstance(value, Module):
            modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        for table in ("_parameters", "_buffers", "_modules"):
            d = self.__dict__.get(table)
            if d is not None and name in d:
                return d[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, tensor: torch.Tensor | None) -> None:
        self._buffers[name] = tensor

    def add_module(self, name: str, module: Module | None) -> None:
        self._modules[name] = module

    # --- calling ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # --- traversal ----------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def children(self) -> Iterator[Module]:
        yield from (m for m in self._modules.values() if m is not None)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._parameters.items():
                if p is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
        for mod_name, mod in self.named_modules(prefix):
            for name, b in mod._buffers.items():
                if b is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), b

    # --- modes and gradients ------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, torch.Tensor]:
        """torch.nn's keys and logical shapes, module by module: parameters, then buffers."""
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for mod_name, mod in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name, p in mod._parameters.items():
                if p is not None:
                    out[pre + name] = p.data
            for name, b in mod._buffers.items():
                if b is not None:
                    out[pre + name] = b
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """Copy values in place (keeping our memory layout); shapes must match torch's."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            for key, dst in own.items():
                if key not in state:
                    continue
                src = torch.as_tensor(state[key])
                if tuple(src.shape) != tuple(dst.shape):
                    raise ValueError(
                        f"{key}: checkpoint shape {tuple(src.shape)} != model {tuple(dst.shape)}"
                    )
                dst.copy_(src.to(device=dst.device, dtype=dst.dtype))

    def to_device(self) -> Module:
        """Move every parameter and buffer to the kernel device (keeps memory layouts)."""
        for mod in self.modules():
            for p in mod._parameters.values():
                if p is not None:
                    p.data = p.data.to(runtime.DEVICE)
            for name, b in list(mod._buffers.items()):
                if b is not None:
                    mod._buffers[name] = b.to(runtime.DEVICE)
        return self

    # --- printing -------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        children = [(n, m) for n, m in self._modules.items() if m is not None]
        if not children:
            return lines[0] + ")"
        for name, child in children:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"
