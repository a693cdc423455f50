"""Fusion pass: each BatchNorm applies the activation that follows it in its own kernels.

BN -> activation is the commonest pair in a CNN (every conv block of the seed net, ResNet,
MobileNetV2, VGG). Run separately, the activation costs one more kernel launch and one more
read and write of the whole activation tensor in the forward, and again in the backward. Fused,
the BN forward applies the activation to its fp32 result before the store, and the BN backward
re-derives the activation's input from what BN already keeps (kernels/norm.py), so the pair
costs what BN alone costs.

Conv -> BatchNorm is the other: in training the BatchNorm's statistics pass reads the whole
conv output once more. Linked (``link_conv_bn_moments``), the conv's epilogue stores per-tile
(mean, M2) of the tile it just computed, and the BatchNorm merges those few partials instead
(kernels/norm_fusion.py, ``TileMoments``): one full read of the activation less per layer.

BatchNorm -> (activation ->) depthwise conv, MobileNetV2's expand layers: deferred
(``defer_bn_into_depthwise``), the BatchNorm's training forward takes only the statistics and
returns its input; the depthwise conv normalises (and activates) each value as it loads it, in
its forward and its weight gradient (norm_fusion.PendingNorm), so the normalised tensor is
never written or read: one write and one read of the activation less per layer.

A residual block's last BatchNorm -> skip add (-> activation): fused
(``fuse_residual_adds``), the BatchNorm's apply pass reads the skip tensor and writes the
block's output, so its own output is never written and read back by an add kernel.

A residual block's skip gradient, in the backward: added in the dgrad epilogue of the block's
first conv (``add_skip_grads_in_dgrad``), which computes the main path's input gradient tile
by tile, so no accumulate kernel reads that gradient back, adds the skip's and writes it again.
Then a block's final ReLU, in the backward: applied in the next block's conv1 dgrad epilogue
(``fold_block_relu_grads``), which reads the ReLU's output (its own input) for the mask, so no
kernel reads the gradient and the output to write the masked gradient.

BatchNorm -> (activation ->) any conv, in the backward: linked (``link_bn_grad_sums``), the
conv's dgrad, which computes the BatchNorm's output gradient tile by tile, also stores each
tile's sum(g') and sum(g' * xhat) (norm_fusion.GradSums), and the BatchNorm's backward adds
those partials instead of reading g and x in a reduction pass: one read of both less per layer.

The module tree is unchanged: the activation module stays in its place, flagged ``fused`` (it
then passes values and gradients through), so ``state_dict`` keys, ``to_torch`` twins (BN and
the activation as separate torch layers) and the model summary are the same as unfused.
Numerically the fused pair is the unfused one in fp32; in fp16/bf16 it rounds once instead of
twice.
"""

from __future__ import annotations

from collections.abc import Iterator

from tritoncnn.kernels.elementwise import ACT_NONE
from tritoncnn.nn.activation import _Activation
from tritoncnn.nn.batchnorm import (
    BatchNorm2d,
    GradSumsLink,
    PendingNormLink,
    TileMomentsLink,
    _BatchNorm,
)
from tritoncnn.nn.container import Sequential
from tritoncnn.nn.conv import Conv2d
from tritoncnn.nn.module import Module


def _adjacent_pairs(
    module: Module, declared: str = "BN_ACTIVATION_PAIRS"
) -> Iterator[tuple[Module, Module]]:
    """(first, second) pairs where ``module`` feeds first's output straight into second:
    consecutive children of a Sequential, or the attribute pairs a block declares in its
    ``declared`` attribute (e.g. ResNet's ``BN_ACTIVATION_PAIRS = (("bn1", "relu"),)``)."""
    if isinstance(module, Sequential):
        children = list(module.children())
        yield from zip(children, children[1:], strict=False)
    for first, second in getattr(module, declared, ()):
        yield getattr(module, first), getattr(module, second)


def fuse_bn_activations(model: Module) -> int:
    """Fuse every BatchNorm -> activation pair of ``model`` in place; returns how many."""
    fused = 0
    for module in model.modules():
        for bn, act in _adjacent_pairs(module):
            if (
                isinstance(bn, _BatchNorm)
                and isinstance(act, _Activation)
                and bn.act == ACT_NONE
                and not act.fused
            ):
                bn.act, bn.act_alpha = act.ACT, act.alpha
                act.fused = True
                fused += 1
    return fused


def fused_pairs(model: Module) -> Iterator[tuple[Module, Module]]:
    """The (BatchNorm, activation) pairs of ``model`` that run fused."""
    for module in model.modules():
        for bn, act in _adjacent_pairs(module):
            if isinstance(bn, _BatchNorm) and isinstance(act, _Activation) and act.fused:
                yield bn, act


