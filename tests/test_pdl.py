"""Programmatic dependent launch (kernels/pdl.py): the contract that keeps it correct, and on
the GPU, training steps with it on equal the steps with it off, bit for bit.

A kernel launched with PDL may start while the kernel before it is still running, so one that
touched memory before ``wait_for_inputs()`` would race. The source checks below hold for every
kernel in the package (CPU tier); the GPU test runs whole graphed ResNet-18 / MobileNetV2
steps (~500 kernels, every fused path) with and without PDL in two processes and compares
all the state they write. Every reduction is deterministic, so any difference is a race.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tritoncnn

PACKAGE = Path(tritoncnn.__file__).parent
ROOT = PACKAGE.parent


def _is_jit(fn: ast.FunctionDef) -> bool:
    return any("jit" in ast.unparse(d) for d in fn.decorator_list)


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text())) for p in sorted(PACKAGE.rglob("*.py"))]


def _launched_name(call: ast.Call) -> str | None:
    """``name`` of a launch ``name[grid](...)`` (or ``mod.name[grid](...)``), else None."""
    if not isinstance(call.func, ast.Subscript):
        return None
    v = call.func.value
    name = v.id if isinstance(v, ast.Name) else v.attr if isinstance(v, ast.Attribute) else ""
    return name if name.endswith("_kernel") else None


def test_every_kernel_waits_for_its_inputs_before_anything_else():
    kernels, late = 0, []
    for path, tree in _modules():
        for fn in ast.walk(tree):
            if not (isinstance(fn, ast.FunctionDef) and _is_jit(fn)):
                continue
            if not fn.name.endswith("_kernel"):
                continue
            kernels += 1
            body = fn.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring
            first = ast.unparse(body[0]) if body else ""
            if first != "wait_for_inputs()":
                late.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}: starts {first!r}")
    assert kernels >= 40, f"found only {kernels} kernels: is the package layout what we think?"
    assert not late, "kernels that touch memory before wait_for_inputs():\n" + "\n".join(late)


def test_every_launch_passes_launch_pdl():
    launches, missing = 0, []
    for path, tree in _modules():
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and _launched_name(call)):
                continue
            launches += 1
            if not any(k.arg == "launch_pdl" for k in call.keywords):
                missing.append(f"{path.relative_to(ROOT)}:{call.lineno} {_launched_name(call)}")
    assert launches >= 50, f"found only {launches} launches"
    assert not missing, "launches without launch_pdl=LAUNCH_PDL:\n" + "\n".join(missing)


def _launch_pdl_in_subprocess(env_value: str) -> str:
    env = dict(os.environ, TRITONCNN_PDL=env_value)
    code = "from tritoncnn.kernels import pdl; print(pdl.LAUNCH_PDL)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_pdl_is_off_by_default_and_in_the_interpreter():
    assert _launch_pdl_in_subprocess("0") == "False"
    if not torch.cuda.is_available():
        # asked for, but the interpreter has no griddepcontrol: launches stay ordinary
        assert _launch_pdl_in_subprocess("1") == "False"


# --- GPU: steps with PDL equal steps without, bit for bit ------------------------------------

# Runs in a fresh process (pdl.LAUNCH_PDL is fixed at import): graphed steps of one model at a
# real batch, then every piece of state the steps wrote, saved to argv[2].
_STEPS = """
import sys, torch
sys.path.insert(0, {root!r})
from tests.test_cuda_graph import make_trainer, run_steps, snapshot
from tritoncnn.kernels import pdl
from pathlib import Path
name, out = sys.argv[1], Path(sys.argv[2])
t = make_trainer(out.parent / name, name, torch.float16, "sgd", cuda_graph=True,
                 batch=256, n=3 * 256)
step = run_steps(t, 3, graph=True)
assert step.captured
torch.save({{"pdl": pdl.LAUNCH_PDL, "state": {{k: v.cpu() for k, v in snapshot(t).items()}}}},
           out)
"""


def _graphed_steps(tmp_path: Path, name: str, pdl_env: str) -> dict:
    out = tmp_path / f"{name}_pdl{pdl_env}.pt"
    env = dict(os.environ, TRITONCNN_PDL=pdl_env)
    code = _STEPS.format(root=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", code, name, str(out)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(out)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
def test_graphed_steps_with_pdl_equal_steps_without(tmp_path, name):
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90 (Hopper) or later")
    with_pdl = _graphed_steps(tmp_path, name, "1")
    without = _graphed_steps(tmp_path, name, "0")
    assert with_pdl["pdl"] is True and without["pdl"] is False
    a, b = with_pdl["state"], without["state"]
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"state differs with PDL on (a race): {differ[:10]}"
