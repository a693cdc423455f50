"""BatchNorm1d and BatchNorm2d (kernels in kernels/norm.py; the pieces other kernels fuse in
kernels/norm_fusion.py).

Parameters, buffers, state_dict keys and train/eval behaviour are torch.nn's: training (or
eval with ``track_running_stats=False``) normalises with batch statistics; training with
running stats also updates running_mean / running_var (unbiased) and num_batches_tracked on
the device. Statistics are fp32 whatever the activation dtype.

Synchronised batch norm (data parallel, ``train.distributed.convert_sync_batchnorm``): with
``sync_group`` set, training uses the statistics of the global batch. Each rank's (mean, M2)
are all-gathered and merged, and the backward averages the per-channel gradient means over
the ranks (torch.nn.SyncBatchNorm's math; every rank must have the same batch size).
"""

from __future__ import annotations

import functools

import torch

from tritoncnn import runtime
from tritoncnn.kernels import norm, norm_fusion
from tritoncnn.kernels.elementwise import ACT_NONE
from tritoncnn.nn.module import Module, Parameter


class TileMomentsLink:
    """Hands the batch-norm moments a conv's epilogue stored to the BatchNorm that reads the
    conv's output (set up by ``nn.fusion.link_conv_bn_moments``).

    The conv asks ``wanted()`` (the BatchNorm takes batch statistics of one process), launches
    its moments-storing forward and ``publish``es (output, moments); the BatchNorm ``take``s
    them for its input only if that input is the very tensor published, so anything unusual
    (the conv called alone, another tensor fed to the BatchNorm) falls back to the statistics
    pass. A plain object, not a Module: it adds no state_dict keys and no child modules.
    """

    def __init__(self, bn: _BatchNorm) -> None:
        self.bn = bn
        self._output: torch.Tensor | None = None
        self._moments: norm_fusion.TileMoments | None = None

    def wanted(self) -> bool:
        return self.bn.uses_batch_stats() and self.bn._sync_world() == 1

    def publish(self, output: torch.Tensor, moments: norm_fusion.TileMoments) -> None:
        self._output, self._moments = output, moments

    def take(self, x: torch.Tensor) -> norm_fusion.TileMoments | None:
        moments = self._moments if self._output is x else None
        self._output = self._moments = None  # hold no tensor past this step's use
        return moments


class PendingNormLink:
    """Hands a BatchNorm's apply (and fused activation) to the depthwise conv that reads its
    output (set up by ``nn.fusion.defer_bn_into_depthwise``).

    In a batch-statistics forward the BatchNorm only takes the statistics, ``publish``es
    (its input, norm_fusion.PendingNorm) and returns its input unchanged; the conv ``take``s
    them for its input and normalises as it loads (kernels/depthwise.py, IN_NORM). A conv
    handed any other tensor while an apply is pending raises: that tensor would be missing
    the batch norm. Eval with running statistics applies as usual.
    """

    def __init__(self, bn: _BatchNorm, conv) -> None:
        self.bn, self.conv = bn, conv
        self._input: torch.Tensor | None = None
        self._pending: norm_fusion.PendingNorm | None = None

    def wanted(self) -> bool:
        return self.bn.uses_batch_stats() and self.bn._sync_world() == 1

    def publish(self, x: torch.Tensor, pending: norm_fusion.PendingNorm) -> None:
        self._input, self._pending = x, pending

    def take(self, x: torch.Tensor) -> norm_fusion.PendingNorm | None:
        pending, published = self._pending, self._input
        self._input = self._pending = None  # hold no tensor past this step's use
        if pending is not None and published is not x:
            raise RuntimeError(
                f"{type(self.conv).__name__} got a tensor other than the output of the "
                "BatchNorm whose apply it was to do (nn.fusion.defer_bn_into_depthwise): "
                "call undefer_bn_into_depthwise(model) before feeding layers separately"
            )
        return pending


