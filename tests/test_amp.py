"""Dynamic loss scaling against torch.amp.GradScaler; the whole AMP step in a CUDA graph."""

import pytest
import torch
from helpers import DEVICE, assert_close, f64, randn
from test_optim import RESNET18, SHAPES, _grad_like, _params, _torch_twin

from tritoncnn import runtime
from tritoncnn.kernels import amp as A
from tritoncnn.kernels import optim as K
from tritoncnn.optim import SGD, Adam, GradScaler, StepLR


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_scale_kernels(dtype):
    x = randn(3, 5, 7, 2, dtype=dtype, channels_last=True)
    s = torch.tensor([1024.0], device=DEVICE)
    y = A.scale(x, s)
    assert y.stride() == x.stride() and y.dtype == dtype
    assert_close(y, f64(x) * 1024.0, dtype)
    A.scale_(x, s)
    assert torch.equal(x, y)


@pytest.mark.parametrize("bad", [None, float("inf"), float("-inf"), float("nan")])
def test_unscale_flags_non_finite(bad):
    ps = _params(SHAPES)
    opt = SGD(ps, lr=0.1)
    opt.block, opt.iters = K.CONFIGS[-1]
    gen = torch.Generator().manual_seed(0)
    for p in ps:
        p.grad = _grad_like(p, gen) * 8.0
    if bad is not None:
        ps[3].grad[257] = bad  # in the third chunk of that tensor
    ref = [f64(p.grad) / 8.0 for p in ps]
    scaler = GradScaler(init_scale=8.0)
    scaler.unscale_(opt)
    assert scaler.found_inf.item() == (0.0 if bad is None else 1.0)
    for p, r in zip(ps, ref, strict=True):
        finite = torch.isfinite(r)
        assert torch.equal(f64(p.grad)[finite], r[finite])  # power-of-two scale: exact
        assert torch.equal(torch.isfinite(f64(p.grad)), finite)
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.unscale_(opt)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # numpy, in the interpreter
def test_update_rule_edge_cases():
    """Backoff from a huge scale, growth clamped when the grown scale would be inf."""
    scaler = GradScaler(init_scale=3.0e38, growth_interval=1)
    scaler.update()  # clean step: 3e38 * 2 overflows fp32 -> scale kept, tracker reset
    assert scaler.get_scale() == pytest.approx(3.0e38, rel=1e-7)
    assert scaler.state_dict()["_growth_tracker"] == 0
    scaler.found_inf.fill_(1.0)
    scaler.update()
    assert scaler.get_scale() == pytest.approx(1.5e38, rel=1e-7)
    assert scaler.skipped_steps() == 1 and scaler.found_inf.item() == 0.0


