"""Fused SGD / Adam / AdamW against torch.optim on float64 copies of the same parameters."""

import pytest
import torch
from helpers import DEVICE, assert_close, f64

from tritoncnn.kernels import optim as K
from tritoncnn.nn.module import Module, Parameter
from tritoncnn.optim import SGD, Adam, AdamW, param_groups

TOL = 1e-5  # fp32 math against a float64 reference, relative Frobenius error

# (shape, channels_last, no_weight_decay): odd sizes, one NHWC conv weight, flagged 1-d params
SHAPES = [
    ((7, 5, 3, 3), True, False),
    ((13,), False, True),
    ((5, 11), False, False),
    ((300,), False, True),
]

# ResNet-18 (CIFAR stem) parameter shapes: 62 tensors, 11.2M parameters.
RESNET18 = [((64, 3, 3, 3), False)] + [((64,), True)] * 2
for _cin, _cout, _stride in [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]:
    for _b in range(2):
        _ci = _cin if _b == 0 else _cout
        RESNET18 += [((_cout, _ci, 3, 3), False), ((_cout,), True), ((_cout,), True)]
        RESNET18 += [((_cout, _cout, 3, 3), False), ((_cout,), True), ((_cout,), True)]
        if _b == 0 and (_stride != 1 or _cin != _cout):
            RESNET18 += [((_cout, _cin, 1, 1), False), ((_cout,), True), ((_cout,), True)]
RESNET18 += [((10, 512), False), ((10,), True)]


def _params(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = []
    for shape, *flags in shapes:
        cl, nwd = (flags[0], flags[1]) if len(flags) == 2 else (len(shape) == 4, flags[0])
        t = torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE, torch.float32)
        if cl:
            t = t.contiguous(memory_format=torch.channels_last)
        ps.append(Parameter(t, no_weight_decay=nwd))
    return ps


def _grad_like(p, gen, device=DEVICE):
    g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(device, torch.float32)
    return g.contiguous(memory_format=torch.channels_last) if p.data.dim() == 4 else g


def _torch_twin(opt, torch_cls, ref_device="cpu"):
    """torch optimizer with our groups (same order and values) on float64 copies."""
    refs = [p.data.detach().to(ref_device, torch.float64).clone() for p in opt._params]
    groups, slot = [], 0
    for g in opt.param_groups:
        n = len(g["params"])
        groups.append(
            {**{k: v for k, v in g.items() if k != "params"}, "params": refs[slot : slot + n]}
        )
        slot += n
    return torch_cls(groups), refs


def _run(make, torch_cls, config=(64, 2), steps=5, shapes=SHAPES, no_grad=None, ref_device="cpu"):
    """`steps` steps with random grads on ours and torch's; compare params, updates and state.

    no_grad: {param index: steps at which that param has no gradient (torch skips it)}.
    """
    ps = _params(shapes)
    p0 = [f64(p.data) for p in ps]
    opt = make(ps)
    opt.block, opt.iters = config
    ref_opt, refs = _torch_twin(opt, torch_cls, ref_device)
    order = {id(p): i for i, p in enumerate(ps)}
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        for p, r in zip(opt._params, refs, strict=True):
            g = _grad_like(p, gen)
            if no_grad and step in no_grad.get(order[id(p)], ()):
                p.grad, r.grad = None, None
            else:
                p.grad, r.grad = g, g.to(ref_device, torch.float64)
        opt.step()
        ref_opt.step()
    ours_state = opt.state_dict()["state"]
    for slot, (p, r) in enumerate(zip(opt._params, refs, strict=True)):
        what = f"param {slot} {tuple(p.shape)}"
        assert_close(p.data, r, tol=TOL, what=what)
        d0 = p0[order[id(p)]].to(ref_device)
        # The update is a difference of two fp32-stored values: storing p (|p| >> |update|)
        # alone costs ~2**-24 |p| per element, so its relative error is bounded by that
        # representation error on top of TOL (torch's own fp32 optimizer has the same bound).
        upd = r - d0
        storage = 2.0**-23 * r.norm().item() / max(upd.norm().item(), 1e-300)
        assert_close(f64(p.data).to(ref_device) - d0, upd, tol=TOL + storage, what=what + " update")
        ref_state = ref_opt.state.get(r, {})
        for key, ref_val in ref_state.items():
            if key == "step" or ref_val is None:
                continue
            assert_close(ours_state[slot][key], ref_val, tol=TOL, what=f"{what} {key}")
        if "step" in ref_state:
            assert int(ours_state[slot]["step"]) == int(ref_state["step"])
    return opt


