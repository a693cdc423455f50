"""LR schedules stepped on the device against torch.optim.lr_scheduler, step by step."""

import math

import pytest
import torch
from helpers import DEVICE

from tritoncnn.nn.module import Parameter
from tritoncnn.optim import (
    SGD,
    Adam,
    Constant,
    MultiStepLR,
    OneCycleLR,
    ReduceLROnPlateau,
    StepLR,
    WarmupCosineLR,
)
from tritoncnn.optim import schedules as S

LRS = (0.1, 0.03)  # two groups with their own lr


def _pair(opt_cls=SGD, **kw):
    """Our optimizer and torch's, each with two single-parameter groups."""
    ours = opt_cls(
        [{"params": [Parameter(torch.zeros(3, device=DEVICE))], "lr": lr} for lr in LRS], **kw
    )
    tparams = [torch.nn.Parameter(torch.zeros(3)) for _ in LRS]
    tcls = getattr(torch.optim, opt_cls.__name__)
    ref = tcls([{"params": [p], "lr": lr} for p, lr in zip(tparams, LRS, strict=True)], **kw)
    return ours, ref


def _momenta(opt):
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in opt.param_groups]


def _device_momenta(opt):
    return [float(v) for v in opt.hyper[:, 2].cpu()]


def _compare(ours_sched, ref_sched, ours_opt, ref_opt, steps, momentum=False):
    for step in range(steps + 1):
        assert ours_opt.get_lrs() == pytest.approx(ref_sched.get_last_lr(), rel=1e-12, abs=1e-15), (
            step
        )
        if momentum:
            assert _device_momenta(ours_opt) == pytest.approx(_momenta(ref_opt), rel=1e-12), step
        ref_opt.step()
        ref_sched.step()
        ours_sched.step()


def test_constant():
    ours, ref = _pair()
    _compare(Constant(ours), torch.optim.lr_scheduler.LambdaLR(ref, lambda s: 1.0), ours, ref, 4)


def test_step_lr():
    ours, ref = _pair(momentum=0.9)
    sched = StepLR(ours, step_size=3, gamma=0.5)
    _compare(sched, torch.optim.lr_scheduler.StepLR(ref, 3, gamma=0.5), ours, ref, 13)


def test_multistep_lr():
    ours, ref = _pair()
    milestones = [2, 5, 5, 9]  # a repeated milestone compounds, as in torch
    sched = MultiStepLR(ours, milestones, gamma=0.3)
    _compare(sched, torch.optim.lr_scheduler.MultiStepLR(ref, milestones, gamma=0.3), ours, ref, 12)


@pytest.mark.parametrize("warmup", [0, 3])
def test_warmup_cosine(warmup):
    total, eta_min, f = 11, 1e-3, 0.2
    ours, ref = _pair()
    sched = WarmupCosineLR(ours, warmup, total, warmup_start_factor=f, eta_min=eta_min)

    def factor(base):  # independent formula, as a LambdaLR factor of each group's base lr
        def lam(s):
            if s < warmup:
                return f + (1 - f) * s / warmup
            t = min(1.0, (s - warmup) / (total - warmup))
            return (eta_min + (base - eta_min) * (1 + math.cos(math.pi * t)) / 2) / base

        return lam

    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref, [factor(b) for b in LRS])
    _compare(sched, ref_sched, ours, ref, total + 2)


def test_warmup_cosine_is_linear_lr_then_cosine_annealing():
    """The same curve as torch's own LinearLR -> CosineAnnealingLR composition."""
    warmup, total, eta_min, f = 4, 12, 1e-3, 0.1
    ours, ref = _pair()
    sched = WarmupCosineLR(ours, warmup, total, warmup_start_factor=f, eta_min=eta_min)
    lr = torch.optim.lr_scheduler
    ref_sched = lr.SequentialLR(
        ref,
        [lr.LinearLR(ref, f, 1.0, warmup), lr.CosineAnnealingLR(ref, total - warmup, eta_min)],
        milestones=[warmup],
    )
    for step in range(total + 1):
        assert ours.get_lrs() == pytest.approx(ref_sched.get_last_lr(), rel=1e-9), step
        ref.step()
        ref_sched.step()
        sched.step()