def test_scripted_run_matches_torch_gradscaler():
    """Scales, skip decisions, tracker and parameters follow GradScaler step by step
    (growth_interval 3 so the scale grows; infs and a NaN injected)."""
    torch_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    scaler = GradScaler(init_scale=2.0**10, growth_interval=3)
    assert scaler.get_scale() == torch_scaler.get_scale()
    ps = _params(SHAPES[1:3])
    ref = [torch.nn.Parameter(p.data.detach().cpu().clone()) for p in ps]
    opt = SGD(ps, lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(ref, lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    bad_steps = {2: float("inf"), 3: float("inf"), 7: float("nan"), 12: float("-inf")}
    skips = 0
    for step in range(14):
        s = scaler.get_scale()
        assert s == torch_scaler.get_scale(), f"step {step}"
        before = [p.data.clone() for p in ps]
        torch_scaler.scale(torch.ones(()))  # GradScaler creates its scale lazily here
        for p, r in zip(ps, ref, strict=True):
            g = torch.randn(p.shape, generator=gen) * s  # the backward of a scaled loss
            if step in bad_steps:
                g[0] = bad_steps[step]
            p.grad, r.grad = g.to(DEVICE), g.clone()
        scaler.step(opt)
        scaler.update()
        torch_scaler.step(ref_opt)
        torch_scaler.update()
        skipped = all(torch.equal(p.data, b) for p, b in zip(ps, before, strict=True))
        assert skipped == (step in bad_steps), f"step {step}"
        skips += skipped
        tracker = scaler.state_dict()["_growth_tracker"]
        assert tracker == torch_scaler.state_dict()["_growth_tracker"], f"step {step}"
        for p, r in zip(ps, ref, strict=True):
            assert_close(p.data, r.detach(), tol=1e-6, what=f"step {step}")
    assert scaler.skipped_steps() == skips == len(bad_steps)
    assert scaler.get_scale() == torch_scaler.get_scale() != 2.0**10


def test_state_dict_round_trip():
    scaler = GradScaler(init_scale=2.0**12, growth_interval=5, backoff_factor=0.25)
    scaler.found_inf.fill_(1.0)
    scaler.update()
    scaler.update()
    sd = scaler.state_dict()
    assert sd == {
        "scale": 2.0**10,
        "growth_factor": 2.0,
        "backoff_factor": 0.25,
        "growth_interval": 5,
        "_growth_tracker": 1,
        "skipped_steps": 1,
    }
    other = GradScaler()
    other.load_state_dict(sd)
    assert other.state_dict() == sd
    torch_scaler = torch.amp.GradScaler("cpu")
    torch_scaler.load_state_dict({k: v for k, v in sd.items() if k != "skipped_steps"})
    assert torch_scaler.get_scale() == sd["scale"]


def test_disabled_scaler_passes_through():
    ps = _params(SHAPES[1:2])
    opt = SGD(ps, lr=0.5)
    scaler = GradScaler(enabled=False)
    ps[0].grad = torch.ones_like(ps[0].data)
    before = ps[0].data.clone()
    x = torch.ones(3, device=DEVICE)
    assert scaler.scale(x) is x
    scaler.step(opt)
    scaler.update()
    assert torch.allclose(ps[0].data, before - 0.5) and scaler.state_dict() == {}


# --- GPU tier ---------------------------------------------------------------------------------


def _amp_step_replays(shapes, use_graph: bool, ref_device: str):
    """unscale + Adam step + scaler update + lr schedule, run (or captured once and replayed)
    3 times with new gradients, one with an inf: the parameters follow torch.optim.Adam in
    float64 that steps only the clean iterations, with the scheduled lrs."""
    ps = _params(shapes)
    opt = Adam(ps, lr=1e-3, weight_decay=1e-4)
    opt.block, opt.iters = K.CONFIGS[0] if use_graph else K.CONFIGS[-1]
    scaler = GradScaler(growth_interval=2)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    ref_opt, refs = _torch_twin(opt, torch.optim.Adam, ref_device)
    gen = torch.Generator().manual_seed(0)
    for p in opt._params:  # persistent gradients: the graph reads fixed addresses
        p.grad = runtime.empty_nhwc(*p.shape) if p.data.dim() == 4 else runtime.empty(p.shape)

    def load_grads(inject_inf: bool):
        s = scaler.get_scale()
        for i, (p, r) in enumerate(zip(opt._params, refs, strict=True)):
            g = _grad_like(p, gen)
            r.grad = g.to(ref_device, torch.float64)
            gs = g * s  # the backward of a scaled loss
            if inject_inf and i == 3:
                gs[(0,) * gs.dim()] = float("inf")
            p.grad.copy_(gs)

    def amp_step():
        scaler.step(opt)
        scaler.update()
        sched.step()

    def ref_step(skip: bool):
        if not skip:
            ref_opt.step()
        for g in ref_opt.param_groups:  # StepLR(1, 0.5) steps even when the optimizer skips
            g["lr"] *= 0.5

    if use_graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: compile kernels, build the tables
            load_grads(False)
            amp_step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            amp_step()
        run = graph.replay
    else:
        load_grads(False)
        amp_step()
        run = amp_step
    ref_step(False)
    expected_scales = [2.0**17, 2.0**16, 2.0**16]  # clean (2nd clean: x2), inf (x0.5), clean
    for it, inject in enumerate([False, True, False]):
        load_grads(inject)
        before = [p.data.clone() for p in opt._params]
        run()
        ref_step(skip=inject)
        assert scaler.get_scale() == expected_scales[it], it
        changed = [not torch.equal(p.data, b) for p, b in zip(opt._params, before, strict=True)]
        assert not any(changed) if inject else all(changed), it
        for p, r in zip(opt._params, refs, strict=True):
            assert_close(p.data, r, tol=1e-5, what=f"iteration {it}")
    assert scaler.skipped_steps() == 1
    assert opt.get_lrs() == pytest.approx([1e-3 * 0.5**4] * len(opt.param_groups), rel=1e-12)


def test_amp_step_sequence():
    _amp_step_replays(SHAPES, use_graph=False, ref_device="cpu")


@pytest.mark.gpu
def test_cuda_graph_amp_step_replays():
    _amp_step_replays(RESNET18, use_graph=True, ref_device="cuda")


@pytest.mark.gpu
def test_scale_kernels_gpu():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = randn(128, 64, 32, 32, dtype=dtype, channels_last=True)
        s = torch.tensor([65536.0 if dtype != torch.float16 else 16.0], device=DEVICE)
        assert_close(A.scale(x, s), f64(x) * s.item(), dtype)


@pytest.mark.gpu
def test_unscale_resnet18_grads_gpu():
    ps = _params(RESNET18)
    opt = SGD(ps, lr=0.1)
    gen = torch.Generator().manual_seed(0)
    for p in ps:
        p.grad = _grad_like(p, gen) * 1024.0
    ref = [f64(p.grad) / 1024.0 for p in ps]
    scaler = GradScaler(init_scale=1024.0)
    scaler.unscale_(opt)
    assert scaler.found_inf.item() == 0.0
    assert all(torch.equal(f64(p.grad), r) for p, r in zip(ps, ref, strict=True))
    scaler.update()
    ps[-5].grad[-1, -1, -1, -1] = float("nan")  # an NHWC conv weight's gradient
    scaler.unscale_(opt)
    assert scaler.found_inf.item() == 1.0