def _id(v):
    return v.__name__ if isinstance(v, type) else str(v)


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.05),
    dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
    dict(lr=0.1, weight_decay=0.05, maximize=True),
]
ADAM_CASES = [
    (Adam, dict(lr=1e-2)),
    (Adam, dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1)),
    (Adam, dict(lr=1e-2, amsgrad=True, maximize=True)),
    (AdamW, dict(lr=1e-2)),
    (AdamW, dict(lr=1e-2, weight_decay=0.3, eps=1e-6, amsgrad=True)),
]


@pytest.mark.parametrize("kw", SGD_CASES, ids=str)
def test_sgd_matches_torch(kw):
    _run(lambda ps: SGD(ps, **kw), torch.optim.SGD)


@pytest.mark.parametrize("cls,kw", ADAM_CASES, ids=_id)
def test_adam_matches_torch(cls, kw):
    _run(lambda ps: cls(ps, **kw), getattr(torch.optim, cls.__name__))


@pytest.mark.parametrize("config", K.CONFIGS)
def test_each_block_config(config):
    _run(lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01), torch.optim.SGD, config)
    _run(lambda ps: AdamW(ps, lr=1e-2), torch.optim.AdamW, config)


def test_default_groups_keep_bn_and_bias_out_of_weight_decay():
    ps = _params(SHAPES)
    opt = SGD(ps, lr=0.1, weight_decay=0.1)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    assert all(not p.no_weight_decay for p in opt.param_groups[0]["params"])
    assert all(p.no_weight_decay for p in opt.param_groups[1]["params"])
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert len(SGD(ps, lr=0.1, weight_decay=0.1, no_decay_bn_bias=False).param_groups) == 1


def test_explicit_groups_with_own_hyperparameters():
    def make(ps):
        groups = [
            {"params": ps[:2], "lr": 0.05, "momentum": 0.5},
            {"params": ps[2:], "weight_decay": 0.1},
        ]
        return SGD(groups, lr=0.1, momentum=0.9, dampening=0.1)

    _run(make, torch.optim.SGD)
    _run(
        lambda ps: Adam(
            [{"params": ps[:3]}, {"params": ps[3:], "lr": 3e-2, "betas": (0.5, 0.9)}],
            lr=1e-2,
            weight_decay=0.01,
        ),
        torch.optim.Adam,
    )


def test_param_without_grad_keeps_its_own_step_count():
    """torch skips a param whose grad is None (its step count and state stay); so do we."""
    no_grad = {1: (0, 1), 2: (3,)}
    _run(lambda ps: Adam(ps, lr=1e-2), torch.optim.Adam, no_grad=no_grad)
    _run(lambda ps: SGD(ps, lr=0.1, momentum=0.9, dampening=0.2), torch.optim.SGD, no_grad=no_grad)


@pytest.mark.parametrize("cls,kw", [(SGD, dict(lr=0.1, momentum=0.9)), (Adam, dict(lr=1e-2))])
def test_found_inf_skips_the_step_exactly(cls, kw):
    ps = _params(SHAPES)
    opt = cls(ps, **kw)
    opt.block, opt.iters = K.CONFIGS[-1]
    flag = torch.zeros(1, device=DEVICE)
    gen = torch.Generator().manual_seed(3)
    for p in ps:
        p.grad = _grad_like(p, gen)
    opt.step(found_inf=flag)  # clean: steps
    before = [p.data.clone() for p in ps]
    state_before = opt.state_dict()["state"]
    flag.fill_(1.0)
    for p in ps:
        p.grad = _grad_like(p, gen)
    opt.step(found_inf=flag)
    for p, b in zip(ps, before, strict=True):
        assert torch.equal(p.data, b)
    state_after = opt.state_dict()["state"]
    for slot, entry in state_before.items():
        for key, val in entry.items():
            assert torch.equal(val, state_after[slot][key]), key
    flag.fill_(0.0)
    opt.step(found_inf=flag)
    assert not torch.equal(ps[0].data, before[0])
    assert int(opt.state_dict()["state"][0]["step"]) == 2


def test_zero_grad():
    ps = _params(SHAPES)
    opt = SGD(ps, lr=0.1)
    gen = torch.Generator().manual_seed(2)
    for p in ps:
        p.grad = _grad_like(p, gen)
    grads = [p.grad for p in ps]
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is g and not g.any() for p, g in zip(ps, grads, strict=True))
    opt.zero_grad()
    assert all(p.grad is None for p in ps)
    opt.step()  # no grads: nothing to do
    ps[0].grad = torch.randn(ps[0].shape, device=DEVICE)  # NCHW grad of an NHWC weight
    with pytest.raises(ValueError, match="memory layout"):
        opt.step()


