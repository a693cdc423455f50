"""benchmarks/launch_log.py: each kernel launch of a step tagged with the layer that made it
(profile_step.py --trace writes them beside the profiler's kernel times)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from helpers import randn
from triton.runtime.jit import KernelInterface

from tritoncnn import nn
from tritoncnn.kernels import elementwise

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from launch_log import Launch, first_difference, record_launches, with_layers  # noqa: E402


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())


def test_each_launch_names_the_module_call_it_ran_in():
    net = _net()
    x = randn(2, 3, 5, 5)
    with record_launches(net) as launches:
        y = net(x)
        net.backward(torch.ones_like(y))
        elementwise.add(y, y)  # outside every module
    assert launches, "no launch recorded"
    forward = [launch for launch in launches if launch.phase == "forward"]
    backward = [launch for launch in launches if launch.phase == "backward"]
    # each module's own launches, innermost call: never the Sequential itself
    assert {launch.layer for launch in forward} == {"0", "1", "2"}, forward
    assert {launch.layer for launch in backward} == {"0", "1", "2"}, backward
    first = forward[0]
    assert (first.layer, first.kind, first.shape) == ("0", "Conv2d", "(2, 3, 5, 5)"), first
    assert {launch.kind for launch in forward if launch.layer == "1"} == {"BatchNorm2d"}
    # in launch order: the forward's layers 0, 1, 2, then the backward's 2, 1, 0, then the add
    order = [(launch.phase[0], launch.layer) for launch in launches[:-1]]
    runs = ["".join(call) for i, call in enumerate(order) if i == 0 or order[i - 1] != call]
    assert runs == ["f0", "f1", "f2", "b2", "b1", "b0"], runs
    assert launches[-1] == Launch("add_kernel"), launches[-1]
    assert all(launch.kernel.endswith("_kernel") for launch in launches), launches


def test_recording_leaves_the_modules_and_launches_as_they_were():
    net = _net()
    launch_with = KernelInterface.__getitem__
    with record_launches(net):
        assert "forward" in vars(net[0])
    assert KernelInterface.__getitem__ is launch_with
    assert all("forward" not in vars(m) and "backward" not in vars(m) for m in net.modules())
    with record_launches(_net()) as launches:
        net(randn(1, 3, 4, 4))  # another model's layers: launched, but in no module of _net()'s
    assert launches and all(launch.layer == "" for launch in launches), launches
    relu = net[2]
    relu.forward = own = relu.forward  # a method set on the instance itself stays after
    with record_launches(net):
        assert relu.forward is not own
    assert vars(relu)["forward"] is own
    shared = nn.Sequential(net[0], net[0])  # one module at two paths
    with record_launches(shared) as launches:
        shared[0](randn(1, 3, 4, 4))
    assert {launch.layer for launch in launches} == {"0"}, launches
    assert "forward" not in vars(net[0])


def test_profiler_kernels_get_layers_only_when_the_lists_agree():
    launches = [Launch("a_kernel", "0", "Conv2d", "forward", "(2, 3)"), Launch("b_kernel")]
    rows = with_layers([("a_kernel", 1.5), ("b_kernel", 2.0)], launches)
    assert rows == [
        {"kernel": "a_kernel", "layer": "0", "kind": "Conv2d", "phase": "forward",
         "shape": "(2, 3)", "us": 1.5},
        {"kernel": "b_kernel", "layer": "", "kind": "", "phase": "", "shape": "", "us": 2.0},
    ]  # fmt: skip
    assert with_layers([("a_kernel", 1.5)], launches) is None
    assert with_layers([("b_kernel", 1.5), ("a_kernel", 2.0)], launches) is None
    assert "kernel 0" in first_difference([("b_kernel", 1.5), ("a_kernel", 2.0)], launches)
    assert "1 kernels" in first_difference([("a_kernel", 1.5)], launches)


def test_the_benchmark_step_exposes_its_model_for_the_launch_log():
    """profile_step.py --trace records train_step.ours_step's eager step through
    ``step.model``: the seed net's every conv shows up forward and backward, and the loader,
    loss and optimizer kernels outside the model."""
    import train_step

    step = train_step.ours_step("baseline", 2, torch.float16, graph=False)
    with record_launches(step.model) as launches:
        step()
    convs = {name for name, m in step.model.named_modules() if isinstance(m, nn.Conv2d)}
    for phase in ("forward", "backward"):
        seen = {launch.layer for launch in launches if launch.phase == phase}
        assert convs <= seen, (phase, convs - seen)
    outside = {launch.kernel for launch in launches if not launch.layer}
    assert "gather_augment_kernel" in outside and len(outside) >= 3, outside
