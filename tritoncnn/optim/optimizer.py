"""Optimizer base: parameter groups, flat device state, the multi-tensor tables, state_dict.

How a step runs (see ``kernels/optim.py``): one kernel launch walks a device table of
(param, grad) addresses, so every parameter of every group is updated at once. Per-group
hyper-parameters sit in a device fp64 table ``hyper`` [groups, N_HYPER] that the kernel reads,
so LR schedules (``optim.schedules``) change them on the device and a captured CUDA graph sees
the change. Optimizer state (momentum buffer, exp_avg, ...) lives in flat fp32 arenas, one per
state kind, parameter after parameter in the memory order of its ``.data``; step counts are a
device int32 vector. Nothing in ``step()`` reads the device back or launches a torch kernel.

Host edits of ``param_groups`` values (``group["lr"] = ...``) are pushed to the device at the
next ``step()`` (a copy, only when a value changed); ``sync_hyperparameters()`` pushes them
at once. Values written on the device by a schedule are not mirrored back into the dicts:
``get_lrs()`` and ``state_dict()`` read the device.

The tables are rebuilt when a parameter's ``.data`` or ``.grad`` is re-allocated (host-side
address check, no sync). For a CUDA-graph step keep gradients allocated:
``zero_grad(set_to_none=False)`` zeroes them in one launch instead of dropping them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from tritoncnn import runtime
from tritoncnn.kernels import elementwise as ew
from tritoncnn.kernels import optim as K
from tritoncnn.nn.module import Parameter


def _is_dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (
        t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    )


def _memory_strides(t: torch.Tensor) -> tuple[int, ...]:
    """Strides of the non-unit dims: equal for two dense tensors iff their element orders match."""
    return tuple(s for s, n in zip(t.stride(), t.shape, strict=True) if n != 1)


def param_groups(
    model_or_named_params, weight_decay: float, no_decay_bn_bias: bool = True
) -> list[dict[str, Any]]:
    """Parameter groups with ``weight_decay`` except for no-decay parameters.

    Accepts a Module, an iterable of (name, Parameter) or of Parameters. With
    ``no_decay_bn_bias`` the parameters flagged ``p.no_weight_decay`` (BN affine and biases) get
    their own group with weight_decay 0.0. Empty groups are dropped.
    """
    if hasattr(model_or_named_params, "named_parameters"):
        items = [p for _, p in model_or_named_params.named_parameters()]
    else:
        items = [x[1] if isinstance(x, tuple) else x for x in model_or_named_params]
    if not no_decay_bn_bias:
        return [{"params": items, "weight_decay": weight_decay}]
    decay = [p for p in items if not getattr(p, "no_weight_decay", False)]
    no_decay = [p for p in items if getattr(p, "no_weight_decay", False)]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


class Optimizer:
    """Base class. Subclasses define ``_hyper_row``, ``_launch`` and the state hooks."""

    STATE_NAMES: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict[str, Any], no_decay_bn_bias: bool = True):
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = self._make_groups(params, no_decay_bn_bias)
        self._params: list[Parameter] = []
        self._group_of: list[int] = []
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                if any(p is q for q in self._params):
                    raise ValueError("some parameters appear in more than one parameter group")
                if p.data.dtype != torch.float32 or not _is_dense(p.data):
                    raise ValueError("parameters must be dense fp32 tensors")
                self._params.append(p)
                self._group_of.append(gi)
        self._offsets: list[int] = []
        total = 0
        for p in self._params:
            self._offsets.append(total)
            total += p.numel()
        self._numel = total
        self._arenas: dict[str, torch.Tensor] = {}
        n = len(self._params)
        self._step = ew.fill_(runtime.empty((max(n, 1),), torch.int32), 0)
        self._done = ew.fill_(runtime.empty((max(n, 1),), torch.int32), 0)
        self.hyper = runtime.empty((len(self.param_groups), K.N_HYPER), torch.float64)
        self._uploaded: list[list[float]] = self._host_hyper()
        K.copy_to_device_(self.hyper, self._uploaded)
        self._table_key: tuple | None = None
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None
        # A program updates block * iters elements of one tensor (kernels.optim.CONFIGS).
        self.block, self.iters = K.BLOCK, K.ITERS

    # --- groups -----------------------------------------------------------------------------
    def _make_groups(self, params, split: bool) -> list[dict[str, Any]]:
        if isinstance(params, Parameter):
            raise TypeError("params must be an iterable of Parameters or of group dicts")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        given_groups = isinstance(params[0], Mapping)
        raw = [dict(g) for g in params] if given_groups else [{"params": params}]
        groups = []
        for g in raw:
            ps = g["params"]
            g["params"] = [ps] if isinstance(ps, Parameter) else list(ps)
            for k, v in self.defaults.items():
                g.setdefault(k, v)
            self._validate_group(g)
            groups.append(g)
        # Plain parameter lists: BN affine and biases skip weight decay unless told otherwise.
        if split and not given_groups and groups[0]["weight_decay"] != 0:
            ps = groups[0]["params"]
            decay = [p for p in ps if not getattr(p, "no_weight_decay", False)]
            no_decay = [p for p in ps if getattr(p, "no_weight_decay", False)]
            if no_decay:
                base = {k: v for k, v in groups[0].items() if k != "params"}
                groups = [{**base, "params": decay}] if decay else []
                groups.append({**base, "params": no_decay, "weight_decay": 0.0})
        return groups

    def _validate_group(self, group: dict[str, Any]) -> None:
        if group["lr"] < 0.0:
            raise ValueError(f"Invalid learning rate: {group['lr']}")
        if group["weight_decay"] < 0.0:
            raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")

    # --- hyper-parameters -------------------------------------------------------------------
    def _hyper_row(self, group: dict[str, Any]) -> list[float]:
        raise NotImplementedError

    def _host_hyper(self) -> list[list[float]]:
        rows = []
        for g in self.param_groups:
            row = [float(v) for v in self._hyper_row(g)]
            rows.append(row + [0.0] * (K.N_HYPER - len(row)))
        return rows

    def sync_hyperparameters(self) -> None:
        """Push host edits of group values to the device (only the entries that changed)."""
        rows = self._host_hyper()
        if rows == self._uploaded:
            return
        self._check_not_capturing("hyper-parameters changed on the host")
        for gi, (new, old) in enumerate(zip(rows, self._uploaded, strict=True)):
            for c, (a, b) in enumerate(zip(new, old, strict=True)):
                if a != b:
                    K.copy_to_device_(self.hyper[gi, c : c + 1], [a])
        self._uploaded = rows

    def set_lr(self, group_index: int, lr: float) -> None:
        """Set one group's lr on the host and the device now (nothing else is pushed)."""
        self.param_groups[group_index]["lr"] = lr
        self._check_not_capturing("set_lr")
        K.copy_to_device_(self.hyper[group_index, K.H_LR : K.H_LR + 1], [float(lr)])
        self._uploaded[group_index][K.H_LR] = float(lr)

    @property
    def lr_tensor(self) -> torch.Tensor:
        """The device lr of each group (fp64 view into ``hyper``) that the step kernel reads."""
        return self.hyper[:, K.H_LR]

    def get_lrs(self) -> list[float]:
        """Current lr of each group, read from the device (a host sync)."""
        return [float(v) for v in self.lr_tensor.cpu()]

    # --- state and tables -------------------------------------------------------------------
    def _arena(self, name: str) -> torch.Tensor:
        """Flat fp32 state of kind ``name`` for all parameters, zero-filled on first use."""
        if name not in self._arenas:
            self._arenas[name] = ew.fill_(runtime.empty((max(self._numel, 1),)), 0.0)
        return self._arenas[name]

    def _state_view(self, name: str, slot: int) -> torch.Tensor:
        """Parameter ``slot``'s part of an arena, with the parameter's shape and strides."""
        p = self._params[slot]
        return torch.as_strided(self._arena(name), p.shape, p.data.stride(), self._offsets[slot])

    @staticmethod
    def _check_not_capturing(what: str) -> None:
        if not runtime.INTERPRETED and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"optimizer: {what} during CUDA-graph capture; run one step before capturing and "
                "keep gradients allocated (zero_grad(set_to_none=False))"
            )

    def _get_tables(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The device tensor and chunk tables for the parameters that have a gradient."""
        key = (self.block, self.iters) + tuple(
            (p.data.data_ptr(), p.grad.data_ptr() if p.grad is not None else 0)
            for p in self._params
        )
        if key == self._table_key:
            return self._tables
        self._check_not_capturing("a parameter or gradient was re-allocated")
        chunk_elems = self.block * self.iters
        rows, chunks = [], []
        for slot, p in enumerate(self._params):
            g = p.grad
            if g is None or p.numel() == 0:
                continue
            if g.dtype != torch.float32 or g.shape != p.data.shape or not _is_dense(g):
                raise ValueError(
                    f"gradient of {p!r} must be a dense fp32 tensor of the parameter's shape"
                )
            if _memory_strides(g) != _memory_strides(p.data):
                raise ValueError(f"gradient of {p!r} has another memory layout than its data")
            n_chunks = -(-p.numel() // chunk_elems)
            row = [0] * K.TABLE_COLS
            row[K.DATA], row[K.GRAD] = p.data.data_ptr(), g.data_ptr()
            row[K.STATE], row[K.NUMEL] = self._offsets[slot], p.numel()
            row[K.GROUP], row[K.SLOT], row[K.NCHUNKS] = self._group_of[slot], slot, n_chunks
            chunks.extend((len(rows), c) for c in range(n_chunks))
            rows.append(row)
        if rows:
            self._tables = (
                K.device_tensor(rows, torch.int64),
                K.device_tensor(chunks, torch.int32).reshape(-1, 2),
            )
        else:
            self._tables = None
        self._table_key = key
        return self._tables

    # --- the public step API ----------------------------------------------------------------
    def _launch(self, tensors: torch.Tensor, chunks: torch.Tensor, found_inf) -> None:
        raise NotImplementedError

    def step(self, found_inf: torch.Tensor | None = None) -> None:
        """Update every parameter that has a gradient, in one launch.

        found_inf: optional fp32 [1] device flag (the loss scaler's); when nonzero the kernel
        leaves parameters, state and step counts untouched.
        """
        self.sync_hyperparameters()
        tables = self._get_tables()
        if tables is not None:
            self._launch(*tables, found_inf)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients (torch's default), or zero them in place in one launch."""
        if set_to_none:
            for p in self._params:
                p.grad = None
            return
        tables = self._get_tables()
        if tables is not None:
            K.fill_grads(*tables, 0.0, block=self.block, iters=self.iters)

    # --- checkpoints ------------------------------------------------------------------------
    def _state_entry(self, slot: int, step: int) -> dict[str, Any]:
        raise NotImplementedError

    def _load_state_entry(self, slot: int, entry: Mapping[str, Any]) -> int:
        """Copy a saved entry into the arenas; returns the parameter's step count."""
        raise NotImplementedError

    def _group_values(self, gi: int, row: list[float]) -> dict[str, Any]:
        """The group dict's hyper-parameter keys as the device currently holds them."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's format: {'state': {index: {...}}, 'param_groups': [{..., 'params'}]}.

        Reads the device (a host sync): meant for checkpoints, not for every step.
        """
        steps = self._step.cpu().tolist()
        hyper = self.hyper.cpu().tolist()
        state = {}
        for slot in range(len(self._params)):
            if steps[slot] > 0:
                state[slot] = self._state_entry(slot, steps[slot])
        groups, slot = [], 0
        for gi, group in enumerate(self.param_groups):
            g = {k: v for k, v in group.items() if k != "params"}
            g.update(self._group_values(gi, hyper[gi]))
            g["params"] = list(range(slot, slot + len(group["params"])))
            slot += len(group["params"])
            groups.append(g)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore from ``state_dict()`` (ours or a torch.optim one of the same kind)."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        slot_of = {}
        slot = 0
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't match")
            for sid in saved["params"]:
                slot_of[sid] = slot
                slot += 1
            for k, v in saved.items():
                if k != "params" and k in group:
                    group[k] = tuple(v) if isinstance(v, list) else v
        steps = [0] * len(self._params)
        saved_state = state_dict["state"]
        for name in self.STATE_NAMES:
            if name in self._arenas:
                ew.fill_(self._arenas[name], 0.0)
        for sid, entry in saved_state.items():
            s = slot_of[int(sid)]
            steps[s] = self._load_state_entry(s, entry)
        if self._params:
            K.copy_to_device_(self._step[: len(self._params)], steps)
        ew.fill_(self._done, 0)
        self._uploaded = self._host_hyper()
        K.copy_to_device_(self.hyper, self._uploaded)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(k for k in g if k != "params"):
                lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"