class GradSumsLink:
    """Hands a training BatchNorm the backward sums that the dgrad of the conv reading its
    output stored in its epilogue (set up by ``nn.fusion.link_bn_grad_sums``).

    The BatchNorm's batch-statistics forward ``record``s (its output, its input, a
    norm_fusion.PendingNorm of its statistics, parameters and activation); the conv's backward
    ``request``s them for its own input, launches the sums-storing dgrad only if that input is
    the very tensor recorded, and ``publish``es (input gradient, sums); the BatchNorm's
    backward ``take``s the sums only for that very gradient tensor. Anything else (eval, a
    synchronised batch norm, layers called separately, a gradient summed from several
    consumers) falls back to the batch norm's own reduction pass.
    """

    def __init__(self, bn: _BatchNorm, conv) -> None:
        self.bn, self.conv = bn, conv
        self._output: torch.Tensor | None = None
        self._input: torch.Tensor | None = None
        self._norm: norm_fusion.PendingNorm | None = None
        self._grad: torch.Tensor | None = None
        self._sums: norm_fusion.GradSums | None = None

    def record(self, output, x, bn: norm_fusion.PendingNorm | None) -> None:
        """The BatchNorm's forward: its output and input and, for batch statistics of one
        process, their PendingNorm (None otherwise: no sums this step)."""
        self._output, self._input, self._norm = output, x, bn
        self._grad = self._sums = None

    def request(
        self, conv_input: torch.Tensor
    ) -> tuple[torch.Tensor, norm_fusion.PendingNorm] | None:
        """(the BatchNorm's input, its PendingNorm) when ``conv_input`` is its recorded output."""
        if self._norm is None or self._output is not conv_input:
            return None
        return self._input, self._norm

    def publish(self, grad: torch.Tensor, sums: norm_fusion.GradSums) -> None:
        self._grad, self._sums = grad, sums
        self._output = self._input = self._norm = None  # hold no tensor past this step's use

    def take(self, grad_out: torch.Tensor) -> norm_fusion.GradSums | None:
        sums = self._sums if self._grad is grad_out else None
        self._grad = self._sums = None
        return sums


