"""Sequential and Flatten."""

from __future__ import annotations

from collections import OrderedDict

import torch

from tritoncnn.nn.module import Module


class Sequential(Module):
    """Runs children in order; the backward runs them in reverse."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, idx: int) -> Module:
        return list(self._modules.values())[idx]

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module: Module) -> Sequential:
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(
        self, grad_out: torch.Tensor, add: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The children's backwards in reverse; None when the first child skipped its input
        gradient (``input_grad = False``, a stem layer). ``add``: a gradient of the input from
        another path, handed to the first child's backward (a Conv2d, or a Sequential that
        starts with one), which adds it to the input gradient it returns."""
        children = list(reversed(self._modules.values()))
        for i, m in enumerate(children):
            if grad_out is None:
                raise RuntimeError(
                    f"{type(children[i - 1]).__name__} returned no input gradient but "
                    f"{type(m).__name__} runs before it: only a model's first layer may set "
                    "input_grad = False"
                )
            last = i == len(children) - 1
            grad_out = (
                m.backward(grad_out, add=add) if last and add is not None else m.backward(grad_out)
            )
        return grad_out


class Flatten(Module):
    """N,C,H,W -> N,C*H*W in torch's (C,H,W) order.

    Our activations are channels_last, so torch's order is not the memory order: the forward
    permutes NHWC -> NCHW with a copy kernel (tiny: it runs once, before the classifier), and
    the backward scatters the gradient back to channels_last. A contiguous input is a view.
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        if (start_dim, end_dim) != (1, -1):
            raise ValueError("Flatten supports start_dim=1, end_dim=-1 (N,C,H,W -> N,C*H*W)")
        self.start_dim, self.end_dim = start_dim, end_dim
        self._shape: torch.Size | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from tritoncnn.kernels.layout import to_contiguous

        self._shape = x.shape
        self._input_contiguous = x.is_contiguous()
        if self._input_contiguous:
            return x.view(x.shape[0], -1)
        return to_contiguous(x).view(x.shape[0], -1)

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor:
        from tritoncnn.kernels.layout import to_channels_last

        assert self._shape is not None, "Flatten.backward called before forward"
        g = grad_out.reshape(self._shape)  # a view: grad_out is contiguous N,F
        return g if self._input_contiguous else to_channels_last(g)
