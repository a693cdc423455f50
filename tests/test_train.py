"""The training engine end to end on embedded data (digits), through the Hydra config tree:
each optimizer, resume == straight-through (at an epoch boundary and mid-epoch), the CUDA-graph
path's interpreter fallback, multirun summary, bad inputs, NaN stop."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tritoncnn.train import run
from tritoncnn.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
# a narrow seed net so a step takes a moment in the interpreter
TINY = [
    "dataset=digits",
    "model=baseline",
    "model.filters=[4,8,8]",
    "model.units=[16,16]",
    "trainer.batch_size=64",
    "trainer.eval_batch_size=512",
    "trainer.progress=false",
]


def config(*overrides):
    keys = {o.split("=")[0] for o in overrides}
    tiny = [o for o in TINY if o.split("=")[0] not in keys]  # an override replaces TINY's value
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=[*tiny, *overrides])


def rows(run_dir):
    with open(Path(run_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
def test_each_optimizer_trains(tmp_path, opt):
    lr = {"sgd": 0.05, "adam": 3e-3, "adamw": 3e-3}[opt]
    cfg = config(
        f"optimizer={opt}",
        f"optimizer.lr={lr}",
        "trainer.epochs=2",
        "trainer.limit_train_batches=4",
        "precision=fp32",
    )
    s = run.main(cfg, tmp_path)
    hist = rows(tmp_path)
    assert len(hist) == 2 and float(hist[1]["train_loss"]) < float(hist[0]["train_loss"]) + 0.3
    assert s["test_acc"] is not None and 0 <= s["test_acc"] <= 1
    assert s["test_acc_last"] is not None and 0 <= s["test_acc_last"] <= 1  # last weights
    for f in (
        "metrics.csv",
        "curves.png",
        "summary.json",
        "checkpoints/last.safetensors",
        "checkpoints/last.json",
        "checkpoints/best.safetensors",
        "checkpoints/best.json",
    ):
        assert (tmp_path / f).exists(), f
    assert json.loads((tmp_path / "summary.json").read_text())["epochs"] == 2


RESUME = [
    "trainer.limit_train_batches=3",
    "precision=fp32",
    "scheduler=cosine",
    "augmentation=digits",
    "trainer.seed=7",
    "trainer.epochs=3",
]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The uninterrupted 3-epoch run the resume tests compare against."""
    straight = tmp_path_factory.mktemp("straight")
    run.main(config(*RESUME), straight)
    return straight


def test_resume_equals_straight_run(tmp_path, straight_run):
    common = [r for r in RESUME if not r.startswith("trainer.epochs")]
    straight = straight_run
    # the same run, interrupted (Ctrl-C) as its third epoch starts: "last" is epoch 2's end
    part = tmp_path / "part"
    calls = {"n": 0}
    real_epoch = Trainer._train_epoch

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_epoch(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_train_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run.main(config("trainer.epochs=3", *common), part)
    resumed = tmp_path / "resumed"
    last = part / "checkpoints" / "last.safetensors"
    run.main(config("trainer.epochs=3", f"trainer.resume={last}", *common), resumed)
    a, b = rows(straight), rows(resumed)
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b, strict=True):
        for k in ("train_loss", "val_loss", "val_acc", "lr"):
            assert math.isclose(float(ra[k]), float(rb[k]), rel_tol=1e-5, abs_tol=1e-7), (k, ra, rb)


def test_validation_of_impossible_values():
    for bad, msg in [
        ("optimizer.lr=0", "optimizer.lr"),
        ("trainer.batch_size=0", "batch_size"),
        ("dataset.val_fraction=1.0", "val_fraction"),
        ("model.in_channels=3", "channel"),
        ("precision.name=fp8", "precision"),
    ]:
        with pytest.raises(run.ConfigError, match=msg):
            run.validate(run._plain(config(bad)))


