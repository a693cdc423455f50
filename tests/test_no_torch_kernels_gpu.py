"""The training step launches only our kernels: torch is storage, never compute.

Runs one forward + backward of a small net under torch.profiler and lists every CUDA kernel
launched; each must be a @triton.jit kernel defined in tritoncnn.kernels. Allocation through
torch.empty launches nothing; a torch zero-fill, copy or cast would show up here and fail.
"""

import importlib
import pkgutil

import pytest
import torch

import tritoncnn.kernels
from tritoncnn import nn, runtime


def our_kernel_names() -> set[str]:
    import triton

    names = set()
    for info in pkgutil.iter_modules(tritoncnn.kernels.__path__):
        mod = importlib.import_module(f"tritoncnn.kernels.{info.name}")
        for obj in vars(mod).values():
            if isinstance(obj, triton.runtime.jit.JITFunction):
                names.add(obj.fn.__name__)
    return names


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=2),
        nn.BatchNorm2d(32),
        nn.ELU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 64),
        nn.BatchNorm1d(64),
        nn.ReLU6(),
        nn.Dropout(0.3),
        nn.Linear(64, 10),
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_step_launches_only_our_kernels(monkeypatch, dtype):
    monkeypatch.setattr(runtime, "POISON_OUTPUTS", False)  # poisoning uses torch's fill
    net = small_net()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.randn(64, 3, 32, 32, device="cuda").to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), device="cuda")
    for _ in range(2):  # compile every kernel outside the profiled region
        loss_fn(net(x), y)
        net.backward(loss_fn.backward())
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        loss_fn(net(x), y)
        net.backward(loss_fn.backward())
        torch.cuda.synchronize()
    launched = {e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA}
    assert launched, "the profiler saw no CUDA kernel at all"
    ours = our_kernel_names()
    foreign = sorted(name for name in launched if name not in ours)
    assert not foreign, f"kernels that are not ours ran in the step: {foreign}"