class _BatchNorm(Module):
    """Shared body; subclasses say which input ranks they accept."""

    RANKS: tuple[int, ...] = ()
    # the conv right before this layer, when nn.fusion linked them (see TileMomentsLink)
    moments_link: TileMomentsLink | None = None
    # the depthwise conv right after it (and its activation), when nn.fusion deferred this
    # layer's apply into that conv's loads (see PendingNormLink)
    pending_link: PendingNormLink | None = None
    # the conv right after it (and its activation), when nn.fusion linked them so that conv's
    # dgrad stores this layer's backward sums (see GradSumsLink)
    grad_sums_link: GradSumsLink | None = None

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if dtype is not None and dtype != torch.float32:
            raise ValueError(f"{type(self).__name__}: parameters are fp32, got dtype={dtype}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        # A fusion pass may set these to apply an activation in the same kernel (not torch's).
        self.act: int = ACT_NONE
        self.act_alpha: float = 0.0
        c = self.num_features
        if affine:
            # torch.nn.init.ones_ / zeros_; BN affine parameters stay out of weight decay.
            self.weight = Parameter(torch.ones(c).to(runtime.DEVICE), no_weight_decay=True)
            if bias:
                self.bias = Parameter(torch.zeros(c).to(runtime.DEVICE), no_weight_decay=True)
            else:
                self.bias = None
        else:
            self.weight = None
            self.bias = None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(c).to(runtime.DEVICE))
            self.register_buffer("running_var", torch.ones(c).to(runtime.DEVICE))
            nbt = torch.tensor(0, dtype=torch.long).to(runtime.DEVICE)
            self.register_buffer("num_batches_tracked", nbt)
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self._saved: tuple | None = None
        # data parallel: an object with world_size, gather_(out, local) and average_(t) (see
        # train/distributed.py); None keeps the statistics per process
        self.sync_group = None
        self._synced = False

    def reset_running_stats(self) -> None:
        """torch's semantics (a host-side reset, outside the training step)."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def _check_input(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if x.dim() not in self.RANKS:
            ranks = " or ".join(f"{r}D" for r in self.RANKS)
            raise ValueError(f"{name}: expected {ranks} input (got {x.dim()}D input)")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{name}: input has {x.shape[1]} channels, expected {self.num_features}"
            )
        if x.dtype not in runtime.SUPPORTED_DTYPES:
            raise ValueError(f"{name}: unsupported input dtype {x.dtype}")

    def _params(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        w = self.weight.data if self.weight is not None else None
        b = self.bias.data if self.bias is not None else None
        return w, b

    def uses_batch_stats(self) -> bool:
        """Whether forward normalises with the batch's statistics (else the running ones)."""
        return self.training or not self.track_running_stats

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None, residual_act: int = ACT_NONE
    ) -> torch.Tensor:
        """torch's forward; ``residual`` (x's shape) makes it a residual block's BN -> add ->
        ``residual_act`` in one pass: act(bn(x)) + residual, then residual_act. The backward
        stays the BatchNorm's own: the block differentiates the add and its activation."""
        self._check_input(x)
        w, b = self._params()
        link = self.moments_link
        moments = link.take(x) if link is not None else None
        batch_stats = self.uses_batch_stats()
        if batch_stats:
            # torch refuses batch statistics of one value per channel (eval included)
            if x.numel() // x.shape[1] == 1:
                raise ValueError(
                    "Expected more than 1 value per channel when training, "
                    f"got input size {tuple(x.shape)}"
                )
            update = self.training and self.track_running_stats
            self._synced = self._sync_world() > 1 and self.training
            deferred = (
                self.pending_link is not None and self.pending_link.wanted() and residual is None
            )
            if deferred:
                mean, invstd = norm.batch_norm_train_statistics(
                    x,
                    self.running_mean if update else None,
                    self.running_var if update else None,
                    self.num_batches_tracked if update else None,
                    self.momentum,
                    self.eps,
                    moments=moments,
                )
                pending = norm_fusion.PendingNorm(mean, invstd, w, b, self.act, self.act_alpha)
                self.pending_link.publish(x, pending)
                self._saved = (x, True, mean, invstd)
                self._record_for_grad_sums(x, x, (mean, invstd))
                return x  # the depthwise conv after this layer applies it as it loads
            if self._synced:
                forward = self._forward_synced
            else:
                forward = functools.partial(norm.batch_norm_forward_train, moments=moments)
            y, mean, invstd = forward(
                x,
                w,
                b,
                self.running_mean if update else None,
                self.running_var if update else None,
                self.num_batches_tracked if update else None,
                self.momentum,
                self.eps,
                act=self.act,
                alpha=self.act_alpha,
                residual=residual,
                residual_act=residual_act,
            )
            self._saved = (x, True, mean, invstd)
            # the dgrad after this layer may take its backward sums (not with global-batch
            # statistics, nor when the output has a residual added: GradSumsLink)
            stats = None if self._synced or residual is not None else (mean, invstd)
        else:
            y = norm.batch_norm_forward_eval(
                x,
                w,
                b,
                self.running_mean,
                self.running_var,
                self.eps,
                act=self.act,
                alpha=self.act_alpha,
                residual=residual,
                residual_act=residual_act,
            )
            self._saved = (x, False, self.running_mean, self.running_var)
            stats = None
        self._record_for_grad_sums(y, x, stats)
        return y

    def _record_for_grad_sums(self, y, x, stats: tuple | None) -> None:
        """Tell the GradSumsLink this forward's output, input and (batch statistics only)
        (mean, invstd)."""
        if self.grad_sums_link is not None:
            w, b = self._params()
            bn = (
                None
                if stats is None
                else norm_fusion.PendingNorm(*stats, w, b, self.act, self.act_alpha)
            )
            self.grad_sums_link.record(y, x, bn)

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor:
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        x, batch_stats, mean, stat = self._saved
        w, b = self._params()
        gw = self.weight.grad if self.weight is not None else None
        gb = self.bias.grad if self.bias is not None else None
        common = {"bias": b, "has_bias": b is not None, "act": self.act, "alpha": self.act_alpha}
        link = self.grad_sums_link
        sums = link.take(grad_out) if link is not None else None
        if batch_stats:
            if self._synced:
                common["average_means"] = self.sync_group.average_
            grad_in, gw, gb = norm.batch_norm_backward(
                grad_out, x, w, mean, stat, gw, gb, sums=sums, **common
            )
        else:
            grad_in, gw, gb = norm.batch_norm_backward_eval(
                grad_out, x, w, mean, stat, self.eps, gw, gb, **common
            )
        if self.weight is not None:
            self.weight.grad = gw
        if self.bias is not None:
            self.bias.grad = gb
        return grad_in

    def _sync_world(self) -> int:
        return 1 if self.sync_group is None else self.sync_group.world_size

    def _forward_synced(self, x: torch.Tensor, *args, **kw):
        """Training forward with global-batch statistics: gather every rank's moments."""
        local = norm.batch_norm_local_moments(x)
        moments = runtime.empty((self._sync_world(), *local.shape))
        self.sync_group.gather_(moments, local)
        return norm.batch_norm_forward_train_synced(x, moments, *args, **kw)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )


class BatchNorm2d(_BatchNorm):
    """Batch norm over N,H,W of an (N, C, H, W) input, per channel."""

    RANKS = (4,)


class BatchNorm1d(_BatchNorm):
    """Batch norm over N (and L) of an (N, C) or (N, C, L) input, per channel."""

    RANKS = (2, 3)