def unfuse_bn_activations(model: Module) -> int:
    """Undo ``fuse_bn_activations`` (each activation runs its own kernels again; a BatchNorm
    apply deferred into the conv after the activation, or backward sums linked across it,
    are undone too)."""
    undefer_bn_into_depthwise(model)
    unlink_bn_grad_sums(model)
    pairs = list(fused_pairs(model))
    for bn, act in pairs:
        bn.act, bn.act_alpha = ACT_NONE, 0.0
        act.fused = False
    return len(pairs)


def _conv_bn_pairs(model: Module) -> Iterator[tuple[Conv2d, BatchNorm2d]]:
    for module in model.modules():
        for conv, bn in _adjacent_pairs(module, "CONV_BN_PAIRS"):
            if isinstance(conv, Conv2d) and isinstance(bn, BatchNorm2d):
                yield conv, bn


def link_conv_bn_moments(model: Module) -> int:
    """Link every Conv2d -> BatchNorm2d pair of ``model`` (the conv's output feeds only that
    BatchNorm) so training statistics come from the conv's epilogue; returns how many."""
    linked = 0
    for conv, bn in _conv_bn_pairs(model):
        if conv.moments_link is None and bn.moments_link is None:
            conv.moments_link = bn.moments_link = TileMomentsLink(bn)
            linked += 1
    return linked


def unlink_conv_bn_moments(model: Module) -> int:
    """Undo ``link_conv_bn_moments`` (each BatchNorm runs its own statistics pass again)."""
    unlinked = 0
    for conv, bn in _conv_bn_pairs(model):
        if conv.moments_link is not None and conv.moments_link is bn.moments_link:
            conv.moments_link = bn.moments_link = None
            unlinked += 1
    return unlinked


def _call_chain(seq: Sequential) -> list[Module]:
    """The layers a Sequential calls in order, nested Sequentials flattened."""
    out: list[Module] = []
    for child in seq.children():
        out += _call_chain(child) if isinstance(child, Sequential) else [child]
    return out


def _call_chains(module: Module) -> Iterator[list[Module]]:
    """Layers ``module`` calls one after another, each feeding only the next: a Sequential's
    call order, and the chains a block declares in ``BN_CONV_CHAINS`` (e.g. ResNet's
    ``(("bn1", "relu", "conv2"),)``)."""
    if isinstance(module, Sequential):
        yield _call_chain(module)
    for names in getattr(module, "BN_CONV_CHAINS", ()):
        yield [getattr(module, name) for name in names]


def _bn_conv_pairs(model: Module) -> Iterator[tuple[BatchNorm2d, Conv2d]]:
    """(BatchNorm2d, Conv2d) where the conv reads the BatchNorm's output directly or through
    an activation fused into it, and nothing else reads it: neighbours in a call chain
    (across nested Sequentials, e.g. MobileNetV2's expand block -> depthwise block)."""
    for module in model.modules():
        for chain in _call_chains(module):
            for i, bn in enumerate(chain[:-1]):
                if not isinstance(bn, BatchNorm2d):
                    continue
                nxt = chain[i + 1]
                if isinstance(nxt, _Activation):
                    if not (nxt.fused and bn.act == nxt.ACT) or i + 2 >= len(chain):
                        continue
                    nxt = chain[i + 2]
                if isinstance(nxt, Conv2d):
                    yield bn, nxt


def _bn_depthwise_pairs(model: Module) -> Iterator[tuple[BatchNorm2d, Conv2d]]:
    """The ``_bn_conv_pairs`` whose conv is depthwise."""
    for bn, conv in _bn_conv_pairs(model):
        if conv._is_depthwise():
            yield bn, conv


def _link_pairs(pairs: Iterator[tuple[Module, Module]], attr: str, make) -> int:
    """Give each (BatchNorm, conv) pair with neither side linked yet one ``make(bn, conv)``
    as attribute ``attr`` of both; returns how many."""
    linked = 0
    for bn, conv in pairs:
        if getattr(bn, attr) is None and getattr(conv, attr) is None:
            link = make(bn, conv)
            setattr(bn, attr, link)
            setattr(conv, attr, link)
            linked += 1
    return linked


def _unlink_pairs(model: Module, attr: str) -> int:
    """Remove every BatchNorm's link ``attr`` and its conv's; returns how many."""
    unlinked = 0
    for module in model.modules():
        link = getattr(module, attr, None)
        if isinstance(module, _BatchNorm) and link is not None:
            setattr(module, attr, None)
            setattr(link.conv, attr, None)
            unlinked += 1
    return unlinked


