"""GPU tier: the training step captured in a CUDA graph and replayed equals the eager step.

(1) CudaGraphStep replays our kernels, sees in-place changes of its static inputs and device
scalars, and allocates nothing on replay; (2) N training steps of the seed net (fp32 SGD with
momentum; fp16 Adam with dynamic loss scaling), with CIFAR augmentation, dropout and a
per-iteration LR schedule, across an epoch boundary, equal the same steps run eagerly
(weights, BN buffers, optimizer state, loss scale, meter sums, RNG states); (3) a whole small
Trainer.fit with cuda_graph on and off writes the same metrics; (4) ResNet-18 and MobileNetV2
steps capture and replay with the same results as eager.

Run: pytest -m gpu tests/test_cuda_graph.py -v
"""

import csv

import numpy as np
import pytest
import torch

from tritoncnn import models, runtime
from tritoncnn.data.loader import Augmentation, GPULoader
from tritoncnn.kernels import amp, elementwise
from tritoncnn.nn import dropout
from tritoncnn.optim import SGD, Adam, GradScaler
from tritoncnn.train import run
from tritoncnn.train.cuda_graph import CudaGraphStep
from tritoncnn.train.trainer import TRAIN_WARMUP, Trainer, TrainerConfig

pytestmark = pytest.mark.gpu

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
CIFAR_AUG = Augmentation(crop_padding=4, hflip=0.5)
REL = 1e-6  # graph vs eager: bitwise expected; this much relative difference is tolerated


def synthetic(n: int, size: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 10, n)


def test_graph_step_replays_and_allocates_nothing():
    x = torch.randn(4099, device="cuda")
    scale = torch.full((1,), 3.0, device="cuda")
    acc = elementwise.fill_(runtime.empty((4099,)), 0.0)

    def fn():
        y = amp.scale(x, scale)  # a fresh output each call: from the graph's pool in capture
        elementwise.accumulate_(acc, y)
        return y

    step = CudaGraphStep(fn, warmup=1)
    step()  # eager
    out = step()  # captured, then replayed
    assert step.captured and step.replays == 1 and out is step.output
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(5):
        assert step() is out
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before, "a replay allocated memory"
    ref = torch.zeros_like(x)
    for _ in range(7):
        ref += x * 3.0
    torch.testing.assert_close(acc, ref, rtol=1e-6, atol=1e-6)
    x.fill_(1.5)  # a static input changed in place
    scale.fill_(2.0)  # a device scalar the kernel reads
    step()
    torch.cuda.synchronize()
    assert torch.equal(out, torch.full_like(x, 3.0))


def make_trainer(
    tmp_path, name, dtype, optimizer, cuda_graph, batch=32, n=4 * 32, seed=0, **model_kw
):
    """A Trainer (no val/test) over synthetic CIFAR-sized data with augmentation, a
    per-iteration warmup-cosine schedule, and a GradScaler for fp16."""
    torch.manual_seed(seed)
    dropout.manual_seed(seed)
    model = models.build(name, num_classes=10, in_channels=3, image_size=32, **model_kw)
    x, y = synthetic(n, seed=seed)
    loader = GPULoader(
        x,
        y,
        batch,
        MEAN,
        STD,
        shuffle=True,
        drop_last=True,
        augmentation=CIFAR_AUG,
        dtype=dtype,
        seed=seed,
    )
    if optimizer == "sgd":
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    else:
        opt = Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sched, unit = run.build_schedule(
        {"name": "cosine", "warmup_epochs": 1, "warmup_start_factor": 0.1, "eta_min": 0.0},
        opt,
        epochs=3,
        steps_per_epoch=len(loader),
    )
    # 2**12: most steps update (the default 2**16 skips several at the start)
    scaler = GradScaler(init_scale=2.0**12) if dtype == torch.float16 else None
    cfg = TrainerConfig(epochs=3, progress=False, schedule_unit=unit, cuda_graph=cuda_graph)
    return Trainer(model, opt, loader, None, None, tmp_path, cfg, scaler=scaler, schedule=sched)


def snapshot(t: Trainer) -> dict[str, torch.Tensor]:
    """Every piece of device state a training step writes."""
    out = {f"model.{k}": v for k, v in t.model.state_dict().items()}
    out.update({f"grad.{k}": p.grad for k, p in t.model.named_parameters() if p.grad is not None})
    out.update({f"opt.{k}": v for k, v in t.optimizer._arenas.items()})
    out.update(
        {
            "opt.step": t.optimizer._step,
            "opt.hyper": t.optimizer.hyper,
            "sched.counter": t.schedule.counter,
            "meter.loss": t.meter.loss_sum,
            "meter.correct": t.meter.correct,
            "loader.step": t.train_loader.step,
            "loader.inputs": t.train_loader.inputs,
            "loader.targets": t.train_loader.targets,
        }
    )
    if t.scaler is not None:
        out.update(
            {
                "scaler.scale": t.scaler.scale_tensor,
                "scaler.tracker": t.scaler.growth_tracker,
                "scaler.skipped": t.scaler.skipped,
                "scaler.found_inf": t.scaler.found_inf,
            }
        )
    out.update({f"rng.{k}": v for k, v in t._dropout_states().items()})
    return {k: v.detach().clone() for k, v in out.items()}


