"""The training engine end to end on embedded data (digits), through the Hydra config tree:
each optimizer, resume == straight-through, multirun summary, bad inputs, NaN stop."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tritoncnn.train import run
from tritoncnn.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
# a narrow seed net so a step takes a moment in the interpreter
TINY = ["dataset=digits", "model=baseline", "model.filters=[4,8,8]", "model.units=[16,16]",
        "trainer.batch_size=64", "trainer.eval_batch_size=512", "trainer.progress=false"]


def config(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=[*TINY, *overrides])


def rows(run_dir):
    with open(Path(run_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
def test_each_optimizer_trains(tmp_path, opt):
    lr = {"sgd": 0.05, "adam": 3e-3, "adamw": 3e-3}[opt]
    cfg = config(f"optimizer={opt}", f"optimizer.lr={lr}", "trainer.epochs=2",
                 "trainer.limit_train_batches=4", "precision=fp32")
    s = run.main(cfg, tmp_path)
    hist = rows(tmp_path)
    assert len(hist) == 2 and float(hist[1]["train_loss"]) < float(hist[0]["train_loss"]) + 0.3
    assert s["test_acc"] is not None and 0 <= s["test_acc"] <= 1
    for f in ("metrics.csv", "curves.png", "summary.json", "checkpoints/last.safetensors",
              "checkpoints/last.json", "checkpoints/best.safetensors", "checkpoints/best.json"):
        assert (tmp_path / f).exists(), f
    assert json.loads((tmp_path / "summary.json").read_text())["epochs"] == 2


def test_resume_equals_straight_run(tmp_path):
    common = ["trainer.limit_train_batches=3", "precision=fp32", "scheduler=cosine",
              "augmentation=digits", "trainer.seed=7"]
    straight = tmp_path / "straight"
    run.main(config("trainer.epochs=3", *common), straight)
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
    for bad, msg in [("optimizer.lr=0", "optimizer.lr"), ("trainer.batch_size=0", "batch_size"),
                     ("dataset.val_fraction=1.0", "val_fraction"),
                     ("model.in_channels=3", "channel"), ("precision.name=fp8", "precision")]:
        with pytest.raises(run.ConfigError, match=msg):
            run.validate(run._plain(config(bad)))


def _script(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=900)


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
    r = _script(["-m", *TINY, "trainer.epochs=1", "trainer.limit_train_batches=1",
                 "optimizer.lr=1e-3,3e-3", f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    sweep = tmp_path / "sweep"
    assert (sweep / "0" / "summary.json").exists() and (sweep / "1" / "summary.json").exists()
    with open(sweep / "sweep_summary.csv") as f:
        lines = list(csv.DictReader(f))
    lrs = [float(ln["overrides"].split("optimizer.lr=")[1].split()[0]) for ln in lines]
    assert lrs == [1e-3, 3e-3]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = config("trainer.epochs=3", "trainer.limit_train_batches=2", "precision=fp32",
                 "optimizer=sgd", "optimizer.lr=1e30", "optimizer.momentum=0.0",
                 "optimizer.nesterov=false")
    with pytest.raises(run.TrainingDivergedError, match="last good checkpoint"):
        run.main(cfg, tmp_path)
    last = tmp_path / "checkpoints" / "last.safetensors"
    if last.exists():  # an epoch before the divergence was saved: it must be a finite one
        from safetensors.torch import load_file

        assert all(t.isfinite().all() for t in load_file(str(last)).values()
                   if t.is_floating_point())
