"""The convs' 16-bit weight copies refreshed in one launch (nn/weight_casts.py): the same
copies, so the same outputs, as each conv casting its own; no per-conv cast inside the
``with``, each conv's own cast outside it; never a stale copy."""

import pytest
import torch
from helpers import randn

from tritoncnn import nn
from tritoncnn.kernels import elementwise as EW
from tritoncnn.kernels import optim as K
from tritoncnn.nn.weight_casts import WeightCasts


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # a 3x3 GEMM conv
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: reads its fp32 weight
        nn.Conv2d(8, 5, 1),  # a 1x1 GEMM conv, with a bias
    )


def _count_casts(monkeypatch) -> list:
    calls = []
    real = EW.cast_
    monkeypatch.setattr(EW, "cast_", lambda out, x: calls.append(out) or real(out, x))
    return calls


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_one_launch_gives_each_conv_its_own_cast(dtype, monkeypatch):
    model = _model()
    x = randn(2, 3, 5, 4, dtype=dtype, channels_last=True)
    calls = _count_casts(monkeypatch)
    ref = model(x)  # each GEMM conv casts its own weight
    assert len(calls) == 2
    own = [c._w_cast.clone() for c in (model[0], model[2])]
    for c in (model[0], model[2]):
        c._w_cast.fill_(float("nan"))  # stale copies the launch must overwrite
    casts = WeightCasts(model)
    with casts.refreshed(dtype):
        assert model[0].copy_fresh and model[2].copy_fresh and not model[1].copy_fresh
        out = model(x)
    assert len(calls) == 2, "a conv cast its own weight inside refreshed()"
    assert not model[0].copy_fresh and not model[2].copy_fresh
    assert model[1]._w_cast is None  # the depthwise conv has no copy
    for c, copy in zip((model[0], model[2]), own, strict=True):
        assert torch.equal(c._w_cast, copy)
    assert torch.equal(out, ref)


def test_fp32_activations_launch_nothing(monkeypatch):
    model = _model()
    launches = []
    monkeypatch.setattr(K, "cast_tensors", lambda *a, **k: launches.append(a))
    with WeightCasts(model).refreshed(torch.float32):
        model(randn(1, 3, 4, 4, channels_last=True))
    assert launches == [] and model[0]._w_cast is None


def test_a_weight_edited_between_steps_is_never_read_stale(monkeypatch):
    """In place between two refreshes, or re-allocated (new tables): the next forward, in
    the ``with`` or outside it, reads the edited weight."""
    model = _model()
    x = randn(2, 3, 4, 4, dtype=torch.float16, channels_last=True)
    casts = WeightCasts(model)
    with casts.refreshed(torch.float16):
        model(x)
    model[2].weight.data.mul_(-2.0)  # in place: same storage, same tables
    expect = model[2].weight.data.half()
    with casts.refreshed(torch.float16):
        model(x)
    assert torch.equal(model[2]._w_cast, expect)
    model[2].weight.data.mul_(0.5)  # outside: the conv casts its own
    model(x)
    assert torch.equal(model[2]._w_cast, model[2].weight.data.half())
    old = model[0].weight.data
    model[0].weight.data = old.clone() * 3.0  # a new storage: the tables are rebuilt
    with casts.refreshed(torch.float16):
        model(x)
    assert torch.equal(model[0]._w_cast, model[0].weight.data.half())


def test_the_copies_stop_being_trusted_when_the_forward_fails():
    model = _model()
    casts = WeightCasts(model)
    with pytest.raises(ValueError, match="boom"), casts.refreshed(torch.float16):
        raise ValueError("boom")
    assert not any(c.copy_fresh for c in model.modules() if isinstance(c, nn.Conv2d))


def test_many_chunks_per_tensor():
    """Weights larger than one chunk of the launch (the GPU's 4096 elements) are cast whole."""
    conv = nn.Conv2d(64, 80, 1, bias=False)
    casts = WeightCasts(conv)
    chunk = K.BLOCK * K.ITERS
    assert conv.weight.numel() > chunk  # (4096 elements a chunk, interpreter and GPU alike)
    with casts.refreshed(torch.float16):
        pass
    assert torch.equal(conv._w_cast, conv.weight.data.half())
    tensors, chunks = casts._tables
    assert chunks.shape[0] == -(-conv.weight.numel() // chunk)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_real_models_forward_the_same_with_one_launch_gpu(name, dtype, monkeypatch):
    from tritoncnn import models

    torch.manual_seed(0)
    model = models.build(name, num_classes=10)
    x = randn(8, 3, 32, 32, dtype=dtype, channels_last=True)
    ref = model(x)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m._w_cast is not None]
    own = [c._w_cast.clone() for c in convs]
    calls = _count_casts(monkeypatch)
    with WeightCasts(model).refreshed(dtype):
        out = model(x)
    assert calls == [] and len(convs) > 15
    for conv, copy in zip(convs, own, strict=True):
        assert torch.equal(conv._w_cast, copy)
    assert torch.equal(out, ref)


def test_trainer_steps_equal_per_conv_casts(tmp_path):
    """Two fp16 training steps of a small conv net through Trainer.train_step (which
    refreshes the copies in one launch) leave the same weights, bit for bit, as the same
    steps with each conv casting its own."""
    from tritoncnn.optim import SGD
    from tritoncnn.train.trainer import Trainer, TrainerConfig

    def run(one_launch: bool) -> list[torch.Tensor]:
        model = nn.Sequential(_model(), nn.Flatten(), nn.Linear(5 * 16, 4))
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
        cfg = TrainerConfig(epochs=1, progress=False, cuda_graph=False)
        t = Trainer(model, opt, None, None, None, tmp_path / str(one_launch), cfg)
        if not one_launch:
            t.weight_casts = WeightCasts(nn.Sequential())  # nothing to refresh
        for seed in (1, 2):
            x = randn(3, 3, 4, 4, dtype=torch.float16, channels_last=True, seed=seed)
            t.train_step(x, torch.tensor([0, 3, 1], device=x.device))
        return [p.data.clone() for p in model.parameters()]

    for a, b in zip(run(True), run(False), strict=True):
        assert torch.equal(a, b)