def defer_bn_into_depthwise(model: Module) -> int:
    """Let every BatchNorm2d whose output (after its fused activation) feeds only a depthwise
    conv leave its training apply to that conv's loads; returns how many. Run after
    ``fuse_bn_activations`` (an unfused activation in between blocks the pair)."""
    return _link_pairs(_bn_depthwise_pairs(model), "pending_link", PendingNormLink)


def undefer_bn_into_depthwise(model: Module) -> int:
    """Undo ``defer_bn_into_depthwise`` (each BatchNorm applies itself again)."""
    return _unlink_pairs(model, "pending_link")


def link_bn_grad_sums(model: Module) -> int:
    """Link every BatchNorm2d whose output (after its fused activation) feeds only a conv to
    that conv, so the conv's dgrad stores the BatchNorm's backward sums in its epilogue and
    the BatchNorm's backward skips its reduction pass; returns how many. Run after
    ``fuse_bn_activations`` (an unfused activation in between blocks the pair)."""
    return _link_pairs(_bn_conv_pairs(model), "grad_sums_link", GradSumsLink)


def unlink_bn_grad_sums(model: Module) -> int:
    """Undo ``link_bn_grad_sums`` (each BatchNorm runs its own backward reduction again)."""
    return _unlink_pairs(model, "grad_sums_link")


def fuse_residual_adds(model: Module) -> int:
    """Let every residual block of ``model`` that can (``fuse_residual`` in its class:
    ResNet's BasicBlock, MobileNetV2's InvertedResidual) add its skip tensor, and apply the
    activation after the add, in its last BatchNorm's apply pass; returns how many."""
    return _set_block_flag(model, "fuse_residual", True)


def unfuse_residual_adds(model: Module) -> int:
    """Undo ``fuse_residual_adds`` (each block adds in a kernel of its own again)."""
    return _set_block_flag(model, "fuse_residual", False)


def add_skip_grads_in_dgrad(model: Module) -> int:
    """Let every residual block of ``model`` that can (``skip_grad_in_dgrad`` in its class:
    ResNet's BasicBlock, MobileNetV2's InvertedResidual) add its skip gradient in its first
    conv's dgrad epilogue; returns how many."""
    return _set_block_flag(model, "skip_grad_in_dgrad", True)


def separate_skip_grads(model: Module) -> int:
    """Undo ``add_skip_grads_in_dgrad`` (each block sums its gradients in a kernel again; a
    ReLU backward folded into a dgrad needs the whole gradient there: undone first)."""
    unfold_block_relu_grads(model)
    return _set_block_flag(model, "skip_grad_in_dgrad", False)


def _block_pairs(model: Module) -> Iterator[tuple[Module, Module]]:
    """(block, next block) of residual blocks that declare ``relu_grad_by_next`` (ResNet's
    BasicBlock), neighbours in a call chain (across the stage Sequentials): the first's output
    feeds only the second, which reads it in its conv1 and its skip path."""
    for module in model.modules():
        if isinstance(module, Sequential):
            chain = _call_chain(module)
            for a, b in zip(chain, chain[1:], strict=False):
                if hasattr(type(a), "relu_grad_by_next") and type(a) is type(b):
                    yield a, b


def fold_block_relu_grads(model: Module) -> int:
    """Let every residual block whose output feeds the next block (ResNet's BasicBlocks, but
    the last) leave its final ReLU's backward to that block's conv1 dgrad epilogue; returns
    how many. The next block must add its skip gradient in that epilogue too (the mask then
    covers the whole gradient), so this turns ``add_skip_grads_in_dgrad`` on for it."""
    folded = 0
    for block, nxt in _block_pairs(model):
        if block.relu_grad_by_next or nxt.conv1.grad_sums_link is not None:
            continue
        nxt.skip_grad_in_dgrad = True
        nxt.conv1.relu_input_grad = True
        block.relu_grad_by_next = True
        folded += 1
    return folded


def unfold_block_relu_grads(model: Module) -> int:
    """Undo ``fold_block_relu_grads`` (each block runs its ReLU backward again; the skip
    gradients stay in the dgrad epilogues: ``separate_skip_grads`` undoes that)."""
    unfolded = 0
    for block, nxt in _block_pairs(model):
        if block.relu_grad_by_next:
            block.relu_grad_by_next = False
            nxt.conv1.relu_input_grad = False
            unfolded += 1
    return unfolded


def _set_block_flag(model: Module, flag: str, on: bool) -> int:
    """Set the class-level option ``flag`` on every module whose class has it; how many
    changed."""
    changed = 0
    for module in model.modules():
        if hasattr(type(module), flag) and getattr(module, flag) != on:
            setattr(module, flag, on)
            changed += 1
    return changed