def assert_same_state(eager: dict, graph: dict) -> None:
    assert eager.keys() == graph.keys()
    report, bad = [], []
    for k, a in eager.items():
        b = graph[k]
        if torch.equal(a, b):
            continue
        if not a.is_floating_point():
            bad.append(
                f"{k}: integer state differs ({a.flatten()[:4].tolist()} vs "
                f"{b.flatten()[:4].tolist()})"
            )
            continue
        a64, b64 = a.double(), b.double()
        rel = float((a64 - b64).norm() / a64.norm().clamp_min(1e-30))
        report.append(f"{k}: rel {rel:.2e}, max abs {float((a64 - b64).abs().max()):.2e}")
        if not rel <= REL:
            bad.append(report[-1])
    if report:
        print("graph vs eager, not bitwise:\n  " + "\n  ".join(report))
    assert not bad, "graph != eager:\n  " + "\n  ".join(bad)


def run_steps(t: Trainer, steps_per_epoch: int, graph: bool) -> CudaGraphStep | None:
    """Two epochs of ``steps_per_epoch`` steps (the epoch boundary changes the permutation and
    the augmentation seed, which the graph must follow), eager or through one graph."""
    step = CudaGraphStep(t._gather_and_train, TRAIN_WARMUP) if graph else t._gather_and_train
    t.model.train()
    t.meter.reset()
    for epoch in range(2):
        t.train_loader.set_epoch(epoch)
        for _ in range(steps_per_epoch):
            step()
    torch.cuda.synchronize()
    return step if graph else None


CASES = [("baseline", torch.float32, "sgd"), ("baseline", torch.float16, "adam")]


@pytest.mark.parametrize("name,dtype,optimizer", CASES, ids=["fp32-sgd", "fp16-adam-scaler"])
def test_graphed_steps_equal_eager_steps(tmp_path, name, dtype, optimizer):
    eager = make_trainer(tmp_path / "e", name, dtype, optimizer, cuda_graph=False)
    run_steps(eager, 4, graph=False)
    graph = make_trainer(tmp_path / "g", name, dtype, optimizer, cuda_graph=True)
    step = run_steps(graph, 4, graph=True)
    assert step.captured and step.replays == 2 * 4 - TRAIN_WARMUP
    if graph.scaler is not None:
        print(f"loss scale {graph.scaler.get_scale()}, skipped {graph.scaler.skipped_steps()}")
    assert_same_state(snapshot(eager), snapshot(graph))
    # a replay allocates nothing: the graph's pool is the static arena
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    graph.train_loader.set_epoch(2)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
def test_resnet_and_mobilenet_steps_capture_and_equal_eager(tmp_path, name):
    eager = make_trainer(
        tmp_path / "e", name, torch.float16, "sgd", cuda_graph=False, batch=16, n=3 * 16
    )
    run_steps(eager, 3, graph=False)
    graph = make_trainer(
        tmp_path / "g", name, torch.float16, "sgd", cuda_graph=True, batch=16, n=3 * 16
    )
    step = run_steps(graph, 3, graph=True)
    assert step.captured and step.replays == 2 * 3 - TRAIN_WARMUP
    assert_same_state(snapshot(eager), snapshot(graph))


def _fit(tmp_path, cuda_graph: bool) -> tuple[Trainer, dict]:
    """3 epochs of the seed net, fp16 + scaler, Adam + warmup-cosine, dropout, augmentation,
    validation and test splits; batch sizes leave partial last batches (run eagerly)."""
    torch.manual_seed(1)
    dropout.manual_seed(1)
    model = models.build(
        "baseline",
        num_classes=10,
        in_channels=3,
        image_size=32,
        filters=[16, 32, 32],
        units=[64, 32],
    )
    x, y = synthetic(600, seed=1)
    xv, yv = synthetic(300, seed=2)
    xt, yt = synthetic(200, seed=3)
    dt = torch.float16
    train = GPULoader(x, y, 64, MEAN, STD, augmentation=CIFAR_AUG, dtype=dt, seed=1)
    val = GPULoader(xv, yv, 128, MEAN, STD, shuffle=False, dtype=dt)
    test = GPULoader(xt, yt, 128, MEAN, STD, shuffle=False, dtype=dt)
    opt = Adam(model.parameters(), lr=2e-3)
    sched, unit = run.build_schedule(
        {"name": "cosine", "warmup_epochs": 1, "warmup_start_factor": 0.1, "eta_min": 0.0},
        opt,
        epochs=3,
        steps_per_epoch=len(train),
    )
    cfg = TrainerConfig(epochs=3, progress=False, schedule_unit=unit, cuda_graph=cuda_graph)
    t = Trainer(model, opt, train, val, test, tmp_path, cfg, scaler=GradScaler(), schedule=sched)
    return t, t.fit()


def test_fit_with_and_without_graphs_writes_the_same_metrics(tmp_path):
    plain, s_plain = _fit(tmp_path / "plain", cuda_graph=False)
    graphed, s_graph = _fit(tmp_path / "graph", cuda_graph=True)
    assert plain._train_graph is None
    g = graphed._train_graph
    assert g is not None and g.captured and g.replays > 0, "the training graph never replayed"
    assert any(step.captured for _, step in graphed._eval_graphs.values())
    rows = []
    for d in ("plain", "graph"):
        with open(tmp_path / d / "metrics.csv") as f:
            rows.append(list(csv.DictReader(f)))
    assert len(rows[0]) == len(rows[1]) == 3
    for a, b in zip(*rows, strict=True):
        print({k: (a[k], b[k]) for k in a if k not in ("images_per_s", "epoch_s")})
        for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "skipped_steps"):
            assert abs(float(a[k]) - float(b[k])) <= REL * max(1.0, abs(float(a[k]))), (k, a, b)
    assert s_plain["test_acc"] == s_graph["test_acc"]
    assert abs(s_plain["test_loss"] - s_graph["test_loss"]) <= REL * max(1.0, s_plain["test_loss"])
    print(f"img/s eager {s_plain['images_per_s']:.0f}, graph {s_graph['images_per_s']:.0f}")