def test_device_lr_is_what_the_kernel_reads():
    ps = _params(SHAPES[:1])
    opt = SGD(ps, lr=0.1)
    p0 = ps[0].data.clone()
    ps[0].grad = torch.ones_like(ps[0].data)
    K.copy_to_device_(opt.lr_tensor.narrow(0, 0, 1), [0.25])  # as a schedule would
    opt.step()
    assert torch.allclose(ps[0].data, p0 - 0.25)
    assert opt.get_lrs() == [0.25]
    opt.param_groups[0]["lr"] = 0.5  # a host edit is pushed at the next step
    p1 = ps[0].data.clone()
    opt.step()
    assert torch.allclose(ps[0].data, p1 - 0.5)


@pytest.mark.parametrize(
    "cls,torch_cls,kw",
    [
        (Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=0.1)),
        (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    ],
)
def test_state_dict_round_trip_and_torch_state(cls, torch_cls, kw):
    """2 steps, save, load into a fresh optimizer (ours, and one loaded from torch's state),
    3 more steps: all three end where an uninterrupted run does."""
    ps = _params(SHAPES)
    opt = cls(ps, **kw)
    ref_opt, refs = _torch_twin(opt, torch_cls)
    gen = torch.Generator().manual_seed(5)
    grads = [[_grad_like(p, gen) for p in opt._params] for _ in range(5)]

    def run(o, params, steps, f64_ref=False):
        for gs in steps:
            for p, g in zip(params, gs, strict=True):
                if f64_ref:
                    p.grad = g.to("cpu", torch.float64)
                else:
                    p.grad = g
            o.step()

    run(opt, opt._params, grads[:2])
    run(ref_opt, refs, grads[:2], f64_ref=True)
    saved = opt.state_dict()
    assert [len(g["params"]) for g in saved["param_groups"]] == [
        len(g["params"]) for g in opt.param_groups
    ]

    twin_params = [Parameter(p.data.clone(), p.no_weight_decay) for p in opt._params]
    twin = cls(twin_params, **kw)
    twin.load_state_dict(saved)
    from_torch_params = [Parameter(p.data.clone(), p.no_weight_decay) for p in opt._params]
    from_torch = cls(from_torch_params, **kw)
    from_torch.load_state_dict(ref_opt.state_dict())

    run(opt, opt._params, grads[2:])
    run(twin, twin._params, grads[2:])
    run(from_torch, from_torch._params, grads[2:])
    for a, b, c in zip(opt._params, twin._params, from_torch._params, strict=True):
        assert torch.equal(a.data, b.data)
        assert_close(c.data, f64(a.data), tol=TOL)


def test_param_groups_helper():
    class Net(Module):
        def __init__(self):
            super().__init__()
            self.conv = Parameter(torch.randn(4, 3, 3, 3))
            self.bias = Parameter(torch.randn(4), no_weight_decay=True)
            self.bn = Parameter(torch.ones(4), no_weight_decay=True)

    net = Net()
    groups = param_groups(net, 5e-4)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert groups[0]["params"] == [net.conv] and groups[1]["params"] == [net.bias, net.bn]
    assert len(param_groups(net.named_parameters(), 5e-4, no_decay_bn_bias=False)) == 1
    opt = AdamW(groups, lr=1e-3)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]


def test_invalid_arguments():
    ps = _params(SHAPES[:1])
    with pytest.raises(ValueError):
        SGD(ps, lr=-1.0)
    with pytest.raises(ValueError):
        SGD(ps, lr=0.1, nesterov=True)
    with pytest.raises(ValueError):
        Adam(ps, betas=(1.0, 0.999))
    with pytest.raises(ValueError):
        SGD([], lr=0.1)


# --- GPU tier: ResNet-18's 62 parameter tensors (11.2M values) ---------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("config", K.CONFIGS)
@pytest.mark.parametrize(
    "cls,kw",
    [
        (SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)),
        (SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=5e-4)),
        (Adam, dict(lr=1e-3, weight_decay=1e-4)),
        (AdamW, dict(lr=1e-3, weight_decay=5e-2, amsgrad=True)),
    ],
    ids=str,
)
def test_resnet18_sized_step_gpu(cls, kw, config):
    opt = _run(
        lambda ps: cls(ps, **kw),
        getattr(torch.optim, cls.__name__),
        config,
        shapes=RESNET18,
        ref_device="cuda",
    )
    assert sum(p.numel() for p in opt._params) > 11_000_000 and len(opt._params) == 62
