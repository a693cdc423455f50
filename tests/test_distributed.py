"""Data-parallel training (train/distributed.py): loader shards, the flat gradient bucket, and
real multi-process runs launched by torchrun (gloo in the interpreter, NCCL on the GPU).

The multi-process checks compare against a single process that sees the same global batches:
after every epoch the weights of every rank equal the single-process weights (fp32
tolerance) and each other; rank 0 alone writes files; synchronised batch norm reproduces
global-batch statistics; a checkpoint resumes on another number of ranks.

This file is also the worker that torchrun starts: ``python -m torch.distributed.run
--nproc_per_node=N tests/test_distributed.py OUT_DIR JOB...`` (see ``_launch``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

if __name__ == "__main__":  # started by torchrun: the package first (it sets up the interpreter)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tritoncnn  # noqa: F401

from helpers import assert_close

from tritoncnn import nn
from tritoncnn.data.loader import GPULoader
from tritoncnn.optim import SGD
from tritoncnn.train import distributed
from tritoncnn.train.trainer import Trainer, TrainerConfig

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.5,), (0.25,)
GLOBAL_BATCH = 8  # per step over all ranks
EVAL_BATCH = 4  # per rank


# --- the training job, run alike by a single process and by every rank ------------------------
def _data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 256, (n, 6, 6, 1)).astype(np.float64)
    x[:, :3, :3, 0] += 60.0 * y[:, None, None]  # a learnable signal
    return np.clip(x, 0, 255).astype(np.uint8), y


def _model(bn: bool) -> nn.Module:
    if not bn:
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(36, 3),
        )
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(36, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


class _Recorder(Trainer):
    """Snapshots the weights and buffers at each epoch end, before any checkpoint is written
    (rank 1 writes none, and the best-weights reload at the end would hide a divergence)."""

    snapshots: dict

    def save(self, name: str) -> None:
        if name == "last":
            self.snapshots[self.epoch] = {
                k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
            }
        super().save(name)
        if name == "last" and self.epoch == self.keep_epoch:  # a resume point to start from
            shutil.copytree(self.ckpt_dir, self.run_dir / f"epoch{self.epoch}")


def run_job(job: dict, run_dir: Path, dist: distributed.Distributed | None) -> dict:
    """Train the tiny job; returns per-epoch snapshots and metric rows."""
    world, rank = (dist.world_size, dist.rank) if dist else (1, 0)
    torch.manual_seed(100 + rank)  # ranks start apart on purpose: the broadcast must fix it
    model = _model(job["bn"])
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    shard = {"rank": rank, "world_size": world}
    global_batch = job.get("global_batch", GLOBAL_BATCH)
    train = GPULoader(
        *_data(32, 1),
        global_batch // world,
        MEAN,
        STD,
        shuffle=True,
        drop_last=True,
        seed=3,
        **shard,
    )
    val = GPULoader(*_data(6, 2), EVAL_BATCH, MEAN, STD, shuffle=False, **shard)
    if dist is not None:
        dist.sync_bn = job.get("sync_bn", False)
    if rank == 0:  # as Hydra makes the run directory; rank 1 must not write into its own
        run_dir.mkdir(parents=True, exist_ok=True)
    trainer = _Recorder(
        model,
        opt,
        train,
        val,
        None,
        run_dir,
        TrainerConfig(epochs=job["epochs"], limit_train_batches=job.get("limit"), progress=False),
        dist=dist,
    )
    trainer.snapshots, trainer.keep_epoch = {}, job.get("keep_epoch")
    if job.get("resume"):
        trainer.resume(job["resume"])
    summary = trainer.fit()
    return {"snapshots": trainer.snapshots, "rows": trainer.history.rows, "summary": summary}


def _worker_main(out_dir: Path, jobs: list[dict]) -> None:
    """One rank under torchrun: join the group (detected from the environment), run each job."""
    torch.set_num_threads(1)
    dist = distributed.setup(distributed.DistributedConfig())  # enabled: auto (torchrun's env)
    assert dist is not None, "torchrun's RANK/WORLD_SIZE were not detected"
    t0 = time.perf_counter()
    try:
        for job in jobs:
            result = run_job(job, out_dir / job["name"] / f"rank{dist.rank}", dist)
            torch.save(result, out_dir / f"{job['name']}.rank{dist.rank}.pt")
    finally:
        dist.shutdown()
    print(f"rank {dist.rank}: {len(jobs)} job(s) in {time.perf_counter() - t0:.1f} s", flush=True)


def _launch(nproc: int, out_dir: Path, jobs: list[dict], timeout: float = 600) -> None:
    """torchrun this file as ``nproc`` ranks on this host; fail with their output."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_VARS}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--nnodes=1",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}",
        __file__,
        str(out_dir),
        json.dumps(jobs),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    out = f"{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{out}"


