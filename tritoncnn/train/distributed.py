"""Data-parallel training over torch.distributed: one process per GPU, launched by torchrun.

What each rank does differently from a single-process run, and why it stays equivalent:

- ``setup`` joins the process group (NCCL on CUDA, gloo in the interpreter), picks the GPU
  named by ``LOCAL_RANK`` *before* anything is allocated, and the model's parameters and
  buffers are broadcast from rank 0, so every rank starts from the same weights.
- Every rank's loader gathers its own disjoint slice of the same epoch permutation
  (``GPULoader(rank=, world_size=)``): global step s is ``world_size * batch`` consecutive
  permutation entries.
- Gradients live in one flat fp32 buffer: ``attach_gradients`` makes every ``p.grad`` a view
  into it (the layers accumulate into an existing ``p.grad``), so after the backward one
  all-reduce averages them all. NCCL averages in the collective (``ReduceOp.AVG``); gloo has
  no AVG, so it sums and our ``amp.scale_`` kernel multiplies by 1/world_size. With fp16 loss
  scaling the all-reduce runs before the unscale + inf check, so every rank sees the same
  gradients, takes the same skip decision and applies the same update: weights stay identical.
- Metrics are summed across ranks once per epoch; checkpoints, metrics.csv, curves and log
  lines come from rank 0; checkpoints hold global state only, so a run resumes on any number of
  ranks.

No torch compute op runs in the step: the collective is torch.distributed's (the "existing
engine"), its scaling is our kernel.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as tdist

from tritoncnn import runtime
from tritoncnn.kernels import amp
from tritoncnn.kernels import elementwise as ew
from tritoncnn.nn.module import Module, Parameter

log = runtime.log

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistributedConfig:
    """``trainer.distributed`` of the Hydra config.

    enabled: True, False or "auto" (on when torchrun's RANK and WORLD_SIZE are set).
    backend: "auto" (nccl on CUDA, gloo in the interpreter), "nccl" or "gloo".
    sync_bn: batch-norm statistics over the global batch (default: per GPU, as torch's DDP).
    init_method: torch.distributed's; None reads torchrun's MASTER_ADDR/MASTER_PORT (env://).
    timeout_s: how long a collective waits for the other ranks before failing.
    """

    enabled: bool | str = "auto"
    backend: str = "auto"
    sync_bn: bool = False
    init_method: str | None = None
    timeout_s: float = 1800.0

    @classmethod
    def from_dict(cls, cfg: dict[str, Any] | bool | None) -> DistributedConfig:
        """From the config node; a bare boolean (``trainer.distributed=true``) sets enabled."""
        if cfg is None:
            return cls()
        if isinstance(cfg, bool | str):
            return cls(enabled=cfg)
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown trainer.distributed keys {sorted(unknown)}; "
                f"use {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**cfg)

    def wanted(self) -> bool:
        """Whether this process should join a process group."""
        if self.enabled == "auto":
            return all(v in os.environ for v in ("RANK", "WORLD_SIZE")) or _under_submitit()
        if isinstance(self.enabled, bool):
            return self.enabled
        raise ValueError(
            f"trainer.distributed.enabled must be true, false or auto, got {self.enabled!r}"
        )


# torch 2.13 renamed all_gather_into_tensor (the older name warns there)
_all_gather = getattr(tdist, "all_gather_single", None) or tdist.all_gather_into_tensor


def _flat_view(t: torch.Tensor) -> torch.Tensor:
    """A 1-d view of a dense tensor's memory (any layout): collectives want contiguous ones."""
    return torch.as_strided(t, (t.numel(),), (1,), t.storage_offset())


class Distributed:
    """This process's place in the process group, and the collectives the trainer uses."""

    def __init__(
        self, rank: int, world_size: int, local_rank: int, backend: str, sync_bn: bool = False
    ) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.backend, self.sync_bn = backend, sync_bn
        self.flat_grad: torch.Tensor | None = None
        self.model: Module | None = None  # the model prepare_model wired to this group
        self._grad_views: list[tuple[Parameter, int]] = []
        # gloo has no ReduceOp.AVG: sum, then our scale kernel multiplies by 1/world_size
        self._avg_in_collective = backend == "nccl"
        self._inv_world = runtime.empty((1,))
        ew.fill_(self._inv_world, 1.0 / world_size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- weights ----------------------------------------------------------------------------
    def broadcast_model(self, model: Module) -> None:
        """Parameters and buffers of rank 0 to every rank (setup, and after loading weights)."""
        for p in model.parameters():
            tdist.broadcast(_flat_view(p.data), src=0)
        self.broadcast_buffers(model)

    def broadcast_buffers(self, model: Module) -> None:
        """Rank 0's buffers (BN running statistics) to every rank: per-GPU BN statistics
        drift apart, so evaluation and checkpoints use rank 0's, as torch's DDP does."""
        for _, b in model.named_buffers():
            if b.numel():
                tdist.broadcast(_flat_view(b), src=0)

    # --- gradients --------------------------------------------------------------------------
    def attach_gradients(self, params: Iterable[Parameter]) -> torch.Tensor:
        """Allocate one zeroed flat fp32 buffer and make each ``p.grad`` a view into it, in
        the parameter's own memory layout (kernels then accumulate straight into the bucket).
        Returns the buffer."""
        params = list(params)
        total = sum(p.numel() for p in params)
        flat = ew.fill_(runtime.empty((max(total, 1),)), 0.0)
        views, offset = [], 0
        for p in params:
            p.grad = torch.as_strided(flat, p.data.shape, p.data.stride(), offset)
            views.append((p, p.grad.data_ptr()))
            offset += p.numel()
        self.flat_grad, self._grad_views = flat, views
        return flat

    def all_reduce_gradients(self) -> None:
        """Average the flat gradient buffer over the ranks: one collective, no host sync."""
        if self.flat_grad is None:
            raise RuntimeError("all_reduce_gradients before attach_gradients(model.parameters())")
        for p, ptr in self._grad_views:  # host-side pointer check: cheap, no device read
            if p.grad is None or p.grad.data_ptr() != ptr:
                raise RuntimeError(
                    f"the gradient of {p!r} left the flat all-reduce buffer (re-allocated); "
                    "keep gradients allocated with optimizer.zero_grad(set_to_none=False)"
                )
        self.average_(self.flat_grad)

    def average_(self, t: torch.Tensor) -> torch.Tensor:
        """In-place mean of a dense fp32 tensor over the ranks (a collective even for one rank:
        a single-GPU run exercises the multi-GPU code)."""
        flat = _flat_view(t)
        if self._avg_in_collective:
            tdist.all_reduce(flat, op=tdist.ReduceOp.AVG)
        else:
            tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
            amp.scale_(flat, self._inv_world)
        return t

    # --- synchronised batch norm (see nn.batchnorm) ----------------------------------------
    def gather_(self, out: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        """out[r] = rank r's ``local`` (both contiguous; out: [world_size, *local.shape])."""
        # flat views: gloo wants the output as the inputs concatenated along dim 0
        _all_gather(out.view(-1), local.view(-1))
        return out

    # --- host values --------------------------------------------------------------------------
    def sum_values(self, values: list[float]) -> list[float]:
        """Sum a few host numbers over the ranks (once per epoch: metrics)."""
        t = torch.tensor(values, dtype=torch.float64, device=runtime.DEVICE)
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t.tolist()

    def barrier(self) -> None:
        if runtime.INTERPRETED or self.backend != "nccl":
            tdist.barrier()
        else:
            tdist.barrier(device_ids=[self.local_rank])

    def shutdown(self) -> None:
        if tdist.is_initialized():
            tdist.destroy_process_group()


def _under_submitit() -> bool:
    """A task of a multi-task SLURM job started by submitit (Hydra's submitit launcher)."""
    return (
        os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
        and int(os.environ.get("SLURM_NTASKS", "1")) > 1
        and "RANK" not in os.environ
    )


def _export_submitit_env() -> None:
    """torchrun's variables from submitit's job environment (one task per GPU), so the
    env:// rendezvous works alike under torchrun and under SLURM."""
    import submitit  # present wherever the submitit launcher started us

    job = submitit.JobEnvironment()
    os.environ.update(
        RANK=str(job.global_rank),
        WORLD_SIZE=str(job.num_tasks),
        LOCAL_RANK=str(job.local_rank),
        MASTER_ADDR=job.hostnames[0],
        MASTER_PORT=os.environ.get("MASTER_PORT", str(20000 + _digits(job.job_id) % 40000)),
    )


def _digits(job_id: str) -> int:
    """SLURM job id ("1234" or array "1234_5") as a number: a port per job, the same on every
    task of it."""
    return int("".join(c for c in str(job_id) if c.isdigit()) or 0)


def setup(cfg: DistributedConfig) -> Distributed | None:
    """Join the process group described by torchrun's environment (or submitit's under SLURM,
    or ``cfg.init_method``); None when distributed training is off. Call before anything is
    allocated on the GPU."""
    if not cfg.wanted():
        return None
    if _under_submitit():
        _export_submitit_env()
    missing = [v for v in TORCHRUN_VARS if v not in os.environ]
    if missing and cfg.init_method is None:
        raise ValueError(
            f"trainer.distributed is on but {', '.join(missing)} are not set; launch with "
            "`torchrun --nproc_per_node=N scripts/train.py ...`"
        )
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    backend = cfg.backend
    if backend == "auto":
        backend = "gloo" if runtime.INTERPRETED else "nccl"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"trainer.distributed.backend must be auto, nccl or gloo, got {backend!r}")
    if backend == "nccl" and runtime.INTERPRETED:
        raise ValueError("the nccl backend needs CUDA GPUs; use trainer.distributed.backend=gloo")
    if not runtime.INTERPRETED:
        visible = torch.cuda.device_count()
        if local_rank >= visible and visible != 1:
            raise ValueError(
                f"LOCAL_RANK {local_rank} but only {visible} GPU(s) visible; "
                "use --nproc_per_node <= the GPU count"
            )
        # one visible GPU: the launcher bound this process to it (e.g. SLURM --gpus-per-task)
        local_rank = local_rank if visible > 1 else 0
        torch.cuda.set_device(local_rank)  # runtime.DEVICE ("cuda") now means this GPU
    if not tdist.is_initialized():
        kw: dict[str, Any] = {"timeout": timedelta(seconds=cfg.timeout_s)}
        if cfg.init_method is not None:
            kw.update(init_method=cfg.init_method, rank=rank, world_size=world_size)
        if backend == "nccl":
            kw["device_id"] = torch.device("cuda", local_rank)
        tdist.init_process_group(backend, **kw)
    d = Distributed(rank, world_size, local_rank, backend, sync_bn=cfg.sync_bn)
    if d.is_main:
        log.info(
            "data parallel: %d rank(s), backend %s%s",
            world_size,
            backend,
            ", synchronised batch norm" if cfg.sync_bn else "",
        )
    return d


def prepare_model(model: Module, dist: Distributed) -> None:
    """Broadcast rank 0's weights, attach the flat gradient buffer, wire sync BN if asked."""
    dist.model = model
    dist.broadcast_model(model)
    dist.attach_gradients(model.parameters())
    if dist.sync_bn:
        convert_sync_batchnorm(model, dist)


def convert_sync_batchnorm(model: Module, dist: Distributed) -> int:
    """Make every batch-norm layer normalise with global-batch statistics while training;
    returns how many layers were converted."""
    from tritoncnn.nn.batchnorm import _BatchNorm

    n = 0
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.sync_group = dist
            n += 1
    return n