def _script(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def test_bad_input_exits_with_one_line(tmp_path):
    r = _script([*TINY, "optimizer.lr=-1"], tmp_path)
    assert r.returncode != 0
    assert "optimizer.lr must be > 0" in r.stderr and "Traceback" not in r.stderr
    r = _script([*TINY, "model=nosuchnet"], tmp_path)
    assert r.returncode != 0 and "baseline" in r.stderr  # Hydra lists the valid models


def test_missing_dataset_files_are_one_clear_line(tmp_path):
    r = _script([*TINY, "dataset=mnist", f"dataset.root={tmp_path}/none"], tmp_path)
    assert r.returncode == 2 and "dataset.root" in r.stderr and "Traceback" not in r.stderr


def test_multirun_writes_runs_and_summary(tmp_path):
    r = _script(
        [
            "-m",
            *TINY,
            "trainer.epochs=1",
            "trainer.limit_train_batches=1",
            "optimizer.lr=1e-3,3e-3",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    sweep = tmp_path / "sweep"
    assert (sweep / "0" / "summary.json").exists() and (sweep / "1" / "summary.json").exists()
    with open(sweep / "sweep_summary.csv") as f:
        lines = list(csv.DictReader(f))
    lrs = [float(ln["overrides"].split("optimizer.lr=")[1].split()[0]) for ln in lines]
    assert lrs == [1e-3, 3e-3]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = config(
        "trainer.epochs=3",
        "trainer.limit_train_batches=2",
        "precision=fp32",
        "optimizer=sgd",
        "optimizer.lr=1e30",
        "optimizer.momentum=0.0",
        "optimizer.nesterov=false",
    )
    with pytest.raises(run.TrainingDivergedError, match="last good checkpoint"):
        run.main(cfg, tmp_path)
    last = tmp_path / "checkpoints" / "last.safetensors"
    if last.exists():  # an epoch before the divergence was saved: it must be a finite one
        from safetensors.torch import load_file

        assert all(
            t.isfinite().all() for t in load_file(str(last)).values() if t.is_floating_point()
        )


def _assert_same_run(straight, resumed):
    """metrics.csv rows (timings aside) and final weights of two runs agree."""
    a, b = rows(straight), rows(resumed)
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b, strict=True):
        for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "skipped_steps"):
            assert math.isclose(float(ra[k]), float(rb[k]), rel_tol=1e-6, abs_tol=1e-7), (k, ra, rb)
    from safetensors.torch import load_file

    wa = load_file(str(straight / "checkpoints" / "last.safetensors"))
    wb = load_file(str(resumed / "checkpoints" / "last.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k].double(), wb[k].double(), rtol=1e-6, atol=1e-7), k


@pytest.mark.parametrize("where", ["sigint", "evaluation"])
def test_mid_epoch_resume_equals_straight_run(tmp_path, straight_run, where):
    """Ctrl-C inside epoch 2 saves ``last`` with the position in the epoch; resuming from it
    finishes like the straight run. sigint: a real SIGINT during its 2nd step, which completes
    first (the handler defers KeyboardInterrupt to the step boundary); evaluation: a
    KeyboardInterrupt as its validation pass starts."""
    part = tmp_path / "part"
    calls = {"n": 0}
    name, at = ("evaluate", 2) if where == "evaluation" else ("train_step", 3 + 2)
    real = getattr(Trainer, name)

    def interrupted(self, *args):
        calls["n"] += 1
        if calls["n"] == at:
            if where == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise KeyboardInterrupt
        return real(self, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, name, interrupted)
        with pytest.raises(KeyboardInterrupt):
            run.main(config(*RESUME), part)
    last = part / "checkpoints" / "last.json"
    position = json.loads(last.read_text())["position"]
    assert position is not None
    assert position["batch"] == (2 if where == "sigint" else 3)
    assert len(rows(part)) == 1  # epoch 1 only
    resumed = tmp_path / "resumed"
    run.main(config(*RESUME, f"trainer.resume={last}"), resumed)
    _assert_same_run(straight_run, resumed)


def test_cuda_graph_path_falls_back_to_eager_in_the_interpreter(tmp_path, monkeypatch):
    """trainer.cuda_graph=true runs eagerly in the interpreter; the graph code path itself
    (CudaGraphStep around gather + step, eval graphs, eager partial batches) forced on gives
    the same metrics, since CudaGraphStep calls its function eagerly where graphs are off."""
    from tritoncnn.train import cuda_graph
    from tritoncnn.train.cuda_graph import CudaGraphStep

    assert not cuda_graph.enabled()
    calls = []
    step = CudaGraphStep(lambda: calls.append(1) or len(calls), warmup=1)
    assert [step(), step(), step()] == [1, 2, 3] and not step.captured
    # 80 tiny training images in batches of 32: two full batches and a partial one
    common = [
        "dataset=synthetic",
        "dataset.n_train=100",
        "dataset.n_test=40",
        "dataset.val_fraction=0.2",
        "dataset.image_size=8",
        "dataset.channels=1",
        "dataset.mean=[0.5]",
        "dataset.std=[0.25]",
        "trainer.batch_size=32",
        "trainer.epochs=1",
        "precision=fp32",
        "optimizer=sgd",
        "optimizer.lr=0.05",
        "augmentation=digits",
        "trainer.cuda_graph=true",
    ]
    run.main(config(*common), tmp_path / "plain")
    made = []

    class Recording(CudaGraphStep):
        def __init__(self, fn, warmup=1):
            made.append(self)
            super().__init__(fn, warmup)

    monkeypatch.setattr(Trainer, "use_graphs", property(lambda self: True))
    monkeypatch.setattr("tritoncnn.train.trainer.CudaGraphStep", Recording)
    run.main(config(*common), tmp_path / "graph_path")
    assert len(made) == 3  # train, val, test
    assert made[0].calls == 2 and not made[0].captured  # the full batches, eagerly
    a, b = rows(tmp_path / "plain"), rows(tmp_path / "graph_path")
    for ra, rb in zip(a, b, strict=True):
        for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert float(ra[k]) == float(rb[k]), (k, ra, rb)