def _load(out_dir: Path, name: str, rank: int) -> dict:
    return torch.load(out_dir / f"{name}.rank{rank}.pt", weights_only=False)


def _assert_states_close(got: dict, ref: dict, what: str) -> None:
    assert got.keys() == ref.keys()
    for k in ref:
        if ref[k].is_floating_point():
            assert_close(got[k], ref[k], what=f"{what} {k}")
        else:
            assert torch.equal(got[k], ref[k]), f"{what} {k}"


# --- in-process checks (no process group) ----------------------------------------------------
@pytest.mark.parametrize("world,drop_last", [(2, True), (2, False), (3, False)])
def test_loader_shards_are_disjoint_and_cover_the_global_batches(world, drop_last):
    n, b = 37, 4
    x = np.zeros((n, 2, 2, 1), np.uint8)
    ids = np.arange(n)

    def epoch(loader):
        return [y.cpu().numpy().copy() for _, y in loader]

    single = GPULoader(x, ids, world * b, MEAN, STD, shuffle=True, drop_last=drop_last, seed=5)
    ref = [epoch(single) for _ in range(2)]
    for e in range(2):
        shards = []
        for r in range(world):
            loader = GPULoader(
                x,
                ids,
                b,
                MEAN,
                STD,
                shuffle=True,
                drop_last=drop_last,
                seed=5,
                rank=r,
                world_size=world,
            )
            assert len(loader) == len(single)
            loader.epoch = e
            shards.append(epoch(loader))
        seen = np.concatenate([np.concatenate(s) for s in shards if s])
        assert len(seen) == len(set(seen.tolist())), "a sample was seen twice in an epoch"
        assert sorted(seen.tolist()) == sorted(np.concatenate(ref[e]).tolist())
        for step, global_batch in enumerate(ref[e]):  # rank r holds chunk r of global step s
            for r in range(world):
                chunk = global_batch[r * b : (r + 1) * b]
                if len(chunk):
                    assert np.array_equal(shards[r][step], chunk)


def test_loader_rejects_a_rank_outside_the_world():
    x = np.zeros((4, 2, 2, 1), np.uint8)
    with pytest.raises(ValueError, match="rank"):
        GPULoader(x, np.arange(4), 2, MEAN, STD, rank=2, world_size=2)


def test_gradients_are_views_of_one_flat_buffer(tmp_path):
    torch.manual_seed(1)
    model = _model(bn=True)
    cfg = distributed.DistributedConfig(enabled=True, init_method=f"file://{tmp_path}/store")
    d = distributed.setup(cfg)  # a one-rank gloo group: no torchrun needed
    try:
        _check_flat_buffer(model, d)
    finally:
        d.shutdown()