@pytest.mark.parametrize("opt_cls", [SGD, Adam])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(anneal_strategy="linear", pct_start=0.25),
        dict(three_phase=True, div_factor=10.0, final_div_factor=100.0),
        dict(cycle_momentum=False),
    ],
    ids=str,
)
def test_one_cycle(opt_cls, kw):
    opt_kw = dict(momentum=0.9) if opt_cls is SGD else {}
    ours, ref = _pair(opt_cls, **opt_kw)
    max_lr = [0.5, 0.2]
    sched = OneCycleLR(ours, max_lr, total_steps=17, **kw)
    ref_sched = torch.optim.lr_scheduler.OneCycleLR(ref, max_lr, total_steps=17, **kw)
    _compare(sched, ref_sched, ours, ref, 15, momentum=True)  # ends at the last step, 16
    last = ref_sched.get_last_lr()
    assert ours.get_lrs() == pytest.approx(last, rel=1e-12)
    sched.step()
    sched.step()  # past the end: the last values stay (torch would raise)
    assert ours.get_lrs() == pytest.approx(last, rel=1e-12)


@pytest.mark.parametrize(
    "kw",
    [
        dict(mode="min", patience=2, cooldown=1),
        dict(
            mode="max",
            factor=0.5,
            patience=1,
            threshold=0.1,
            threshold_mode="abs",
            min_lr=[0.02, 0.01],
        ),
        dict(mode="min", factor=0.2, patience=0, threshold=0.05, min_lr=0.005),
    ],
    ids=str,
)
def test_reduce_on_plateau(kw):
    ours, ref = _pair()
    sched = ReduceLROnPlateau(ours, **kw)
    ref_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(ref, **kw)
    metrics = [1.0, 0.9, 0.95, 0.95, 0.94, 0.96, 0.7, 0.71, 0.72, 0.73, 0.74, 0.75, 0.6, 0.8, 0.8]
    for m in metrics:
        sched.step(m)
        ref_sched.step(m)
        assert ours.get_lrs() == pytest.approx([g["lr"] for g in ref.param_groups], rel=1e-12)
        assert sched.num_bad_epochs == ref_sched.num_bad_epochs
    assert ours.get_lrs() != list(LRS)  # it did reduce
    state = sched.state_dict()
    again = ReduceLROnPlateau(ours, **kw)
    again.load_state_dict(state)
    assert again.best == sched.best and again.cooldown_counter == sched.cooldown_counter


def test_schedule_drives_the_optimizer_update():
    """Each step's parameter change is -lr * grad with the lr the schedule wrote on the device."""
    p = Parameter(torch.zeros(5, device=DEVICE))
    opt = SGD([p], lr=0.2)
    sched = MultiStepLR(opt, [1, 3], gamma=0.5)
    expected = [0.2, 0.1, 0.1, 0.05, 0.05]
    for lr in expected:
        before = p.data.clone()
        p.grad = torch.ones(5, device=DEVICE)
        opt.step()
        sched.step()
        assert torch.allclose(before - p.data, torch.full((5,), lr, device=DEVICE), rtol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda o: OneCycleLR(o, 0.4, total_steps=12),
        lambda o: StepLR(o, 2, gamma=0.7),
        lambda o: WarmupCosineLR(o, 2, 9),
    ],
    ids=["onecycle", "step", "cosine"],
)
def test_state_dict_resumes(make):
    """Save after 5 steps, load into a fresh optimizer + schedule: the same values follow."""
    a, _ = _pair()
    sa = make(a)
    for _ in range(5):
        sa.step()
    state, opt_state = sa.state_dict(), a.state_dict()
    assert state["last_epoch"] == 5
    b, _ = _pair()
    sb = make(b)
    b.load_state_dict(opt_state)
    sb.load_state_dict(state)
    for _ in range(6):
        assert b.get_lrs() == a.get_lrs() and _device_momenta(b) == _device_momenta(a)
        sa.step()
        sb.step()


def test_registry_names():
    assert set(S.SCHEDULES) == {"constant", "step", "multistep", "cosine", "onecycle", "plateau"}