def _check_flat_buffer(model: nn.Module, d: distributed.Distributed) -> None:
    assert d.backend == "gloo" and d.world_size == 1
    flat = d.attach_gradients(model.parameters())
    params = list(model.parameters())
    assert flat.numel() == sum(p.numel() for p in params)
    for p in params:
        assert p.grad.stride() == p.data.stride() and p.grad.shape == p.data.shape
    x = torch.randn(4, 1, 6, 6)
    y = torch.randint(0, 3, (4,))
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(x), y)  # the bucket starts at zero: the first backward's grads land in it
    model.backward(loss_fn.backward())
    d.all_reduce_gradients()  # one rank: the mean is the gradient itself
    torch.manual_seed(1)
    plain = _model(bn=True)
    loss_fn(plain(x), y)
    plain.backward(loss_fn.backward())
    for p, q in zip(params, plain.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    offset = 0
    for p in params:  # every gradient is where the bucket says
        seg = flat[offset : offset + p.numel()]
        assert torch.equal(seg, p.grad.permute(*_memory_order(p.grad)).reshape(-1))
        offset += p.numel()
    for p in params:
        p.grad = None  # zero_grad(set_to_none=True) would leave the bucket
    loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    with pytest.raises(RuntimeError, match="set_to_none=False"):
        d.all_reduce_gradients()


def _memory_order(t: torch.Tensor) -> list[int]:
    """Dims from outermost to innermost in memory."""
    return sorted(range(t.dim()), key=lambda i: -t.stride(i))


def test_config_accepts_a_bare_boolean_and_rejects_unknown_keys():
    assert distributed.DistributedConfig.from_dict(True).enabled is True
    assert distributed.DistributedConfig.from_dict({"sync_bn": True}).sync_bn
    with pytest.raises(ValueError, match="unknown trainer.distributed keys"):
        distributed.DistributedConfig.from_dict({"sync_batchnorm": True})


# --- two ranks on gloo, launched by torchrun -------------------------------------------------
def test_two_ranks_equal_one_process_resume_across_world_sizes_and_sync_bn(tmp_path):
    # one process trains 3 epochs straight, keeping its epoch-1 checkpoint; two ranks resume
    # that for epoch 2; one process resumes theirs for epoch 3
    straight = run_job({"bn": False, "epochs": 3, "keep_epoch": 1}, tmp_path / "straight", None)
    ckpt = tmp_path / "straight" / "epoch1" / "last.safetensors"
    jobs = [
        {"name": "resumed", "bn": False, "epochs": 2, "resume": str(ckpt)},
        {"name": "sync_bn", "bn": True, "sync_bn": True, "epochs": 1},
        {"name": "per_gpu_bn", "bn": True, "epochs": 1, "limit": 2},
    ]
    t0 = time.perf_counter()
    _launch(2, tmp_path, jobs)
    print(f"torchrun: {time.perf_counter() - t0:.1f} s")
    ranks = {
        name: [_load(tmp_path, name, r) for r in range(2)]
        for name in ("resumed", "sync_bn", "per_gpu_bn")
    }
    last = tmp_path / "resumed" / "rank0" / "checkpoints" / "last.safetensors"
    third = run_job({"bn": False, "epochs": 3, "resume": str(last)}, tmp_path / "third", None)
    sync_ref = run_job({"bn": True, "epochs": 1}, tmp_path / "sync_ref", None)

    # the same weights as one process over the same global batches, on every rank
    for r, res in enumerate(ranks["resumed"]):
        _assert_states_close(res["snapshots"][2], straight["snapshots"][2], f"rank {r} epoch 2")
    _assert_states_close(third["snapshots"][3], straight["snapshots"][3], "2 ranks -> 1, epoch 3")
    for r, res in enumerate(ranks["sync_bn"]):  # weights and running statistics
        _assert_states_close(res["snapshots"][1], sync_ref["snapshots"][1], f"sync BN rank {r}")
    # identical on every rank (the same kernels on the same averaged gradients)
    for name in ("resumed", "sync_bn"):
        a, b = (ranks[name][r]["snapshots"] for r in range(2))
        for e in a:
            for k in a[e]:
                assert torch.equal(a[e][k], b[e][k]), f"{name}: ranks differ in {k}"
    # per-GPU BN: the weights agree across ranks; running stats are each rank's own
    a, b = (ranks["per_gpu_bn"][r]["snapshots"][1] for r in range(2))
    for k in a:
        if "running" not in k:
            assert torch.equal(a[k], b[k]), f"per-GPU BN: ranks differ in {k}"
    # metrics are global: rank 0's rows match the single process's
    got = ranks["resumed"][0]["rows"][-1]
    ref = straight["rows"][1]
    for key in ("train_loss", "val_loss"):
        assert abs(got[key] - ref[key]) < 1e-4 * max(1.0, abs(ref[key])), key
    for key in ("train_acc", "val_acc"):
        assert got[key] == ref[key], key
    # rank 0 alone writes files
    for name in ("resumed", "sync_bn", "per_gpu_bn"):
        assert (tmp_path / name / "rank0" / "metrics.csv").exists()
        assert (tmp_path / name / "rank0" / "checkpoints" / "last.json").exists()
        assert not (tmp_path / name / "rank1").exists(), f"{name}: rank 1 wrote files"


# --- the GPU tier: NCCL ------------------------------------------------------------------------
@pytest.mark.gpu
def test_nccl_single_rank_in_process_equals_no_distribution(tmp_path):
    """world_size 1 through init_method file://: the NCCL path (AVG all-reduce) end to end."""
    ref = run_job({"bn": True, "epochs": 1}, tmp_path / "ref", None)
    cfg = distributed.DistributedConfig(enabled=True, init_method=f"file://{tmp_path}/store")
    dist = distributed.setup(cfg)
    try:
        assert dist.backend == "nccl" and dist.world_size == 1
        got = run_job({"bn": True, "epochs": 1}, tmp_path / "dist", dist)
    finally:
        dist.shutdown()
    _assert_states_close(got["snapshots"][1], ref["snapshots"][1], "nccl world 1")


@pytest.mark.gpu
def test_nccl_torchrun_every_visible_gpu(tmp_path):
    """torchrun with one rank per visible GPU (1 on a one-GPU machine); sync BN on."""
    nproc = min(torch.cuda.device_count(), 8)
    job = {"bn": True, "epochs": 1, "global_batch": 4 * nproc}
    _launch(nproc, tmp_path, [{**job, "name": "sync_bn", "sync_bn": True}])
    ref = run_job(job, tmp_path / "ref", None)
    for r in range(nproc):
        got = _load(tmp_path, "sync_bn", r)
        _assert_states_close(got["snapshots"][1], ref["snapshots"][1], f"nccl rank {r}")


if __name__ == "__main__":
    _worker_main(Path(sys.argv[1]), json.loads(sys.argv[2]))
